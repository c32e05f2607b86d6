"""How many layers go to the GPU when -ngl is not given: as many as fit.

llama.cpp offloads the last `ngl` repeating layers, and with ngl = n_layer + 1
the output layer too. Each offloaded layer costs its weights plus its share of
the KV cache (f16 keys and values for every context token); the GPU also needs a
compute buffer, and the driver and the desktop want room of their own. The
estimate is made from the GGUF's tensor table before anything is loaded, and
leaves MARGIN free on every device, as llama.cpp's own `--fit` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamapack.runtime.fileformat.gguf import Header, Tensor, read_header_from_stream

MARGIN = 1 << 30  # bytes left free per device (llama.cpp's --fit default target)
KV_BYTES = 2  # f16 keys and values, llama.cpp's default cache type
N_UBATCH = 512  # the engine's micro-batch (runtime/engine/context.py)


@dataclass(frozen=True)
class ModelShape:
    """What offloading each layer costs, read from a GGUF's header."""

    layer_bytes: tuple[int, ...]  # weights of each repeating layer, in order
    output_bytes: int  # the output layer's weights (with tied embeddings, a copy of them)
    kv_bytes_per_token: tuple[int, ...]  # each layer's K and V for one context token
    n_vocab: int
    n_embd: int
    n_head: int
    n_ctx_train: int

    @property
    def n_layer(self) -> int:
        return len(self.layer_bytes)


def fit_layers(shape: ModelShape, free: Sequence[int], n_ctx: int, margin: int = MARGIN) -> int:
    """The -ngl that fits in the GPUs' free memory (`free`: bytes per device):
    0 to shape.n_layer, or shape.n_layer + 1 when the output layer fits too."""
    budget = sum(max(0, device - margin) for device in free) - compute_bytes(shape, n_ctx)
    used = layers = 0
    for index in reversed(range(shape.n_layer)):
        cost = shape.layer_bytes[index] + shape.kv_bytes_per_token[index] * n_ctx
        if used + cost > budget:
            return layers
        used += cost
        layers += 1
    return layers + 1 if used + output_cost(shape) <= budget else layers


def compute_bytes(shape: ModelShape, n_ctx: int) -> int:
    """An upper bound of llama.cpp's GPU compute buffer for one micro-batch: a
    layer's activations and one layer's attention scores, in f32."""
    return 4 * N_UBATCH * (16 * shape.n_embd + shape.n_head * n_ctx)


def output_cost(shape: ModelShape) -> int:
    """The output layer on the GPU: its weights and a micro-batch of f32 logits."""
    return shape.output_bytes + 4 * N_UBATCH * shape.n_vocab


def model_shape(header: Header, tensor_bytes: Callable[[Tensor], int]) -> ModelShape:
    """The costs of a GGUF's layers; `tensor_bytes` sizes a tensor (ggml's type sizes)."""
    n_layer = _int(header.arch_value("block_count"))
    layers = [0] * n_layer
    sizes: dict[str, int] = {}
    for tensor in header.tensors:
        size = sizes[tensor.name] = tensor_bytes(tensor)
        if tensor.name.startswith("blk."):
            index = tensor.name.split(".", 2)[1]
            if index.isdigit() and int(index) < n_layer:
                layers[int(index)] += size
    output = sizes.get("output.weight", sizes.get("token_embd.weight", 0))
    output += sum(size for name, size in sizes.items() if name.startswith("output_norm."))
    n_embd = _int(header.arch_value("embedding_length"))
    n_head = max(_ints(header.arch_value("attention.head_count"), n_layer)) or 1
    heads_kv = _ints(header.arch_value("attention.head_count_kv") or n_head, n_layer)
    key_length = _int(header.arch_value("attention.key_length")) or n_embd // n_head
    value_length = _int(header.arch_value("attention.value_length")) or n_embd // n_head
    tokens = "tokenizer.ggml.tokens"  # a vocabulary is long: the parser counted it, or kept a short one
    vocab = header.skipped_arrays.get(tokens) or len(header.metadata.get(tokens) or [])
    return ModelShape(
        layer_bytes=tuple(layers),
        output_bytes=output,
        kv_bytes_per_token=tuple(heads * (key_length + value_length) * KV_BYTES for heads in heads_kv),
        n_vocab=int(vocab) or _int(header.arch_value("vocab_size")),
        n_embd=n_embd,
        n_head=n_head,
        n_ctx_train=_int(header.arch_value("context_length")),
    )


def _int(value: Any) -> int:
    if isinstance(value, list):
        return max((int(item) for item in value), default=0)
    return int(value) if value is not None else 0


def _ints(value: Any, count: int) -> list[int]:
    """A per-layer hyperparameter: one number for every layer, or a list of them."""
    if isinstance(value, list):
        return [int(item) for item in value[:count]] + [0] * (count - len(value))
    return [int(value or 0)] * count


def read_shape(path: Path, offset: int) -> ModelShape:
    """The shape of the GGUF at `offset` in `path`, sized with ggml's own type table."""
    from llamapack.runtime.llama.ggml import ggml

    api = ggml()

    def tensor_bytes(tensor: Tensor) -> int:
        block = int(api.ggml_blck_size(tensor.type)) or 1
        return tensor.n_elements // block * int(api.ggml_type_size(tensor.type))

    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END) - offset
        file.seek(offset)
        header = read_header_from_stream(file, size, str(path))
    return model_shape(header, tensor_bytes)
