"""The CUDA runtime end to end on a machine without an NVIDIA GPU: the real
ggml-cuda (builder/cuda.py), NVIDIA's CUDA runtime and cuBLAS, put into the Gemma
file by `--gpu-runtime cuda` and unpacked and loaded by the file itself.

With no NVIDIA driver the probe stops before unpacking anything. With a stand-in
driver (a libcuda.so.1 whose cuInit finds no device, as on a machine whose GPU is
gone) the file unpacks the four libraries, loads them (every dependency resolving
from the unpacked folder), CUDA reports no device, and the CPU answers. A decode on
an NVIDIA GPU is bench/cuda.py's job, on a machine that has one."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder import cuda
from llamapack.builder.cli import cli
from llamapack.runtime.fileformat import read_layout
from llamapack.runtime.llama.gpu import UNPACKED_DIR, payload_key
from tests.support.built_file import Server, build_file

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (cuda.cuda_dir() / ".complete").is_file(),
        reason="the CUDA runtime is not built here: `make cuda` builds it once (about an hour on 2 cores)",
    ),
]

PROMPT = ("-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2")
LIBRARIES = [*cuda.RUNTIME_LIBRARIES, "libggml-cuda.so"]
_NO_DEVICE_DRIVER = """
/* A stand-in NVIDIA driver that finds no GPU (CUDA_ERROR_NO_DEVICE). */
int cuInit(unsigned int flags) { (void)flags; return 100; }
int cuDriverGetVersion(int *version) { *version = VERSION; return 0; }
int cuDeviceGetCount(int *count) { *count = 0; return 100; }
"""


def stand_in_driver(folder: Path, version: int) -> Path:
    """A folder with a libcuda.so.1 that finds no GPU and reports CUDA `version`."""
    folder.mkdir()
    (folder / "driver.c").write_text(_NO_DEVICE_DRIVER)
    subprocess.run(
        ["cc", "-shared", "-fPIC", f"-DVERSION={version}", "-o", str(folder / "libcuda.so.1"),
         str(folder / "driver.c")],
        check=True,
    )  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def cuda_file(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path, runtime_stub: Path) -> Path:
    out = tmp_path_factory.mktemp("dist") / "gemma-cuda"
    return build_file(gemma_gguf, out, "--runtime", str(runtime_stub), "--gpu-runtime", "cuda")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stand_in_driver(tmp_path_factory.mktemp("drivers") / "13.0", 13000)


def run(path: Path, *args: str, cache: Path, driver: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLAMAPACK_CACHE": str(cache)}
    env.pop("GGML_VK_VISIBLE_DEVICES", None)
    if driver is not None:
        env["LD_LIBRARY_PATH"] = str(driver)
    return subprocess.run([str(path), *args], capture_output=True, text=True, env=env, timeout=600)


def unpacked_folder(file: Path, cache: Path) -> Path:
    """Where the file's CUDA libraries are unpacked (the Vulkan backend has a folder beside it)."""
    runtime = read_layout(file).manifest.gpu_runtime
    assert runtime is not None
    return cache / UNPACKED_DIR / payload_key(runtime)


def engine_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if ": engine: " in line]
    return line


def test_the_file_carries_the_real_cuda_runtime(cuda_file, gemma_gguf):
    with zipfile.ZipFile(cuda_file) as archive:
        names = archive.namelist()
    assert names[1:5] == [f"gpu/cuda/{name}.xz" for name in LIBRARIES]
    extra = cuda_file.stat().st_size - gemma_gguf.stat().st_size
    assert extra > 300 << 20  # cuBLAS is most of it: this is why it is not in every file
    result = CliRunner().invoke(cli, ["verify", str(cuda_file)])
    assert result.exit_code == 0, result.output


def test_without_an_nvidia_driver_nothing_is_unpacked(cuda_file, tmp_path):
    cache = tmp_path / "cache"
    result = run(cuda_file, *PROMPT, cache=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert engine_line(result.stderr).endswith(
        "no GPU (CUDA: no CUDA driver on this system (libcuda.so.1 not found); Vulkan: no Vulkan GPU found)"
    )
    assert not (cache / UNPACKED_DIR).exists() or not any((cache / UNPACKED_DIR).rglob("libcublas*"))
    refused = run(cuda_file, *PROMPT, "--gpu", "cuda", cache=cache)
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith("--gpu cuda: no CUDA driver on this system (libcuda.so.1 not found)")
    ), refused.stderr


def test_a_driver_without_a_gpu_loads_every_library_then_the_cpu_answers(
    cuda_file, driver, gemma_file, tmp_path
):
    cache = tmp_path / "cache"
    on_cpu = run(gemma_file, *PROMPT, "--gpu", "none", cache=cache)
    result = run(cuda_file, *PROMPT, cache=cache, driver=driver)
    assert result.returncode == 0, result.stderr[-2000:]
    assert engine_line(result.stderr).endswith(
        "no GPU (CUDA: no CUDA GPU found; Vulkan: no Vulkan GPU found)"
    )
    assert result.stdout == on_cpu.stdout and result.stdout.strip()
    folder = unpacked_folder(cuda_file, cache)
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith("lib")) == sorted(LIBRARIES)
    runtime = read_layout(cuda_file).manifest.gpu_runtime
    assert runtime is not None
    size = sum(library.size for library in runtime.libraries) / 1e6
    notice = f"gemma-cuda: unpacking the CUDA runtime ({size:.0f} MB) into {folder} (once)..."
    assert notice in result.stderr.splitlines()
    again = run(cuda_file, *PROMPT, cache=cache, driver=driver)
    assert again.returncode == 0 and again.stdout == result.stdout
    assert "unpacking" not in again.stderr  # verified once: nothing unpacked or hashed again

    refused = run(cuda_file, *PROMPT, "--gpu", "cuda", cache=cache, driver=driver)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].endswith("--gpu cuda: no CUDA GPU found"), refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_libraries_load_from_the_unpacked_folder(cuda_file, driver, tmp_path):
    """Every CUDA library in the serving process is the unpacked one: the backend's
    own lookups by soname found what the file carries, not something of the system's."""
    cache = tmp_path / "cache"
    server = Server(cuda_file, env={"LLAMAPACK_CACHE": str(cache), "LD_LIBRARY_PATH": str(driver)})
    try:
        server.wait_healthy(timeout=300)
        maps = Path(f"/proc/{server.python_pid()}/maps").read_text()
    finally:
        server.close()
    loaded = {line.split()[-1] for line in maps.splitlines() if "libcu" in line or "ggml-cuda" in line}
    folder = unpacked_folder(cuda_file, cache)
    assert {Path(path).name for path in loaded} == {*LIBRARIES, "libcuda.so.1"}
    assert {str(Path(path).parent) for path in loaded if "libcuda.so" not in path} == {str(folder)}


def test_a_driver_too_old_for_cuda_13_is_named_and_nothing_is_unpacked(cuda_file, tmp_path):
    cache = tmp_path / "cache"
    old = stand_in_driver(tmp_path / "12.8", 12080)
    result = run(cuda_file, *PROMPT, cache=cache, driver=old)
    assert result.returncode == 0, result.stderr[-2000:]
    assert engine_line(result.stderr).endswith(
        "no GPU (CUDA: the NVIDIA driver runs CUDA up to 12.8; this file's CUDA runtime needs 13.0 "
        "(driver 580 or newer); Vulkan: no Vulkan GPU found)"
    )
    assert not (cache / UNPACKED_DIR).exists() or not any((cache / UNPACKED_DIR).rglob("libcublas*"))
