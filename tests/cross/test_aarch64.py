"""The linux-aarch64 file, built on this x86-64 host and run under qemu-user.

The stub comes from builder/cross/aarch64.py (an arm64 root, llama.cpp cross-compiled,
PyInstaller in the root; cached, so only the first run takes long). The Gemma file is
run through binfmt_misc with the root as QEMU_LD_PREFIX and a Neoverse N1 CPU (no SVE):
it must answer as the x86-64 file does, serve, and end cleanly on SIGTERM.

Skipped when the host lacks the tools; LLAMAPACK_REQUIRE_CROSS=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamapack.builder.cross import aarch64, build_cross_stub
from tests.support.built_file import Server, build_file, check_chat_and_page, get_json, run_file
from tests.support.cross import unavailable

pytestmark = [pytest.mark.cross, pytest.mark.e2e]

PROMPT = ("-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2")
# Neoverse N1 has dot product and FP16 arithmetic, no SVE: ggml's armv8.2_2 variant.
EXPECTED_VARIANT = "armv8.2_2"
EMULATED = 900  # seconds: qemu-user runs the file about 10x slower than the host


@pytest.fixture(scope="module")
def aarch64_stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = aarch64.host_problem()
    if problem:
        unavailable(problem)
    return build_cross_stub("linux-aarch64", log=print).path


@pytest.fixture(scope="module")
def aarch64_file(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path, aarch64_stub: Path) -> Path:
    out = tmp_path_factory.mktemp("dist") / "gemma-aarch64"
    return build_file(gemma_gguf, out, "--target", "linux-aarch64", "--runtime", str(aarch64_stub))


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-user (started by the kernel through binfmt_misc) reads these."""
    for name, value in aarch64.emulation_env().items():
        if name.startswith("QEMU_"):
            monkeypatch.setenv(name, value)


def test_the_file_is_an_aarch64_executable(aarch64_file: Path) -> None:
    header = aarch64_file.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # 64-bit ELF
    assert struct.unpack_from("<H", header, 18)[0] == 0xB7  # EM_AARCH64
    assert os.access(aarch64_file, os.X_OK)


def test_greedy_text_is_the_x86_64_text(
    aarch64_file: Path, gemma_gguf: Path, tmp_path: Path, emulated: None
) -> None:
    emulated_run = run_file(aarch64_file, *PROMPT, timeout=EMULATED)
    assert emulated_run.returncode == 0, emulated_run.stderr
    assert "Traceback" not in emulated_run.stderr
    host_file = build_file(gemma_gguf, tmp_path / "gemma-x86_64")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_")}
    host_run = subprocess.run([str(host_file), *PROMPT], capture_output=True, text=True, timeout=300, env=env)
    assert host_run.returncode == 0, host_run.stderr
    assert emulated_run.stdout.strip(), emulated_run.stderr
    assert emulated_run.stdout == host_run.stdout


def test_the_file_finds_a_vulkan_device_under_qemu(
    aarch64_file: Path, tmp_path: Path, emulated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arm64 root's Vulkan loader and Mesa's lavapipe, under qemu-user: the file
    unpacks its packed Vulkan backend, starts the driver and names the device. Not a
    decode: lavapipe of Debian 12 (Mesa 22.3, LLVM 15) aborts compiling ggml's first
    compute shader on arm64 ("LLVM ERROR: Cannot select: v4f32 = fp_extend"), a bug of
    that LLVM, with or without GGML_VK_DISABLE_F16; README says so."""
    # The loader lists /usr/share/vulkan/icd.d through qemu's root prefix but opens the
    # manifests it found without it: name the root's lavapipe manifest by its host path.
    manifest = aarch64.root_path() / "usr/share/vulkan/icd.d/lvp_icd.aarch64.json"
    monkeypatch.setenv("VK_DRIVER_FILES", str(manifest))
    monkeypatch.setenv("GGML_VK_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))  # after root_path(): it moves that too
    run = run_file(aarch64_file, "--version", timeout=EMULATED)
    assert run.returncode == 0, run.stderr[-3000:]
    gpu_line = run.stdout.splitlines()[-1]
    assert gpu_line.startswith("GPU: Vulkan0 (llvmpipe (LLVM"), run.stderr[-3000:]
    assert gpu_line.endswith(", Vulkan")
    assert [path.name for path in (tmp_path / "cache").glob("gpu-backends/*/*")] == ["libggml-vulkan.so"]
    monkeypatch.setenv("VK_DRIVER_FILES", str(tmp_path / "none.json"))
    assert run_file(aarch64_file, "--version", timeout=EMULATED).stdout.splitlines()[-1] == (
        "GPU: none (Vulkan: no working Vulkan driver)"
    )


@pytest.mark.parametrize(
    ("cpu", "variant"),
    [("cortex-a53", "armv8.0_1"), ("neoverse-n1", "armv8.2_2"), ("max", "armv8.6_2")],
)
def test_picks_the_best_cpu_variant_the_emulated_cpu_runs(
    aarch64_file: Path, monkeypatch: pytest.MonkeyPatch, cpu: str, variant: str
) -> None:
    """runtime/llama/cpu.py scores the aarch64 variants through each one's own HWCAP
    check: plain NEON, dot product + FP16, SVE2 + int8 matmul (qemu's "max"; the
    armv9.2 SME variants are not built, see builder/cross/aarch64.py)."""
    for name, value in aarch64.emulation_env(cpu).items():
        if name.startswith("QEMU_"):
            monkeypatch.setenv(name, value)
    result = run_file(aarch64_file, "-p", "Hello", "-n", "2", "-t", "2", timeout=EMULATED)
    assert result.returncode == 0, result.stderr
    assert f"engine: CPU {variant} " in result.stderr, result.stderr


@pytest.fixture
def server(aarch64_file: Path, emulated: None) -> Iterator[Server]:
    running = Server(aarch64_file)
    yield running
    running.close()


def test_serves_health_chat_and_page_and_stops_on_sigterm(server: Server) -> None:
    server.wait_healthy(timeout=EMULATED)
    status, props = get_json(f"{server.url}/props")
    assert status == 200
    cpu = props["backend"]["cpu"]
    assert cpu["variant"] == EXPECTED_VARIANT, cpu  # runtime/llama/cpu.py's choice under qemu
    check_chat_and_page(server.url, timeout=EMULATED)
    code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err


def test_the_file_is_an_rpc_worker_for_an_x86_64_file(
    aarch64_file: Path, gemma_gguf: Path, tmp_path: Path, emulated: None
) -> None:
    """Every file is also a worker: the arm64 one lends its (emulated) CPU to the
    x86-64 file over llama.cpp's RPC protocol on loopback."""
    from tests.support.processes import free_port, stop, wait_rpc_worker

    port = free_port()
    worker = subprocess.Popen(
        [str(aarch64_file), "--rpc-server", "--port", str(port), "-t", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_rpc_worker(port, worker, timeout=EMULATED)
        host_file = build_file(gemma_gguf, tmp_path / "gemma-x86_64")
        env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_")}
        split = subprocess.run(
            [str(host_file), "--rpc", f"127.0.0.1:{port}", *PROMPT],
            capture_output=True, text=True, timeout=EMULATED, env=env,
        )  # fmt: skip
        assert split.returncode == 0, split.stderr[-3000:]
        assert split.stdout.strip()
        assert f"RPC0 (127.0.0.1:{port}): 19 of 19 layers" in split.stderr, split.stderr
    finally:
        stop(worker)
