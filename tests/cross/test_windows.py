"""The windows-x86_64 file, built on this Linux host and run under Wine.

The stub comes from builder/cross/windows.py (`llamapack runtime build --target
windows-x86_64`: llama.cpp cross-compiled with mingw-w64, PyInstaller run by a Windows
CPython under Wine; cached, so only the first run takes long). The Gemma file is built
into a folder whose name has spaces and non-ASCII letters, then run with Wine: it must
answer as the x86-64 Linux file does, serve /health, a chat completion and the page,
and end on SIGTERM leaving no `_MEI*` folder in the Wine temp folder.

Wine quirk: a Windows console program whose stdout is a regular file dies, so every
run gets stdin from /dev/null and stdout through a pipe.

Skipped when Wine is not installed; LLAMAPACK_REQUIRE_CROSS=1 (make cross-check) makes
that a failure. Without a cached stub, a missing mingw-w64 fails the build step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import llamapack.runtime as runtime_package
from llamapack.builder.cross import build_cross_stub, windows
from llamapack.builder.targets import WINDOWS_MAX_FILE
from tests.support.built_file import build_file, check_chat_and_page, get_json
from tests.support.cross import unavailable
from tests.support.processes import free_port, stop, wait_healthy

pytestmark = [pytest.mark.cross, pytest.mark.e2e]

TARGET = "windows-x86_64"
PROMPT = ("-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2")
UNDER_WINE = 300  # seconds: Wine's first start of a prefix, unpacking, model load


@pytest.fixture(scope="module")
def windows_stub() -> Path:
    if shutil.which("wine") is None:
        unavailable("Wine is not installed (Debian: apt-get install wine wine64)")
    # Cached after the first build; otherwise mingw-w64 must be there too (or this fails).
    return build_cross_stub(TARGET, log=print).path


@pytest.fixture(scope="module")
def windows_file(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path, windows_stub: Path) -> Path:
    folder = tmp_path_factory.mktemp("dist") / "Modèles de test ünd Ω"
    folder.mkdir()
    # No --runtime: `build --target` must find the stub `runtime build --target` cached.
    return build_file(gemma_gguf, folder / "gemma 3 windows.exe", "--target", TARGET)


def _wine_temp() -> list[Path]:
    users = Path(windows.wine_env()["WINEPREFIX"]) / "drive_c" / "users"
    return [*users.glob("*/Temp"), *users.glob("*/AppData/Local/Temp")]  # Wine 8, newer Wine


def _python_process(exe: Path) -> int:
    """The Wine process of the bootloader's child, which runs Python: its command line
    starts with the Windows path of the file (the bootloader's, with the Unix path)."""
    name = windows.windows_path(exe).encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(name):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no Wine process runs {name.decode()}")


def _extractions() -> set[Path]:
    return {path for temp in _wine_temp() for path in temp.glob("_MEI*")}


def _wine(path: Path, *args: str) -> list[str]:
    return ["wine", str(path), *args]


def _run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _wine(path, *args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=UNDER_WINE, env=windows.wine_env(),
    )  # fmt: skip


def test_the_file_is_a_windows_executable(windows_file: Path) -> None:
    data = windows_file.read_bytes()[:4096]
    assert data[:2] == b"MZ"
    pe = int.from_bytes(data[0x3C:0x40], "little")
    assert data[pe : pe + 4] == b"PE\0\0"
    assert int.from_bytes(data[pe + 4 : pe + 6], "little") == 0x8664


@pytest.fixture(scope="module")
def wine_text(windows_file: Path) -> str:
    """The greedy completion of the file under Wine; the bootloader removes what it unpacked."""
    before = _extractions()
    run = _run(windows_file, *PROMPT)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout.strip(), run.stderr
    assert _extractions() <= before, "the file left its _MEI folder in the Wine temp folder"
    return run.stdout.replace("\r\n", "\n")


def test_greedy_text_is_the_linux_text(wine_text: str, gemma_gguf: Path, tmp_path: Path) -> None:
    host_file = build_file(gemma_gguf, tmp_path / "gemma-linux")
    host_run = subprocess.run([str(host_file), *PROMPT], capture_output=True, text=True, timeout=300)
    assert host_run.returncode == 0, host_run.stderr
    assert wine_text == host_run.stdout


@pytest.fixture
def x_display() -> Iterator[str]:
    """A virtual X server: Wine's Vulkan goes through its X11 driver, which needs a display."""
    if shutil.which("Xvfb") is None:
        unavailable("Xvfb is not installed (Debian: apt-get install xvfb)")
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.1)
        yield f":{number}"
    finally:
        stop(server)


