"""The runtime stub: a PyInstaller onefile build of `llamapack.runtime`.

It is built once per (llamapack version, llama-cpp-python version, OS, arch,
runtime sources) and cached in the user cache folder, so building a model
file is a copy job, not a PyInstaller run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import filelock
import platformdirs

from llamapack.runtime import __version__
from llamapack.runtime.llama.gpu import PACKED_DIR, PACKED_INDEX

from .errors import RuntimeStubError

STUB_NAME = "llamapack-runtime"
# Shared libraries llama_cpp loads by path (libllama.so, libggml.so), the sonames
# those need, and the RPC backend (loaded by runtime/llama/rpc.py); PyInstaller has
# no hook for llama_cpp. The CPU backend is
# either linked in (libggml-cpu.so.0) or, with GGML_BACKEND_DL, one library per
# CPU variant that runtime/llama/cpu.py registers: _host_libraries collects whichever exists.
_LINUX_LIBS = ("libllama.so", "libggml.so", "libggml.so.0", "libggml-base.so.0", "libggml-rpc.so")
_LINUX_CPU_LIB = "libggml-cpu.so.0"
# Modules PyInstaller would otherwise pull in through optional imports.
_EXCLUDES = ("tkinter", "IPython", "matplotlib", "pytest", "PIL", "pandas", "scipy", "gguf", "numpy",
             "click", "tqdm", "platformdirs", "PyInstaller", "setuptools", "pip",
             "diskcache", "pydantic", "pydantic_core", "yaml", "openai", "huggingface_hub", "sqlite3",
             "llama_cpp.llama", "llama_cpp.server", "llama_cpp.llama_chat_format")  # fmt: skip
ENTRY_SOURCE = "from llamapack.runtime.cli import main\n\nraise SystemExit(main())\n"


@dataclass(frozen=True)
class StubInfo:
    path: Path
    key: str
    built: bool  # True when this call ran PyInstaller


def target_name() -> str:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)
    return f"{system}-{machine}"


def llama_cpp_version() -> str:
    return metadata.version("llama-cpp-python")


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def _sources_digest() -> str:
    """Hash of the runtime and UI sources, of this recipe (and the GPU backends'),
    and of the llama.cpp libraries the stub collects (a portable and a CPU-dispatch
    build of the same llama-cpp-python version differ): any change gets a new stub."""
    from . import gpu

    recipe = [Path(gpu.__file__)] if gpu.wanted() else []  # a CPU-only stub has a key of its own
    return sources_digest(recipe, _host_libraries())


def sources_digest(recipe: Sequence[Path], libraries: Sequence[Path] = ()) -> str:
    """Hash of this recipe (stub.py), of the `recipe` files that extend it, of the
    runtime and UI sources and of the given libraries' names, sizes and mtimes."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in recipe:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ("llamapack.runtime", "llamapack.templates"):
        root = _package_dir(package)
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
    for path in sorted(libraries):
        # 40 MB of libraries: their size and mtime say as much as their bytes
        # (a reinstall changes both) at no cost to every build.
        info = path.stat()
        digest.update(f"{path.name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:12]


@functools.cache
def stub_key() -> str:
    return f"{__version__}-llama-cpp-python-{llama_cpp_version()}-{target_name()}-{_sources_digest()}"


def cache_dir() -> Path:
    override = os.environ.get("LLAMAPACK_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("llamapack"))


def cached_stub_path() -> Path:
    suffix = ".exe" if sys.platform == "win32" else ""
    return cache_dir() / "runtimes" / stub_key() / (STUB_NAME + suffix)


def ensure_stub(runtime: Path | None = None, rebuild: bool = False, log: object = None) -> StubInfo:
    """The stub to build with: the given one, the cached one, or a fresh build."""
    if runtime is not None:
        if not runtime.is_file():
            raise RuntimeStubError(f"runtime stub not found: {runtime}")
        return StubInfo(runtime, "custom", built=False)
    path = cached_stub_path()
    if path.is_file() and not rebuild:
        return StubInfo(path, path.parent.name, built=False)
    with build_lock(target_name(), log):
        # Another llamapack may have built it while this one waited.
        if path.is_file() and not rebuild:
            return StubInfo(path, path.parent.name, built=False)
        build_stub(path, log=log)
    return StubInfo(path, path.parent.name, built=True)


@contextlib.contextmanager
def build_lock(target: str, log: object = None) -> Iterator[None]:
    """One runtime build per target at a time on this machine: two builds of the
    same stub (or of a cross target's shared engine, Wine prefix or arm64 root)
    would race on the same cache folders."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(locks / f"runtime-{target}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if callable(log):
            log(f"waiting for another llamapack that builds the {target} runtime ({lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_stub(destination: Path, log: object = None) -> Path:
    """Run PyInstaller; the result is moved into place only when complete."""
    import llama_cpp

    from . import gpu

    llama_cpp_dir = Path(llama_cpp.__file__).parent
    backends = gpu.host_backends(log if callable(log) else _quiet)
    with stub_workspace(destination) as work_dir:
        staging = stage_sources(work_dir / "src", llama_cpp_dir, llama_cpp_version())
        stage_gpu_backends(staging / "llama_cpp" / PACKED_DIR, backends)
        arguments = pyinstaller_arguments(
            work_dir, staging, _host_libraries(), strip=sys.platform.startswith("linux")
        )
        run_pyinstaller([sys.executable], arguments, work_dir, destination)
    return destination


# -- the recipe: shared by the host build above and the cross builds in builder/cross/


@contextlib.contextmanager
def stub_workspace(destination: Path) -> Iterator[Path]:
    """A scratch folder beside `destination` (same file system, so the finished stub
    is moved, not copied), removed afterwards."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llamapack-stub-", dir=destination.parent) as work:
        yield Path(work)


def pyinstaller_arguments(
    work_dir: Path,
    staging: Path,
    libraries: Sequence[Path],
    native: Callable[[Path], str] = str,
    pathsep: str = os.pathsep,
    strip: bool = False,
) -> list[str]:
    """PyInstaller's command line for the stub (after `-m`'s Python), with the entry
    script it names written into `work_dir`. `native` writes a path as the Python
    that runs PyInstaller sees it and `pathsep` is its --add-data separator (a Windows
    Python under Wine: Z:\\... and ";"). `strip` removes symbol tables from the
    ELF libraries (a pyenv libpython keeps its debug information: 9 of the stub's
    34 MB); ctypes finds llama.cpp's functions through the dynamic symbols, which stay."""
    entry = work_dir / "entry.py"
    entry.write_text(ENTRY_SOURCE)
    return [
        "-m", "PyInstaller", "--onefile", "--noconfirm", "--log-level=WARN",
        "--name", STUB_NAME,
        *(["--strip"] if strip else []),
        "--distpath", native(work_dir / "dist"),
        "--workpath", native(work_dir / "build"),
        "--specpath", native(work_dir),
        "--paths", native(staging),
        "--add-data", f"{native(staging / 'llamapack' / 'templates')}{pathsep}llamapack/templates",
        *(
            ["--add-data", f"{native(staging / 'llama_cpp' / PACKED_DIR)}{pathsep}llama_cpp/{PACKED_DIR}"]
            if (staging / "llama_cpp" / PACKED_DIR).is_dir() else []
        ),
        "--hidden-import", "llamapack.runtime.cli",
        "--collect-submodules", "llamapack.runtime",
        *[arg for name in _EXCLUDES for arg in ("--exclude-module", name)],
        *[arg for path in libraries for arg in ("--add-binary", f"{native(path)}{pathsep}llama_cpp/lib")],
        native(entry),
    ]  # fmt: skip


def run_pyinstaller(
    python: Sequence[str],
    arguments: Sequence[str],
    work_dir: Path,
    destination: Path,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run PyInstaller with `python` (a command: the host's or a Windows one under Wine),
    log to pyinstaller.log beside `destination` and move the stub into place."""
    log_path = destination.parent / "pyinstaller.log"
    try:
        # Output through a pipe, stdin from /dev/null: a Windows console program under
        # Wine dies when its stdout is a regular file.
        result = subprocess.run(
            [*python, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=work_dir, env=None if env is None else dict(env),
        )  # fmt: skip
    except OSError as exc:
        raise RuntimeStubError(f"cannot run PyInstaller with {python[0]}: {exc.strerror}") from None
    log_path.write_bytes(result.stdout)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeStubError(f"PyInstaller failed ({tail[0]}); full log: {log_path}")
    built = work_dir / "dist" / destination.name
    if not built.is_file():
        raise RuntimeStubError(f"PyInstaller wrote no {destination.name}; full log: {log_path}")
    os.replace(built, destination)


def run_logged(command: Sequence[str], log_path: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run a build step's `command`, appending its output to `log_path`; a failure is one line."""
    try:
        result = subprocess.run(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
    except OSError as exc:
        raise RuntimeStubError(f"{what}: cannot run {command[0]}: {exc.strerror}") from None
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode() + result.stdout)
    if result.returncode != 0:
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        tail = next((line for line in reversed(lines) if line.strip()), "no output")
        raise RuntimeStubError(f"{what} failed ({tail.strip()}); full log: {log_path}")


def stage_sources(root: Path, llama_cpp_dir: Path, llama_cpp_python: str) -> Path:
    """Copy the runtime and UI as a plain `llamapack` package PyInstaller can analyse
    (an editable install hides them behind an import hook it cannot follow), with
    llama_cpp's bindings from `llama_cpp_dir` (an installed package or an sdist's)."""
    package = root / "llamapack"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(_package_dir("llamapack.runtime"), package / "runtime", ignore=ignore)
    shutil.copytree(_package_dir("llamapack.templates"), package / "templates", ignore=ignore)
    _stage_llama_cpp(llama_cpp_dir, root / "llama_cpp", llama_cpp_python)
    return root


def stage_gpu_backends(target: Path, folders: Sequence[Path]) -> None:
    """The packed GPU backends (builder/gpu.py) as llama_cpp/gpu/ of the stub: each
    library's .xz and one index of them all (runtime/llama/gpu.py reads it)."""
    if not folders:
        return
    target.mkdir(parents=True)
    index: dict[str, object] = {}
    for folder in folders:
        entries = json.loads((folder / PACKED_INDEX).read_text())
        for name, entry in entries.items():
            shutil.copy2(folder / (entry["library"] + ".xz"), target)
            index[name] = entry
    (target / PACKED_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _quiet(message: str) -> None:
    pass


def _stage_llama_cpp(source: Path, target: Path, llama_cpp_python: str) -> None:
    """llama_cpp's own `__init__` imports the high-level `Llama` class and with it
    numpy (13 MB of the stub, compressed). The runtime uses only the low-level
    bindings, so the stub gets the package with a lean `__init__`."""
    target.mkdir(parents=True)
    for module in source.glob("*.py"):
        if module.name != "__init__.py":
            shutil.copy2(module, target / module.name)
    target.joinpath("__init__.py").write_text(
        "# Staged by llamapack: the low-level bindings only (see builder/stub.py).\n"
        f"__version__ = {llama_cpp_python!r}\n"
    )


def _host_libraries() -> list[Path]:
    """llama.cpp's libraries, all for llama_cpp/lib of the stub, where
    llama_cpp loads them and runtime/llama/cpu.py looks first for the CPU variants
    (llama-cpp-python installs those into site-packages/bin)."""
    import llama_cpp

    from llamapack.runtime.llama.cpu import discover, search_directories

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    variants = list(discover(search_directories()).values())
    if sys.platform.startswith("linux"):
        names = _LINUX_LIBS + ((_LINUX_CPU_LIB,) if (lib_dir / _LINUX_CPU_LIB).exists() else ())
    else:
        names = tuple(p.name for p in lib_dir.iterdir() if p.is_file())
    libraries = []
    for name in names:
        path = lib_dir / name
        if not path.exists():
            raise RuntimeStubError(f"llama-cpp-python is missing {path}; reinstall it")
        libraries.append(path)
    if sys.platform.startswith("linux") and _LINUX_CPU_LIB not in names and not variants:
        raise RuntimeStubError(f"llama-cpp-python has no CPU backend ({_LINUX_CPU_LIB} or libggml-cpu-*.so)")
    for path in variants:
        if path.parent != lib_dir or path.name not in names:
            libraries.append(path)
    return libraries
