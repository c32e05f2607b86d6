"""CUDA: a llamapack file against llama-server on an NVIDIA GPU, same llama.cpp, same
CUDA libraries, measured in one run.

The GPU machine this project borrows (an H200) has CUDA 13's compiler, cmake, ninja,
Python 3 with numpy and NVIDIA's CUDA libraries, but no network, and at most 64 MiB
travel with the repository. So the measurement is built there, from what fits:

    .venv/bin/python -m bench.cuda carry      # here: .devcarry/ (about 40 MB, git-ignored)
    python3 bench/cuda.py device              # there: the device tool's `run`, carry [".devcarry"]

`carry` puts in .devcarry/ this machine's linux-x86_64 runtime stub and llama.cpp's
sources from the pinned llama-cpp-python sdist (the stub's own engine sources, with
gguf-py). `device` then, on the GPU machine:
  1. compiles those sources with CUDA (sm_90, the H200's; --arch) and loadable
     backends: llama-server and libggml-cuda.so;
  2. writes a GGUF: a llama-architecture model with random F16 weights (1.3 B
     parameters, 2.5 GB: decode is bound by reading the weights; their values do not
     change the kernels' speed);
  3. builds a llamapack file from the stub, that GGUF and, as `llamapack build
     --gpu-runtime cuda` does, that libggml-cuda.so with the machine's CUDA runtime and
     cuBLAS, xz-packed members after the model (with runtime/fileformat alone: the
     builder's dependencies are not there);
  4. measures launch to ready and decode with 1 and 4 streams (-ngl 99, -c 8192,
     -np 4), the two servers loaded together and measured in turns, and writes
     bench/CUDA.md with the llamapack / llama-server ratios.

So both sides run the very same ggml-cuda library and CUDA libraries: the ratio is
what llamapack's runtime (Python, aiohttp, its batching loop) costs or gains.

A dry run of everything but CUDA, on a machine without an NVIDIA GPU:

    .venv/bin/python -m bench.cuda device --gpu none --llama-server bench/work/llama-server --small
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / ".devcarry"
RESULTS = ROOT / "bench" / "CUDA.md"
STUB_NAME = "llamapack-runtime"
SOURCES_NAME = "llama.cpp.tar.xz"
# What building llama-server and the backends needs of vendor/llama.cpp (and gguf-py, to write the GGUF).
SOURCE_PARTS = ("CMakeLists.txt", "cmake", "common", "ggml", "gguf-py", "include", "src", "tools", "vendor",
                "licenses", "LICENSE")  # fmt: skip
RUNTIME_LIBRARIES = (
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
)  # load order, as builder/cuda.py
MODEL = {
    "full": dict(n_embd=2048, n_layer=22, n_ff=5632, n_head=16),
    "small": dict(n_embd=256, n_layer=4, n_ff=688, n_head=4),
}
N_VOCAB = 32000


# -------------------------------------------------------------- carry (here)


def carry() -> None:
    sys.path.insert(0, str(ROOT))
    from bench import run as bench
    from llamapack.builder.stub import ensure_stub

    CARRY.mkdir(exist_ok=True)
    shutil.copy2(ensure_stub().path, CARRY / STUB_NAME)
    bench.llama_server()  # downloads and unpacks the sdist beside it
    source = next((ROOT / "bench" / "work").glob("llama_cpp_python-*/vendor/llama.cpp"))
    with tarfile.open(CARRY / SOURCES_NAME, "w:xz", preset=9) as archive:
        for part in SOURCE_PARTS:
            archive.add(source / part, f"llama.cpp/{part}", filter=_sources_only)
    total = sum(path.stat().st_size for path in CARRY.iterdir())
    bench.log(f"{CARRY}: {total / 2**20:.1f} MiB; on the GPU machine: python3 bench/cuda.py device")


def _sources_only(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """No build folders, no web UI sources (llama-server embeds its built page), no tests."""
    parts = member.name.split("/")
    if any(part in ("build", "build-backend-dl", "tests", "node_modules", ".git") for part in parts[1:]):
        return None
    if "webui" in parts:
        return None
    return member


# -------------------------------------------------------------- device (there)


def device(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = _unpack_sources(work)
    server = Path(args.llama_server) if args.llama_server else None
    libraries: list[Path] = []
    if args.gpu == "cuda":
        build = _compile(source, work / "build", args.arch)
        server = build / "bin" / "llama-server"
        libraries = [*_cuda_runtime(), build / "bin" / "libggml-cuda.so"]
    assert server is not None, "--llama-server is needed with --gpu none"
    gguf = _write_model(source, work / "model.gguf", MODEL["small" if args.small else "full"])
    file = _assemble(work / "model", Path(args.stub), gguf, libraries)
    _log(f"built {file} ({file.stat().st_size / 2**30:.2f} GiB)")
    launches, rounds, tokens = (2, 1, 64) if args.quick else (5, 3, 256)
    sides = {
        "llama-server": lambda port: _start(
            [str(server), "-m", str(gguf), "--chat-template", "chatml", "--no-webui"],
            port,
            args.gpu,
            env={"LD_LIBRARY_PATH": str(server.parent)},
        ),  # fmt: skip
        "llamapack": lambda port: _start(
            [str(file), "--server", "--nobrowser", "--gpu", args.gpu], port, args.gpu
        ),
    }
    results = measure(sides, launches, rounds, tokens)
    write_results(results, args, tokens, rounds, launches, gguf)


def _unpack_sources(work: Path) -> Path:
    source = work / "llama.cpp"
    if not source.is_dir():
        with tarfile.open(CARRY / SOURCES_NAME) as archive:
            archive.extractall(work, filter="data")
    return source


def _compile(source: Path, build: Path, arch: str) -> Path:
    """llama-server and the backends as loadable libraries (GGML_BACKEND_DL), as the stub
    loads them; without VMM, as builder/cuda.py builds the file's backend. The CPU
    backend is a portable one: with every layer on the GPU it holds none of the work."""
    _log(f"compiling llama.cpp with CUDA for {arch} ...")
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    toolkit = [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCUDAToolkit_ROOT={Path(nvcc).resolve().parent.parent}"]
    subprocess.run(
        ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_CUDA=ON", "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF", f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
         "-DGGML_CUDA_NO_VMM=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF", *toolkit],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    started = time.perf_counter()
    targets = ["llama-server", "ggml-cuda", "ggml-cpu"]
    jobs = str(os.cpu_count() or 4)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", jobs, "--target", *targets],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _log(f"compiled in {time.perf_counter() - started:.0f} s")
    return build


def _cuda_runtime() -> list[Path]:
    """The machine's CUDA runtime and cuBLAS: NVIDIA's pip packages, else the toolkit's."""
    folders = [
        Path(entry) / "nvidia" / sub / "lib"
        for entry in sys.path
        for sub in ("cu13", "cublas", "cuda_runtime")
    ]
    nvcc = shutil.which("nvcc")
    if nvcc:
        toolkit = Path(nvcc).resolve().parent.parent
        folders += [toolkit / "lib64", toolkit / "targets" / "x86_64-linux" / "lib"]
    found = []
    for name in RUNTIME_LIBRARIES:
        match = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if match is None:
            raise SystemExit(f"no {name} in {', '.join(map(str, folders))}")
        found.append(match)
    return found


