"""Read and check the generation fields of an API request body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engine import SamplingParams


class BadRequest(ValueError):
    """A request field is missing, of the wrong type or out of range."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Generation:
    sampling: SamplingParams
    max_tokens: int | None
    stop: list[str]
    ignore_eos: bool
    logprobs: int | None = None  # None: off; k: each token's logprob and its k best rivals
    cache_prompt: bool = True


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be a number", name)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer", name)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}", name)
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    return [s for s in value if s]


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false", name)
    return value


def read_choices(body: dict[str, Any]) -> None:
    """One choice per request: `n` above 1 is refused rather than silently ignored."""
    if _integer(body, "n", 1, 2**31 - 1) not in (None, 1):
        raise BadRequest("only n=1 is supported", "n")


def read_chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat completions: `logprobs` true, with `top_logprobs` alternatives (0-20)."""
    top = _integer(body, "top_logprobs", 0, 20)
    if not _flag(body, "logprobs", False):
        if top:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top or 0


def read_completion_logprobs(body: dict[str, Any], name: str = "logprobs") -> int | None:
    """Legacy completions' `logprobs` (alternatives, 0-20), /completion's `n_probs`."""
    value = body.get(name)
    if value is None or value is False:
        return None
    if value is True:
        return 0
    top = _integer(body, name, 0, 20)
    return None if name == "n_probs" and not top else top


def _last_n(body: dict[str, Any], default: int) -> int:
    value = _integer(body, "repeat_last_n", -1, 1 << 16)
    if value is None:
        return default
    return 1 << 13 if value < 0 else value  # llama.cpp's -1: the context; 8192 covers ours


def read_generation(body: dict[str, Any], max_tokens_field: str = "max_tokens") -> Generation:
    defaults = SamplingParams()
    max_tokens = _integer(body, "max_completion_tokens", 0, 2**31 - 1)
    if max_tokens is None:
        # OpenAI's max_tokens is never negative; llama.cpp's n_predict -1 means
        # no limit but the context.
        low = -1 if max_tokens_field == "n_predict" else 0
        max_tokens = _integer(body, max_tokens_field, low, 2**31 - 1)
    if max_tokens is not None and max_tokens < 0:
        max_tokens = None
    ignore_eos = _flag(body, "ignore_eos", False)
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)
    sampling = SamplingParams(
        temperature=_number(body, "temperature", defaults.temperature, 0.0, 100.0),
        top_k=int(_number(body, "top_k", defaults.top_k, 0, 1_000_000)),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0),
        min_p=_number(body, "min_p", defaults.min_p, 0.0, 1.0),
        repeat_penalty=_number(body, "repeat_penalty", defaults.repeat_penalty, 0.0, 100.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repeat_last_n=_last_n(body, defaults.repeat_last_n),
        seed=None if seed is None or seed < 0 else seed,
    )
    # A reused prompt cache evaluates the last prompt token alone, and llama.cpp's
    # kernels round a lone token slightly differently from a batch: with a seed,
    # the same request must give the same reply, so it is evaluated from scratch.
    cache_default = sampling.seed is None
    return Generation(
        sampling,
        max_tokens,
        _stop(body),
        ignore_eos,
        cache_prompt=_flag(body, "cache_prompt", cache_default),
    )


def read_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{i}]' must be an object", "messages")
        role = message.get("role")
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise BadRequest(f"'messages[{i}].role' must be system, user or assistant", "messages")
    return messages
