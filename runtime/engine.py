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
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as llama
import numpy as np

from .engine_stats import EngineStats, SlotState
from .model import Model, TextDecoder
from .sampling import RequestError, Sampler, SamplingParams

# A free slot is reused for its cache only when the shared prefix is at least
# this share of the new prompt; otherwise the least recently used slot is
# taken, so one unrelated request does not evict a conversation (llama-server's
# default `slot_prompt_similarity`).
_SIMILARITY = 0.1


class QueueFullError(Exception):
    """Every slot is busy and the waiting queue is full."""


class EngineStopped(Exception):
    """The engine thread has ended (a failure it could not survive); nothing more is served."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused, not evaluated
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    def timings(self) -> dict[str, float]:
        """llama-server's `timings` object."""
        prompt_n = self.evaluated_tokens
        return {
            "cache_n": self.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": _per_token(self.prompt_ms, prompt_n),
            "prompt_per_second": _per_second(prompt_n, self.prompt_ms),
            "predicted_n": self.completion_tokens,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": _per_token(self.predicted_ms, self.completion_tokens),
            "predicted_per_second": _per_second(self.completion_tokens, self.predicted_ms),
        }


def _per_second(count: int, ms: float) -> float:
    return count / ms * 1000.0 if ms > 0 else 0.0


def _per_token(ms: float, count: int) -> float:
    return ms / count if count else 0.0


@dataclass
class TokenLogprob:
    """One sampled token with its log-probability and the most likely alternatives."""

    token: int
    piece: bytes
    logprob: float
    top: list[tuple[int, bytes, float]] = field(default_factory=list)


@dataclass
class Event:
    """Text produced, or the end of generation (`finish_reason` set)."""

    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    stop_type: str = "none"  # llama-server's: "eos", "word", "limit" or "none"
    stopping_word: str = ""


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int | None
    on_event: Callable[[Event], Any]
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: each token's logprob and k alternatives
    cache_prompt: bool = True
    cancelled: threading.Event = field(default_factory=threading.Event)
    sampler: Sampler | None = None  # built by Engine.submit, freed when the request ends

    def cancel(self) -> None:
        self.cancelled.set()