def _write_model(source: Path, path: Path, shape: dict[str, int]) -> Path:
    """A llama model with random F16 weights (gguf-py from the carried sources)."""
    if path.exists():
        return path
    sys.path.insert(0, str(source / "gguf-py"))
    import gguf
    import numpy as np

    n_embd, n_layer, n_ff, n_head = shape["n_embd"], shape["n_layer"], shape["n_ff"], shape["n_head"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("random llama for bench/cuda.py")
    writer.add_context_length(8192)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{index}" for index in range(N_VOCAB - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    rng = np.random.default_rng(0)

    def weights(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    writer.add_tensor("token_embd.weight", weights(N_VOCAB, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weights(N_VOCAB, n_embd))
    for block in range(n_layer):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", weights(n_embd, n_embd))
        writer.add_tensor(prefix + "ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(prefix + "ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(prefix + "ffn_down.weight", weights(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _importable() -> None:
    """llamapack.runtime from this checkout, installed or not (its fileformat needs only
    the standard library, and the GPU machine has no llamapack installed)."""
    try:
        import llamapack.runtime  # noqa: F401
    except ImportError:
        package = Path(tempfile.mkdtemp()) / "llamapack"
        package.mkdir()
        (package / "runtime").symlink_to(ROOT / "runtime")
        sys.path.insert(0, str(package.parent))


def _assemble(out: Path, stub_path: Path, gguf: Path, libraries: list[Path]) -> Path:
    """A llamapack file: the stub, the GGUF, and the CUDA libraries as --gpu-runtime adds them."""
    _importable()
    from llamapack.runtime import fileformat as ff
    from llamapack.runtime.fileformat.gguf import read_header_from_stream

    stub = ff.read_stub(stub_path.read_bytes())
    size = gguf.stat().st_size
    with gguf.open("rb") as raw:
        header = read_header_from_stream(raw, size, str(gguf))
    records, entries, packed_files = [], [], []
    for library in libraries:
        packed = out.parent / (library.name + ".xz")
        data = library.read_bytes()
        blob = lzma.compress(data, preset=1)
        packed.write_bytes(blob)
        member = f"gpu/cuda/{library.name}.xz"
        records.append(
            ff.GpuLibrary(library.name, member, hashlib.sha256(data).hexdigest(), len(data), len(blob))
        )
        entries.append(ff.PayloadEntry(member, len(blob), zlib.crc32(blob)))
        packed_files.append(packed)
    digest, crc = hashlib.sha256(), 0
    with gguf.open("rb") as raw:
        while chunk := raw.read(1 << 24):
            digest.update(chunk)
            crc = zlib.crc32(chunk, crc)
    model = ff.place_model(stub, gguf.name, size, ff.payload_size(entries))
    manifest = ff.Manifest(
        name="random-llama",
        engine=ff.EngineRecord("bench", "bench", "linux-x86_64"),
        model=ff.ModelRecord(file=gguf.name, size=size, sha256=digest.hexdigest(), offset=model.data_at,
                             name=None, architecture=header.architecture,
                             parameters=sum(tensor.n_elements for tensor in header.tensors),
                             quantization="F16", context_length=8192),
        chat_template=ff.ChatTemplateChoice("builtin", "chatml", "bench/cuda.py"),
        gpu_runtime=ff.GpuRuntime("cuda", tuple(records)) if records else None,
    ).encode()  # fmt: skip
    args = ff.encode_args(["..."])
    plan = ff.plan_file(stub, model, len(manifest), len(args), entries)
    with out.open("wb") as target, gguf.open("rb") as raw:
        plan.write_head(target)
        shutil.copyfileobj(raw, target, 1 << 24)
        sources = [path.open("rb") for path in packed_files]
        try:
            plan.write_payload(target, sources)
        finally:
            for opened in sources:
                opened.close()
        plan.write_tail(target, manifest, args, model_crc=crc)
    out.chmod(0o755)
    return out


class Server:
    def __init__(self, command: list[str], port: int, env: dict[str, str] | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.perf_counter()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (kept for the server's life)
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, **(env or {})}
        )

    def wait_ready(self, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"server exited: {self.log.read().decode(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"{self.url} not ready after {timeout} s")

    def launch_line(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").splitlines()
        return next((line for line in lines if ": engine: " in line or "offloaded" in line), "")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _start(command: list[str], port: int, gpu: str, env: dict[str, str] | None = None) -> Server:
    layers = ["-ngl", "99"] if gpu == "cuda" else ["-ngl", "0"]
    common = ["--port", str(port), "-c", "8192", "-np", "4", "-t", str(min(8, os.cpu_count() or 2)), *layers]
    return Server([*command, *common], port, env)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def measure(
    sides: dict[str, Callable[[int], Server]], launches: int, rounds: int, tokens: int
) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, start in sides.items():
        times = []
        for _ in range(launches):
            server = start(_free_port())
            try:
                times.append(server.wait_ready())
            finally:
                server.stop()
        results[name] = {"launch": statistics.median(times)}
        _log(f"{name}: ready in {results[name]['launch']:.2f} s")
    servers = {name: start(_free_port()) for name, start in sides.items()}
    try:
        for name, server in servers.items():
            server.wait_ready()
            results[name]["line"] = server.launch_line()
        for streams, key in ((1, "single"), (4, "four")):
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(rounds):  # in turns, so a machine that slows down slows both alike
                for name, server in servers.items():
                    rates[name].append(asyncio.run(throughput(server, streams, tokens)))
            for name in servers:
                results[name][key] = statistics.median(rates[name])
                _log(f"{name}: {streams} stream(s) {results[name][key]:.1f} tok/s")
    finally:
        for server in servers.values():
            server.stop()
    return results


def _gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "no NVIDIA GPU (nvidia-smi failed)"


def write_results(results: dict[str, dict[str, object]], args: argparse.Namespace, tokens: int, rounds: int,
                  launches: int, gguf: Path) -> None:  # fmt: skip
    peer, ours = results["llama-server"], results["llamapack"]
    ratio = {key: float(ours[key]) / float(peer[key]) for key in ("single", "four")}  # type: ignore[arg-type]
    lines = [
        "# CUDA: llamapack vs llama-server",
        "",
        f"{_gpu_name()}; --gpu {args.gpu}. Both from the same llama.cpp sources and the same ggml-cuda and "
        f"CUDA libraries; model: {gguf.stat().st_size / 2**30:.2f} GiB random llama F16; -ngl "
        f"{99 if args.gpu == 'cuda' else 0}, -c 8192, -np 4; {tokens} tokens per stream, median of "
        f"{rounds} rounds in turns; launch to /health: median of {launches}. "
        "Written by `python3 bench/cuda.py device`.",
        "",
        "| measure | llama-server | llamapack | llamapack / llama-server |",
        "|---|---|---|---|",
        f"| launch to ready (s) | {peer['launch']:.2f} | {ours['launch']:.2f} | "
        f"{float(ours['launch']) / float(peer['launch']):.2f}x the time |",  # type: ignore[arg-type]
        *(
            f"| decode, {label} (tok/s) | {peer[key]:.1f} | {ours[key]:.1f} | {ratio[key]:.2f}x |"
            for key, label in (("single", "1 stream"), ("four", "4 streams"))
        ),
        "",
        f"llamapack's launch line: `{ours.get('line', '')}`",
    ]
    if args.gpu == "cuda":  # a dry run's figures are no CUDA results
        RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["carry", "device"])
    parser.add_argument("--gpu", choices=["cuda", "none"], default="cuda", help="none: a dry run on the CPU")
    parser.add_argument(
        "--arch", default="90-real", help="CUDA architectures to compile (default: the H200's)"
    )
    parser.add_argument(
        "--stub", default=str(CARRY / STUB_NAME), help="the runtime stub (default: the carried one)"
    )
    parser.add_argument("--llama-server", help="with --gpu none: a llama-server to compare with (no compile)")
    parser.add_argument("--work", default="/tmp/llamapack-cuda-bench", help="where to build and write")
    parser.add_argument("--small", action="store_true", help="a small model (a dry run)")
    parser.add_argument("--quick", action="store_true", help="fewer launches, rounds and tokens")
    args = parser.parse_args()
    if args.step == "carry":
        carry()
    else:
        device(args)


if __name__ == "__main__":
    main()
