"""Generation with continuous batching on one llama.cpp context.

One thread owns the context. Every step it admits waiting requests into free
slots (one sequence id each), builds one `llama_batch` holding the next prompt
chunk or the last sampled token of every active slot, runs one `llama_decode`
and samples each slot from its own logits. A request that arrives joins the
running batch at the next step instead of waiting for the others to finish.

Results flow back through `Request.events`, a callback the caller supplies
(the server turns it into an asyncio queue), so nothing here knows about HTTP.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as llama

from .model import Model, TextDecoder


class QueueFullError(Exception):
    """Every slot is busy and the waiting queue is full."""


class RequestError(ValueError):
    """The request cannot be served as asked (prompt too long, ...)."""


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def timings(self) -> dict[str, float]:
        """llama-server's `timings` object."""
        return {
            "prompt_n": self.prompt_tokens,
            "prompt_ms": self.prompt_ms,
            "prompt_per_second": _per_second(self.prompt_tokens, self.prompt_ms),
            "predicted_n": self.completion_tokens,
            "predicted_ms": self.predicted_ms,
            "predicted_per_second": _per_second(self.completion_tokens, self.predicted_ms),
        }


def _per_second(count: int, ms: float) -> float:
    return count / ms * 1000.0 if ms > 0 else 0.0