class _Slot:
    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.request: Request | None = None
        self.cached: list[int] = []  # the tokens whose KV cells this sequence holds
        self.last_used = 0.0

    def start(self, request: Request, reused: int) -> None:
        self.next_prompt = reused
        self.last_token = -1
        self.generated = 0
        self.decoder = TextDecoder()
        self.text = ""  # generated text not yet sent (held back for stop strings)
        self.pending: list[TokenLogprob] = []  # logprobs of tokens in `text`
        self.usage = Usage(prompt_tokens=len(request.prompt), cached_tokens=reused)
        self.started = time.perf_counter()
        self.first_token_at = 0.0
        # Last: `Engine.slot_states` (another thread) reads a slot as busy only once
        # every field above describes this request, not the previous one.
        self.request = request

    @property
    def n_past(self) -> int:
        return len(self.cached)

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
        swa_full: bool = False,
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
        params.swa_full = swa_full
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
        # With a sliding window the cache keeps only the last n_swa positions
        # (unless swa_full), so a prefix can be reused only if its tail is there.
        self.n_swa = 0 if swa_full else llama.llama_model_n_swa(model.pointer)
        self.memory = llama.llama_get_memory(self.ctx)
        self.batch = llama.llama_batch_init(n_batch, 0, n_parallel)
        self.slots = [_Slot(i) for i in range(n_parallel)]
        self.stats = EngineStats()  # written by the engine thread, read by /metrics
        self.waiting: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self.failure: str | None = None  # why the engine thread died, if it did
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
        if request.sampler is None:
            request.sampler = Sampler(request.params, self.model)
        with self._wake:
            if self.failure is not None:
                _free_sampler(request)
                raise EngineStopped(self.failure)
            if len(self.waiting) >= self.max_queue:
                _free_sampler(request)
                raise QueueFullError("the server is busy; try again shortly")
            self.waiting.append(request)
            self._wake.notify()

    @property
    def busy_slots(self) -> int:
        return sum(slot.request is not None for slot in self.slots)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    def slot_states(self) -> list[SlotState]:
        """Each slot as it is now; read without stopping the engine, so a slot may
        be one token further by the time the answer is sent."""
        states = []
        for slot in self.slots:
            request = slot.request  # read once: the engine thread may end it meanwhile
            if request is None:
                states.append(SlotState(slot.seq_id, False, self.n_ctx, cached_tokens=len(slot.cached)))
            else:
                usage = slot.usage
                states.append(
                    SlotState(slot.seq_id, True, self.n_ctx, len(request.prompt), usage.cached_tokens,
                              slot.generated)
                )  # fmt: skip
        return states

    def cancel_all(self) -> None:
        """The server is stopping: running requests end at the next step, waiting ones now."""
        with self._wake:
            waiting = list(self.waiting)
            self.waiting.clear()
            for slot in self.slots:
                if slot.request is not None:
                    slot.request.cancel()
            self._wake.notify()
        for request in waiting:
            _free_sampler(request)
            request.on_event(Event(finish_reason="stop", error="the server is shutting down"))

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)

    # -- the engine thread

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            # Whatever ends the loop, no request may wait forever: every one
            # running or queued gets a final error event, and `submit` refuses.
            with self._wake:
                self.failure = f"the engine stopped after an internal error: {exc!r}"
                orphans = [slot.request for slot in self.slots if slot.request is not None]
                orphans += list(self.waiting)
                self.waiting.clear()
                for slot in self.slots:
                    slot.request = None
            for request in orphans:
                try:
                    _free_sampler(request)
                finally:
                    with contextlib.suppress(Exception):
                        request.on_event(Event(finish_reason="stop", error=self.failure))
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
                for slot in self.slots:
                    if slot.request is not None:
                        self._finish(slot, "stop", error=f"internal error: {exc!r}")
        for slot in self.slots:
            if slot.request is not None:
                self._finish(slot, "stop", error="the server is shutting down")
        for request in self.waiting:
            _free_sampler(request)
            request.on_event(Event(finish_reason="stop", error="the server is shutting down"))

    def _admit(self) -> None:
        """Move waiting requests, first come first served, into free slots."""
        while self.waiting:
            free = [slot for slot in self.slots if slot.request is None]
            if not free:
                return
            request = self.waiting.popleft()
            if request.cancelled.is_set():
                _free_sampler(request)
                continue
            slot, shared = self._pick_slot(free, request)
            slot.start(request, self._reuse_prefix(slot, shared, len(request.prompt)))

    def _pick_slot(self, free: list[_Slot], request: Request) -> tuple[_Slot, int]:
        """The free slot whose cache shares most with the prompt, else the least useful one."""
        empty = [slot for slot in free if not slot.cached]
        if request.cache_prompt:
            best, shared = None, 0
            for slot in free:
                length = _common_prefix(slot.cached, request.prompt)
                if length > shared:
                    best, shared = slot, length
            similar = best is not None and shared > _SIMILARITY * len(request.prompt)
            # Reusing a small part of a long cache would destroy the rest of it,
            # unless that part is the whole prompt (a regenerated reply).
            whole_prompt = shared >= len(request.prompt) - 1
            if (
                best is not None
                and similar
                and (not empty or whole_prompt or shared >= len(best.cached) // 2)
            ):
                return best, shared
        return (empty or [min(free, key=lambda slot: slot.last_used)])[0], 0

    def _reuse_prefix(self, slot: _Slot, shared: int, prompt_length: int) -> int:
        """Drop the slot's cache after `shared` tokens; return how many are kept."""
        # The last prompt token is always evaluated: its logits give the first token.
        keep = min(shared, prompt_length - 1)
        # With a sliding window, the tokens after `keep` attend to the window
        # before it: those cells must still be there (checked before removing).
        pos_min = llama.llama_memory_seq_pos_min(self.memory, slot.seq_id)
        window_kept = not self.n_swa or 0 <= pos_min <= max(0, keep - self.n_swa)
        if keep > 0 and window_kept and llama.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
            del slot.cached[keep:]
            return keep
        llama.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.cached = []
        return 0

    def _step(self) -> None:
        batch = self.batch
        batch.n_tokens = 0
        outputs: list[tuple[_Slot, int]] = []
        active = []
        for slot in self.slots:
            if slot.request is None:
                continue
            if slot.request.cancelled.is_set():
                self._finish(slot, "stop")
            else:
                active.append(slot)
        # Generating slots first: a long prompt must not take their place.
        for slot in active:
            if not slot.prompting:
                _batch_add(batch, slot.last_token, slot.n_past, slot.seq_id, True)
                slot.cached.append(slot.last_token)
                outputs.append((slot, batch.n_tokens - 1))
        budget = self.n_batch - batch.n_tokens
        for slot in active:
            request = slot.request
            assert request is not None
            if not slot.prompting or budget <= 0:
                continue
            chunk = request.prompt[slot.next_prompt : slot.next_prompt + budget]
            for token in chunk:
                _batch_add(batch, token, slot.n_past, slot.seq_id, False)
                slot.cached.append(token)
            slot.next_prompt += len(chunk)
            budget -= len(chunk)
            if not slot.prompting:
                batch.logits[batch.n_tokens - 1] = True
                outputs.append((slot, batch.n_tokens - 1))
        if batch.n_tokens == 0:
            return
        status = llama.llama_decode(self.ctx, batch)
        if status == 1 and self._evict_idle_caches():
            status = llama.llama_decode(self.ctx, batch)
        if status != 0:
            # 1: no room left in the KV cache for this batch. Every slot in it
            # ends; the next step starts clean.
            reason = "the context is full" if status == 1 else f"llama_decode failed ({status})"
            for slot in active:
                self._finish(slot, "length", error=reason)
            return
        now = time.perf_counter()
        for slot, index in outputs:
            self._sample(slot, index, now)

    def _evict_idle_caches(self) -> bool:
        """Free the cells that idle slots keep for their prompt cache."""
        evicted = False
        for slot in self.slots:
            if slot.request is None and slot.cached:
                llama.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                slot.cached = []
                evicted = True
        return evicted

    def _sample(self, slot: _Slot, index: int, now: float) -> None:
        request = slot.request
        assert request is not None
        if not slot.first_token_at:
            slot.first_token_at = now
            slot.usage.prompt_ms = (now - slot.started) * 1000.0
        assert request.sampler is not None
        token = request.sampler.sample(self.ctx, index)
        if self.model.is_end_of_generation(token) and not request.ignore_eos:
            self._finish(slot, "stop", stop_type="eos")
            return
        if request.logprobs is not None:
            slot.pending.append(self._logprob(token, index, request.logprobs))
        slot.generated += 1
        slot.last_token = token
        slot.text += slot.decoder.feed(self.model.piece(token))
        stop = self._emit(slot)
        if stop is not None:
            self._finish(slot, "stop", stop_type="word", stopping_word=stop)
        elif slot.n_past + 1 >= self.n_ctx or (
            request.max_tokens is not None and slot.generated >= request.max_tokens
        ):
            self._finish(slot, "length", stop_type="limit")

    def _logprob(self, token: int, index: int, top: int) -> TokenLogprob:
        """Log-softmax over the raw logits of the position the token was sampled from."""
        pointer = llama.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak).sum()))
        alternatives = []
        if top > 0:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(logits[best])[::-1]]
            alternatives = [(int(t), self.model.piece(int(t)), float(logits[t]) - log_total) for t in best]
        return TokenLogprob(token, self.model.piece(token), float(logits[token]) - log_total, alternatives)

    def _emit(self, slot: _Slot, final: bool = False) -> str | None:
        """Send what can be sent; return the stop string met, if one was."""
        request = slot.request
        assert request is not None
        text = slot.text
        for stop in request.stop:
            at = text.find(stop)
            if at >= 0:
                slot.text = ""
                if at:
                    request.on_event(Event(text=text[:at], logprobs=slot.pending))
                slot.pending = []
                return stop
        keep = 0 if final else _held_back(text, request.stop)
        ready = text[: len(text) - keep]
        slot.text = text[len(ready) :]
        if ready:
            request.on_event(Event(text=ready, logprobs=slot.pending))
            slot.pending = []
        return None

    def _finish(
        self,
        slot: _Slot,
        reason: str,
        error: str | None = None,
        stop_type: str = "none",
        stopping_word: str = "",
    ) -> None:
        request = slot.request
        assert request is not None
        slot.text += slot.decoder.flush()
        if error is None:
            stop = self._emit(slot, final=True)
            if stop is not None:
                reason, stop_type, stopping_word = "stop", "word", stop
        slot.usage.completion_tokens = slot.generated
        if slot.first_token_at:
            slot.usage.predicted_ms = (time.perf_counter() - slot.first_token_at) * 1000.0
        self.stats.record(slot.usage)
        _free_sampler(request)
        if error is not None or not request.cache_prompt:
            llama.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            slot.cached = []
        # Otherwise the KV cache stays: the next request with this prefix reuses it.
        slot.request = None
        slot.last_used = time.perf_counter()
        request.on_event(
            Event(
                finish_reason=reason,
                usage=slot.usage,
                error=error,
                stop_type=stop_type,
                stopping_word=stopping_word,
            )
        )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n and a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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


def _free_sampler(request: Request) -> None:
    if request.sampler is not None:
        request.sampler.free()
        request.sampler = None


__all__ = [
    "Engine",
    "EngineStopped",
    "Event",
    "QueueFullError",
    "Request",
    "RequestError",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]
