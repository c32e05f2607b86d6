"""What goes between the engine and its callers: requests in, events out, and the errors.

Nothing here touches llama.cpp, so a caller (the HTTP server, the `-p` mode)
depends on these types, not on the engine's machinery.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # sampling imports this module for RequestError
    from llamapack.runtime.engine.sampling import Sampler, SamplingParams


class RequestError(ValueError):
    """The request cannot be served as asked (prompt too long, bad grammar, ...)."""


class PromptTooLong(RequestError):
    def __init__(self, n_prompt_tokens: int, n_ctx: int):
        super().__init__(f"the prompt is {n_prompt_tokens} tokens, and the context holds {n_ctx}")
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


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
            # The first token comes from the prompt's last batch, not from a decode
            # step of its own: llama-server's rates leave it out.
            "predicted_per_token_ms": _per_token(self.predicted_ms, self.completion_tokens - 1),
            "predicted_per_second": _per_second(self.completion_tokens - 1, self.predicted_ms),
        }


def _per_second(count: int, ms: float) -> float:
    return count / ms * 1000.0 if ms > 0 and count > 0 else 0.0


def _per_token(ms: float, count: int) -> float:
    return ms / count if count > 0 else 0.0


@dataclass
class TokenLogprob:
    """One sampled token with its log-probability and the most likely alternatives."""

    token: int
    piece: bytes
    logprob: float
    top: list[tuple[int, bytes, float]] = field(default_factory=list)


@dataclass(frozen=True)
class PromptProgress:
    """How far the prompt's evaluation is (llama-server's `prompt_progress`)."""

    total: int
    cache: int  # reused from the slot's cache, not evaluated
    processed: int  # cache included
    time_ms: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class Event:
    """Text produced, the prompt's progress (`progress`, when asked for), or the end of
    generation (`finish_reason` set)."""

    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    stop_type: str = "none"  # llama-server's: "eos", "word", "limit" or "none"
    stopping_word: str = ""
    progress: PromptProgress | None = None


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
    return_progress: bool = False  # an event as each batch of the prompt is evaluated
    post_sampling_probs: bool = False  # logprobs after the sampler chain, not the model's own
    cancelled: threading.Event = field(default_factory=threading.Event)
    sampler: Sampler | None = None  # built by Engine.submit, freed when the request ends

    def cancel(self) -> None:
        self.cancelled.set()

    def free_sampler(self) -> None:
        """Release the sampler's llama.cpp memory; safe to call more than once."""
        if self.sampler is not None:
            self.sampler.free()
            self.sampler = None
