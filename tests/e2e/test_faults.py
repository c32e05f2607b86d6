"""Faults against the real built file: load, signals mid-stream, binding warnings, --max-body."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.built_file import Server, get_json

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello."}]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post(port: int, path: str, body: dict, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_200_requests_at_concurrency_16_are_all_answered_and_memory_stays_flat(gemma_file):
    server = Server(gemma_file, "-np", "2", "--max-queue", "2")
    try:
        server.wait_healthy()
        body = {"messages": HELLO, "max_tokens": 4, "temperature": 0}
        for _ in range(4):  # warm up: first allocations, caches
            assert post(server.port, CHAT, body)[0] == 200
        pid = server.python_pid()
        before = rss_kib(pid)
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: post(server.port, CHAT, body), range(200)))
        after = rss_kib(pid)
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) > 0 and statuses.count(503) > 0  # the small queue did fill
        for status, headers, raw in results:
            if status == 503:
                assert headers["Retry-After"] == "1"
                assert json.loads(raw)["error"]["type"] == "server_overloaded"
        print(f"\nload: {statuses.count(200)} ok, {statuses.count(503)} busy; "
              f"RSS {before // 1024} MiB before, {after // 1024} MiB after")  # fmt: skip
        assert after - before < 200 * 1024
        assert get_json(server.url + "/health")[0] == 200
        code, err = server.stop(signal.SIGTERM)
        assert code == 0 and "Traceback" not in err, err
    finally:
        server.close()


def _temp_dir(server: Server) -> Path:
    """PyInstaller's _MEI folder the running file unpacked its runtime into."""
    maps = Path(f"/proc/{server.python_pid()}/maps").read_text().splitlines()
    return next(Path(line.split()[-1]).parent for line in maps if "/_MEI" in line)


def _stream_under_way(server: Server) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A long streamed chat, its first chunk read: generation is under way."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"messages": HELLO, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    connection.request("POST", CHAT, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    return connection, response


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_stream_ends_it_cleanly(gemma_file, sig):
    server = Server(gemma_file)
    try:
        server.wait_healthy()
        temp_dir = _temp_dir(server)
        connection, response = _stream_under_way(server)
        server.process.send_signal(sig)
        rest = response.read().decode()  # ends: the server closes the stream, not the timeout
        connection.close()
        assert rest.rstrip().endswith("data: [DONE]"), rest[-300:]
        _, err = server.process.communicate(timeout=60)  # one signal is enough to end it
        assert server.process.returncode == 0, err
        assert "Traceback" not in err
        assert not temp_dir.exists(), "PyInstaller's temporary folder must be removed"
    finally:
        server.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_shutdown_ends_it_with_one_line(gemma_file, sig):
    """As `pkill -f` does: one signal to the bootloader, which forwards it, and one
    to its Python process, while that is still closing the stream. (Two signals this
    close together may also arrive as one: then the file exits 0, as for one.)"""
    server = Server(gemma_file)
    try:
        server.wait_healthy()
        temp_dir = _temp_dir(server)
        connection, response = _stream_under_way(server)
        python = server.python_pid()
        server.process.send_signal(sig)
        os.kill(python, sig)
        with contextlib.suppress(http.client.IncompleteRead):  # stopping at once may cut it
            response.read()
        connection.close()
        _, err = server.process.communicate(timeout=60)
        assert server.process.returncode in (0, 128 + sig), err
        assert "Traceback" not in err, err
        if server.process.returncode:  # the second signal came while shutting down
            name = signal.Signals(sig).name
            assert err.splitlines()[-1] == f"gemma: stopped at once ({name} during shutdown)", err
        assert not temp_dir.exists(), "PyInstaller's temporary folder must be removed"
    finally:
        server.close()


def test_a_non_loopback_bind_without_a_key_warns(gemma_file):
    server = Server(gemma_file, "--host", "0.0.0.0")
    try:
        server.wait_healthy()
        status, _ = get_json(server.url + "/v1/models")
        assert status == 200  # 127.0.0.1 is still a name of this server
    finally:
        server.close()
    _, err = server.process.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "--api-key" in warnings[0]

    keyed = Server(gemma_file, "--host", "0.0.0.0", "--api-key", "k", "--max-body", "1000")
    try:
        keyed.wait_healthy()
        status, headers, raw = post(keyed.port, CHAT, {"messages": HELLO, "pad": "x" * 2000})
        assert status == 401  # the key is checked before the body is read
    finally:
        keyed.close()
    _, err = keyed.process.communicate(timeout=30)
    assert "WARNING" not in err


def test_max_body_is_a_runtime_flag(gemma_file):
    server = Server(gemma_file, "--max-body", "1000")
    try:
        server.wait_healthy()
        status, _, raw = post(server.port, CHAT, {"messages": HELLO, "pad": "x" * 2000})
        assert status == 413 and json.loads(raw)["error"]["type"] == "invalid_request_error"
        status, _, _ = post(server.port, CHAT, {"messages": HELLO, "max_tokens": 2})
        assert status == 200
    finally:
        server.close()
