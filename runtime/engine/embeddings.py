"""Sentence embeddings from a second, small llama.cpp context on the same weights.

Generation needs a context that returns logits; embeddings need one created
with `embeddings=True` and a pooling type. Keeping them apart means
`--embedding` costs nothing to the chat slots. Inputs are embedded one at a
time under a lock: embedding requests are short and rare next to generation.
"""

from __future__ import annotations

import math
import threading

import llama_cpp.llama_cpp as llama

from llamapack.runtime.engine.context import ContextError
from llamapack.runtime.engine.events import RequestError
from llamapack.runtime.llama.model import Model


class Embedder:
    def __init__(self, model: Model, n_ctx: int, n_threads: int | None = None):
        self.model = model
        params = llama.llama_context_default_params()
        params.embeddings = True
        # A whole input must fit one micro-batch for pooling over it.
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.no_perf = True
        params.pooling_type = llama.LLAMA_POOLING_TYPE_UNSPECIFIED
        if n_threads:
            params.n_threads = params.n_threads_batch = n_threads
        self.ctx = llama.llama_init_from_model(model.pointer, params)
        if self.ctx and llama.llama_pooling_type(self.ctx) == llama.LLAMA_POOLING_TYPE_NONE:
            # A generative model names no pooling; average the token vectors.
            llama.llama_free(self.ctx)
            params.pooling_type = llama.LLAMA_POOLING_TYPE_MEAN
            self.ctx = llama.llama_init_from_model(model.pointer, params)
        if not self.ctx:
            raise ContextError("llama.cpp could not create the embeddings context")
        self.n_ctx = llama.llama_n_ctx(self.ctx)
        self.n_embd = llama.llama_model_n_embd(model.pointer)
        self.memory = llama.llama_get_memory(self.ctx)
        self.batch = llama.llama_batch_init(self.n_ctx, 0, 1)
        self._lock = threading.Lock()

    def embed(self, tokens: list[int]) -> list[float]:
        """The L2-normalised embedding of one input, as OpenAI returns it."""
        if not tokens:
            raise RequestError("an input is empty")
        if len(tokens) > self.n_ctx:
            raise RequestError(f"an input is {len(tokens)} tokens; embeddings take at most {self.n_ctx}")
        with self._lock:
            llama.llama_memory_clear(self.memory, True)
            batch = self.batch
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = len(tokens)
            if llama.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed while embedding")
            pointer = llama.llama_get_embeddings_seq(self.ctx, 0)
            vector = [float(pointer[i]) for i in range(self.n_embd)]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    def close(self) -> None:
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)
