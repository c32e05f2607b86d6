"""CUDA: llamapack's file against llama-server on an NVIDIA GPU, same engine, same run.

Two steps, because the machine with the GPU may have no network:

    .venv/bin/python -m bench.cuda prepare   # here: builds bench/work/cuda/ (about 11 GB)
    python3 bench/cuda.py run                # on the GPU machine, from a copy of the repo
                                             # with bench/work/cuda/ in it: writes bench/CUDA.md

`prepare` makes, from the pinned llama-cpp-python sdist:
  * the Gemma file built with `--gpu-runtime cuda` (ggml-cuda for sm_80/89/90 and
    NVIDIA's CUDA 13 runtime and cuBLAS inside it), and a 4.5 GiB Gemma (its blocks
    in F16, repeated: bench/run.py's deep_gemma_gguf) for a model that keeps a GPU busy;
  * llama-server built from the same llama.cpp with GGML_BACKEND_DL, given the very
    backends the file carries: the wheel's CPU variants and the same libggml-cuda.so
    with its CUDA libraries. Both sides then run the same kernels, so the ratio is
    what llamapack's runtime (Python, aiohttp, its batching) costs or gains.

`run` needs only Python 3.9+ and an NVIDIA driver >= 580 (CUDA 13). It measures
launch to ready (/health), then decode with 1 and 4 streams (tokens per second,
all layers on the GPU: -ngl 99), the two servers loaded together and measured in
turns, and writes the table with llamapack / llama-server ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "work" / "cuda"
RESULTS = ROOT / "bench" / "CUDA.md"
MODELS = {"gemma-3-270m Q4_K_M": "gemma", "deep Gemma F16, 4.5 GiB": "deep-gemma"}


# -------------------------------------------------------------- prepare (here)


def prepare() -> None:
    sys.path.insert(0, str(ROOT))
    from bench import run as bench
    from llamapack.builder import cuda

    OUT.mkdir(parents=True, exist_ok=True)
    server_dir = OUT / "llama-server"
    server_dir.mkdir(exist_ok=True)
    cuda.ensure_cuda(bench.log)
    build = _llama_server_dl(bench)
    shutil.copy2(build / "bin" / "llama-server", server_dir / "llama-server")
    for built in (build / "bin").glob("lib*.so*"):
        shutil.copy2(built, server_dir / built.name, follow_symlinks=True)
    import llama_cpp

    for cpu_variant in (Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu-*.so"):
        shutil.copy2(cpu_variant, server_dir / cpu_variant.name)
    for library in cuda.payload(bench.log).record.libraries:  # the very bytes the file carries
        packed = cuda.cuda_dir() / (library.file + ".xz")
        (server_dir / library.file).write_bytes(lzma.decompress(packed.read_bytes()))
    for source, name in ((bench.gemma_gguf(), "gemma"), (bench.deep_gemma_gguf(4608 << 20), "deep-gemma")):
        gguf = OUT / f"{name}.gguf"
        if not gguf.exists():
            shutil.copy2(source, gguf)
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "llamapack"), "build", str(source), "-o", str(OUT / name),
             "--gpu-runtime", "cuda", "--chat-template", "gemma", "-q"],
            check=True,
        )  # fmt: skip
    bench.log(
        f"prepared {OUT}: copy the repository with it to the GPU machine and run `python3 bench/cuda.py run`"
    )


def _llama_server_dl(bench: object) -> Path:
    """llama-server with loadable backends (none built in), from the sdist's llama.cpp."""
    bench.llama_server()  # type: ignore[attr-defined]  # unpacks the sdist beside it
    source = next((ROOT / "bench" / "work").glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = source / "build-backend-dl"
    subprocess.run(
        ["cmake", "-B", str(build), "-S", str(source), "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF",
         "-DGGML_BACKEND_DL=ON", "-DGGML_CPU=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return build


# -------------------------------------------------------------- run (on the GPU machine)


class Server:
    def __init__(self, command: list[str], port: int, env: dict[str, str] | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def wait_ready(self, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise SystemExit(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"{self.url} not ready after {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(kind: str, model: str, parallel: int = 4) -> Server:
    port = _free_port()
    common = ["--port", str(port), "-c", "8192", "-np", str(parallel), "-ngl", "99"]
    if kind == "llamapack":
        return Server([str(OUT / model), "--server", "--nobrowser", "--gpu", "cuda", *common], port)
    server_dir = OUT / "llama-server"
    env = dict(os.environ, LD_LIBRARY_PATH=str(server_dir))
    command = [str(server_dir / "llama-server"), "-m", str(OUT / f"{model}.gguf"), "--chat-template", "gemma"]
    return Server([*command, "--no-webui", *common], port, env)


async def _stream(url: str, tokens: int, seed: int) -> int:
    """One streamed chat completion; its completion tokens (from the usage chunk)."""
    body = json.dumps({
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": tokens, "stream": True, "ignore_eos": True, "temperature": 0.8, "seed": seed,
        "stream_options": {"include_usage": True},
    }).encode()  # fmt: skip

    def request() -> int:
        post = urllib.request.Request(
            url + "/v1/chat/completions", body, {"Content-Type": "application/json"}
        )
        count = 0
        with urllib.request.urlopen(post, timeout=600) as response:
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage")
                    count = usage["completion_tokens"] if usage else count
        return count

    return await asyncio.to_thread(request)


async def throughput(server: Server, streams: int, tokens: int) -> float:
    await _stream(server.url, 8, 0)  # warm-up
    started = time.perf_counter()
    counts = await asyncio.gather(*(_stream(server.url, tokens, seed) for seed in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


def measure(model: str, launches: int, rounds: int, tokens: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for kind in ("llama-server", "llamapack"):
        times = []
        for _ in range(launches):
            server = start(kind, model)
            try:
                times.append(server.wait_ready())
            finally:
                server.stop()
        results[kind] = {"launch": statistics.median(times)}
    servers = {kind: start(kind, model) for kind in ("llama-server", "llamapack")}
    try:
        for server in servers.values():
            server.wait_ready()
        for streams, key in ((1, "single"), (4, "four")):
            rates: dict[str, list[float]] = {kind: [] for kind in servers}
            for _ in range(rounds):  # in turns, so a machine that slows down slows both alike
                for kind, server in servers.items():
                    rates[kind].append(asyncio.run(throughput(server, streams, tokens)))
            for kind in servers:
                results[kind][key] = statistics.median(rates[kind])
    finally:
        for server in servers.values():
            server.stop()
    return results


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown GPU (nvidia-smi failed)"


def run(quick: bool) -> None:
    launches, rounds, tokens = (3, 2, 128) if quick else (5, 3, 256)
    lines = [
        "# CUDA: llamapack vs llama-server",
        "",
        f"GPU: {gpu_name()}. Same llama.cpp and the same ggml-cuda library on both sides; "
        f"-ngl 99, -c 8192, -np 4; {tokens} tokens per stream, median of {rounds} rounds; "
        f"launch: median of {launches}. Written by `python3 bench/cuda.py run`.",
        "",
        "| model | measure | llama-server | llamapack | ratio (llamapack / llama-server) |",
        "|---|---|---|---|---|",
    ]
    for label, model in MODELS.items():
        result = measure(model, launches, rounds, tokens)
        peer, ours = result["llama-server"], result["llamapack"]
        lines.append(f"| {label} | launch to ready (s) | {peer['launch']:.2f} | {ours['launch']:.2f} | "
                     f"{peer['launch'] / ours['launch']:.2f}x faster |")  # fmt: skip
        for key, name in (("single", "decode, 1 stream (tok/s)"), ("four", "decode, 4 streams (tok/s)")):
            lines.append(
                f"| {label} | {name} | {peer[key]:.1f} | {ours[key]:.1f} | {ours[key] / peer[key]:.2f}x |"
            )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--quick", action="store_true", help="fewer launches, rounds and tokens")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    else:
        run(args.quick)


if __name__ == "__main__":
    main()
