"""The linux-aarch64 runtime stub, built on an x86-64 Linux host.

Nothing is compiled under emulation (10x slower than a cross compiler):

1. an arm64 Debian root (`mmdebstrap`, the host's mirror and CA bundle), with a venv
   holding the runtime's Python dependencies and PyInstaller at the host's versions
   (wheels only: nothing is built inside the root);
2. llama.cpp from the pinned llama-cpp-python sdist (`vendor/llama.cpp`), compiled by
   `aarch64-linux-gnu-g++` with the host's recipe (`GGML_BACKEND_DL`, one CPU library
   per variant), less the two armv9.2 variants: they need `-march=armv9.2-a+sme`, which
   GCC 12 (Debian 12) does not know;
3. PyInstaller run inside the root (qemu-user through binfmt_misc, in a chroot with its
   own mount namespace) on the same sources and options as builder/stub.py: the
   llama_cpp bindings are pure Python, so the host's staged copy is the one used and
   only the shared libraries come from step 2.

Each step is cached under `cache_dir()/cross/aarch64/` (the root, the libraries, the
stub by key), so a second build is a copy. The host must be Linux x86-64, run as root
(chroot, mounts) and have the tools `host_problem()` checks.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from llamapack.runtime.llama.gpu import PACKED_DIR

from .. import stub as host_stub
from ..errors import RuntimeStubError

TARGET = "linux-aarch64"
SUITE = "bookworm"
# Bump ROOT_RECIPE when ROOT_PACKAGES or the root's set-up changes: a new root is made.
ROOT_RECIPE = "r2"
# The Vulkan loader and Mesa's drivers: to link the Vulkan backend against, and lavapipe
# to run it on in the tests.
ROOT_PACKAGES = ("python3", "python3-pip", "python3-venv", "python3-dev", "binutils", "ca-certificates",
                 "libgomp1", "libvulkan1", "mesa-vulkan-drivers")  # fmt: skip
DEFAULT_MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/llamapack-venv"
# What the runtime imports from outside the standard library (besides llama_cpp), and
# PyInstaller: installed in the root at the versions this host has.
RUNTIME_DEPS = ("aiohttp", "msgspec", "jinja2", "pyinstaller")
# Bump LIBS_RECIPE when the cmake options below change.
LIBS_RECIPE = "r2"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_RPC=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
)  # fmt: skip
LEFT_OUT_VARIANTS = ("armv9.2_1", "armv9.2_2")  # need armv9.2-a+sme: GCC 13 or newer
# For running aarch64 files here: a CPU without SVE, like most aarch64 servers before
# Neoverse V1 (qemu's default "max" CPU has every feature, SVE2 and SME included).
QEMU_CPU = "neoverse-n1"
BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
# program -> Debian package
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
    "arch-test": "arch-test",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "cmake": "cmake",
    "ninja": "ninja-build",
    "unshare": "util-linux",
    "chroot": "coreutils",
}
TOOLCHAIN = """\
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""
# Runs "$@" chrooted into $1 with /proc and /dev mounted; under `unshare --mount` the
# mounts are private to this process tree and vanish with it.
_CHROOT_SCRIPT = 'root=$1; shift; mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" ' \
    '&& exec chroot "$root" "$@"'  # fmt: skip
# Host settings the root's pip and PyInstaller may need (proxies; the CA bundle is copied).
_PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
               "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL")  # fmt: skip
_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_READY = ".llamapack-ready"

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


# -- what the host needs


