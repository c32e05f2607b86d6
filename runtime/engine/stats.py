"""Counts the engine keeps about finished requests, and a slot's state for `/slots`.

The engine thread writes, HTTP handlers read: every access goes through one lock,
and readers get a copy (`EngineStats.snapshot`), never the live numbers. Nothing
here knows about HTTP or Prometheus (runtime/server/metrics.py renders them).
"""

from __future__ import annotations

import collections
import threading
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


class EngineStats:
    """Totals over the engine's life, updated by the engine thread when a request ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = StatsSnapshot()
        # (evaluated prompt tokens, prompt ms, generated tokens, decode ms) per request
        self._recent: collections.deque[tuple[int, float, int, float]] = collections.deque(
            maxlen=RECENT_REQUESTS
        )

    def record(self, usage: Usage) -> None:
        evaluated = usage.prompt_tokens - usage.cached_tokens
        with self._lock:
            self._recent.append((evaluated, usage.prompt_ms, usage.completion_tokens, usage.predicted_ms))
            totals = self._totals
            self._totals = StatsSnapshot(
                requests_finished=totals.requests_finished + 1,
                prompt_tokens=totals.prompt_tokens + usage.prompt_tokens,
                cached_tokens=totals.cached_tokens + usage.cached_tokens,
                generated_tokens=totals.generated_tokens + usage.completion_tokens,
                prompt_tokens_per_second=_rate(self._recent, 0, 1),
                decode_tokens_per_second=_rate(self._recent, 2, 3),
            )

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return self._totals


def _rate(recent: collections.deque[tuple[int, float, int, float]], count: int, ms: int) -> float:
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
