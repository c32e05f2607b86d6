"""How much memory a model needs to run: weights plus KV cache, roughly."""

from __future__ import annotations

from dataclasses import dataclass

from llamapack.runtime import defaults

from .gguf_header import GGUFHeader

# llama.cpp's compute buffers and the runtime itself; measured around 200-300 MiB
# for small models on CPU.
OVERHEAD = 300 * 1024**2


@dataclass(frozen=True)
class MemoryEstimate:
    context: int
    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + OVERHEAD


def estimate_memory(header: GGUFHeader, context: int | None = None) -> MemoryEstimate:
    trained = header.context_length or defaults.CONTEXT
    context = context or min(trained, defaults.CONTEXT)
    meta = header.metadata
    arch = header.architecture

    def number(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer values in some architectures
            value = max(value) if value else default
        return int(value)

    layers = number("block_count")
    heads = number("attention.head_count", 1) or 1
    kv_heads = number("attention.head_count_kv", heads) or heads
    head_dim = number("embedding_length") // heads
    key_len = number("attention.key_length", head_dim)
    value_len = number("attention.value_length", head_dim)
    # f16 K and V for every layer and position (an upper bound with sliding windows).
    kv_cache = layers * context * kv_heads * (key_len + value_len) * 2
    weights = header.data_end - header.data_offset
    return MemoryEstimate(context=context, weights=weights, kv_cache=kv_cache)
