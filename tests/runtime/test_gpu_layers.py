"""How many layers the backend asks llama.cpp to offload, for each way -ngl and the
machine can be (devices stand in for a GPU this machine lacks; the model is real)."""

from __future__ import annotations

import pytest

from llamapack.runtime.backend import ALL_LAYERS, BackendOptions, _gpu_layers
from llamapack.runtime.fileformat import ChatTemplateChoice, ModelSource
from llamapack.runtime.llama.devices import Device
from llamapack.runtime.llama.gpu import GpuChoice
from llamapack.runtime.llama.model import init_backend
from llamapack.runtime.llama.rpc import Endpoint

VULKAN = GpuChoice("auto", "vulkan")
GIB = 1 << 30


@pytest.fixture
def options(gemma_gguf):
    init_backend()  # ggml's type sizes size the layers
    return BackendOptions(
        source=ModelSource(gemma_gguf), chat_template=ChatTemplateChoice("builtin", "chatml")
    )


def with_gpu(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    gpu = Device("Vulkan0", "Some GPU", "GPU", 8 * GIB, free)
    monkeypatch.setattr("llamapack.runtime.llama.devices.devices", lambda: (gpu, Device("CPU", "CPU", "CPU")))


def test_an_ngl_given_is_taken_as_given(options, monkeypatch):
    with_gpu(monkeypatch, 0)
    warnings: list[str] = []
    assert _gpu_layers(BackendOptions(**{**options.__dict__, "n_gpu_layers": 7}), VULKAN, warnings) == 7
    assert warnings == []


def test_without_a_gpu_nothing_is_offloaded(options):
    warnings: list[str] = []
    assert _gpu_layers(options, GpuChoice("auto", reason="no GPU"), warnings) == 0
    assert warnings == []


def test_rpc_workers_get_every_layer(options):
    rpc = BackendOptions(**{**options.__dict__, "rpc": (Endpoint("127.0.0.1", 50052),)})
    assert _gpu_layers(rpc, VULKAN, []) == ALL_LAYERS


def test_a_big_gpu_takes_the_whole_model(options, monkeypatch):
    with_gpu(monkeypatch, 8 * GIB)
    warnings: list[str] = []
    assert _gpu_layers(options, VULKAN, warnings) == 19  # 18 blocks and the output layer
    assert warnings == []


def test_a_full_gpu_takes_none_and_says_so(options, monkeypatch):
    with_gpu(monkeypatch, GIB // 2)
    warnings: list[str] = []
    assert _gpu_layers(options, VULKAN, warnings) == 0
    assert warnings == [
        "no layer fits in the GPU's free memory (512 MiB); the CPU runs the model (-ngl N to try anyway)"
    ]


def test_a_model_that_cannot_be_sized_stays_on_the_cpu(options, monkeypatch, tmp_path):
    with_gpu(monkeypatch, 8 * GIB)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 64)
    warnings: list[str] = []
    unsized = BackendOptions(**{**options.__dict__, "source": ModelSource(broken)})
    assert _gpu_layers(unsized, VULKAN, warnings) == 0
    assert len(warnings) == 1 and warnings[0].startswith("cannot size the model's layers (")