def host_problem() -> str | None:
    """Why this host cannot build or run linux-aarch64 files, in one line; None when it can."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"building the {TARGET} runtime needs a Linux x86-64 host"
    missing = sorted({package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return f"building the {TARGET} runtime needs the Debian packages: {' '.join(missing)}"
    if os.geteuid() != 0:
        return f"building the {TARGET} runtime needs root (it runs mmdebstrap and chroot)"
    return binfmt_problem()


def binfmt_problem() -> str | None:
    """None when the kernel hands aarch64 executables to qemu-user by itself."""
    try:
        enabled = BINFMT_ENTRY.read_text().splitlines()[:1] == ["enabled"]
    except OSError:
        enabled = False
    if enabled:
        return None
    return (
        "qemu-user is not registered for aarch64 executables; run (as root) "
        "`mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64`"
    )


def cross_dir() -> Path:
    return host_stub.cache_dir() / "cross" / "aarch64"


def root_path() -> Path:
    """The arm64 root (made by `ensure_root`): QEMU_LD_PREFIX for running aarch64 files here."""
    return cross_dir() / f"root-{SUITE}-{ROOT_RECIPE}"


def emulation_env(cpu: str = QEMU_CPU) -> dict[str, str]:
    """The environment that runs a built linux-aarch64 file on this host."""
    return {**os.environ, "QEMU_LD_PREFIX": str(root_path()), "QEMU_CPU": cpu}


# -- running the steps


def _log_path(step: str) -> Path:
    path = cross_dir() / "logs" / f"{step}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _run(command: Sequence[str], step: str, what: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> None:  # fmt: skip
    """Run one command with its output in the step's log; a failure is one line."""
    log_path = _log_path(step)
    with log_path.open("a") as log_file:
        log_file.write(f"$ {' '.join(command)}\n")
        log_file.flush()
        try:
            result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        except OSError as exc:
            raise RuntimeStubError(f"{what} failed: cannot run {command[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        last = (lines or ["no output"])[-1].strip()
        raise RuntimeStubError(f"{what} failed ({last}); full log: {log_path}")


def _root_command(root: Path, command: Sequence[str], cwd: str = "/") -> list[str]:
    """`command` as run inside the root, in `cwd` (a path inside it), with a clean environment."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8"}
    env.update({name: os.environ[name] for name in _PASSED_ENV if name in os.environ})
    env["PIP_CERT"] = str(_CA_BUNDLE)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return ["unshare", "--mount", "--fork", "--", "sh", "-c", _CHROOT_SCRIPT, "sh", str(root),
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
            "sh", "-c", 'cd "$0" && exec "$@"', cwd, *command]  # fmt: skip


def _in_root(root: Path, command: Sequence[str], step: str, what: str) -> None:
    _run(_root_command(root, command), step, what)


def _timed(log: Log, what: str, started: float) -> None:
    log(f"{TARGET}: {what} in {time.monotonic() - started:.0f} s")


# -- step 1: the arm64 root


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses (one-line or deb822 sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list")
    try:
        for line in sources.read_text().splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match and match.group(2) == SUITE:
                return match.group(1)
    except OSError:
        pass
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return str(fields["URIs"]).split()[0]
    return DEFAULT_MIRROR


def ensure_root(log: Log = _quiet) -> Path:
    """The arm64 root with the runtime's dependencies in its venv; made once."""
    root = root_path()
    if not (root / _READY).is_file():
        started = time.monotonic()
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        mirror = debian_mirror()
        log(f"{TARGET}: making an arm64 Debian {SUITE} root from {mirror} (once, a few minutes)...")
        _run(["mmdebstrap", "--arch=arm64", "--variant=apt", f"--include={','.join(ROOT_PACKAGES)}",
              SUITE, str(partial), f"deb {mirror} {SUITE} main"], "root", "mmdebstrap")  # fmt: skip
        # pip in the root checks TLS against the host's bundle (it may hold a proxy's CA)
        if _CA_BUNDLE.is_file():
            shutil.copyfile(_CA_BUNDLE, partial / _CA_BUNDLE.relative_to("/"))
        resolv = Path("/etc/resolv.conf")
        if resolv.exists():
            (partial / "etc/resolv.conf").unlink(missing_ok=True)
            shutil.copyfile(resolv, partial / "etc/resolv.conf")
        _in_root(partial, ["python3", "-m", "venv", VENV], "root", "making the venv in the arm64 root")
        (partial / _READY).write_text(f"{SUITE} {ROOT_RECIPE} {' '.join(ROOT_PACKAGES)}\n")
        os.replace(partial, root)
        _timed(log, "arm64 root made", started)
    _ensure_deps(root, log)
    return root


def runtime_requirements() -> list[str]:
    """The runtime's dependencies and PyInstaller, pinned to this host's versions."""
    requirements = []
    for name in RUNTIME_DEPS:
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise RuntimeStubError(f"{name} is not installed here; reinstall llamapack") from None
    return requirements


def _ensure_deps(root: Path, log: Log) -> None:
    requirements = runtime_requirements()
    marker = root / VENV.lstrip("/") / ".llamapack-requirements"
    wanted = "\n".join(requirements) + "\n"
    if marker.is_file() and marker.read_text() == wanted:
        return
    started = time.monotonic()
    log(f"{TARGET}: installing {', '.join(requirements)} in the arm64 root (wheels only)...")
    _in_root(root, [f"{VENV}/bin/python", "-m", "pip", "install", "--only-binary=:all:", *requirements],
             "deps", "installing the runtime's dependencies in the arm64 root")  # fmt: skip
    marker.write_text(wanted)
    _timed(log, "dependencies installed", started)


# -- step 2: llama.cpp, cross-compiled


def libs_path() -> Path:
    return cross_dir() / f"llama-cpp-python-{host_stub.llama_cpp_version()}-{LIBS_RECIPE}"


def ensure_libs(log: Log = _quiet) -> Path:
    """llama.cpp's shared libraries for aarch64 (libllama, libggml, one libggml-cpu per variant,
    libggml-rpc)."""
    target = libs_path()
    if (target / _READY).is_file():
        return target
    started = time.monotonic()
    version = host_stub.llama_cpp_version()
    log(f"{TARGET}: cross-compiling llama.cpp of llama-cpp-python {version} (once, ~15 CPU-minutes)...")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=target.parent) as work:
        work_dir = Path(work)
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
              "--dest", str(work_dir), f"llama-cpp-python=={version}"],
             "libs", f"downloading the llama-cpp-python {version} sdist")  # fmt: skip
        archives = list(work_dir.glob("llama_cpp_python-*.tar.gz"))
        if len(archives) != 1:
            raise RuntimeStubError(f"pip download left no llama-cpp-python sdist in {work_dir}")
        with tarfile.open(archives[0]) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: no member lands outside work_dir
                archive.extractall(work_dir, filter="data")
            else:
                archive.extractall(work_dir)  # an sdist pip has just downloaded
        source = work_dir / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        _leave_out_variants(source / "ggml" / "src" / "CMakeLists.txt")
        toolchain = work_dir / "aarch64-linux-gnu.cmake"
        toolchain.write_text(TOOLCHAIN)
        build = work_dir / "build"
        _run(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja",
              f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", *CMAKE_OPTIONS],
             "libs", "configuring llama.cpp for aarch64")  # fmt: skip
        # libllama and what it needs (libggml needs every CPU variant); not llama.cpp's
        # common library and app, which the standalone project builds by default
        jobs = str(os.cpu_count() or 2)
        _run(["cmake", "--build", str(build), "--target", "llama", "ggml-rpc", "--parallel", jobs],
             "libs", "cross-compiling llama.cpp")  # fmt: skip
        staged = work_dir / "lib"
        staged.mkdir()
        for path in sorted((build / "bin").glob("*.so*")):
            shutil.copyfile(path, staged / path.name)  # symlinks become files, as in the wheel
        names = {path.name for path in staged.iterdir()}
        missing = [name for name in host_stub._LINUX_LIBS if name not in names]
        if missing or not any(name.startswith("libggml-cpu-") for name in names):
            lacking = ", ".join(missing) or "CPU variants"
            raise RuntimeStubError(f"the aarch64 llama.cpp build lacks {lacking}")
        (staged / _READY).write_text(" ".join(CMAKE_OPTIONS) + "\n")
        os.replace(staged, target)
    _timed(log, "llama.cpp cross-compiled", started)
    return target


