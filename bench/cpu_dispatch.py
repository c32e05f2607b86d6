"""Decode speed of llama.cpp's CPU variants in built files; writes bench/CPU.md.

    python bench/cpu_dispatch.py --dispatch DISPATCH_FILE --portable PORTABLE_FILE

DISPATCH_FILE: the Gemma file built with the dispatch engine
(-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON); PORTABLE_FILE: the same GGUF built
with the former portable engine (-DGGML_NATIVE=OFF only: AVX2, FMA, F16C). Each
configuration runs as a server (`--server -t 2`), one stream of 128 tokens at
temperature 0 with ignore_eos, after a warm-up; the median of the runs' decode speed
(llama-server's `timings.predicted_per_second`) is reported. Variants are forced with
LLAMAPACK_CPU and the extra buffer types (weight repacking) turned off with
LLAMAPACK_CPU_EXTRA_BUFTS=0 (runtime/cpu.py). Which variant a run used is read from
llama.cpp's log ("loaded CPU backend from ...") of a one-token `--verbose` run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

THREADS = 2
TOKENS = 128
PROMPT = "The capital of France is"
OUTPUT = Path(__file__).resolve().parent / "CPU.md"

# (label, which file, environment); the first row is the baseline of the ratios.
CONFIGS: list[tuple[str, str, dict[str, str]]] = [
    ("portable build (before: AVX2, linked in)", "portable", {}),
    ("dispatch, automatic choice", "dispatch", {}),
    ("dispatch, haswell forced (AVX2)", "dispatch", {"LLAMAPACK_CPU": "haswell"}),
    ("dispatch, skylakex forced (AVX-512)", "dispatch", {"LLAMAPACK_CPU": "skylakex"}),
    ("dispatch, icelake forced (AVX-512 VBMI, VNNI)", "dispatch", {"LLAMAPACK_CPU": "icelake"}),
    ("dispatch, zen4 forced (+ AVX-512 BF16)", "dispatch", {"LLAMAPACK_CPU": "zen4"}),
    (
        "dispatch, zen4, extra buffer types off (no repacking)",
        "dispatch",
        {"LLAMAPACK_CPU": "zen4", "LLAMAPACK_CPU_EXTRA_BUFTS": "0"},
    ),
    ("dispatch, sse42 forced (no AVX)", "dispatch", {"LLAMAPACK_CPU": "sse42"}),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loaded_variant(path: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(path), "-p", "Hi", "-n", "1", "-t", str(THREADS), "--verbose"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        return f"failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}"
    match = re.search(r"loaded CPU backend from \S*libggml-cpu-([\w.]+)\.so", result.stderr)
    return match.group(1) if match else "builtin"


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.load(response))


def decode_speed(path: Path, env: dict[str, str], repeats: int) -> float:
    port = free_port()
    command = [str(path), "--server", "--nobrowser", "--port", str(port), "-t", str(THREADS)]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{path} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} did not become healthy")
            time.sleep(0.2)
        body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        post(url + "/v1/completions", body)  # warm-up
        speeds = []
        for _ in range(repeats):
            started = time.perf_counter()
            reply = post(url + "/v1/completions", {**body, "max_tokens": TOKENS})
            wall = time.perf_counter() - started
            timings = reply.get("timings")
            if isinstance(timings, dict) and timings.get("predicted_per_second"):
                speeds.append(float(timings["predicted_per_second"]))
            else:
                usage = reply.get("usage")
                assert isinstance(usage, dict)
                speeds.append(int(usage["completion_tokens"]) / wall)
        return statistics.median(speeds)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dispatch", type=Path, required=True, help="file built with the dispatch engine")
    parser.add_argument("--portable", type=Path, required=True, help="file built with the portable engine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    files = {"dispatch": args.dispatch, "portable": args.portable}
    rows = []
    baseline = 0.0
    for label, which, env in CONFIGS:
        variant = loaded_variant(files[which], env)
        if variant.startswith("failed"):  # e.g. a forced variant this CPU cannot run
            log(f"{label}: skipped, {variant}")
            continue
        speed = decode_speed(files[which], env, args.repeats)
        baseline = baseline or speed
        log(f"{label}: {variant}, {speed:.1f} tok/s")
        rows.append((label, variant, speed, speed / baseline))
    write_report(args.output, rows, args.repeats)
    return 0


def write_report(path: Path, rows: list[tuple[str, str, float, float]], repeats: int) -> None:
    lines = [
        "# CPU dispatch: decode speed by llama.cpp CPU variant",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}.",
        f"Gemma 3 270M Q4_K_M, one stream, {TOKENS} tokens at temperature 0 (ignore_eos), "
        f"{THREADS} threads, server mode, median of {repeats} runs after a warm-up.",
        "Reproduce: `python bench/cpu_dispatch.py --dispatch DISPATCH_FILE --portable PORTABLE_FILE`",
        "(see the script's docstring for how the two files are built).",
        "",
        "| build / variant | loaded | tok/s | ratio |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {label} | {variant} | {speed:.1f} | {ratio:.2f} |" for label, variant, speed, ratio in rows]
    path.write_text("\n".join(lines) + "\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
