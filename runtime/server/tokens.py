"""Token ids from requests: prompts, logit biases, detokenize lists, checked
against the model's vocabulary."""

from __future__ import annotations

from llamapack.runtime.backend import Backend
from llamapack.runtime.server.requests import BadRequest, Prompt


def prompt_tokens(backend: Backend, prompt: Prompt) -> list[list[int]]:
    """Each prompt of a request as token ids: its texts tokenized (the first piece
    after the model's start token, as llama-server does), its ids checked."""
    prompts = []
    for pieces in prompt.value:
        tokens: list[int] = []
        for i, piece in enumerate(pieces):
            if isinstance(piece, str):
                tokens += backend.model.tokenize(piece, add_special=i == 0)
            else:
                tokens.append(piece)
        prompts.append(known_tokens(backend, tokens, "prompt"))
    return prompts


def known_tokens(backend: Backend, tokens: list[int], param: str) -> list[int]:
    """`tokens`, all in the model's vocabulary: requests.py declares them non-negative,
    and the vocabulary's size is known only once the model is loaded."""
    n_vocab = backend.model.n_vocab
    if any(token >= n_vocab for token in tokens):
        raise BadRequest(f"'{param}' must hold token ids below {n_vocab}, the model's vocabulary", param)
    return tokens


def token_biases(backend: Backend, entries: list[tuple[int | str, float]]) -> list[tuple[int, float]]:
    """`logit_bias` with its texts tokenized (each of a text's tokens gets its bias)."""
    biases: list[tuple[int, float]] = []
    for key, bias in entries:
        tokens = [key] if isinstance(key, int) else backend.model.tokenize(key, add_special=False)
        biases.extend((token, bias) for token in known_tokens(backend, tokens, "logit_bias"))
    return biases
