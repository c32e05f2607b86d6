"""Choosing the next token: llama-server's sampler chain, grammars made cheap, logprobs.

A grammar checked against the whole vocabulary every step is slow (Gemma's
has 262,144 tokens). As llama-server does, the token is first sampled without
the grammar and only checked against it; the grammar filters the whole
vocabulary only when that token is rejected.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as llama
import numpy as np

from llamapack.runtime import defaults
from llamapack.runtime.engine.events import RequestError, TokenLogprob
from llamapack.runtime.llama.model import Model

# llama_token_data {int32 id; float logit; float p;}, as a numpy record.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass
class SamplingParams:
    temperature: float = defaults.TEMPERATURE
    top_k: int = defaults.TOP_K
    top_p: float = defaults.TOP_P
    min_p: float = defaults.MIN_P
    repeat_penalty: float = defaults.REPEAT_PENALTY
    repeat_last_n: int = defaults.REPEAT_LAST_N
    presence_penalty: float = defaults.PRESENCE_PENALTY
    frequency_penalty: float = defaults.FREQUENCY_PENALTY
    seed: int | None = None
    grammar: str | None = None  # GBNF; sampling keeps to it
    logit_bias: list[tuple[int, float]] = field(
        default_factory=list
    )  # added to a token's logit; -inf bans it


class Sampler:
    """One request's sampler; RequestError if its grammar does not parse."""

    def __init__(self, params: SamplingParams, model: Model):
        self.model = model
        self.grammar = None
        if params.grammar:
            self.grammar = llama.llama_sampler_init_grammar(model.vocab, params.grammar.encode(), b"root")
            if not self.grammar:
                raise RequestError("the grammar does not parse as GBNF")
        self.chain = _chain(params, model.n_vocab)
        if self.grammar is not None:
            self._candidates = np.zeros(model.n_vocab, dtype=_TOKEN_DATA)
            self._candidates["id"] = np.arange(model.n_vocab, dtype=np.int32)
            self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def sample(self, ctx: Any, index: int) -> int:
        if self.grammar is None:
            return int(llama.llama_sampler_sample(self.chain, ctx, index))
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, index), shape=(self.model.n_vocab,))
        token = self._apply(self.chain, logits)
        if not self._allowed(token):
            token = self._apply(self.chain, logits, first=self.grammar)
        llama.llama_sampler_accept(self.grammar, token)
        llama.llama_sampler_accept(self.chain, token)
        return token

    def _apply(self, sampler: Any, logits: np.ndarray, first: Any = None) -> int:
        candidates = self._candidates
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = _token_array(candidates)
        if first is not None:
            llama.llama_sampler_apply(first, ctypes.byref(array))
        llama.llama_sampler_apply(sampler, ctypes.byref(array))
        # Samplers may move `data`; read the choice through the struct.
        return int(array.data[array.selected].id)

    def _allowed(self, token: int) -> bool:
        one = self._one
        one["id"], one["logit"], one["p"] = token, 1.0, 0.0
        llama.llama_sampler_apply(self.grammar, ctypes.byref(_token_array(one)))
        return not math.isinf(float(one["logit"][0]))

    def free(self) -> None:
        llama.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama.llama_sampler_free(self.grammar)


def _token_array(records: np.ndarray) -> Any:
    return llama.llama_token_data_array(
        data=records.ctypes.data_as(llama.llama_token_data_p),
        size=len(records),
        selected=-1,
        sorted=False,
    )


def _chain(params: SamplingParams, n_vocab: int) -> Any:
    """llama-server's sampler chain for these parameters, without the grammar."""
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama.llama_sampler_chain_add(chain, sampler)

    if params.logit_bias:  # first, as in llama-server's chain: greedy sampling obeys it too
        biases = (llama.llama_logit_bias * len(params.logit_bias))(
            *(llama.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
        )
        add(llama.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))

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


def token_logprob(logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """`token`'s log-probability and the `top` most likely tokens, from one position's raw logits.

    Raw logits, before the sampler chain: the model's own distribution, not
    what temperature or top-k left of it.
    """
    peak = float(logits.max())
    # Shifted by the peak so that exp() cannot overflow.
    log_total = peak + float(np.log(np.exp(logits - peak).sum()))
    alternatives: list[tuple[int, bytes, float]] = []
    if top > 0:
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(logits[best])[::-1]]
        alternatives = [(int(t), piece(int(t)), float(logits[t]) - log_total) for t in best]
    return TokenLogprob(token, piece(token), float(logits[token]) - log_total, alternatives)


def post_sampling_logits(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The logits as the sampler chain leaves them (llama-server's post_sampling_probs):
    top-k, top-p and min-p remove candidates (-inf), temperature scales the rest, in
    the chain's order. Greedy sampling leaves only the likeliest token."""
    out = np.full_like(logits, -np.inf, dtype=np.float64)
    order = np.argsort(logits)[::-1]
    if params.temperature <= 0:
        out[order[0]] = 0.0
        return out
    if params.top_k > 0:
        order = order[: params.top_k]
    kept = logits[order].astype(np.float64)
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    if params.top_p < 1.0:
        # The smallest prefix whose mass reaches top_p (at least one token).
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p) + 1)
        order, kept, probs = order[:keep], kept[:keep], probs[:keep]
    if params.min_p > 0.0:
        keep_mask = probs >= params.min_p * probs[0]
        order, kept = order[keep_mask], kept[keep_mask]
    out[order] = kept / params.temperature
    return out
