"""GPU offload end to end, on Mesa's software Vulkan driver (lavapipe): the built
file's packed Vulkan backend, the system's Vulkan loader, a real Vulkan device.

ggml-vulkan passes over CPU-type devices such as llvmpipe unless
GGML_VK_VISIBLE_DEVICES names one, so on this machine the file's default is the CPU
(and it says why); with the variable the same file offloads to lavapipe."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.built_file import Server, get_json

pytestmark = pytest.mark.e2e

PROMPT = ("-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2")
LAVAPIPE_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
GEMMA_LAYERS = 19  # 18 blocks and the output layer


def run(path: Path, *args: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert LAVAPIPE_ICD.is_file(), "Mesa's software Vulkan driver is missing: apt install mesa-vulkan-drivers"
    environment = {**os.environ, "LLAMAPACK_CACHE": str(cache), **env}
    environment.pop("GGML_VK_VISIBLE_DEVICES", None)
    environment.update(env)
    return subprocess.run([str(path), *args], capture_output=True, text=True, env=environment, timeout=300)


def engine_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if ": engine: " in line]
    return line


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_without_a_gpu_the_cpu_runs_and_the_launch_line_says_why(gemma_file, cache):
    result = run(gemma_file, *PROMPT, cache=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert engine_line(result.stderr).endswith(", no GPU (Vulkan: no Vulkan GPU found)")
    assert "warning" not in result.stderr


def test_lavapipe_takes_every_layer_and_writes_the_cpu_text(gemma_file, cache):
    on_cpu = run(gemma_file, *PROMPT, "--gpu", "none", cache=cache)
    on_gpu = run(gemma_file, *PROMPT, "-ngl", "99", cache=cache, GGML_VK_VISIBLE_DEVICES="0")
    assert on_cpu.returncode == 0 and on_gpu.returncode == 0, on_gpu.stderr[-2000:]
    assert on_gpu.stdout == on_cpu.stdout and on_cpu.stdout.strip()
    line = engine_line(on_gpu.stderr)
    assert (
        ": engine: Vulkan0 (llvmpipe (LLVM" in line and f"): {GEMMA_LAYERS} of {GEMMA_LAYERS} layers" in line
    )
    assert engine_line(on_cpu.stderr).endswith(", no GPU (--gpu none)")


def test_the_default_offloads_as_many_layers_as_fit_and_props_report_them(gemma_file, cache):
    server = Server(gemma_file, env={"LLAMAPACK_CACHE": str(cache), "GGML_VK_VISIBLE_DEVICES": "0"})
    try:
        server.wait_healthy(timeout=120)
        _, props = get_json(server.url + "/props")
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]
    backend = props["backend"]
    assert backend["gpu"] == {"requested": "auto", "backend": "vulkan", "reason": None}
    assert backend["layers_by_device"] == {"Vulkan0": GEMMA_LAYERS}  # 2 GiB of lavapipe holds it all
    (vulkan,) = [device for device in backend["devices"] if device["name"] == "Vulkan0"]
    assert vulkan["type"] == "GPU" and vulkan["memory_total"] > 0
    assert vulkan["description"].startswith("llvmpipe")
    assert backend["summary"].startswith("Vulkan0 (llvmpipe")


def test_ngl_0_keeps_the_gpu_out(gemma_file, cache):
    result = run(gemma_file, *PROMPT, "-ngl", "0", cache=cache, GGML_VK_VISIBLE_DEVICES="0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert engine_line(result.stderr).endswith(", no GPU (-ngl 0)")


def test_a_backend_asked_for_by_name_that_cannot_run_is_one_line(gemma_file, cache):
    result = run(gemma_file, *PROMPT, "--gpu", "cuda", cache=cache)
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"{gemma_file.name}: error: --gpu cuda: this file has no CUDA backend"
    )
    assert "Traceback" not in result.stderr


def test_a_vulkan_loader_without_a_driver_falls_back_to_the_cpu(gemma_file, cache, tmp_path):
    nowhere = {
        "VK_DRIVER_FILES": str(tmp_path / "none.json"),
        "VK_ICD_FILENAMES": str(tmp_path / "none.json"),
    }
    result = run(gemma_file, *PROMPT, cache=cache, GGML_VK_VISIBLE_DEVICES="0", **nowhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert engine_line(result.stderr).endswith(", no GPU (Vulkan: no working Vulkan driver)")
    forced = run(gemma_file, *PROMPT, "--gpu", "vulkan", cache=cache, **nowhere)
    assert forced.returncode == 1
    assert forced.stderr.strip().splitlines()[-1].endswith(": error: --gpu vulkan: no working Vulkan driver")


def test_a_gpu_that_fails_mid_load_falls_back_to_the_cpu(gemma_file, cache):
    """lavapipe told to refuse every buffer over 100 kB: llama.cpp cannot allocate
    on it, and the same file then serves from the CPU, with the same text."""
    tiny_buffers = {"GGML_VK_FORCE_MAX_BUFFER_SIZE": "100000", "GGML_VK_FORCE_MAX_ALLOCATION_SIZE": "100000"}
    result = run(gemma_file, *PROMPT, "-ngl", "99", cache=cache, GGML_VK_VISIBLE_DEVICES="0", **tiny_buffers)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 1 and "the Vulkan GPU could not take 99 layers (" in warnings[0]
    assert warnings[0].endswith("); running on the CPU")
    assert ": no layers, CPU " in engine_line(result.stderr)
    assert result.stdout == run(gemma_file, *PROMPT, "--gpu", "none", cache=cache).stdout


def test_version_names_the_gpu(gemma_file, cache):
    result = run(gemma_file, "--version", cache=cache, GGML_VK_VISIBLE_DEVICES="0")
    assert result.returncode == 0, result.stderr
    gpu_line = result.stdout.splitlines()[-1]
    assert gpu_line.startswith("GPU: Vulkan0 (llvmpipe") and gpu_line.endswith(" GiB free), Vulkan")
    assert run(gemma_file, "--version", cache=cache).stdout.splitlines()[-1] == (
        "GPU: none (Vulkan: no Vulkan GPU found)"
    )


def test_the_backend_library_names_no_folder_of_the_build_machine(gemma_file, cache):
    """No RUNPATH (cmake's would send the user's dynamic linker to the builder's folders,
    trixie's libvulkan among them) and no build path in its strings."""
    assert run(gemma_file, "--version", cache=cache).returncode == 0
    (library,) = (cache / "gpu-backends").glob("*/libggml-vulkan.so")
    readelf = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True)
    dynamic = readelf.stdout
    assert "NEEDED" in dynamic and "libvulkan.so.1" in dynamic
    assert "RUNPATH" not in dynamic and "RPATH" not in dynamic
    data = library.read_bytes()
    assert b"/llamapack/sdist/" in data  # assert messages name sources from the mapped prefix
    assert str(Path.home()).encode() + b"/" not in data and b"/tmp/" not in data


