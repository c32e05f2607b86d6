"""A model split across machines, on loopback: the built Gemma file as two RPC
workers (`--rpc-server`) and as the main process (`--rpc`), all real llama.cpp."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.built_file import Server, get_json, run_file
from tests.support.processes import free_port, stop, wait_rpc_worker

pytestmark = pytest.mark.e2e

PROMPT = ("-p", "The capital of France is", "-n", "12", "--temp", "0", "-t", "2")
GEMMA_LAYERS = 18  # Gemma 3 270M's blocks; llama.cpp places one more, the output layer


class Worker:
    def __init__(self, path: Path, *args: str):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        # Its own TMPDIR: a killed bootloader cannot remove its _MEI folder, kill() does.
        self.tmp = tempfile.mkdtemp(prefix="llamapack-worker-")
        self.process = subprocess.Popen(
            [str(path), "--rpc-server", "--port", str(self.port), "-t", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": self.tmp},
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        wait_rpc_worker(self.port, self.process, timeout)

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kill(self) -> None:
        """A machine gone at once: the worker's Python (the bootloader's child, read
        before the bootloader dies and it is re-parented), then the bootloader."""
        for pid in _children(self.process.pid):
            os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture
def workers(gemma_file: Path) -> Iterator[list[Worker]]:
    started = [Worker(gemma_file), Worker(gemma_file)]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


def rpc_flag(workers: list[Worker]) -> str:
    return ",".join(worker.endpoint for worker in workers)


def test_greedy_text_split_over_two_workers_is_the_local_text(gemma_file, workers):
    """The same kernels give the same text. A local CPU repacks Q4_K weights for its
    own faster kernels ("extra buffer types"), which RPC workers, holding weights as
    ggml's plain buffers, do not: the local run to compare with has repacking off
    (the README says so). Without it the local text is the file's usual one."""
    same_kernels = {**os.environ, "LLAMAPACK_CPU_EXTRA_BUFTS": "0"}
    local = subprocess.run([str(gemma_file), *PROMPT], capture_output=True, text=True, env=same_kernels)
    assert local.returncode == 0, local.stderr[-2000:]
    split = run_file(gemma_file, "--rpc", rpc_flag(workers), *PROMPT, timeout=300)
    assert split.returncode == 0, split.stderr[-3000:]
    assert split.stdout == local.stdout
    engine = next(line for line in split.stderr.splitlines() if ": engine: " in line)
    assert "RPC0 (127.0.0.1:" in engine and "RPC1 (127.0.0.1:" in engine, engine
    none_offloaded = run_file(gemma_file, "--rpc", rpc_flag(workers), "-ngl", "0", *PROMPT, timeout=300)
    assert none_offloaded.stdout == run_file(gemma_file, *PROMPT).stdout


def test_version_lists_the_workers_devices(gemma_file, workers):
    result = run_file(gemma_file, "--version", "--rpc", rpc_flag(workers))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2].startswith(f"RPC0: RPC worker {workers[0].endpoint}, ")
    assert lines[-1].startswith(f"RPC1: RPC worker {workers[1].endpoint}, ")
    assert lines[-1].endswith(" MiB")


def test_the_server_reports_the_layers_on_each_device(gemma_file, workers):
    server = Server(gemma_file, "--rpc", rpc_flag(workers), "--tensor-split", "3,1")
    try:
        server.wait_healthy(timeout=300)
        status, props = get_json(f"{server.url}/props")
        assert status == 200, props
        layers = props["backend"]["layers_by_device"]
        assert set(layers) == {"RPC0", "RPC1"}, layers
        assert sum(layers.values()) == GEMMA_LAYERS + 1
        assert layers["RPC0"] > layers["RPC1"]  # 3:1
        names = {device["name"]: device["description"] for device in props["backend"]["devices"]}
        assert names["RPC0"] == workers[0].endpoint and names["RPC1"] == workers[1].endpoint
    finally:
        server.close()


def test_workers_offer_the_memory_mem_says_and_layers_follow_it(gemma_file):
    big, small = Worker(gemma_file, "--mem", "3000"), Worker(gemma_file, "--mem", "1000")
    try:
        for worker in (big, small):
            worker.wait_ready()
        flag = rpc_flag([big, small])
        version = run_file(gemma_file, "--version", "--rpc", flag)
        assert version.stdout.splitlines()[-2:] == [
            f"RPC0: RPC worker {big.endpoint}, 3000 MiB",
            f"RPC1: RPC worker {small.endpoint}, 1000 MiB",
        ], version.stdout
        split = run_file(gemma_file, "--rpc", flag, *PROMPT, timeout=300)
        engine = next(line for line in split.stderr.splitlines() if ": engine: " in line)
        layers = dict(
            (part.split(" (")[0].strip(), int(part.rsplit(": ", 1)[1].split()[0]))
            for part in engine.split(": engine: ")[1].split(", ")
            if part.startswith("RPC")
        )
        assert layers["RPC0"] > 2 * layers["RPC1"], engine  # 3:1 by memory
    finally:
        for worker in (big, small):
            worker.stop()


def test_a_worker_lost_mid_stream_fails_the_request_and_health_says_why(gemma_file, workers):
    server = Server(gemma_file, "--rpc", rpc_flag(workers))
    try:
        server.wait_healthy(timeout=300)
        body = {"prompt": "Once upon a time", "max_tokens": 400, "stream": True, "ignore_eos": True}
        request = urllib.request.Request(
            f"{server.url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        events = []
        with urllib.request.urlopen(request, timeout=120) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    workers[1].kill()
        assert len(events) < 400
        assert any("RPC worker was lost" in json.dumps(event) for event in events), events[-2:]
        status, health = get_json(f"{server.url}/health")
        assert status == 503 and "RPC worker was lost" in health["error"], health
        status, answer = get_json(f"{server.url}/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status >= 500 and "RPC worker was lost" in json.dumps(answer), answer
        assert server.process.poll() is None  # it keeps answering
        code, err = server.stop()
        assert code == 0, err[-2000:]
        assert "Traceback" not in err
    finally:
        server.close()


def test_an_unreachable_worker_is_one_line(gemma_file):
    port = free_port()
    result = run_file(gemma_file, "--rpc", f"127.0.0.1:{port}", *PROMPT)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"cannot reach the RPC worker 127.0.0.1:{port}: Connection refused")
    ), result.stderr[-2000:]


def test_a_port_that_is_no_worker_is_one_line(gemma_file):
    server = Server(gemma_file)  # an HTTP server where a worker should be
    try:
        server.wait_healthy()
        result = run_file(gemma_file, "--rpc", f"127.0.0.1:{server.port}", *PROMPT)
        assert result.returncode == 1
        assert "is not a llama.cpp RPC worker" in result.stderr.strip().splitlines()[-1], result.stderr
    finally:
        server.close()


def test_a_worker_refuses_every_address_unless_allowed(gemma_file):
    result = run_file(gemma_file, "--rpc-server", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 1
    assert "--allow-public-rpc" in result.stderr and "no authentication" in result.stderr


def test_a_worker_off_loopback_warns_and_stops_on_sigterm(gemma_file):
    worker = Worker(gemma_file, "--host", "127.0.0.2")
    try:
        # 127.0.0.2 is this machine too, but not the default address
        wait_rpc_worker(worker.port, worker.process, host="127.0.0.2")
        worker.process.send_signal(signal.SIGTERM)
        _, err = worker.process.communicate(timeout=30)
        assert worker.process.returncode == 0, err
        assert "no authentication or encryption" in err
        assert "Traceback" not in err
    finally:
        worker.stop()
