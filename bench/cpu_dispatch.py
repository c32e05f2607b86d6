"""Decode speed of llama.cpp's CPU variants in built files; writes bench/CPU.md.

    python -m bench.cpu_dispatch --dispatch DISPATCH_FILE --portable PORTABLE_FILE

DISPATCH_FILE: the Gemma file built with the dispatch engine
(-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON); PORTABLE_FILE: the same GGUF built
with the former portable engine (-DGGML_NATIVE=OFF only: AVX2, FMA, F16C). Each
configuration runs as a server (`--server -t 2`), one stream of 128 tokens at
temperature 0 with ignore_eos, after a warm-up; the median of the runs' decode speed
(llama-server's `timings.predicted_per_second`) is reported. Variants are forced with
LLAMAPACK_CPU and the extra buffer types (weight repacking) turned off with
LLAMAPACK_CPU_EXTRA_BUFTS=0 (runtime/llama/cpu.py). Which variant a run used is read from
the server's /proc/PID/maps (the libggml-cpu-*.so it mapped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.processes import free_port, stop, wait_healthy

THREADS = 2
TOKENS = 128
PROMPT = "Write a long story about a lighthouse keeper."
OUTPUT = Path(__file__).resolve().parent / "CPU.md"
NOTES_MARKER = "<!-- notes -->"

# (label, which file, environment); the first row is the baseline of the ratios.
CONFIGS: list[tuple[str, str, dict[str, str]]] = [
    ("portable build (before: AVX2, linked in)", "portable", {}),
    ("dispatch, automatic choice", "dispatch", {}),
    ("dispatch, haswell forced (AVX2)", "dispatch", {"LLAMAPACK_CPU": "haswell"}),
    ("dispatch, skylakex forced (AVX-512)", "dispatch", {"LLAMAPACK_CPU": "skylakex"}),
    ("dispatch, icelake forced (AVX-512 VBMI, VNNI)", "dispatch", {"LLAMAPACK_CPU": "icelake"}),
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


def loaded_variant(pid: int) -> str:
    """The CPU library mapped by the process or its child (a onefile app runs in a child)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(child) for child in task.read_text().split()]
    for each in pids:
        try:
            maps = Path(f"/proc/{each}/maps").read_text()
        except OSError:
            continue
        match = re.search(r"libggml-cpu-([\w.]+?)\.so", maps)
        if match:
            return match.group(1)
        if "libggml-cpu.so" in maps:
            return "builtin"
    return "unknown"


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.load(response))


def decode_speed(path: Path, env: dict[str, str], repeats: int) -> tuple[float, str]:
    port = free_port()
    command = [str(path), "--server", "--nobrowser", "--port", str(port), "-t", str(THREADS)]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, timeout=120)
        messages = [{"role": "user", "content": PROMPT}]
        body = {"messages": messages, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        post(url + "/v1/chat/completions", body)  # warm-up
        speeds = []
        for _ in range(repeats):
            started = time.perf_counter()
            reply = post(url + "/v1/chat/completions", {**body, "max_tokens": TOKENS})
            wall = time.perf_counter() - started
            timings = reply.get("timings")
            if isinstance(timings, dict) and timings.get("predicted_per_second"):
                speeds.append(float(timings["predicted_per_second"]))
            else:
                usage = reply.get("usage")
                assert isinstance(usage, dict)
                speeds.append(int(usage["completion_tokens"]) / wall)
        return statistics.median(speeds), loaded_variant(process.pid)
    finally:
        stop(process, timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dispatch", type=Path, required=True, help="file built with the dispatch engine")
    parser.add_argument("--portable", type=Path, required=True, help="file built with the portable engine")
    parser.add_argument("--repeats", type=int, default=3, help="requests per server start")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all configurations")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    files = {"dispatch": args.dispatch, "portable": args.portable}
    # Rounds interleave the configurations, so that load from other processes on the
    # machine spreads over all of them instead of landing on one.
    speeds: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
    variants: dict[str, str] = {}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        for label, which, env in CONFIGS:
            if variants.get(label) == "skipped":
                continue
            try:
                speed, variant = decode_speed(files[which], env, args.repeats)
            except RuntimeError as exc:  # e.g. a forced variant this CPU cannot run
                log(f"{label}: skipped, {exc}")
                variants[label] = "skipped"
                continue
            variants[label] = variant
            speeds[label].append(speed)
            log(f"round {round_ + 1}, {label}: {variant}, {speed:.1f} tok/s")
    load = (load_before, os.getloadavg()[0])
    rows = []
    baseline = 0.0
    for label, _, _ in CONFIGS:
        if speeds[label]:
            speed = statistics.median(speeds[label])
            baseline = baseline or speed
            rows.append((label, variants[label], speed, speed / baseline))
    write_report(args.output, rows, args.repeats, args.rounds, load)
    return 0


def write_report(
    path: Path,
    rows: list[tuple[str, str, float, float]],
    repeats: int,
    rounds: int,
    load: tuple[float, float],
) -> None:
    lines = [
        "# CPU dispatch: decode speed by llama.cpp CPU variant",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}.",
        f"Gemma 3 270M Q4_K_M, one stream, {TOKENS} tokens at temperature 0 (ignore_eos), "
        f"{THREADS} threads, server mode (`/v1/chat/completions`, llama-server's `timings`).",
        f"Median over {rounds} interleaved rounds of {repeats} requests each, after a warm-up; "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after.",
        "Reproduce: `python -m bench.cpu_dispatch --dispatch DISPATCH_FILE --portable PORTABLE_FILE`",
        "(see the script's docstring for how the two files are built).",
        "",
        "| build / variant | loaded | tok/s | ratio |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {label} | {variant} | {speed:.1f} | {ratio:.2f} |" for label, variant, speed, ratio in rows]
    notes = ""  # hand-written findings below the marker survive a re-run
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = "\n" + NOTES_MARKER + path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(lines) + "\n" + notes)
    log(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
