"""Logprobs from logits, computed by llama.cpp's samplers (no model needed): the
log-softmax, the top alternatives, and what the sampler chain leaves."""

from __future__ import annotations

import array
import math

import pytest

from llamapack.runtime.engine.sampling import Candidates, SamplingParams, token_logprob


def piece(token: int) -> bytes:
    return b"tok%d" % token


def logprob(values: list[float], token: int, top: int, post_sampling: SamplingParams | None = None):
    logits = floats(values)
    return token_logprob(Candidates(len(values)), logits, token, top, piece, post_sampling)


def floats(values: list[float]) -> memoryview[float]:
    return memoryview(array.array("f", values)).cast("B").cast("f")


def log_softmax(values: list[float]) -> list[float]:
    peak = max(values)
    total = peak + math.log(sum(math.exp(x - peak) for x in values))
    return [x - total for x in values]


def test_logprob_is_the_log_softmax_and_top_is_ordered():
    expected = log_softmax([1.0, 3.0, 0.5, 2.0])
    entry = logprob([1.0, 3.0, 0.5, 2.0], token=0, top=2)
    assert (entry.token, entry.piece) == (0, b"tok0")
    assert entry.logprob == pytest.approx(expected[0], abs=1e-6)
    assert [(token, text) for token, text, _ in entry.top] == [(1, b"tok1"), (3, b"tok3")]
    assert [value for _, _, value in entry.top] == pytest.approx([expected[1], expected[3]], abs=1e-6)


def test_no_alternatives_asked_none_given():
    entry = logprob([0.0, 0.0], token=1, top=0)
    assert entry.top == []
    assert entry.logprob == pytest.approx(math.log(0.5), abs=1e-6)


def test_huge_logits_do_not_overflow():
    entry = logprob([1000.0, 1000.0, -1000.0], 2, 3)
    assert entry.logprob == pytest.approx(-2000.0 - math.log(2), abs=1e-3)
    assert [token for token, _, _ in entry.top][2] == 2
    assert all(math.isfinite(value) for _, _, value in entry.top)


def test_a_whole_vocabulary_the_candidates_are_refilled_for_each_position():
    candidates = Candidates(262_144)
    # Distinct logits in float32 (a permutation of 0.000 to 262.143), in two orders.
    first = [(i * 7919 % 262_144) / 1000 for i in range(262_144)]
    second = first[::-1]
    for values in (first, second):  # the first call's sort must not leak into the second
        expected = log_softmax(values)
        best = max(range(len(values)), key=values.__getitem__)
        entry = token_logprob(candidates, floats(values), 7, 3, piece)
        assert entry.logprob == pytest.approx(expected[7], abs=1e-4)
        assert entry.top[0][0] == best
        assert entry.top[0][2] == pytest.approx(expected[best], abs=1e-4)


def test_post_sampling_keeps_the_top_k_and_scales_by_temperature():
    values = [1.0, 3.0, 0.5, 2.0]
    params = SamplingParams(temperature=0.5, top_k=2, top_p=1.0, min_p=0.0)
    expected = log_softmax([3.0 / 0.5, 2.0 / 0.5])
    entry = logprob(values, token=3, top=4, post_sampling=params)
    assert entry.logprob == pytest.approx(expected[1], abs=1e-6)
    assert [(token, value) for token, _, value in entry.top] == [
        (1, pytest.approx(expected[0], abs=1e-6)),
        (3, pytest.approx(expected[1], abs=1e-6)),
    ]
    assert logprob(values, token=0, top=0, post_sampling=params).logprob == -math.inf


def test_post_sampling_top_p_and_min_p_cut_the_tail():
    values = [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]
    top_p = logprob(values, 0, 4, SamplingParams(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0))
    assert [token for token, _, _ in top_p.top] == [0, 1]  # 0.5 + 0.3 reaches 0.8
    min_p = logprob(values, 0, 4, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2))
    assert [token for token, _, _ in min_p.top] == [0, 1, 2]  # 0.05 < 0.2 * 0.5


def test_post_sampling_greedy_leaves_only_the_likeliest():
    greedy = SamplingParams(temperature=0.0)
    assert logprob([1.0, 3.0, 2.0], 1, 3, greedy).logprob == 0.0
    assert logprob([1.0, 3.0, 2.0], 2, 3, greedy).logprob == -math.inf
    assert [token for token, _, _ in logprob([1.0, 3.0, 2.0], 1, 3, greedy).top] == [1]
