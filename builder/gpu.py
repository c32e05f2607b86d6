"""GPU backends for the host's runtime stub, built once and cached: ggml-vulkan.

llama-cpp-python's wheel is built for the CPU (Makefile); the Vulkan backend is one
more loadable ggml library, compiled here from the same llama.cpp (the pinned
sdist's vendor/llama.cpp) against the wheel's ggml-base ABI. The stub carries it
xz-compressed (runtime/llama/gpu.py unpacks it once per user): 4.7 MB instead of
the 13.8 MB PyInstaller's zlib makes of its 44 MB of SPIR-V shaders.

Debian bookworm's glslc (shaderc 2023.2) compiles none of the cooperative-matrix
or integer-dot-product shaders, which are most of the speed on recent NVIDIA, AMD
and Intel GPUs. So the shader compiler and the Vulkan headers come from Debian
trixie: the packages are fetched from the mirror, checked against the Packages
index, whose hash the release file signed by Debian's archive key vouches for
(gpgv, the host's debian-archive-keyring), and unpacked into the cache; glslc runs
with trixie's own C library through its dynamic loader. Nothing is installed.

Cache (cache_dir()/gpu/):
    vulkan-toolchain-<TOOLCHAIN_RECIPE>/   glslc, trixie's libraries and Vulkan headers
    vulkan-<version>-<target>-<RECIPE>/    libggml-vulkan.so (stripped) and its .xz
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from llamapack.runtime.llama.gpu import PACKED_INDEX, PackedBackend

from .cross.windows import TOOLCHAIN as _MINGW_TOOLCHAIN
from .errors import RuntimeStubError
from .stub import cache_dir, llama_cpp_version
from .stub import run_logged as _run

Log = Callable[[str], None]

RECIPE = "r5"  # bump when a change below gives a different library
TOOLCHAIN_RECIPE = "r4"  # bump when the toolchain's packages or its glslc wrapper change
OPT_OUT = "LLAMAPACK_GPU_BACKENDS"
TARGET = "ggml-vulkan"  # the one cmake target built
MIRROR = os.environ.get("LLAMAPACK_DEBIAN_MIRROR", "https://deb.debian.org/debian")
SUITE = "trixie"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# glslc and what it runs on (trixie's C and C++ runtimes), and the Vulkan and SPIR-V headers.
# libvulkan1 only to link against: the stub never carries a Vulkan loader, the user's own is used.
TOOLCHAIN_PACKAGES = (
    "glslc", "libshaderc1", "libc6", "libstdc++6", "libgcc-s1",
    "libvulkan-dev", "libvulkan1", "spirv-headers",
)  # fmt: skip
_GLSLC_WRAPPER = """#!/bin/sh
# trixie's glslc with trixie's own C library (this host's is older than it needs)
root="$(dirname "$0")/root"
exec "$root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu" \\
    "$root/usr/bin/glslc" "$@"
