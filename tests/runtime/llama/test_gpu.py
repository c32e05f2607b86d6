"""Choosing the GPU backend (without a GPU: probes stand in for the machine) and
unpacking a packed backend library into the per-user cache."""

from __future__ import annotations

import ctypes
import hashlib
import json
import lzma
import os
import threading
from pathlib import Path

import pytest

from llamapack.builder.gpu import pack
from llamapack.builder.stub import stage_gpu_backends
from llamapack.runtime.llama import gpu
from llamapack.runtime.llama.gpu import GpuChoice, GpuError, PackedBackend, Probe, choose, unpack


class Machine:
    """A machine's answer per backend, recording which were tried."""

    def __init__(self, **answers: Probe):
        self.answers = answers
        self.tried: list[str] = []

    def __call__(self, name: str) -> Probe:
        self.tried.append(name)
        return self.answers.get(
            name, Probe(name, reason=f"this file has no {gpu.NAMES[name]} backend", carried=False)
        )


def test_no_gpu_backend_in_the_file_runs_on_the_cpu_and_says_so():
    machine = Machine()
    assert choose("auto", machine, "linux") == GpuChoice("auto", None, "this file has no GPU backend")
    assert machine.tried == ["cuda", "vulkan"]  # never Metal off a Mac


def test_a_carried_backend_without_a_device_gives_its_reason():
    machine = Machine(vulkan=Probe("vulkan", reason="no Vulkan GPU found"))
    choice = choose("auto", machine, "linux")
    assert choice.backend is None and choice.reason == "Vulkan: no Vulkan GPU found"


def test_one_device_is_used():
    machine = Machine(vulkan=Probe("vulkan", devices=1))
    assert choose("auto", machine, "linux") == GpuChoice("auto", "vulkan")


def test_a_vendor_api_comes_first_and_the_same_gpu_is_never_loaded_twice():
    machine = Machine(cuda=Probe("cuda", devices=1), vulkan=Probe("vulkan", devices=1))
    assert choose("auto", machine, "linux").backend == "cuda"
    assert machine.tried == ["cuda"]


def test_metal_on_a_mac():
    machine = Machine(metal=Probe("metal", devices=1), vulkan=Probe("vulkan", devices=1))
    assert choose("auto", machine, "darwin").backend == "metal"
    assert machine.tried == ["metal"]


def test_gpu_none_loads_nothing():
    machine = Machine(vulkan=Probe("vulkan", devices=1))
    assert choose("none", machine, "linux") == GpuChoice("none", None, "--gpu none")
    assert machine.tried == []


def test_a_backend_asked_for_by_name_must_run():
    with pytest.raises(GpuError, match=r"^--gpu cuda: this file has no CUDA backend$"):
        choose("cuda", Machine(vulkan=Probe("vulkan", devices=1)), "linux")
    machine = Machine(
        vulkan=Probe("vulkan", reason="no Vulkan driver on this system (libvulkan.so.1 not found)")
    )
    with pytest.raises(GpuError, match=r"--gpu vulkan: no Vulkan driver on this system"):
        choose("vulkan", machine, "linux")
    assert choose("vulkan", Machine(vulkan=Probe("vulkan", devices=2)), "linux").backend == "vulkan"


# ------------------------------------------------------------ packed libraries


@pytest.fixture
def packed(tmp_path: Path) -> tuple[PackedBackend, Path, bytes]:
    """A library packed by the builder's own code, staged as the stub carries it."""
    library_bytes = os.urandom(1 << 16) + b"\0" * (1 << 20)
    built = tmp_path / "built"
    built.mkdir()
    (built / "libggml-vulkan.so").write_bytes(library_bytes)
    backend = pack(built / "libggml-vulkan.so", built, "vulkan")
    staged = tmp_path / "stub" / "llama_cpp" / gpu.PACKED_DIR
    stage_gpu_backends(staged, [built])
    return backend, staged, library_bytes


