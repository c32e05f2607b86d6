"""Driving a real built file: run it once, or serve with it and talk JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, serving_pid, stop, wait_healthy


def build_file(source: Path, out: Path, *options: str) -> Path:
    """`llamapack build SOURCE -o OUT OPTIONS...`, in process; fails the test on an error."""
    from click.testing import CliRunner

    from llamapack.builder.cli import cli

    result = CliRunner().invoke(cli, ["build", str(source), "-o", str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def run_file(path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=timeout)


def get_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
    """POST `body` (GET without one); the status and the decoded answer, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def check_chat_and_page(url: str, timeout: float) -> None:
    """A served file answers a short chat completion and serves the page."""
    status, answer = get_json(
        f"{url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0},
        timeout=timeout,
    )
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"].strip()
    with urllib.request.urlopen(url + "/", timeout=60) as response:
        assert response.status == 200
        assert "<html" in response.read().decode().lower()


class Server:
    """A built file serving on a free port, its output kept for the test to read."""

    def __init__(self, path: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(path), "--server", "--nobrowser", "--port", str(self.port), "-t", "2", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=None if env is None else {**os.environ, **env},
        )  # fmt: skip

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_healthy(self.url, self.process, timeout, explain=lambda: str(self.process.communicate()))

    def python_pid(self) -> int:
        return serving_pid(self.process)

    def close(self) -> None:
        stop(self.process)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `sig`; the exit status and what the file wrote to stderr."""
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err
