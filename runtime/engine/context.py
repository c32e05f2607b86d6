"""The llama.cpp context generation runs on: its settings, its batch, its KV cache.

The only engine module that calls llama.cpp for decoding; the slot and batch
logic hand it plain tokens and positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llama_cpp.llama_cpp as llama

from llamapack.runtime.engine.batch import BatchToken
from llamapack.runtime.engine.sampling import Logits, logits_view
from llamapack.runtime.llama.model import Model


class ContextError(RuntimeError):
    """llama.cpp could not create a context (its memory could not be allocated)."""


class Context:
    """One context shared by `n_parallel` sequences; implements `slots.KvMemory`."""

    def __init__(
        self,
        model: Model,
        n_ctx: int,
        n_parallel: int,
        n_threads: int | None,
        n_batch: int,
        swa_full: bool,
        kv_unified: bool = True,
    ) -> None:
        self.model = model
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(512, n_batch)
        params.n_seq_max = n_parallel
        # One pool for all slots, as llama-server's default: a single long
        # conversation may use the whole context while others are idle. Not
        # unified, each slot gets an equal share (llama-server with -np N).
        params.kv_unified = kv_unified
        params.swa_full = swa_full
        params.no_perf = True
        if n_threads:
            params.n_threads = n_threads
            params.n_threads_batch = n_threads
        self.pointer: Any = llama.llama_init_from_model(model.pointer, params)
        if not self.pointer:
            raise ContextError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = int(llama.llama_n_ctx(self.pointer))
        self.n_ctx_slot = int(llama.llama_n_ctx_seq(self.pointer))  # what one sequence may use
        # llama.cpp may cap the batch below what was asked (at the requested n_ctx,
        # before it rounds the context up): a larger batch would abort in llama_decode.
        self.n_batch = min(n_batch, int(llama.llama_n_batch(self.pointer)))
        self.n_threads = int(params.n_threads)
        # With a sliding window the cache keeps only the last n_swa positions
        # (unless swa_full), so a prefix can be reused only if its tail is there.
        self.n_swa = 0 if swa_full else int(llama.llama_model_n_swa(model.pointer))
        self._memory: Any = llama.llama_get_memory(self.pointer)
        self._batch: Any = llama.llama_batch_init(n_batch, 0, n_parallel)

    def decode(self, tokens: Sequence[BatchToken]) -> int:
        """Evaluate one batch: 0 on success, 1 when the KV cache has no room for it."""
        batch = self._batch
        for i, (token, pos, seq_id, logits) in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(tokens)
        return int(llama.llama_decode(self.pointer, batch))

    def logits(self, index: int) -> Logits:
        """The raw logits at batch position `index` of the last decode (a view, valid until the next)."""
        return logits_view(llama.llama_get_logits_ith(self.pointer, index), self.model.n_vocab)

    def seq_pos_min(self, seq_id: int) -> int:
        return int(llama.llama_memory_seq_pos_min(self._memory, seq_id))

    def seq_remove(self, seq_id: int, start: int) -> bool:
        return bool(llama.llama_memory_seq_rm(self._memory, seq_id, start, -1))

    def seq_clear(self, seq_id: int) -> None:
        llama.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def close(self) -> None:
        llama.llama_batch_free(self._batch)
        llama.llama_free(self.pointer)
