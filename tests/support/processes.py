"""Running a server as a user would: on a free port, waited on until /health says
ready, stopped with SIGTERM (which PyInstaller's bootloader forwards; SIGKILL
would orphan its Python child)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


class ServerFailed(RuntimeError):
    """The server exited, or did not become healthy in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    url: str,
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    timeout: float = 60,
    explain: Callable[[], str] = lambda: "",
    health: str = "/health",
) -> float:
    """Poll `url` + `health` until it answers 200; return the seconds since the call.
    Fails at once when the process exits, with `explain()` (e.g. its log) attached."""
    started = time.perf_counter()
    health = url.rstrip("/") + health
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise ServerFailed(f"the server exited with status {process.returncode}\n{explain()}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass  # not listening yet, or still loading (503)
        time.sleep(0.01)
    raise ServerFailed(f"the server was not healthy within {timeout:.0f} s\n{explain()}")


def wait_rpc_worker(
    port: int,
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    timeout: float = 60,
    host: str = "127.0.0.1",
) -> None:
    """Wait until an RPC worker on `port` answers llama.cpp's handshake; fails at
    once when the process exits."""
    from llamapack.runtime.llama.rpc import Endpoint, RpcError, probe

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerFailed(f"the RPC worker exited with status {process.returncode}")
        try:
            probe(Endpoint(host, port), timeout=10)
            return
        except RpcError as exc:
            if time.monotonic() > deadline:
                raise ServerFailed(f"the RPC worker did not answer within {timeout:.0f} s: {exc}") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 30) -> None:
    """SIGTERM and wait; SIGKILL only when it does not end in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serving_pid(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> int:
    """The process that runs Python: a built file's bootloader runs it as its child."""
    pid = process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid
