"""Everything that answers requests, loaded together: model, engine, chat template."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as llama

from llamapack.runtime import defaults
from llamapack.runtime.engine.context import ContextError
from llamapack.runtime.engine.embeddings import Embedder
from llamapack.runtime.engine.events import Event, Request
from llamapack.runtime.engine.loop import Engine
from llamapack.runtime.fileformat import ChatTemplateChoice
from llamapack.runtime.fileformat.gguf import GGUFError
from llamapack.runtime.llama import gpu
from llamapack.runtime.llama.chat_template import ChatFormatter, ChatTemplateError
from llamapack.runtime.llama.cpu import cpu_backend
from llamapack.runtime.llama.devices import OFFLOAD_TYPES, EngineReport, engine_report
from llamapack.runtime.llama.gpu import FilePayload
from llamapack.runtime.llama.model import Model, ModelLoadError, ModelSource, init_backend
from llamapack.runtime.server.requests import BadRequest, Generation

if TYPE_CHECKING:
    from llamapack.runtime.llama.rpc import Endpoint


@dataclass(frozen=True)
class BackendOptions:
    source: ModelSource
    chat_template: ChatTemplateChoice
    ctx_size: int = 0  # 0: the model's trained context, capped at defaults.CONTEXT
    parallel: int = 4
    kv_unified: bool = True  # False: each slot gets an equal share of the context
    n_batch: int = 2048  # most tokens one decode evaluates (-b)
    jinja: bool = True  # False: llama.cpp's built-in template nearest the Jinja one (--no-jinja)
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # --chat-template-kwargs
    threads: int | None = None
    n_gpu_layers: int | None = None  # None: as many as fit on the GPU (runtime/llama/offload.py)
    gpu: str = "auto"  # one of runtime/llama/gpu.CHOICES
    gpu_payload: FilePayload | None = None  # a GPU runtime the built file carries (--gpu-runtime)
    verbose: bool = False
    max_queue: int = 64
    embedding: bool = False  # also serve /v1/embeddings (a second, small context)
    n_predict: int = -1  # tokens a request that sets no limit generates, as llama-server's -n; -1: no limit
    max_tokens_cap: int | None = None  # most tokens any request may generate, whatever it asks
    rpc: tuple[Endpoint, ...] = ()  # RPC workers that get the offloaded layers
    tensor_split: tuple[float, ...] = ()  # each offload device's share; () splits by free memory


@dataclass(frozen=True)
class ChatPrompt:
    text: str  # as the chat template wrote it (llama-server's /apply-template and __verbose show it)
    tokens: list[int]


ALL_LAYERS = 999  # -ngl with --rpc when not given: every layer goes to the workers
EMBEDDING_CTX = 2048
# An embeddings context outputs every token, and llama.cpp keeps a row of
# logits (the whole vocabulary) for each: bound that buffer, not just the count.
EMBEDDING_LOGITS_BYTES = 256 << 20


def _embedding_ctx(model: Model, n_ctx: int) -> int:
    by_memory = EMBEDDING_LOGITS_BYTES // (4 * model.n_vocab)
    return max(32, min(n_ctx, EMBEDDING_CTX, model.n_ctx_train or n_ctx, by_memory))


class Backend:
    def __init__(self, options: BackendOptions):
        init_backend(options.verbose)
        self.gpu = _choose_gpu(options)
        if options.rpc:
            _add_rpc_workers(options.rpc)
        self.n_predict = options.n_predict
        self.max_tokens_cap = options.max_tokens_cap
        warnings: list[str] = []
        n_gpu_layers = _gpu_layers(options, self.gpu, warnings)
        try:
            self._load(options, n_gpu_layers)
        except (ModelLoadError, ContextError) as exc:
            if n_gpu_layers == 0 or self.gpu.backend is None or options.rpc:
                raise
            # A driver that runs out of memory or fails mid-load: the CPU still serves.
            warnings.append(
                f"the {gpu.NAMES[self.gpu.backend]} GPU could not take {n_gpu_layers} layers ({exc}); "
                "running on the CPU"
            )
            n_gpu_layers = 0
            self._load(options, n_gpu_layers)
        try:
            # Read once the model is loaded: every backend is registered by then.
            self.engine_report: EngineReport = engine_report(
                cpu_backend(),
                threads=self.engine.n_threads,
                gpu_layers_requested=n_gpu_layers,
                model_layers=llama.llama_model_n_layer(self.model.pointer),
                layers_by_device=self.model.layers_by_device,
                gpu=self.gpu,
                warnings=warnings,
            )
            if options.rpc:
                from llamapack.runtime.llama import rpc

                engine = self.engine
                rpc.on_worker_lost(
                    lambda reason: engine.fail(f"{reason}; restart to serve again", stuck=True)
                )
        except BaseException:
            self.close()
            raise

    def _load(self, options: BackendOptions, n_gpu_layers: int) -> None:
        """The model, its context(s) and chat formatter, with `n_gpu_layers` on the GPU.
        With none there, no GPU is among the model's devices either: llama.cpp would
        still put compute buffers on one and send it big prompt batches."""
        cpu_only = n_gpu_layers == 0 and not options.rpc
        self.model = Model(
            options.source, n_gpu_layers=n_gpu_layers, tensor_split=options.tensor_split, cpu_only=cpu_only
        )
        self.embedder: Embedder | None = None
        engine: Engine | None = None
        try:
            choice = options.chat_template
            if choice.source == "gguf" and not self.model.chat_template():
                choice = ChatTemplateChoice("builtin", "chatml", "the GGUF has no chat template")
            self.formatter = ChatFormatter(
                self.model, choice, jinja=options.jinja, template_kwargs=options.template_kwargs
            )
            n_ctx = _context_size(options, self.model.n_ctx_train)
            engine = Engine(
                self.model,
                n_ctx=n_ctx,
                n_parallel=options.parallel,
                n_threads=options.threads,
                max_queue=options.max_queue,
                kv_unified=options.kv_unified,
                n_batch=options.n_batch,
            )
            if options.embedding:
                self.embedder = Embedder(
                    self.model, _embedding_ctx(self.model, n_ctx), n_threads=options.threads
                )
            self.engine = engine
        except BaseException:
            if engine is not None:
                engine.close()
            self.model.close()
            raise

    def close(self) -> None:
        if self.engine.stuck:
            # Freeing the model would wait on the lost RPC worker forever; the process
            # is ending, and the system takes the memory back.
            return
        self.engine.close()
        if self.embedder is not None:
            self.embedder.close()
        self.model.close()

    def chat_prompt(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> ChatPrompt:
        try:
            prompt = self.formatter.format(
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                template_kwargs=template_kwargs,
                continue_final_message=continue_final_message,
            )
        except ChatTemplateError as exc:
            raise BadRequest(str(exc), "messages") from None
        return ChatPrompt(prompt.text, self.model.tokenize(prompt.text, add_special=prompt.add_special))

    def text_prompt(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=True)

    def _request(self, prompt: list[int], generation: Generation, on_event: Any) -> Request:
        params = generation.sampling
        if generation.ignore_eos:  # as llama-server: the end tokens banned, not sampled and dropped
            banned = [(token, -math.inf) for token in self.model.end_of_generation_tokens]
            params = dataclasses.replace(params, logit_bias=[*params.logit_bias, *banned])
        return Request(
            prompt=prompt,
            params=params,
            max_tokens=_token_limit(generation.max_tokens, self.n_predict, self.max_tokens_cap),
            stop=generation.stop,
            ignore_eos=generation.ignore_eos,
            logprobs=generation.logprobs,
            cache_prompt=generation.cache_prompt,
            return_progress=generation.return_progress,
            post_sampling_probs=generation.post_sampling_probs,
            on_event=on_event,
        )

    async def generate(self, prompt: list[int], generation: Generation) -> AsyncGenerator[Event, None]:
        """Submit a request and yield its events; cancels it if the consumer stops early."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                request.cancel()

        request = self._request(prompt, generation, deliver)
        if generation.sampling.grammar:
            # Building the sampler parses the grammar: off the event loop.
            await asyncio.to_thread(self.engine.submit, request)
        else:
            self.engine.submit(request)
        try:
            while True:
                event = await events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            request.cancel()

    def complete_blocking(self, prompt: list[int], generation: Generation, on_text: Any) -> Event:
        """Generate from a plain thread (the `-p` mode): `on_text` gets each piece."""
        import queue

        events: queue.Queue[Event] = queue.Queue()
        request = self._request(prompt, generation, events.put)
        self.engine.submit(request)
        try:
            while True:
                event = events.get()
                if event.text:
                    on_text(event.text)
                if event.finish_reason is not None:
                    return event
        finally:
            request.cancel()