def test_the_stub_index_is_what_the_builder_packed(packed):
    backend, staged, library_bytes = packed
    assert gpu.packed_backends(staged) == {"vulkan": backend}
    assert backend.size == len(library_bytes) and backend.sha256 == hashlib.sha256(library_bytes).hexdigest()
    assert backend.packed_size == (staged / "libggml-vulkan.so.xz").stat().st_size < backend.size
    assert json.loads((staged / gpu.PACKED_INDEX).read_text())["vulkan"]["library"] == "libggml-vulkan.so"
    assert gpu.packed_backends(staged.parent) == {}  # no index: nothing packed


def test_unpacked_once_then_reused(packed, tmp_path):
    backend, staged, library_bytes = packed
    cache = tmp_path / "cache"
    first = unpack(backend, staged, cache)
    assert first.read_bytes() == library_bytes and first.is_relative_to(cache)
    stamp = first.stat().st_mtime_ns
    assert unpack(backend, staged, cache) == first
    assert first.stat().st_mtime_ns == stamp
    assert [path.name for path in first.parent.iterdir()] == ["libggml-vulkan.so"]  # no temporary left


@pytest.mark.parametrize("damage", ["altered", "half-written"])
def test_a_damaged_cached_copy_is_written_again_never_loaded(packed, tmp_path, damage):
    backend, staged, library_bytes = packed
    cache = tmp_path / "cache"
    copy = unpack(backend, staged, cache)
    if damage == "altered":
        copy.write_bytes(library_bytes[:-1] + b"x")
    else:
        copy.write_bytes(library_bytes[: len(library_bytes) // 2])
    assert unpack(backend, staged, cache).read_bytes() == library_bytes


def test_a_damaged_packed_library_is_refused(packed, tmp_path):
    backend, staged, library_bytes = packed
    (staged / "libggml-vulkan.so.xz").write_bytes(lzma.compress(library_bytes[:-1] + b"x"))
    with pytest.raises(OSError, match="damaged"):
        unpack(backend, staged, tmp_path / "cache")
    assert not (tmp_path / "cache" / gpu.UNPACKED_DIR / backend.sha256[:16] / "libggml-vulkan.so").exists()


def test_launches_racing_to_unpack_all_get_the_whole_library(packed, tmp_path):
    backend, staged, library_bytes = packed
    results: list[bytes] = []
    start = threading.Barrier(4)

    def launch() -> None:
        start.wait()
        results.append(unpack(backend, staged, tmp_path / "cache").read_bytes())

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [library_bytes] * 4


def test_the_cache_follows_llamapack_cache_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "mine"))
    assert gpu.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("LLAMAPACK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gpu.cache_root() == tmp_path / "xdg" / "llamapack"


_DRIVER = """
int cuDriverGetVersion(int *version) { *version = VERSION; return STATUS; }
"""


def stand_in_driver(folder: Path, version: int, status: int = 0) -> ctypes.CDLL:
    """A libcuda.so.1 that reports `version` (as NVIDIA's: 1000 * major + 10 * minor)."""
    import subprocess

    folder.mkdir()
    (folder / "driver.c").write_text(_DRIVER)
    library = folder / "libcuda.so.1"
    subprocess.run(
        ["cc", "-shared", "-fPIC", f"-DVERSION={version}", f"-DSTATUS={status}", "-o", str(library),
         str(folder / "driver.c")],
        check=True,
    )  # fmt: skip
    return ctypes.CDLL(str(library))


def test_an_nvidia_driver_too_old_for_cuda_13_is_named(tmp_path):
    assert gpu._old_cuda_driver(stand_in_driver(tmp_path / "old", 12080)) == (
        "the NVIDIA driver runs CUDA up to 12.8; this file's CUDA runtime needs 13.0 (driver 580 or newer)"
    )
    assert gpu._old_cuda_driver(stand_in_driver(tmp_path / "new", 13000)) == ""
    assert gpu._old_cuda_driver(stand_in_driver(tmp_path / "newer", 13020)) == ""
    assert gpu._old_cuda_driver(stand_in_driver(tmp_path / "failing", 12080, status=3)) == ""  # cannot say
    assert gpu._old_cuda_driver(ctypes.CDLL(None)) == ""  # no such function