@dataclass
class Event:
    """Text produced, or the end of generation (`finish_reason` set)."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int | None
    on_event: Callable[[Event], Any]
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Slot:
    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.request: Request | None = None

    def start(self, request: Request, sampler: int) -> None:
        self.request = request
        self.sampler = sampler
        self.n_past = 0
        self.next_prompt = 0
        self.last_token = -1
        self.generated = 0
        self.decoder = TextDecoder()
        self.text = ""  # generated text not yet sent (held back for stop strings)
        self.usage = Usage(prompt_tokens=len(request.prompt))
        self.started = time.perf_counter()
        self.first_token_at = 0.0

    @property
    def prompting(self) -> bool:
        assert self.request is not None
        return self.next_prompt < len(self.request.prompt)


class Engine:
    """Owns a llama.cpp context and serves requests from a thread."""

    def __init__(
        self,
        model: Model,
        n_ctx: int,
        n_parallel: int = 4,
        n_threads: int | None = None,
        n_batch: int = 2048,
        max_queue: int = 64,
    ):
        self.model = model
        self.n_parallel = n_parallel
        self.max_queue = max_queue
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(512, n_batch)
        params.n_seq_max = n_parallel
        # One pool for all slots, as llama-server does: a single long
        # conversation may use the whole context while others are idle.
        params.kv_unified = True
        params.no_perf = True
        if n_threads:
            params.n_threads = n_threads
            params.n_threads_batch = n_threads
        self.ctx = llama.llama_init_from_model(model.pointer, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = llama.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.n_threads = params.n_threads
        self.memory = llama.llama_get_memory(self.ctx)
        self.batch = llama.llama_batch_init(n_batch, 0, n_parallel)
        self.slots = [_Slot(i) for i in range(n_parallel)]
        self.waiting: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llamapack-engine", daemon=True)
        self._thread.start()

    # -- public, thread-safe

    def submit(self, request: Request) -> None:
        if len(request.prompt) >= self.n_ctx:
            raise RequestError(
                f"the prompt is {len(request.prompt)} tokens, and the context holds {self.n_ctx}"
            )
        if not request.prompt:
            raise RequestError("the prompt is empty")
        with self._wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError("the server is busy; try again shortly")
            self.waiting.append(request)
            self._wake.notify()

    @property
    def busy_slots(self) -> int:
        return sum(slot.request is not None for slot in self.slots)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)

    # -- the engine thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and self.busy_slots == 0:
                    self._wake.wait()
                if self._stopping:
                    break
                self._admit()
            self._step()
        for slot in self.slots:
            if slot.request is not None:
                self._finish(slot, "stop", error="the server is shutting down")
        for request in self.waiting:
            request.on_event(Event(finish_reason="stop", error="the server is shutting down"))

    def _admit(self) -> None:
        for slot in self.slots:
            if slot.request is None and self.waiting:
                request = self.waiting.popleft()
                if request.cancelled.is_set():
                    continue
                llama.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                slot.start(request, _make_sampler(request.params, self.model.n_vocab))

    def _step(self) -> None:
        batch = self.batch
        batch.n_tokens = 0
        outputs: list[tuple[_Slot, int]] = []
        budget = self.n_batch
        for slot in self.slots:
            request = slot.request
            if request is None:
                continue
            if request.cancelled.is_set():
                self._finish(slot, "stop")
                continue
            if slot.prompting:
                take = min(budget, len(request.prompt) - slot.next_prompt)
                if take == 0:
                    continue
                for token in request.prompt[slot.next_prompt : slot.next_prompt + take]:
                    _batch_add(batch, token, slot.n_past, slot.seq_id, False)
                    slot.n_past += 1
                slot.next_prompt += take
                budget -= take
                if not slot.prompting:
                    batch.logits[batch.n_tokens - 1] = True
                    outputs.append((slot, batch.n_tokens - 1))
            elif budget > 0:
                _batch_add(batch, slot.last_token, slot.n_past, slot.seq_id, True)
                slot.n_past += 1
                budget -= 1
                outputs.append((slot, batch.n_tokens - 1))
        if batch.n_tokens == 0:
            return
        status = llama.llama_decode(self.ctx, batch)
        if status != 0:
            # 1: no room left in the KV cache for this batch. Every slot in it
            # ends; the next step starts clean.
            reason = "the context is full" if status == 1 else f"llama_decode failed ({status})"
            for slot in self.slots:
                if slot.request is not None:
                    self._finish(slot, "length", error=reason)
            return
        now = time.perf_counter()
        for slot, index in outputs:
            self._sample(slot, index, now)

    def _sample(self, slot: _Slot, index: int, now: float) -> None:
        request = slot.request
        assert request is not None
        if not slot.first_token_at:
            slot.first_token_at = now
            slot.usage.prompt_ms = (now - slot.started) * 1000.0
        token = llama.llama_sampler_sample(slot.sampler, self.ctx, index)
        if self.model.is_end_of_generation(token) and not request.ignore_eos:
            self._finish(slot, "stop")
            return
        slot.generated += 1
        slot.last_token = token
        slot.text += slot.decoder.feed(self.model.piece(token))
        if self._emit(slot):
            self._finish(slot, "stop")
        elif slot.n_past >= self.n_ctx or (
            request.max_tokens is not None and slot.generated >= request.max_tokens
        ):
            self._finish(slot, "length")

    def _emit(self, slot: _Slot, final: bool = False) -> bool:
        """Send what can be sent; True when a stop string was met."""
        request = slot.request
        assert request is not None
        text = slot.text
        for stop in request.stop:
            at = text.find(stop)
            if at >= 0:
                slot.text = ""
                if at:
                    request.on_event(Event(text=text[:at]))
                return True
        keep = 0 if final else _held_back(text, request.stop)
        ready = text[: len(text) - keep]
        slot.text = text[len(ready) :]
        if ready:
            request.on_event(Event(text=ready))
        return False

    def _finish(self, slot: _Slot, reason: str, error: str | None = None) -> None:
        request = slot.request
        assert request is not None
        slot.text += slot.decoder.flush()
        if error is None and self._emit(slot, final=True):
            reason = "stop"
        slot.usage.completion_tokens = slot.generated
        if slot.first_token_at:
            slot.usage.predicted_ms = (time.perf_counter() - slot.first_token_at) * 1000.0
        llama.llama_sampler_free(slot.sampler)
        llama.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.request = None
        request.on_event(Event(finish_reason=reason, usage=slot.usage, error=error))


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could begin a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


def _batch_add(batch: Any, token: int, pos: int, seq_id: int, logits: bool) -> None:
    i = batch.n_tokens
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits
    batch.n_tokens = i + 1


def _make_sampler(params: SamplingParams, n_vocab: int) -> Any:
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama.llama_sampler_chain_add(chain, sampler)

    if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
        add(
            llama.llama_sampler_init_penalties(
                n_vocab,
                params.repeat_last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    if params.temperature <= 0:
        add(llama.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(llama.llama_sampler_init_top_k(params.top_k))
    add(llama.llama_sampler_init_top_p(params.top_p, 1))
    add(llama.llama_sampler_init_min_p(params.min_p, 1))
    add(llama.llama_sampler_init_temp(params.temperature))
    seed = llama.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(llama.llama_sampler_init_dist(seed))
    return chain


__all__ = [
    "Engine",
    "Event",
    "QueueFullError",
    "Request",
    "RequestError",
    "SamplingParams",
    "Usage",
]
