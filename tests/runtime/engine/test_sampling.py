"""Logprobs from raw logits: log-softmax and the top alternatives, without a model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llamapack.runtime.engine.sampling import token_logprob


def piece(token: int) -> bytes:
    return b"tok%d" % token


def test_logprob_is_the_log_softmax_and_top_is_ordered():
    logits = np.array([1.0, 3.0, 0.5, 2.0], dtype=np.float32)
    log_total = math.log(sum(math.exp(x) for x in [1.0, 3.0, 0.5, 2.0]))
    entry = token_logprob(logits, token=0, top=2, piece=piece)
    assert (entry.token, entry.piece) == (0, b"tok0")
    assert entry.logprob == pytest.approx(1.0 - log_total, abs=1e-6)
    assert [(token, text) for token, text, _ in entry.top] == [(1, b"tok1"), (3, b"tok3")]
    assert [value for _, _, value in entry.top] == pytest.approx([3.0 - log_total, 2.0 - log_total], abs=1e-6)


def test_no_alternatives_asked_none_given():
    entry = token_logprob(np.array([0.0, 0.0], dtype=np.float32), token=1, top=0, piece=piece)
    assert entry.top == []
    assert entry.logprob == pytest.approx(math.log(0.5), abs=1e-6)


def test_huge_logits_do_not_overflow():
    entry = token_logprob(np.array([1000.0, 1000.0, -1000.0], dtype=np.float32), 0, 3, piece)
    assert entry.logprob == pytest.approx(math.log(0.5), abs=1e-6)
    assert [token for token, _, _ in entry.top][2] == 2
    assert all(math.isfinite(value) for _, _, value in entry.top)