def _context_size(options: BackendOptions, n_ctx_train: int) -> int:
    return options.ctx_size or min(n_ctx_train or defaults.CONTEXT, defaults.CONTEXT)


def _choose_gpu(options: BackendOptions) -> gpu.GpuChoice:
    """Load the GPU backend --gpu asks for; -ngl 0 alone keeps every GPU out (ggml
    would otherwise still send big prompt batches to one)."""
    if options.n_gpu_layers == 0 and options.gpu == "auto":
        return gpu.GpuChoice("auto", reason="-ngl 0")
    try:
        return gpu.choose(options.gpu, functools.partial(gpu.probe, payload=options.gpu_payload))
    except gpu.GpuError as exc:
        raise ModelLoadError(str(exc)) from None


def _gpu_layers(options: BackendOptions, choice: gpu.GpuChoice, warnings: list[str]) -> int:
    """-ngl as given; else every layer for --rpc workers, or as many as fit on the GPU."""
    if options.n_gpu_layers is not None:
        return options.n_gpu_layers
    if options.rpc:
        return ALL_LAYERS
    if choice.backend is None:
        return 0
    from llamapack.runtime.llama import offload
    from llamapack.runtime.llama.devices import devices

    # llama.cpp leaves integrated GPUs out when there is a discrete one (llama.cpp's
    # default device list), so their memory does not count then.
    gpus = [device for device in devices() if device.type in OFFLOAD_TYPES]
    kinds = {device.type for device in gpus}
    free = [device.memory_free for device in gpus if device.type == "GPU" or kinds == {"IGPU"}]
    try:
        shape = offload.read_shape(options.source.path, options.source.offset)
    except (OSError, GGUFError) as exc:
        warnings.append(f"cannot size the model's layers ({exc}); none go to the GPU")
        return 0
    layers = offload.fit_layers(shape, free, _context_size(options, shape.n_ctx_train))
    if layers == 0:
        warnings.append(
            f"no layer fits in the GPU's free memory ({sum(free) >> 20} MiB); the CPU runs the model "
            "(-ngl N to try anyway)"
        )
    return layers


def _add_rpc_workers(endpoints: Sequence[Endpoint]) -> None:
    from llamapack.runtime.llama import rpc

    try:
        rpc.add_workers(endpoints)
    except rpc.RpcError as exc:
        raise ModelLoadError(str(exc)) from None


def _token_limit(max_tokens: int | None, n_predict: int, cap: int | None) -> int | None:
    """The request's own limit, else the server's -n (llama-server's rule); then the cap."""
    limit = max_tokens if max_tokens is not None else (None if n_predict < 0 else n_predict)
    if cap is None:
        return limit
    return cap if limit is None else min(limit, cap)