def test_the_backend_is_unpacked_once_per_user_and_checked(gemma_file, cache):
    assert run(gemma_file, "--version", cache=cache).returncode == 0
    (library,) = (cache / "gpu-backends").glob("*/libggml-vulkan.so")
    digest = hashlib.sha256(library.read_bytes()).hexdigest()
    assert library.parent.name == digest[:16]
    stamp = library.stat().st_mtime_ns
    assert run(gemma_file, "--version", cache=cache).returncode == 0
    assert library.stat().st_mtime_ns == stamp  # reused, not written again
    library.write_bytes(b"not a library")  # tampered with: checked, written again, then loaded
    result = run(gemma_file, "--version", cache=cache, GGML_VK_VISIBLE_DEVICES="0")
    assert result.stdout.splitlines()[-1].startswith("GPU: Vulkan0")
    assert hashlib.sha256(library.read_bytes()).hexdigest() == digest
    assert json.dumps(sorted(path.name for path in library.parent.iterdir())) == '["libggml-vulkan.so"]'


def test_the_layer_estimate_covers_what_llama_cpp_allocates_on_the_gpu(gemma_file, gemma_gguf, cache):
    """Everything offloaded, the estimate that chose it (runtime/llama/offload.py) is
    never below the device buffers llama.cpp reports: weights, KV cache, compute."""
    from llamapack.runtime.llama.model import init_backend
    from llamapack.runtime.llama.offload import compute_bytes, output_cost, read_shape

    args = ("-p", "Hi", "-n", "1", "-t", "2", "-ngl", "99", "-c", "4096", "--verbose")
    result = run(gemma_file, *args, cache=cache, GGML_VK_VISIBLE_DEVICES="0")
    assert result.returncode == 0, result.stderr[-2000:]
    buffers = re.findall(r"Vulkan0 (model|KV|compute) buffer size =\s+([\d.]+) MiB", result.stderr)
    assert {kind for kind, _ in buffers} == {"model", "KV", "compute"}, result.stderr[-3000:]
    allocated = sum(float(size) for _, size in buffers) * (1 << 20)
    init_backend()
    shape = read_shape(gemma_gguf, 0)
    kv = sum(shape.kv_bytes_per_token) * 4096
    estimate = sum(shape.layer_bytes) + kv + compute_bytes(shape, 4096) + output_cost(shape)
    assert estimate >= allocated > 50 << 20