def _leave_out_variants(cmakelists: Path) -> None:
    text = cmakelists.read_text()
    for variant in LEFT_OUT_VARIANTS:
        text, count = re.subn(rf"^(\s*)(ggml_add_cpu_backend_variant\({re.escape(variant)}\s)",
                              r"\1# llamapack (GCC 12 cannot): \2", text, flags=re.MULTILINE)  # fmt: skip
        if count != 1:
            raise RuntimeStubError(f"{cmakelists}: the {variant} variant is not where llamapack expects it")
    cmakelists.write_text(text)


def variants(libs: Path) -> list[str]:
    """The CPU variants a libs folder holds, e.g. ["armv8.0_1", "armv8.2_1", ...]."""
    return sorted(p.name[len("libggml-cpu-") : -len(".so")] for p in libs.glob("libggml-cpu-*.so"))


# -- step 3: PyInstaller in the root


def build_stub(destination: Path, log: Log | None = None) -> Path:
    """Build the linux-aarch64 stub into `destination` (the dispatcher in __init__.py
    caches it under its key; the root and the engine are cached here by step)."""
    say = log or _quiet
    problem = host_problem()
    if problem:
        raise RuntimeStubError(problem)
    started = time.monotonic()
    root = ensure_root(say)
    libs = ensure_libs(say)
    from .. import gpu

    backends = [gpu.ensure_vulkan(say, TARGET)] if gpu.wanted() else []
    _pyinstaller(root, libs, backends, destination, say)
    _timed(say, f"runtime stub built ({destination.stat().st_size / 1e6:.1f} MB)", started)
    return destination


def _pyinstaller(root: Path, libs: Path, backends: list[Path], destination: Path, log: Log) -> None:
    """builder/stub.py's PyInstaller recipe, run by the root's Python on aarch64 libraries.
    llama_cpp's bindings are pure Python: the host's copy of the pinned version is staged."""
    import llama_cpp

    started = time.monotonic()
    log(f"{TARGET}: running PyInstaller in the arm64 root (under qemu, a few minutes)...")
    destination.parent.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llamapack-stub-", dir=root / "tmp") as work:
        work_dir = Path(work)

        def inside(path: Path) -> str:  # the same path, seen from the root
            return "/" + path.relative_to(root).as_posix()

        staging = host_stub.stage_sources(
            work_dir / "src", Path(llama_cpp.__file__).parent, host_stub.llama_cpp_version()
        )
        host_stub.stage_gpu_backends(staging / "llama_cpp" / PACKED_DIR, backends)
        shutil.copytree(libs, work_dir / "lib", ignore=shutil.ignore_patterns(_READY))
        names = [*host_stub._LINUX_LIBS, *(f"libggml-cpu-{v}.so" for v in variants(libs))]
        arguments = host_stub.pyinstaller_arguments(
            work_dir,
            staging,
            [work_dir / "lib" / name for name in names],
            native=inside,
            pathsep=":",
            strip=True,
        )
        python = _root_command(root, [f"{VENV}/bin/python"], cwd=inside(work_dir))
        host_stub.run_pyinstaller(python, arguments, work_dir, destination)
    _timed(log, "PyInstaller done", started)
