"""The pytest plugin llama.cpp's server suite runs under (`-p compat.plugin`).

It swaps the suite's model for the one GGUF this machine has, on both sides alike:
the `tinyllama2` preset, which most tests use, serves that GGUF (llama-server gets
it with `--model`; our file serves the model inside it and gets no model flag).
Every test that needs anything else (another preset's model, a file from Hugging
Face, a router loading models by name, the internet) is skipped with a reason that
starts with NOT_APPLICABLE, decided from the server's settings before it starts, so
both sides skip the same tests. No test runs on the peer only.

Read from the environment (compat.peer_suite sets them):
  COMPAT_SIDE      "llama-server" or "llamapack"
  COMPAT_MODEL     the GGUF llama-server serves (llama-server side only)
  COMPAT_LOG_DIR   where each server's output goes, one file per test
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any, NoReturn

import pytest

from compat.junit import NODE_ID_PROPERTY
from compat.verdicts import NOT_APPLICABLE, OURS, PEER

# Tests that make the server itself reach the internet: run, they would send traffic
# off this machine (nothing outside is reachable from here anyway).
INTERNET_TESTS = {
    "unit/test_proxy.py::test_mcp_proxy": "needs the internet: the server fetches http://example.com",
}
# Fixtures that reach off this machine before the test body starts a server.
NETWORK_FIXTURES = {
    "container_engine": "needs docker or podman with the busybox image (pulled from Docker Hub)",
}
ROUTER_REASON = (
    "runs llama-server in router mode (no model of its own; it loads models by name from "
    "Hugging Face or a preset file), which a one-model file does not have"
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"}


def not_applicable(reason: str) -> NoReturn:
    pytest.skip(NOT_APPLICABLE + reason)


def needed_elsewhere(server: Any, served_model: str | None) -> str | None:
    """What `server` (a utils.ServerProcess) needs that this machine cannot give it, or None."""
    if server.model_hf_repo:
        name = server.model_hf_repo + (f"/{server.model_hf_file}" if server.model_hf_file else "")
        return f"needs model {name} from Hugging Face, not available here"
    if server.model_url:
        return f"needs model {server.model_url}, not available here"
    if server.model_draft:
        return f"needs draft model {server.model_draft}, not available here"
    if server.mmproj_url:
        return f"needs multimodal projector {server.mmproj_url}, not available here"
    if server.lora_files:
        return f"needs LoRA adapters {', '.join(server.lora_files)}, not available here"
    if server.models_dir or server.models_preset:
        return ROUTER_REASON
    if server.model_file and server.model_file != served_model:
        return f"needs model {server.model_file}, not available here"
    return None


def _log_name(counter: int) -> str:
    """A file name for the running test's server log, from pytest's own record of it."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "unknown").rsplit(" ", 1)[0]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', current)[:150]}.{counter}.log"


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class _Swap:
    """The patches, applied to the suite's `utils` module once it is imported."""

    def __init__(self, side: str, model: str | None, log_dir: Path) -> None:
        self.side = side
        self.model = model if side == PEER else None
        self.log_dir = log_dir
        self.started = 0

    def apply(self, utils: Any) -> None:
        presets = utils.ServerPreset
        tinyllama2 = presets.tinyllama2
        start = utils.ServerProcess.start
        stop = utils.ServerProcess.stop
        swap = self

        def gemma() -> Any:
            server = tinyllama2()
            server.model_hf_repo = server.model_hf_file = None
            server.model_file = swap.model
            return server

        def no_router() -> Any:
            # Skipped as soon as a test (or its autouse fixture) asks for one: before its
            # other fixtures run (test_tools_builtin's probe a container engine).
            not_applicable(ROUTER_REASON)

        def checked_start(server: Any, *args: Any, **kwargs: Any) -> None:
            reason = needed_elsewhere(server, swap.model)
            if reason:
                not_applicable(reason)
            # A port of its own: a server that outlived its test (a child left behind) cannot
            # make the next tests fail to bind.
            server.server_port = free_port()
            own_log = server.log_path is None
            if own_log:
                swap.started += 1
                server.log_path = str(swap.log_dir / _log_name(swap.started))
            try:
                start(server, *args, **kwargs)
            except (RuntimeError, TimeoutError) as exc:
                # The suite only says the server died; its last line says why.
                last = _last_line(Path(server.log_path)) if own_log else ""
                raise type(exc)(f"{exc}: {last}" if last else str(exc)) from None

        def stop_all(server: Any) -> None:
            # A built file's bootloader forwards SIGTERM to its Python child; if the suite
            # has to SIGKILL the bootloader, the child would live on: end it too.
            children = _children(server.process.pid) if server.process is not None else []
            stop(server)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        def no_download(url: str, output_file_path: str | None = None) -> str:
            not_applicable(f"needs file {url}, not available here")

        # load_all() would have made it, downloading; some tests write files there first.
        Path(utils.TMP_DIR).mkdir(exist_ok=True)
        presets.tinyllama2 = staticmethod(gemma)
        presets.router = staticmethod(no_router)
        presets.load_all = staticmethod(lambda: None)  # nothing to download
        utils.ServerProcess.start = checked_start
        utils.ServerProcess.stop = stop_all
        utils.download_file = no_download
        _keep_requests_local(utils.requests)


def _keep_requests_local(requests: Any) -> None:
    """A test that fetches from the internet itself (test images) skips instead."""
    session = requests.sessions.Session
    request = session.request

    def local_request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in _LOOPBACK and not host.startswith("127."):
            not_applicable(f"needs the internet: fetches {url}")
        return request(self, method, url, *args, **kwargs)

    session.request = local_request


def pytest_configure(config: pytest.Config) -> None:
    # The suite's conftest.py (an initial conftest) has imported utils by now.
    import utils  # type: ignore[import-not-found]  # the suite's own, on its sys.path

    side = os.environ.get("COMPAT_SIDE", "")
    if side not in (PEER, OURS):
        raise pytest.UsageError(f"COMPAT_SIDE must be {PEER} or {OURS}, not {side!r}")
    model = os.environ.get("COMPAT_MODEL")
    if side == PEER and not model:
        raise pytest.UsageError("COMPAT_MODEL must name the GGUF llama-server serves")
    log_dir = Path(os.environ.get("COMPAT_LOG_DIR") or config.rootpath / "tmp" / "compat-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    _Swap(side, model, log_dir).apply(utils)
    # Stopped from outside (a timeout, a kill by pid), pytest still tears its fixtures
    # down, the suite's servers with them, when SIGTERM reaches it as an interrupt.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """No server outlives the run, whatever ended it."""
    utils = sys.modules.get("utils")
    for server in list(getattr(utils, "server_instances", ())):
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.user_properties.append((NODE_ID_PROPERTY, item.nodeid))
        reason = INTERNET_TESTS.get(item.nodeid)
        fixtures = getattr(item, "fixturenames", ())
        reason = reason or next((NETWORK_FIXTURES[f] for f in fixtures if f in NETWORK_FIXTURES), None)
        if reason:
            item.add_marker(pytest.mark.skip(reason=NOT_APPLICABLE + reason))
