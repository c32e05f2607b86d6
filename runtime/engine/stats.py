"""Counts the engine keeps about finished requests, and a slot's state for `/slots`.

The engine thread writes, HTTP handlers read: every access goes through one lock,
and readers get a copy (`EngineStats.snapshot`), never the live numbers. Nothing
here knows about HTTP or Prometheus (runtime/server/metrics.py renders them).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from llamapack.runtime.engine.events import Usage

# Throughput gauges cover this many most recent finished requests: one long or
# one tiny request does not swing them, and an idle server keeps its last value.
RECENT_REQUESTS = 16


@dataclass(frozen=True)
class StatsSnapshot:
    requests_finished: int = 0
    prompt_tokens: int = 0  # every prompt token of finished requests, cached ones included
    cached_tokens: int = 0  # of those, the ones whose KV cache was reused, not evaluated
    generated_tokens: int = 0
    prompt_tokens_per_second: float = 0.0  # prompt evaluation over the recent requests
    decode_tokens_per_second: float = 0.0  # generation over the recent requests
    prompt_ms: float = 0.0  # time spent evaluating prompts, finished requests
    predicted_ms: float = 0.0  # time spent generating, finished requests
    decodes: int = 0  # llama_decode calls
    largest_batch: int = 0  # most tokens in one llama_decode
    busy_slot_decodes: int = 0  # the sum over decodes of the slots each one served


class EngineStats:
    """Totals over the engine's life, updated by the engine thread when a request ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = StatsSnapshot()
        # (evaluated prompt tokens, prompt ms, generated tokens, decode ms) per request
        self._recent: collections.deque[tuple[int, float, int, float]] = collections.deque(
            maxlen=RECENT_REQUESTS
        )
        # Since the last `take_window`: llama-server's throughput gauges cover the time
        # between two scrapes of /metrics.
        self._window: tuple[int, float, int, float] = (0, 0.0, 0, 0.0)

    def record(self, usage: Usage) -> None:
        evaluated = usage.prompt_tokens - usage.cached_tokens
        with self._lock:
            self._recent.append((evaluated, usage.prompt_ms, usage.completion_tokens, usage.predicted_ms))
            w = self._window
            self._window = (
                w[0] + evaluated,
                w[1] + usage.prompt_ms,
                w[2] + usage.completion_tokens,
                w[3] + usage.predicted_ms,
            )
            totals = self._totals
            self._totals = dataclasses.replace(
                totals,
                requests_finished=totals.requests_finished + 1,
                prompt_tokens=totals.prompt_tokens + usage.prompt_tokens,
                cached_tokens=totals.cached_tokens + usage.cached_tokens,
                generated_tokens=totals.generated_tokens + usage.completion_tokens,
                prompt_tokens_per_second=_rate(self._recent, 0, 1),
                decode_tokens_per_second=_rate(self._recent, 2, 3),
                prompt_ms=totals.prompt_ms + usage.prompt_ms,
                predicted_ms=totals.predicted_ms + usage.predicted_ms,
            )

    def record_decode(self, tokens: int, slots: int) -> None:
        with self._lock:
            totals = self._totals
            self._totals = dataclasses.replace(
                totals,
                decodes=totals.decodes + 1,
                largest_batch=max(totals.largest_batch, tokens),
                busy_slot_decodes=totals.busy_slot_decodes + slots,
            )

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return self._totals

    def take_window(self) -> tuple[float, float]:
        """Prompt and generation tokens per second since the last call, which starts a new window."""
        with self._lock:
            window, self._window = self._window, (0, 0.0, 0, 0.0)
        return _rate([window], 0, 1), _rate([window], 2, 3)


def _rate(recent: Iterable[tuple[int, float, int, float]], count: int, ms: int) -> float:
    tokens = sum(entry[count] for entry in recent)
    millis = sum(entry[ms] for entry in recent)
    return tokens / millis * 1000.0 if millis > 0 else 0.0


@dataclass(frozen=True)
class SlotState:
    """One slot as `/slots` shows it, in llama-server's spirit.

    cached_tokens: while processing, the prompt tokens reused from the slot's cache;
    when idle, the tokens its cache keeps for the next request with that prefix.
    """

    id: int
    processing: bool
    n_ctx: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": "processing" if self.processing else "idle",
            "is_processing": self.processing,
            "n_ctx": self.n_ctx,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
        }