def test_the_file_offloads_to_vulkan_under_wine(
    windows_file: Path, wine_text: str, tmp_path: Path, x_display: str
) -> None:
    """Wine's vulkan-1.dll hands Vulkan to the host's loader and Mesa's lavapipe (through
    Wine's X11 driver, on a virtual display): the file unpacks its packed
    ggml-vulkan.dll into the user's cache folder, loads it, puts every layer on the
    device and writes the CPU's greedy text."""
    env = {
        **windows.wine_env(),
        "GGML_VK_VISIBLE_DEVICES": "0",
        "LLAMAPACK_CACHE": windows.windows_path(tmp_path),
        "DISPLAY": x_display,
    }
    run = subprocess.run(
        _wine(windows_file, *PROMPT, "-ngl", "99"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=UNDER_WINE, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    engine = next(line for line in run.stderr.splitlines() if ": engine: " in line)
    assert ": engine: Vulkan0 (llvmpipe" in engine and "): 19 of 19 layers, CPU " in engine, engine
    assert run.stdout.replace("\r\n", "\n") == wine_text
    assert [path.name for path in tmp_path.glob("gpu-backends/*/*")] == ["ggml-vulkan.dll"]


def test_a_model_over_4_gib_runs_from_beside_the_exe(
    wine_text: str, gemma_gguf: Path, windows_stub: Path, tmp_path: Path
) -> None:
    """Windows starts no program of 4 GiB or more: the GGUF goes beside NAME.exe. The
    model is Gemma with a sparse tail past its weights (llama.cpp reads only up to them)."""
    big = tmp_path / "big.gguf"
    shutil.copyfile(gemma_gguf, big)
    with big.open("r+b") as file:
        file.truncate(WINDOWS_MAX_FILE + (16 << 20))
    folder = tmp_path / "große Modelle"
    folder.mkdir()
    try:
        exe = build_file(big, folder / "big model.exe", "--target", TARGET)
        beside = folder / "big model.gguf"
        assert beside.stat().st_size == big.stat().st_size
        assert exe.stat().st_size < WINDOWS_MAX_FILE
        big.unlink()
        run = _run(exe, *PROMPT)
        assert run.returncode == 0, run.stderr
        assert run.stdout.replace("\r\n", "\n") == wine_text
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        big.unlink(missing_ok=True)


@pytest.fixture
def server(windows_file: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        _wine(windows_file, "--server", "--nobrowser", "--port", str(port), "-t", "2"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=windows.wine_env(),
    )  # fmt: skip
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        with contextlib.suppress(AssertionError, OSError):  # it has already ended
            os.kill(_python_process(windows_file), signal.SIGTERM)
    stop(process)


def test_serves_health_chat_and_page_and_cleans_up_on_close(
    server: tuple[subprocess.Popen[str], str], windows_file: Path
) -> None:
    """Closing a Windows console ends the bootloader's child and the bootloader then
    removes its _MEI folder. Under Wine, SIGTERM ends a process at once, as
    TerminateProcess does, so it goes to the child; the bootloader (the process we
    started) must then clean up and exit. (SIGTERM to the bootloader itself would
    end it alone and orphan the child: Wine has no signal forwarding.)"""
    process, url = server
    before = _extractions()
    wait_healthy(url, process, timeout=UNDER_WINE, explain=lambda: str(process.communicate(timeout=30)))
    assert _extractions() - before, "the running file unpacked nothing into the Wine temp folder"
    status, health = get_json(f"{url}/health")
    assert status == 200, health
    check_chat_and_page(url, timeout=UNDER_WINE)
    os.kill(_python_process(windows_file), signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err
    deadline = time.monotonic() + 30
    while _extractions() - before and time.monotonic() < deadline:
        time.sleep(0.5)  # Wine ends the bootloader's child a moment after it
    assert not _extractions() - before, f"left behind: {_extractions() - before}"


# The runtime's signal set-up, run by the Windows CPython that builds the stub: the
# first Ctrl-C or Ctrl-Break begins a graceful shutdown, a second one during it ends
# the process at once with one line (without a handler, Ctrl-Break ends a Windows
# process with status 3 and no word).
SIGNAL_SCRIPT = """
import asyncio, signal, sys
sys.path.insert(0, sys.argv[2])
from aiohttp.web_runner import GracefulExit
from llamapack.runtime.cli import _stop_on_signals

number = getattr(signal, sys.argv[1])
loop = asyncio.new_event_loop()
_stop_on_signals(loop)
loop.call_later(0.2, signal.raise_signal, number)
try:
    loop.run_forever()
except GracefulExit:
    print("graceful shutdown begins", flush=True)
loop.call_later(0.2, signal.raise_signal, number)
loop.run_until_complete(asyncio.sleep(5))
print("shutdown finished without the second signal", flush=True)
"""


@pytest.mark.parametrize(("name", "number"), [("SIGINT", 2), ("SIGBREAK", 21)])
def test_ctrl_c_and_ctrl_break_shut_down_gracefully_then_at_once(
    name: str, number: int, tmp_path: Path
) -> None:
    python = Path(windows.wine_env()["WINEPREFIX"]) / "drive_c" / windows.PYTHON_DIR / "python.exe"
    if not python.is_file():
        unavailable(f"no Windows CPython in the Wine prefix ({python})")
    package = tmp_path / "path" / "llamapack"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runtime").symlink_to(Path(runtime_package.__file__).parent)
    script = tmp_path / "signals.py"
    script.write_text(SIGNAL_SCRIPT)
    run = subprocess.run(
        ["wine", str(python), windows.windows_path(script), name, windows.windows_path(package.parent)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=UNDER_WINE, env=windows.wine_env(),
    )  # fmt: skip
    assert run.stdout.replace("\r\n", "\n") == "graceful shutdown begins\n", run.stderr
    assert run.returncode == 128 + number
    said = run.stderr.replace("\r\n", "\n")
    assert said == f"llamapack-runtime: stopped at once ({name} during shutdown)\n"


def test_the_file_is_an_rpc_worker_for_a_linux_file(
    windows_file: Path, gemma_gguf: Path, tmp_path: Path
) -> None:
    """Every file is also a worker: the Windows one, under Wine, lends its CPU to the
    Linux file over llama.cpp's RPC protocol on loopback, with the same greedy text
    as the Linux file computing alone with the same kernels (see tests/e2e/test_rpc.py)."""
    from tests.support.processes import free_port, wait_rpc_worker

    before = _extractions()
    port = free_port()
    worker = subprocess.Popen(
        _wine(windows_file, "--rpc-server", "--port", str(port), "-t", "2"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=windows.wine_env(),
    )  # fmt: skip
    try:
        wait_rpc_worker(port, worker, timeout=UNDER_WINE)
        host_file = build_file(gemma_gguf, tmp_path / "gemma-linux")
        split = run_host(host_file, "--rpc", f"127.0.0.1:{port}", *PROMPT)
        assert split.returncode == 0, split.stderr[-3000:]
        assert f"RPC0 (127.0.0.1:{port}): 19 of 19 layers" in split.stderr, split.stderr
        alone = run_host(host_file, *PROMPT, env={"LLAMAPACK_CPU_EXTRA_BUFTS": "0"})
        assert split.stdout == alone.stdout
    finally:
        if worker.poll() is None:
            with contextlib.suppress(AssertionError, OSError):
                os.kill(_python_process(windows_file), signal.SIGTERM)
            # The bootloader, left alone, removes its _MEI folder and ends.
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(60)
        stop(worker)
    deadline = time.monotonic() + 30
    while _extractions() - before and time.monotonic() < deadline:
        time.sleep(0.5)  # Wine ends the bootloader's child a moment after it
    assert not _extractions() - before, f"left behind: {_extractions() - before}"


def run_host(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(path), *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
