"""How many layers go to the GPU when -ngl is not given: as many as fit.

llama.cpp gives the GPU the output layer first and then the repeating layers from
the last one down: `-ngl k` places the output layer and the last k - 1 layers
(llama-model.cpp, i_gpu_start). Each offloaded layer costs its weights plus its share of
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

from llamapack.runtime.fileformat.gguf import GGUFError, Header, Tensor, read_header_from_stream

MARGIN = 1 << 30  # bytes left free per device (llama.cpp's --fit default target)
KV_BYTES = 2  # f16 keys and values, llama.cpp's default cache type
N_UBATCH = 512  # the engine's micro-batch (runtime/engine/context.py)
GGML_TYPE_COUNT = 43  # enum ggml_type of the pinned llama.cpp (ggml.h): raise it with the pin


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
    """The -ngl that fits in the GPUs' free memory (`free`: bytes per device): 0 when
    not even the output layer fits, else 1 (the output layer) plus the repeating
    layers that fit, up to shape.n_layer + 1."""
    budget = sum(max(0, device - margin) for device in free) - compute_bytes(shape, n_ctx)
    used = output_cost(shape)
    if used > budget:
        return 0
    layers = 1
    for index in reversed(range(shape.n_layer)):
        used += shape.layer_bytes[index] + shape.kv_bytes_per_token[index] * n_ctx
        if used > budget:
            break
        layers += 1
    return layers


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
    if n_layer <= 0:
        raise GGUFError(f"the GGUF says nothing of its layers ({header.architecture}.block_count)")
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
    try:
        if isinstance(value, list):
            return max((int(item) for item in value), default=0)
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        raise GGUFError(f"a hyperparameter is not a number: {value!r:.40}") from None


def _ints(value: Any, count: int) -> list[int]:
    """A per-layer hyperparameter: one number for every layer, or a list of them."""
    if isinstance(value, list):
        return [_int(item) for item in value[:count]] + [0] * (count - len(value))
    return [_int(value)] * count


def read_shape(path: Path, offset: int) -> ModelShape:
    """The shape of the GGUF at `offset` in `path`, sized with ggml's own type table."""
    from llamapack.runtime.llama.ggml import ggml

    api = ggml()

    def tensor_bytes(tensor: Tensor) -> int:
        # ggml checks the type only with assert, which a release build leaves out.
        if not 0 <= tensor.type < GGML_TYPE_COUNT:
            raise GGUFError(f"tensor {tensor.name} has a type this llama.cpp does not know ({tensor.type})")
        block = int(api.ggml_blck_size(tensor.type)) or 1
        return tensor.n_elements // block * int(api.ggml_type_size(tensor.type))

    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END) - offset
        file.seek(offset)
        header = read_header_from_stream(file, size, str(path))
    return model_shape(header, tensor_bytes)