"""
_MINGW_TOOLS = ("x86_64-w64-mingw32-g++-posix", "x86_64-w64-mingw32-dlltool", "x86_64-w64-mingw32-objdump")
_WINE_VULKAN = Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows/vulkan-1.dll")
_CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF", "-DGGML_VULKAN=ON",
    "-DGGML_CPU=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
    # No RUNPATH: cmake would point it at this build's folders and the toolchain's libraries
    # (trixie's libvulkan.so.1), which must never be searched on a user's machine.
    "-DCMAKE_SKIP_RPATH=ON",
)  # fmt: skip


def wanted() -> bool:
    """Whether stubs built here carry the GPU backend: LLAMAPACK_GPU_BACKENDS=none
    builds CPU-only stubs, for a host that cannot build it (no network, no Debian tools)."""
    return os.environ.get(OPT_OUT, "").lower() != "none"


def host_backends(log: Log) -> list[Path]:
    """Folders of the GPU backends the host's stub carries, each with its packed
    library and index (built now if not cached)."""
    if not wanted() or not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return []
    try:
        return [ensure_vulkan(log)]
    except RuntimeStubError as exc:
        raise RuntimeStubError(f"{exc} ({OPT_OUT}=none builds a runtime without the GPU backend)") from None


def vulkan_dir(target: str = "linux-x86_64") -> Path:
    return cache_dir() / "gpu" / f"vulkan-{llama_cpp_version()}-{target}-{RECIPE}"


def ensure_vulkan(log: Log, target: str = "linux-x86_64") -> Path:
    """ggml-vulkan for this llama-cpp-python and `target` (linux-x86_64; windows-x86_64
    and linux-aarch64 cross-compiled), compiled once (about 6 minutes on 2 cores: every shader twice) and
    cached with its xz-compressed copy."""
    folder = vulkan_dir(target)
    if (folder / ".complete").is_file():
        return folder
    windows, arm64 = target == "windows-x86_64", target == "linux-aarch64"
    log_path = folder.parent / (folder.name + ".log")
    log(f"Building llama.cpp's Vulkan backend for {target} once (a few minutes; log in {log_path})...")
    toolchain = ensure_toolchain(log)
    cross_tools = _MINGW_TOOLS if windows else ("aarch64-linux-gnu-g++",) if arm64 else ()
    _require_tools(("cmake", "ninja", "c++", *cross_tools))
    with _scratch(folder) as work:
        source = _llama_cpp_source(work, log_path)
        exact_half_constants(source / "ggml" / "src" / "ggml-vulkan" / "vulkan-shaders")
        glslc = checked_glslc(work, toolchain)
        build = work / "build"
        headers = toolchain / "root" / "usr" / "include"
        if windows:
            loader = _windows_import_library(work, log_path)
            (work / "toolchain.cmake").write_text(_MINGW_TOOLCHAIN)
            # mingw's C++ runtime linked in: no Windows has its DLLs (builder/cross/windows.py).
            link = "-static -Wl,--exclude-libs,ALL"
            target_options = [
                f"-DCMAKE_TOOLCHAIN_FILE={work / 'toolchain.cmake'}", "-DBUILD_SHARED_LIBS=ON",
                f"-DCMAKE_SHARED_LINKER_FLAGS={link}", f"-DCMAKE_MODULE_LINKER_FLAGS={link}",
                "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_APP=OFF",
            ]  # fmt: skip
            built_name, name = "ggml-vulkan.dll", "ggml-vulkan.dll"
        elif arm64:
            from .cross import aarch64

            # The arm64 root's loader, to link against (the root has it to run the tests).
            loader = aarch64.ensure_root(log) / "usr" / "lib" / "aarch64-linux-gnu" / "libvulkan.so.1"
            (work / "toolchain.cmake").write_text(aarch64.TOOLCHAIN)
            target_options = [f"-DCMAKE_TOOLCHAIN_FILE={work / 'toolchain.cmake'}"]
            built_name, name = "libggml-vulkan.so", "libggml-vulkan.so"
        else:
            # The loader is the user's: linked by soname, never carried in the stub.
            loader = toolchain / "root" / "usr" / "lib" / "x86_64-linux-gnu" / "libvulkan.so.1"
            target_options = []
            built_name, name = "libggml-vulkan.so", "libggml-vulkan.so"
        _run(
            [
                "cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *_CMAKE_OPTIONS, *target_options,
                f"-DVulkan_GLSLC_EXECUTABLE={glslc}", f"-DVulkan_INCLUDE_DIR={headers}",
                # The scratch folder's name out of assert messages: the same library every build.
                f"-DCMAKE_C_FLAGS=-ffile-prefix-map={work}=/llamapack",
                f"-DCMAKE_CXX_FLAGS=-ffile-prefix-map={work}=/llamapack",
                f"-DVulkan_LIBRARY={loader}",
                f"-DSPIRV-Headers_DIR={toolchain / 'root' / 'usr' / 'share' / 'cmake' / 'SPIRV-Headers'}",
            ],
            log_path, f"cmake (configure llama.cpp's Vulkan backend for {target})",
        )  # fmt: skip
        _run(
            ["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2), "--target", TARGET],
            log_path,
            f"cmake --build (llama.cpp's Vulkan backend for {target})",
        )
        library = work / "out" / name
        library.parent.mkdir()
        shutil.copy2(build / "bin" / built_name, library)
        strip = "x86_64-w64-mingw32-strip" if windows else "aarch64-linux-gnu-strip" if arm64 else "strip"
        _run([strip, "--strip-unneeded", str(library)], log_path, "strip")
        backend = pack(library, work / "out", "vulkan")
        (work / "out" / ".complete").write_text("")
        os.replace(work / "out", folder)
    log(
        f"Vulkan backend for {target}: {backend.size / 1e6:.1f} MB, {backend.packed_size / 1e6:.1f} MB packed"
    )
    return folder


# A constructor of a type that may be a 16-bit float, all of whose arguments are integer
# literals: `float16_t(0)`, `D_TYPE(0)`, `FLOAT_TYPEV4(0)`, `ACC_TYPE(2)`.
_HALF_FROM_INTEGERS = re.compile(
    r"\b(float16_t|f16vec[234]|[A-Z][A-Z0-9_]*TYPE(?:V[234]|_VEC[234])?)"
    r"\(\s*(-?\d+\s*(?:,\s*-?\d+\s*)*)\)"
)


def exact_half_constants(shaders: Path) -> int:
    """Write the integer literals the shaders convert to 16-bit floats as float
    literals (`D_TYPE(0)` becomes `D_TYPE(0.0)`). trixie's glslc folds an integer
    constant into a float16_t from memory it never wrote: tri.comp's `D_TYPE(0)`
    came out as +inf or 0 depending on the length of the source file's path, and
    `float16_t(1)` as +inf. From a float literal it folds exactly. Returns how many
    constructors were rewritten; `checked_glslc` catches any such fold left."""
    count = 0
    for path in sorted(shaders.glob("*.comp")) + sorted(shaders.glob("*.glsl")):
        text = path.read_text()
        new, replaced = _HALF_FROM_INTEGERS.subn(
            lambda match: f"{match.group(1)}({', '.join(f'{int(n)}.0' for n in match.group(2).split(','))})",
            text,
        )
        if replaced:
            path.write_text(new)
            count += replaced
    return count


# Runs glslc twice on every shader, its heap first filled with one byte pattern, then
# another (glibc's MALLOC_PERTURB_): a constant folded from memory glslc never wrote
# differs between the two, and the build stops instead of shipping a wrong shader.
# cmake's feature tests (`-o -`) run once. The second run writes no dependency file.
_CHECKED_GLSLC = """#!/bin/bash
glslc={glslc}
out="" second=() skip=0
for arg in "$@"; do
    if ((skip)); then skip=0; continue; fi
    case "$arg" in
        -MD) continue ;;
        -MF) skip=1; continue ;;
    esac
    if [[ ${{#second[@]}} -gt 0 && ${{second[-1]}} == -o ]]; then out=$arg; arg=$arg.check; fi
    second+=("$arg")
done
if [[ -z $out || $out == - ]]; then exec "$glslc" "$@"; fi
MALLOC_PERTURB_=85 "$glslc" "$@" || exit
MALLOC_PERTURB_=170 "$glslc" "${{second[@]}}" || exit
if ! cmp -s "$out" "$out.check"; then
    rm -f "$out" "$out.check"
    echo "glslc folded a constant in $out from memory it never wrote (a glslc bug):" \\
        "see exact_half_constants in llamapack's builder/gpu.py" >&2
    exit 1
fi
rm -f "$out.check"
"""


def checked_glslc(folder: Path, toolchain: Path) -> Path:
    """A glslc for the build that fails on output that depends on uninitialized memory."""
    script = folder / "glslc-checked"
    script.write_text(_CHECKED_GLSLC.format(glslc=shlex.quote(str(toolchain / "glslc"))))
    script.chmod(0o755)
    return script


def _windows_import_library(work: Path, log_path: Path) -> Path:
    """libvulkan-1.a to link against Windows' Vulkan loader, made from the exports of
    Wine's vulkan-1.dll (the same names as Khronos' loader); the DLL itself stays the
    user's."""
    dll = _WINE_VULKAN
    if not dll.is_file():
        raise RuntimeStubError(f"building the Windows Vulkan backend needs {dll} (apt install wine64)")
    dump = subprocess.run(
        ["x86_64-w64-mingw32-objdump", "-p", str(dll)], capture_output=True, text=True, check=False
    )
    names = sorted(set(re.findall(r"^\s*\[\s*\d+\]\s+\+?\s*(?:\d+\s+)?(vk\w+)", dump.stdout, re.MULTILINE)))
    if "vkGetInstanceProcAddr" not in names:
        raise RuntimeStubError(f"found no Vulkan exports in {dll} (objdump -p)")
    definition = work / "vulkan-1.def"
    definition.write_text("LIBRARY vulkan-1.dll\nEXPORTS\n" + "".join(f"    {name}\n" for name in names))
    library = work / "libvulkan-1.a"
    _run(
        ["x86_64-w64-mingw32-dlltool", "-d", str(definition), "-l", str(library), "-D", "vulkan-1.dll"],
        log_path,
        "dlltool (vulkan-1 import library)",
    )
    return library


def pack(library: Path, folder: Path, name: str) -> PackedBackend:
    """`library`.xz beside it and the index entry the runtime checks it by."""
    data = library.read_bytes()
    packed = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    (folder / (library.name + ".xz")).write_bytes(packed)
    backend = PackedBackend(name, library.name, hashlib.sha256(data).hexdigest(), len(data), len(packed))
    (folder / PACKED_INDEX).write_text(json.dumps({name: backend.to_json()}, indent=2) + "\n")
    return backend


# -- the shader compiler and headers, from Debian trixie


def toolchain_dir() -> Path:
    return cache_dir() / "gpu" / f"vulkan-toolchain-{TOOLCHAIN_RECIPE}"


def ensure_toolchain(log: Log) -> Path:
    folder = toolchain_dir()
    if (folder / ".complete").is_file():
        return folder
    if platform.machine() != "x86_64":
        raise RuntimeStubError("the Vulkan backend is built on x86-64 Linux hosts only")
    _require_tools(("gpgv", "dpkg-deb"))
    if not KEYRING.is_file():
        raise RuntimeStubError(f"no Debian archive keyring at {KEYRING} (apt install debian-archive-keyring)")
    log(f"Fetching glslc and the Vulkan headers from Debian {SUITE} (checked against its signed index)...")
    with _scratch(folder) as work:
        index = _signed_packages_index(work)
        root = work / "out" / "root"
        root.mkdir(parents=True)
        for name in TOOLCHAIN_PACKAGES:
            entry = index.get(name)
            if entry is None:
                raise RuntimeStubError(f"Debian {SUITE} has no package {name} at {MIRROR}")
            deb = work / Path(entry["Filename"]).name
            _download(f"{MIRROR}/{entry['Filename']}", deb, entry["SHA256"])
            _run(["dpkg-deb", "-x", str(deb), str(root)], work / "fetch.log", f"dpkg-deb -x {deb.name}")
        wrapper = work / "out" / "glslc"
        wrapper.write_text(_GLSLC_WRAPPER)
        wrapper.chmod(0o755)
        _run([str(wrapper), "--version"], work / "fetch.log", "glslc --version")
        (work / "out" / ".complete").write_text("")
        _move_into_place(work / "out", folder)
    return folder


def _move_into_place(built: Path, folder: Path) -> None:
    """Builds for two targets share the toolchain: the first one in place is kept."""
    try:
        os.replace(built, folder)
    except OSError:
        if not (folder / ".complete").is_file():
            raise


def _signed_packages_index(work: Path) -> dict[str, dict[str, str]]:
    """trixie's amd64 Packages index, its hash taken from the signed InRelease."""
    release, verified = work / "InRelease", work / "InRelease.verified"
    _download(f"{MIRROR}/dists/{SUITE}/InRelease", release, None)
    # Only what the signature covers: text around the signed block would pass gpgv too.
    what = f"gpgv (Debian {SUITE} InRelease)"
    command = ["gpgv", "--keyring", str(KEYRING), "--output", str(verified), str(release)]
    _run(command, work / "fetch.log", what)
    text = verified.read_text(errors="replace")
    if f"\nCodename: {SUITE}\n" not in f"\n{text}":
        raise RuntimeStubError(f"{MIRROR}: the signed release file is not Debian {SUITE}'s")
    wanted = "main/binary-amd64/Packages.xz"
    digest = None
    in_sha256 = False
    for line in text.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
        elif in_sha256 and line.split()[-1] == wanted:
            digest = line.split()[0]
    if digest is None:
        raise RuntimeStubError(f"Debian {SUITE}'s InRelease lists no {wanted}")
    packages = work / "Packages.xz"
    _download(f"{MIRROR}/dists/{SUITE}/{wanted}", packages, digest)
    index: dict[str, dict[str, str]] = {}
    for stanza in lzma.decompress(packages.read_bytes()).decode(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") in TOOLCHAIN_PACKAGES and fields.get("Architecture") in ("amd64", "all"):
            index[fields["Package"]] = fields
    return index


# -- helpers


def _llama_cpp_source(work: Path, log_path: Path) -> Path:
    """vendor/llama.cpp of the pinned llama-cpp-python sdist (the wheel's own sources)."""
    requirement = f"llama-cpp-python=={llama_cpp_version()}"
    _run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
         "--no-binary", "llama-cpp-python", "-d", str(work / "sdist"), requirement],
        log_path, f"pip download {requirement}",
    )  # fmt: skip
    (sdist,) = (work / "sdist").glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "sdist", filter="data")
    (source,) = (work / "sdist").glob("llama_cpp_python-*/vendor/llama.cpp")
    return source


def _download(url: str, path: Path, sha256: str | None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise RuntimeStubError(f"cannot download {url}: {exc}") from None
    if sha256 is not None:
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != sha256:
            raise RuntimeStubError(f"{url}: SHA-256 {found}, but the signed index says {sha256}")


def _require_tools(tools: Sequence[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise RuntimeStubError(f"building the Vulkan backend needs {', '.join(missing)} (not found)")


@contextlib.contextmanager
def _scratch(folder: Path) -> Iterator[Path]:
    """A scratch folder beside `folder`; the body moves its result into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=folder.name + ".", dir=folder.parent) as work:
        yield Path(work)
