"""Generation with continuous batching on one llama.cpp context.

One thread owns the context. Every step it admits waiting requests into free
slots (one sequence id each), builds one `llama_batch` holding the last sampled
token of every generating slot and the next prompt chunk of every prompting
one, runs one `llama_decode` and samples each slot from its own logits. A
request that arrives joins the running batch at the next step instead of
waiting for the others to finish.

Prompt cache: a slot keeps its KV cache when its request ends. A new request
goes to the free slot whose cached tokens share the longest prefix with its
prompt, and only the rest of the prompt is evaluated, so a chat's follow-up
turn costs its new tokens, not its whole history.

Results flow back through `Request.on_event`, a callback the caller supplies
(the server turns it into an asyncio queue), so nothing here knows about HTTP.

The parts: events.py (requests, events, errors), context.py (the llama.cpp
context), slots.py (slot choice and prompt cache), run.py (one request in its
slot), batch.py (what a step evaluates), sampling.py (tokens and logprobs),
stops.py (stop strings); this module runs them on the engine thread.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import traceback

from llamapack.runtime.engine.batch import plan_batch
from llamapack.runtime.engine.context import Context
from llamapack.runtime.engine.events import (
    EngineStopped,
    Event,
    PromptTooLong,
    QueueFullError,
    Request,
    RequestError,
)
from llamapack.runtime.engine.run import Run
from llamapack.runtime.engine.sampling import Candidates, Sampler, token_logprob
from llamapack.runtime.engine.slots import Slot, evict_idle, pick_slot, reuse_prefix
from llamapack.runtime.engine.stats import EngineStats, SlotState
from llamapack.runtime.llama.model import Model


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
        swa_full: bool = False,
        kv_unified: bool = True,
    ):
        self.model = model
        self.n_parallel = n_parallel
        self.max_queue = max_queue
        self.context = Context(model, n_ctx, n_parallel, n_threads, n_batch, swa_full, kv_unified)
        self.n_ctx = self.context.n_ctx_slot  # the most one request may use: prompt and reply
        self.n_threads = self.context.n_threads
        self.slots = [Slot(i) for i in range(n_parallel)]
        self.stats = EngineStats()  # written by the engine thread, read by /metrics
        self.waiting: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self.failure: str | None = None  # why the engine can serve no more, if it cannot
        self._stuck = False  # its thread is blocked for good (see `fail`)
        self._candidates: Candidates | None = None  # for logprobs; made at the first request for them
        self._thread = threading.Thread(target=self._run, name="llamapack-engine", daemon=True)
        self._thread.start()

    # -- public, thread-safe

    def submit(self, request: Request) -> None:
        if len(request.prompt) >= self.n_ctx:
            raise PromptTooLong(len(request.prompt), self.n_ctx)
        if not request.prompt:
            raise RequestError("the prompt is empty")
        if request.sampler is None:
            request.sampler = Sampler(request.params, self.model)
        with self._wake:
            if self.failure is not None:
                request.free_sampler()
                raise EngineStopped(self.failure)
            if len(self.waiting) >= self.max_queue:
                request.free_sampler()
                raise QueueFullError("the server is busy; try again shortly")
            self.waiting.append(request)
            self._wake.notify()

    @property
    def busy_slots(self) -> int:
        return sum(slot.run is not None for slot in self.slots)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    def slot_states(self) -> list[SlotState]:
        """Each slot as it is now; read without stopping the engine, so a slot may
        be one token further by the time the answer is sent."""
        states = []
        for slot in self.slots:
            run = slot.run  # read once: the engine thread may end it meanwhile
            if run is None:
                states.append(SlotState(slot.seq_id, False, self.n_ctx, cached_tokens=len(slot.cached)))
            else:
                states.append(
                    SlotState(slot.seq_id, True, self.n_ctx, len(run.request.prompt),
                              run.usage.cached_tokens, run.generated)
                )  # fmt: skip
        return states

    def cancel_all(self) -> None:
        """The server is stopping: running requests end at the next step, waiting ones now."""
        with self._wake:
            waiting = list(self.waiting)
            self.waiting.clear()
            for slot in self.slots:
                run = slot.run
                if run is not None:
                    run.request.cancel()
            self._wake.notify()
        for request in waiting:
            request.free_sampler()
            request.on_event(Event(finish_reason="stop", error="the server is shutting down"))

    @property
    def stuck(self) -> bool:
        """Its thread is blocked for good (see `fail`): nothing it holds may be freed."""
        return self._stuck

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._stuck:
            return  # its thread waits on a lost RPC worker forever: the context stays as it is
        self._thread.join()
        self.context.close()

    def fail(self, reason: str, stuck: bool = False) -> None:
        """The engine can serve no more: every request running or queued gets a final
        error event, and `submit` refuses with `reason` (which /health reports).
        `stuck`: the engine thread is blocked for good (a lost RPC worker) and is
        neither waited for nor has its context freed."""
        with self._wake:
            if self.failure is not None:
                return
            self.failure = reason
            self._stuck = stuck
            orphans = [slot.run.request for slot in self.slots if slot.run is not None]
            orphans += list(self.waiting)
            self.waiting.clear()
            for slot in self.slots:
                slot.run = None
        for request in orphans:
            if not stuck:  # a stuck thread may still hold the sampler
                with contextlib.suppress(Exception):
                    request.free_sampler()
            with contextlib.suppress(Exception):
                request.on_event(Event(finish_reason="stop", error=reason))

    # -- the engine thread

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            # Whatever ends the loop, no request may wait forever.
            self.fail(f"the engine stopped after an internal error: {exc!r}")
            traceback.print_exc()  # a bug: show it, the server itself stays up and says so

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and self.busy_slots == 0:
                    self._wake.wait()
                if self._stopping:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a bug must not stop the server: end what runs
                for run in self._runs():
                    self._finish(run, "stop", error=f"internal error: {exc!r}")
        for run in self._runs():
            self._finish(run, "stop", error="the server is shutting down")
        for request in self.waiting:
            request.free_sampler()
            request.on_event(Event(finish_reason="stop", error="the server is shutting down"))

    def _runs(self) -> list[Run]:
        return [slot.run for slot in self.slots if slot.run is not None]

    def _admit(self) -> None:
        """Move waiting requests, first come first served, into free slots."""
        while self.waiting:
            free = [slot for slot in self.slots if slot.run is None]
            if not free:
                return
            request = self.waiting.popleft()
            if request.cancelled.is_set():
                request.free_sampler()
                continue
            slot, shared = pick_slot(free, request.prompt, request.cache_prompt)
            reused = reuse_prefix(slot, self.context, shared, len(request.prompt), self.context.n_swa)
            slot.run = Run(request, slot, reused, time.perf_counter())
            slot.run.report_progress(slot.run.started)  # before any of the prompt is evaluated

    def _step(self) -> None:
        active: list[Run] = []
        for run in self._runs():
            if run.request.cancelled.is_set():
                self._finish(run, "stop")
            else:
                active.append(run)
        prompting = [run for run in active if run.prompting and run.request.return_progress]
        plan = plan_batch(active, self.context.n_batch)
        if not plan.tokens:
            return
        status = self.context.decode(plan.tokens)
        self.stats.record_decode(len(plan.tokens), len(active))
        if status == 1 and evict_idle(self.slots, self.context):
            status = self.context.decode(plan.tokens)
        if status != 0:
            # 1: no room left in the KV cache for this batch. Every slot in it
            # ends; the next step starts clean.
            reason = (
                "context size has been exceeded: the requests in flight filled it (-c sets its size)"
                if status == 1
                else f"llama_decode failed ({status})"
            )
            for run in active:
                self._finish(run, "length", error=reason)
            return
        now = time.perf_counter()
        for run in prompting:
            run.report_progress(now)
        for run, index in plan.outputs:
            self._sample(run, index, now)

    def _sample(self, run: Run, index: int, now: float) -> None:
        request = run.request
        run.sampling(now)
        assert request.sampler is not None
        token = request.sampler.sample(self.context.pointer, index)
        if self.model.is_end_of_generation(token) and not request.ignore_eos:
            self._finish(run, "stop", stop_type="eos")
            return
        logprob = None
        if request.logprobs is not None:
            if self._candidates is None:
                self._candidates = Candidates(self.model.n_vocab)
            post_sampling = request.params if request.post_sampling_probs else None
            logits = self.context.logits(index)
            logprob = token_logprob(
                self._candidates, logits, token, request.logprobs, self.model.piece, post_sampling
            )
        stop = run.accept(token, self.model.piece(token), logprob)
        if stop is not None:
            self._finish(run, "stop", stop_type="word", stopping_word=stop)
        elif run.slot.n_past + 1 >= self.n_ctx or (
            request.max_tokens is not None and run.generated >= request.max_tokens
        ):
            self._finish(run, "length", stop_type="limit")

    def _finish(
        self,
        run: Run,
        reason: str,
        error: str | None = None,
        stop_type: str = "none",
        stopping_word: str = "",
    ) -> None:
        request, slot = run.request, run.slot
        if error is None:
            stop = run.flush()
            if stop is not None:
                reason, stop_type, stopping_word = "stop", "word", stop
        usage = run.final_usage(time.perf_counter())
        self.stats.record(usage)
        request.free_sampler()
        if error is not None or not request.cache_prompt:
            slot.forget(self.context)
        # Otherwise the KV cache stays: the next request with this prefix reuses it.
        slot.run = None
        slot.last_used = time.perf_counter()
        request.on_event(
            Event(
                finish_reason=reason,
                usage=usage,
                error=error,
                stop_type=stop_type,
                stopping_word=stopping_word,
            )
        )
