"""Choosing the next token: llama-server's sampler chain, grammars made cheap, logprobs.

A grammar checked against the whole vocabulary every step is slow (Gemma's
has 262,144 tokens). As llama-server does, the token is first sampled without
the grammar and only checked against it; the grammar filters the whole
vocabulary only when that token is rejected.

Whatever touches the whole vocabulary runs in C: the logits are copied into a
llama_token_data array with strided buffer copies, and llama.cpp's own samplers
filter, sort and normalise it. (numpy did this once; it was a third of the stub.)
"""

from __future__ import annotations

import array
import ctypes
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import llama_cpp.llama_cpp as llama

from llamapack.runtime import defaults
from llamapack.runtime.engine.events import RequestError, TokenLogprob
from llamapack.runtime.llama.model import Model

# One position's logits, n_vocab floats: a memoryview of format "f" (the engine's view
# of llama.cpp's buffer), or anything else with that buffer (array.array("f")).
Logits: TypeAlias = "memoryview[float]"


def logits_view(pointer: Any, n_vocab: int) -> Logits:
    """llama.cpp's float* as a view of n_vocab floats (valid until the next decode)."""
    floats = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float * n_vocab)).contents
    return memoryview(floats).cast("B").cast("f")


class Candidates:
    """The whole vocabulary as llama.cpp's llama_token_data array {id, logit, p},
    refilled from a position's logits by three strided copies (about 2 ms for
    262,144 tokens) rather than a Python loop."""

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self._data = (llama.llama_token_data * n_vocab)()
        raw = memoryview(self._data).cast("B")
        self._ints, self._floats = raw.cast("i"), raw.cast("f")
        self._ids = array.array("i", range(n_vocab))
        self._zeros = array.array("f", bytes(4 * n_vocab))

    def fill(self, logits: Logits) -> Any:
        """A llama_token_data_array of every token in id order, p = 0."""
        # Samplers sort and shrink the array in place: every fill starts afresh.
        self._ints[0::3] = self._ids
        self._floats[1::3] = memoryview(logits).cast("B").cast("f")
        self._floats[2::3] = self._zeros
        data = ctypes.cast(self._data, llama.llama_token_data_p)
        return llama.llama_token_data_array(data=data, size=self.n_vocab, selected=-1, sorted=False)

    def ids(self, size: int) -> memoryview:
        """The ids of the first `size` entries, as samplers left them."""
        return self._ints[0 : 3 * size : 3]


def _apply(sampler: Any, candidates: Any) -> None:
    try:
        llama.llama_sampler_apply(sampler, ctypes.byref(candidates))
    finally:
        llama.llama_sampler_free(sampler)


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
            self._candidates = Candidates(model.n_vocab)
            self._one = (llama.llama_token_data * 1)()

    def sample(self, ctx: Any, index: int) -> int:
        if self.grammar is None:
            return int(llama.llama_sampler_sample(self.chain, ctx, index))
        logits = logits_view(llama.llama_get_logits_ith(ctx, index), self.model.n_vocab)
        token = self._choose(logits)
        if not self._allowed(token):
            token = self._choose(logits, first=self.grammar)
        llama.llama_sampler_accept(self.grammar, token)
        llama.llama_sampler_accept(self.chain, token)
        return token

    def _choose(self, logits: Logits, first: Any = None) -> int:
        candidates = self._candidates.fill(logits)
        if first is not None:
            llama.llama_sampler_apply(first, ctypes.byref(candidates))
        llama.llama_sampler_apply(self.chain, ctypes.byref(candidates))
        # Samplers may move `data`; read the choice through the struct.
        return int(candidates.data[candidates.selected].id)

    def _allowed(self, token: int) -> bool:
        self._one[0] = llama.llama_token_data(token, 1.0, 0.0)
        single = llama.llama_token_data_array(
            data=ctypes.cast(self._one, llama.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        llama.llama_sampler_apply(self.grammar, ctypes.byref(single))
        return not math.isinf(self._one[0].logit)

    def free(self) -> None:
        llama.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama.llama_sampler_free(self.grammar)


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


def token_logprob(
    candidates: Candidates,
    logits: Logits,
    token: int,
    top: int,
    piece: Callable[[int], bytes],
    post_sampling: SamplingParams | None = None,
) -> TokenLogprob:
    """`token`'s log-probability and the `top` most likely tokens, from one position's logits.

    By default from the raw logits, before the sampler chain: the model's own
    distribution, not what temperature or top-k left of it. With `post_sampling`,
    from what the chain leaves (llama-server's post_sampling_probs): top-k, top-p
    and min-p remove candidates, temperature scales the rest; greedy sampling
    leaves only the likeliest token. A token removed gets -inf.
    """
    array = candidates.fill(logits)
    value = float(logits[token])
    if post_sampling is not None:
        for sampler in _probability_chain(post_sampling):
            _apply(sampler, array)
        scale = post_sampling.temperature if post_sampling.temperature > 0 else 1.0
        value = value / scale if token in candidates.ids(array.size) else -math.inf
    # A seeded dist sampler normalises p in place without reordering; top-k then
    # partially sorts. The likeliest token's p gives the log of the normaliser,
    # so no token's p is ever read where it may have underflowed to zero.
    _apply(llama.llama_sampler_init_dist(0), array)
    _apply(llama.llama_sampler_init_top_k(max(top, 1)), array)
    peak = array.data[0]
    log_total = peak.logit - math.log(peak.p)
    alternatives = [(item.id, piece(item.id), item.logit - log_total) for item in _first(array, top)]
    return TokenLogprob(token, piece(token), value - log_total, alternatives)


def _first(array: Any, count: int) -> Iterator[Any]:
    for index in range(min(count, array.size)):
        yield array.data[index]


def _probability_chain(params: SamplingParams) -> list[Any]:
    """The chain's filters and temperature, as post_sampling_probs sees them."""
    if params.temperature <= 0:
        return [llama.llama_sampler_init_top_k(1)]
    samplers = [llama.llama_sampler_init_top_k(params.top_k)] if params.top_k > 0 else []
    samplers.append(llama.llama_sampler_init_top_p(params.top_p, 1))
    samplers.append(llama.llama_sampler_init_min_p(params.min_p, 1))
    samplers.append(llama.llama_sampler_init_temp(params.temperature))
    return samplers
