"""How many layers fit on a GPU: the estimate from a GGUF's tensor table, and the fit."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llamapack.builder.gguf_header import read_header, tensor_bytes
from llamapack.runtime.llama.offload import (
    MARGIN,
    ModelShape,
    compute_bytes,
    fit_layers,
    model_shape,
    output_cost,
    read_shape,
)
from tests.support.fakes import add_tiny_vocabulary

MIB = 1 << 20


def shape(layers: int = 10, layer: int = 100 * MIB, output: int = 50 * MIB, kv: int = 1024) -> ModelShape:
    return ModelShape(
        layer_bytes=(layer,) * layers,
        output_bytes=output,
        kv_bytes_per_token=(kv,) * layers,
        n_vocab=32000,
        n_embd=2048,
        n_head=16,
        n_ctx_train=4096,
    )


def budget_for(model: ModelShape, n_ctx: int, ngl: int) -> int:
    """The free memory on one device that holds exactly what `-ngl ngl` places there:
    the output layer, then the last ngl - 1 repeating layers."""
    layers = ngl - 1
    needed = sum(model.layer_bytes[model.n_layer - layers :]) + layers * model.kv_bytes_per_token[0] * n_ctx
    return MARGIN + compute_bytes(model, n_ctx) + output_cost(model) + needed


def test_everything_fits_on_a_big_gpu():
    assert fit_layers(shape(), [80 << 30], n_ctx=4096) == 11  # 10 layers and the output layer


def test_no_gpu_memory_no_layers():
    assert fit_layers(shape(), [], n_ctx=4096) == 0
    assert fit_layers(shape(), [512 * MIB], n_ctx=4096) == 0  # less than the margin


@pytest.mark.parametrize("ngl", [2, 5, 10, 11])
def test_too_little_memory_takes_as_many_layers_as_fit(ngl):
    model = shape()
    free = budget_for(model, 4096, ngl)
    assert fit_layers(model, [free], n_ctx=4096) == ngl
    assert fit_layers(model, [free - 1], n_ctx=4096) == ngl - 1


def test_the_output_layer_goes_first_as_llama_cpp_places_it():
    model = shape(output=300 * MIB)
    just_output = budget_for(model, 4096, 1)
    assert fit_layers(model, [just_output], n_ctx=4096) == 1  # -ngl 1: the output layer alone
    assert fit_layers(model, [just_output - 1], n_ctx=4096) == 0
    assert fit_layers(model, [just_output - model.output_bytes + model.layer_bytes[-1]], n_ctx=4096) == 0


def test_a_longer_context_leaves_room_for_fewer_layers():
    model = shape(kv=64 * 1024)
    free = budget_for(model, 4096, 11)
    assert fit_layers(model, [free], n_ctx=4096) == 11
    assert fit_layers(model, [free], n_ctx=16384) < 11


def test_each_device_keeps_its_margin():
    model = shape()
    one = budget_for(model, 4096, 11)
    assert fit_layers(model, [one], n_ctx=4096) == 11
    assert fit_layers(model, [one // 2, one - one // 2], n_ctx=4096) < 11  # two margins now
    assert fit_layers(model, [one, MARGIN + 1], n_ctx=4096) == 11


# ------------------------------------------------------------ from a GGUF


def write_layered_gguf(
    path: Path, n_layer: int = 3, tied: bool = True, kv_heads: int | list[int] = 2
) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    add_tiny_vocabulary(writer)  # embedding 64, 4 heads
    writer.add_block_count(n_layer)
    writer.add_context_length(512)
    writer.add_head_count_kv(kv_heads)  # a list (one per layer) is valid GGUF too
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.random((261, 64), dtype=np.float32))
    for index in range(n_layer):
        writer.add_tensor(
            f"blk.{index}.attn_q.weight", rng.random((64, 64), dtype=np.float32).astype(np.float16)
        )
        writer.add_tensor(f"blk.{index}.ffn_up.weight", rng.random((128, 64 * (index + 1)), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    if not tied:
        writer.add_tensor("output.weight", rng.random((100, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_layers_are_sized_from_the_tensor_table(tmp_path):
    path = write_layered_gguf(tmp_path / "model.gguf")
    model = model_shape(read_header(path), tensor_bytes)
    assert model.layer_bytes == tuple(64 * 64 * 2 + 128 * 64 * (index + 1) * 4 for index in range(3))
    assert model.output_bytes == 261 * 64 * 4 + 64 * 4  # tied: a copy of the embeddings, and the norm
    assert model.kv_bytes_per_token == (2 * (16 + 16) * 2,) * 3  # 2 KV heads of 64 / 4 dims, f16 K and V
    assert (model.n_vocab, model.n_embd, model.n_head, model.n_ctx_train) == (261, 64, 4, 512)


def test_an_output_layer_of_its_own_and_kv_heads_per_layer(tmp_path):
    path = write_layered_gguf(tmp_path / "model.gguf", tied=False, kv_heads=[4, 0, 1])
    model = model_shape(read_header(path), tensor_bytes)
    assert model.output_bytes == 100 * 64 * 4 + 64 * 4
    assert model.kv_bytes_per_token == (4 * 32 * 2, 0, 1 * 32 * 2)


def test_read_shape_sizes_with_ggml_inside_a_bigger_file(tmp_path, gemma_gguf):
    """ggml's type table gives the gguf package's sizes, for a GGUF at an offset."""
    embedded = tmp_path / "file"
    data = gemma_gguf.read_bytes()
    embedded.write_bytes(b"\0" * 4096 + data + b"trailer")
    model = read_shape(embedded, 4096)
    expected = model_shape(read_header(gemma_gguf), tensor_bytes)
    assert model == expected
    assert model.n_layer == 18 and model.output_bytes > 0
    header = read_header(gemma_gguf)
    assert sum(model.layer_bytes) + model.output_bytes <= header.data_end - header.data_offset


def test_a_gguf_without_layers_or_with_odd_numbers_is_a_gguf_error():
    from llamapack.runtime.fileformat.gguf import GGUFError, Header

    no_layers = Header(version=3, metadata={"general.architecture": "llama"}, tensors=[], data_offset=0)
    with pytest.raises(GGUFError, match="block_count"):
        model_shape(no_layers, tensor_bytes)
    odd = Header(3, {"general.architecture": "llama", "llama.block_count": "many"}, [], 0)
    with pytest.raises(GGUFError, match="not a number"):
        model_shape(odd, tensor_bytes)
