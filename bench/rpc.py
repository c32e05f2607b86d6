"""A model split across machines, measured on loopback, side by side with llama.cpp.

    .venv/bin/python -m bench.rpc            # writes bench/RPC.md
    .venv/bin/python -m bench.rpc --quick    # fewer repetitions

Four set-ups serve the Gemma file's model with the same threads and context:
  * llamapack, local: the built file alone;
  * llamapack, 2 workers: the same file twice as `--rpc-server` on 127.0.0.1, and once
    as the main process with `--rpc` (every layer on the workers, split by memory);
  * llama-server, local, and llama-server with `--rpc` over two of llama.cpp's own
    `rpc-server`, both built from the llama.cpp our engine comes from (bench/run.py).
Measured: launch to /health 200 (workers already up), and one stream's decode speed.
On one machine the workers share its cores with the main process, so the split is
slower than local here: the figures say what the protocol costs, not what a second
machine brings. The ratios that matter are llamapack's against llama-server's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.run import (
    ROOT,
    WORK,
    Server,
    _throughput,
    built_file,
    gemma_gguf,
    llama_server,
    log,
    machine,
)
from tests.support.processes import free_port, stop, wait_rpc_worker

RESULTS = ROOT / "bench" / "RPC.md"
THREADS = 2  # the main process; each worker gets 1
TOKENS = 64


@contextmanager
def workers(command: Callable[[int], list[str]], count: int = 2) -> Iterator[str]:
    """`count` workers on loopback, ready; yields the --rpc value."""
    ports = [free_port() for _ in range(count)]
    processes = [
        subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_rpc_worker(port, process)
        yield ",".join(f"127.0.0.1:{port}" for port in ports)
    finally:
        for process in processes:
            stop(process, timeout=15)


def ours(file: Path, rpc: str | None) -> Server:
    port = free_port()
    extra = ["--rpc", rpc] if rpc else []
    return Server([str(file), "--server", "--nobrowser", "--port", str(port), "-t", str(THREADS),
                   "-c", "4096", "-np", "1", *extra], port)  # fmt: skip


def theirs(binary: Path, gguf: Path, rpc: str | None) -> Server:
    port = free_port()
    extra = ["--rpc", rpc, "-ngl", "99"] if rpc else []
    return Server([str(binary), "-m", str(gguf), "--port", str(port), "-t", str(THREADS), "-c", "4096",
                   "-np", "1", "--chat-template", "gemma", "--no-webui", *extra], port)  # fmt: skip


def measure(start: Callable[[], Server], repeats: int) -> dict[str, float]:
    """Median launch-to-ready, and the median of one stream's decode speed."""
    ready, speeds = [], []
    for _ in range(repeats):
        server = start()
        try:
            ready.append(server.wait_healthy(timeout=300))
            speed, _ = asyncio.run(_throughput(server, 1, TOKENS))
            speeds.append(speed)
        finally:
            server.stop()
    return {"ready_s": statistics.median(ready), "decode_tps": statistics.median(speeds)}


def write(results: dict[str, dict[str, float]], repeats: int) -> None:
    def row(name: str, key: str, fmt: str) -> str:
        a, b = results[f"llamapack, {name}"][key], results[f"llama-server, {name}"][key]
        return f"| {key_label[key]}, {name} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f}x |"

    key_label = {"ready_s": "Launch to ready (s)", "decode_tps": "Decode, 1 stream (tokens/s)"}
    lines = [
        "# A model split across machines: llamapack vs llama-server, on loopback",
        "",
        f"Measured with `python -m bench.rpc` on {time.strftime('%Y-%m-%d')}, medians of {repeats} runs: "
        f"Gemma 3 270M Q4_K_M, main process {THREADS} threads, 2 workers of 1 thread each on 127.0.0.1, "
        f"{TOKENS} tokens decoded. Machine: {machine()}.",
        "",
        "| measure | llamapack | llama-server | ratio |",
        "|---|---|---|---|",
        row("local", "ready_s", "{:.2f}"),
        row("2 workers", "ready_s", "{:.2f}"),
        row("local", "decode_tps", "{:.1f}"),
        row("2 workers", "decode_tps", "{:.1f}"),
        "",
        "Split against local on the same machine (the workers share its 2 cores, so this is the "
        "protocol's cost, not a second machine's gain):",
        "",
        "| | llamapack | llama-server |",
        "|---|---|---|",
    ]
    for key in ("ready_s", "decode_tps"):
        ratios = [results[f"{side}, 2 workers"][key] / results[f"{side}, local"][key]
                  for side in ("llamapack", "llama-server")]  # fmt: skip
        lines.append(f"| {key_label[key]}: 2 workers / local | {ratios[0]:.2f}x | {ratios[1]:.2f}x |")
    RESULTS.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    repeats = 2 if parser.parse_args().quick else 5
    WORK.mkdir(parents=True, exist_ok=True)
    gguf = gemma_gguf()
    server_binary = llama_server()
    rpc_server = WORK / "rpc-server"
    log("building the Gemma file...")
    file = built_file(gguf, "gemma-rpc")
    results: dict[str, dict[str, float]] = {}
    log("local...")
    results["llamapack, local"] = measure(lambda: ours(file, None), repeats)
    results["llama-server, local"] = measure(lambda: theirs(server_binary, gguf, None), repeats)
    log("2 loopback workers...")
    with workers(lambda port: [str(file), "--rpc-server", "--port", str(port), "-t", "1"]) as rpc:
        results["llamapack, 2 workers"] = measure(lambda: ours(file, rpc), repeats)
    with workers(lambda port: [str(rpc_server), "-p", str(port), "-t", "1"]) as rpc:
        results["llama-server, 2 workers"] = measure(lambda: theirs(server_binary, gguf, rpc), repeats)
    write(results, repeats)
    print(RESULTS.read_text())
    (WORK / "gemma-rpc").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
