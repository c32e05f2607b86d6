"""The runtime stub: a PyInstaller onefile build of `llamapack.runtime`.

It is built once per (llamapack version, llama-cpp-python version, OS, arch,
runtime sources) and cached in the user cache folder, so building a model
file is a copy job, not a PyInstaller run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import platformdirs

from llamapack.runtime import __version__

from .errors import RuntimeStubError

STUB_NAME = "llamapack-runtime"
# Shared libraries llama_cpp loads by path (libllama.so, libggml.so) and the
# sonames those need; PyInstaller has no hook for llama_cpp. The CPU backend is
# either linked in (libggml-cpu.so.0) or, with GGML_BACKEND_DL, one library per
# CPU variant that runtime/llama/cpu.py registers: _library_args collects whichever exists.
_LINUX_LIBS = ("libllama.so", "libggml.so", "libggml.so.0", "libggml-base.so.0")
_LINUX_CPU_LIB = "libggml-cpu.so.0"
# Modules PyInstaller would otherwise pull in through optional imports.
_EXCLUDES = ("tkinter", "IPython", "matplotlib", "pytest", "PIL", "pandas", "scipy", "gguf",
             "click", "tqdm", "platformdirs", "PyInstaller", "setuptools", "pip",
             "diskcache", "pydantic", "pydantic_core", "yaml", "openai", "huggingface_hub", "sqlite3",
             "llama_cpp.llama", "llama_cpp.server", "llama_cpp.llama_chat_format")  # fmt: skip


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
    """Hash of the runtime and UI sources, of this recipe and of the llama.cpp
    libraries the stub collects (a portable and a CPU-dispatch build of the same
    llama-cpp-python version differ): any change gets a new stub."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in ("llamapack.runtime", "llamapack.templates"):
        root = _package_dir(package)
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
    for library in sorted(_library_args()[1::2]):
        # 40 MB of libraries: their size and mtime say as much as their bytes
        # (a reinstall changes both) at no cost to every build.
        path = Path(library.split(os.pathsep)[0])
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
    build_stub(path, log=log)
    return StubInfo(path, path.parent.name, built=True)


def build_stub(destination: Path, log: object = None) -> Path:
    """Run PyInstaller; the result is moved into place only when complete."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llamapack-stub-", dir=destination.parent) as work:
        work_dir = Path(work)
        staging = _stage_sources(work_dir / "src")
        entry = work_dir / "entry.py"
        entry.write_text("from llamapack.runtime.cli import main\n\nraise SystemExit(main())\n")
        command = [
            sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--log-level=WARN",
            "--name", STUB_NAME,
            "--distpath", str(work_dir / "dist"),
            "--workpath", str(work_dir / "build"),
            "--specpath", str(work_dir),
            "--paths", str(staging),
            "--add-data", f"{staging / 'llamapack' / 'templates'}{os.pathsep}llamapack/templates",
            "--hidden-import", "llamapack.runtime.cli",
            "--collect-submodules", "llamapack.runtime",
            *[arg for name in _EXCLUDES for arg in ("--exclude-module", name)],
            *_library_args(),
            str(entry),
        ]  # fmt: skip
        log_path = destination.parent / "pyinstaller.log"
        with log_path.open("w") as log_file:
            result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=work_dir)
        if result.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeStubError(f"PyInstaller failed ({tail[0]}); full log: {log_path}")
        built = work_dir / "dist" / destination.name
        os.replace(built, destination)
    return destination


def _stage_sources(root: Path) -> Path:
    """Copy the runtime and UI as a plain `llamapack` package PyInstaller can analyse
    (an editable install hides them behind an import hook it cannot follow)."""
    package = root / "llamapack"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(_package_dir("llamapack.runtime"), package / "runtime", ignore=ignore)
    shutil.copytree(_package_dir("llamapack.templates"), package / "templates", ignore=ignore)
    _stage_llama_cpp(root / "llama_cpp")
    return root


def _stage_llama_cpp(target: Path) -> None:
    """llama_cpp's own `__init__` imports the high-level `Llama` class and with it
    numpy (35 MB that every launch would unpack). The runtime uses only the
    low-level bindings, so the stub gets the package with a lean `__init__`."""
    import llama_cpp

    source = Path(llama_cpp.__file__).parent
    target.mkdir(parents=True)
    for module in source.glob("*.py"):
        if module.name != "__init__.py":
            shutil.copy2(module, target / module.name)
    target.joinpath("__init__.py").write_text(
        "# Staged by llamapack: the low-level bindings only (see builder/stub.py).\n"
        f"__version__ = {llama_cpp_version()!r}\n"
    )


def _library_args() -> list[str]:
    """--add-binary for llama.cpp's libraries, all into llama_cpp/lib of the stub, where
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
    args = []
    for name in names:
        path = lib_dir / name
        if not path.exists():
            raise RuntimeStubError(f"llama-cpp-python is missing {path}; reinstall it")
        args += ["--add-binary", f"{path}{os.pathsep}llama_cpp/lib"]
    if sys.platform.startswith("linux") and _LINUX_CPU_LIB not in names and not variants:
        raise RuntimeStubError(f"llama-cpp-python has no CPU backend ({_LINUX_CPU_LIB} or libggml-cpu-*.so)")
    for path in variants:
        if path.parent != lib_dir or path.name not in names:
            args += ["--add-binary", f"{path}{os.pathsep}llama_cpp/lib"]
    return args
