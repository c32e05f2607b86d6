"""The CUDA backend for linux-x86_64 files, built once from NVIDIA's wheels on PyPI.

ggml-cuda is compiled from the pinned llama-cpp-python sdist's vendor/llama.cpp
(the CPU engine's own sources, so the wheel's ggml-base ABI) with the CUDA 13
compiler that NVIDIA publishes on PyPI: CUDA 12's compiler wheel has no `nvcc`
driver, cudafe++, fatbinary or nvlink, CUDA 13's has them all. CUDA 13 needs an
NVIDIA driver >= 580 on the user's machine; with an older one the CUDA probe fails
and `--gpu auto` goes on to Vulkan.

What the backend needs at run time (the CUDA runtime and cuBLAS, about 600 MB,
cuBLASLt most of it) is far too big for every file: `llamapack build --gpu-runtime
cuda` adds it to one file, as members next to the model (builder/assemble.py),
and the runtime unpacks it once per user (runtime/llama/gpu.py).

Compiling is long (about 190 CUDA sources for three architectures: about an hour on
two cores), so the build folder is kept: an interrupted build resumes where it was.

Cache (cache_dir()/gpu/):
    cuda-toolkit-<CUDA>-<TOOLKIT_RECIPE>/   the wheels' nvidia/cu13 tree (nvcc, headers, libraries)
    cuda-<version>-linux-x86_64-<RECIPE>.work/  the sdist and the cmake build (resumable)
    cuda-<version>-linux-x86_64-<RECIPE>/   libggml-cuda.so and the runtime libraries, xz-packed
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import platform
import shutil
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamapack.runtime.fileformat import FormatError, GpuLibrary, GpuRuntime, PayloadEntry

from .errors import RuntimeStubError
from .stub import cache_dir, llama_cpp_version
from .stub import run_logged as _run

Log = Callable[[str], None]

RECIPE = "r1"  # bump when a change below gives a different library
TOOLKIT_RECIPE = "r1"
CUDA_VERSION = "13.5.37"
# sm_80 as both machine code and PTX (so a newer GPU, Blackwell included, can JIT it);
# sm_89 (RTX 40, L4/L40) and sm_90 (H100/H200) as machine code. sm_86/87 run sm_80's.
ARCHITECTURES = "80;89-real;90-real"
TARGET = "ggml-cuda"
# The wheels, pinned by hash: `pip download --require-hashes` refuses anything else.
WHEELS = {
    "nvidia-cuda-nvcc==13.5.37": "f5c4f7ead5d964fb4af42bbf1e6d3ec3c1e6e9d83b53749f691d387e7fcaa3a7",
    "nvidia-cuda-crt==13.5.37": "e898b7f73d3035fa89915a3f7bf3b54a73e90249746111aed295822c4729bb29",
    "nvidia-nvvm==13.5.37": "c41bfa362e407405163f103c2229f0765f8cc2ed7d148b754dc77f228bf7e070",
    "nvidia-cuda-runtime==13.5.37": "df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d",
    "nvidia-cuda-cccl==13.3.5.0.6": "d5230098fa2df5021e1a00c0c4eee41797671a91119d31e892463e5ccf3ee326",
    "nvidia-cublas==13.10.0.20": "dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84",
}
# What libggml-cuda.so needs from the toolkit, in the order they load (each only needs those before it).
RUNTIME_LIBRARIES = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")
_CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF", "-DGGML_CUDA=ON",
    "-DGGML_CPU=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DCMAKE_SKIP_RPATH=ON",
    f"-DCMAKE_CUDA_ARCHITECTURES={ARCHITECTURES}",
    # Without VMM ggml-cuda needs only the runtime, not libcuda.so at link time (the wheels
    # have no stub of it); the driver is still the user's, found by the runtime library.
    "-DGGML_CUDA_NO_VMM=ON",
)  # fmt: skip


def cuda_dir() -> Path:
    return cache_dir() / "gpu" / f"cuda-{llama_cpp_version()}-linux-x86_64-{RECIPE}"


def toolkit_dir() -> Path:
    return cache_dir() / "gpu" / f"cuda-toolkit-{CUDA_VERSION}-{TOOLKIT_RECIPE}"


def ensure_toolkit(log: Log) -> Path:
    """NVIDIA's CUDA compiler, headers and libraries from PyPI, unpacked once."""
    folder = toolkit_dir()
    if (folder / ".complete").is_file():
        return folder
    from .gpu import _move_into_place, _scratch

    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        raise RuntimeStubError("the CUDA backend is built on x86-64 Linux hosts only")
    log(f"Fetching NVIDIA's CUDA {CUDA_VERSION} compiler and libraries from PyPI (about 500 MB, once)...")
    with _scratch(folder) as work:
        requirements = work / "requirements.txt"
        requirements.write_text(
            "".join(f"{name} --hash=sha256:{digest}\n" for name, digest in WHEELS.items())
        )
        _run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
             "--only-binary", ":all:", "--require-hashes", "-r", str(requirements),
             "-d", str(work / "wheels")],
            work / "fetch.log", "pip download (NVIDIA's CUDA wheels)",
        )  # fmt: skip
        root = work / "out"
        for wheel in sorted((work / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.infolist():
                    parts = Path(member.filename).parts
                    if parts[:2] != ("nvidia", "cu13") or member.is_dir():
                        continue
                    target = root.joinpath(*parts[2:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    if member.external_attr >> 16 & 0o111:
                        target.chmod(0o755)
        for library in RUNTIME_LIBRARIES:  # cmake's FindCUDAToolkit looks for the link names
            (root / "lib" / library.rsplit(".", 1)[0]).symlink_to(library)
        _run([str(root / "bin" / "nvcc"), "--version"], work / "fetch.log", "nvcc --version")
        (root / ".complete").write_text("")
        _move_into_place(root, folder)
    return folder


def build_dir() -> Path:
    folder = cuda_dir()
    return folder.parent / (folder.name + ".work")


def compile_backend(log: Log) -> Path:
    """libggml-cuda.so, compiled (or the rest of an interrupted compile) in build_dir()."""
    from .gpu import _llama_cpp_source, _require_tools

    toolkit = ensure_toolkit(log)
    _require_tools(("cmake", "ninja", "c++"))
    work = build_dir()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "build.log"
    hint = f"about an hour on 2 cores; an interrupted build resumes; log in {log_path}"
    log(f"Building llama.cpp's CUDA backend once ({hint})...")
    sources = list(work.glob("sdist/llama_cpp_python-*/vendor/llama.cpp"))
    source = sources[0] if sources else _llama_cpp_source(work, log_path)
    build = work / "build"
    if not (build / "build.ninja").is_file():
        prefix_map = f"-ffile-prefix-map={work}=/llamapack"
        _run(
            ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *_CMAKE_OPTIONS,
             f"-DCUDAToolkit_ROOT={toolkit}", f"-DCMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}",
             # The build folder's name out of assert messages: the same library every build.
             f"-DCMAKE_C_FLAGS={prefix_map}", f"-DCMAKE_CXX_FLAGS={prefix_map}",
             f"-DCMAKE_CUDA_FLAGS=-Xcompiler={prefix_map}"],
            log_path, "cmake (configure llama.cpp's CUDA backend)",
        )  # fmt: skip
    _run(
        ["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2), "--target", TARGET],
        log_path,
        "cmake --build (llama.cpp's CUDA backend)",
    )
    return build / "bin" / "libggml-cuda.so"


# -- what a file built with --gpu-runtime cuda carries

PAYLOAD_INDEX = "gpu_runtime.json"
MEMBER_PREFIX = "gpu/cuda/"
_XZ_PRESET = 6  # 9 saves about 1% of the libraries (CUDA's own fatbins are compressed) for twice the time


@dataclass(frozen=True)
class Payload:
    """The CUDA runtime as a built file carries it: the manifest's record, and for
    each member its placement entry and the cached .xz it is copied from."""

    record: GpuRuntime
    entries: tuple[PayloadEntry, ...]
    files: tuple[Path, ...]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)


def ensure_cuda(log: Log) -> Path:
    """The packed CUDA runtime (ggml-cuda, the CUDA runtime, cuBLAS), built once."""
    from .gpu import _scratch

    folder = cuda_dir()
    if (folder / ".complete").is_file():
        return folder
    built = compile_backend(log)
    toolkit = ensure_toolkit(log)
    log("Packing the CUDA runtime (xz, once)...")
    with _scratch(folder) as work:
        out = work / "out"
        out.mkdir()
        ggml_cuda = work / built.name
        shutil.copy2(built, ggml_cuda)
        _run(["strip", "--strip-unneeded", str(ggml_cuda)], work / "pack.log", "strip")
        libraries = [toolkit / "lib" / name for name in RUNTIME_LIBRARIES] + [ggml_cuda]
        index = [_pack(library, out) for library in libraries]
        (out / PAYLOAD_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (out / ".complete").write_text("")
        os.replace(out, folder)
    shutil.rmtree(build_dir(), ignore_errors=True)  # its objects: 350 MB of no further use
    return folder


def payload(log: Log) -> Payload:
    folder = ensure_cuda(log)
    try:
        index = json.loads((folder / PAYLOAD_INDEX).read_text())
        libraries = tuple(GpuLibrary.from_json(item) for item in index)
        entries = tuple(PayloadEntry(item["member"], item["packed_size"], item["crc32"]) for item in index)
    except (OSError, ValueError, KeyError, TypeError, FormatError) as exc:
        raise RuntimeStubError(f"the cached CUDA runtime in {folder} is damaged ({exc}); delete it") from None
    files = tuple(folder / (library.file + ".xz") for library in libraries)
    return Payload(GpuRuntime("cuda", libraries), entries, files)


def _pack(library: Path, folder: Path) -> dict[str, object]:
    """`library`.xz in `folder`, streamed, and what the manifest and the ZIP need of it."""
    digest, crc, size, packed_size = hashlib.sha256(), 0, 0, 0
    compressor = lzma.LZMACompressor(lzma.FORMAT_XZ, preset=_XZ_PRESET)
    with library.open("rb") as source, (folder / (library.name + ".xz")).open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            packed = compressor.compress(chunk)
            crc, packed_size = zlib.crc32(packed, crc), packed_size + len(packed)
            out.write(packed)
        packed = compressor.flush()
        crc, packed_size = zlib.crc32(packed, crc), packed_size + len(packed)
        out.write(packed)
    record = GpuLibrary(
        library.name, MEMBER_PREFIX + library.name + ".xz", digest.hexdigest(), size, packed_size
    )
    return record.to_json() | {"crc32": crc}
