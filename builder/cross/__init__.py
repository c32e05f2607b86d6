"""Runtime stubs for other systems, built on this Linux host.

`windows-x86_64` (windows.py): llama.cpp cross-compiled with mingw-w64, a Windows
CPython and PyInstaller run under Wine. `linux-aarch64` (aarch64.py): llama.cpp
cross-compiled, PyInstaller in an emulated arm64 root. Both follow the host recipe
of builder/stub.py; a finished stub is cached like the host's, under
`cache_dir()/runtimes/<key>/`, keyed by llamapack, llama-cpp-python, the target and
a digest of the runtime sources and of these recipes, so a second build is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from llamapack.runtime import __version__

from ..errors import RuntimeStubError, UsageError
from ..stub import STUB_NAME, StubInfo, build_lock, cache_dir, llama_cpp_version, sources_digest

Log = Callable[[str], None]

# target -> module of this package that builds its stub (imported only when used:
# each needs its own tools)
CROSS_TARGETS = {"windows-x86_64": "windows", "linux-aarch64": "aarch64"}


def _module_file(target: str) -> Path:
    return Path(__file__).with_name(CROSS_TARGETS[target] + ".py")


def _module(target: str) -> ModuleType:
    name = f"{__name__}.{CROSS_TARGETS[target]}"
    if importlib.util.find_spec(name) is None:
        raise RuntimeStubError(f"this llamapack cannot build the {target} runtime here (no {name})")
    return importlib.import_module(name)


def cross_stub_path(target: str) -> Path:
    """Where the stub for `target` is cached: the host stub's layout, with the target
    in the key and the digest over the cross recipe too."""
    if target not in CROSS_TARGETS:
        choices = ", ".join(CROSS_TARGETS)
        raise UsageError(f"cannot build the runtime for {target!r} here; choose one of {choices}")
    recipe = [Path(__file__), _module_file(target)]
    from .. import gpu

    if gpu.wanted():  # each stub carries the Vulkan backend; a CPU-only one has a key of its own
        recipe.append(Path(gpu.__file__))
    digest = sources_digest([path for path in recipe if path.is_file()])
    key = f"{__version__}-llama-cpp-python-{llama_cpp_version()}-{target}-{digest}"
    suffix = ".exe" if target.startswith("windows") else ""
    return cache_dir() / "runtimes" / key / (STUB_NAME + suffix)


def cached_cross_stub(target: str) -> Path | None:
    """The stub built here earlier for `target`, if any (never builds)."""
    if target not in CROSS_TARGETS:
        return None
    path = cross_stub_path(target)
    return path if path.is_file() else None


def build_cross_stub(target: str, force: bool = False, log: Log | None = None) -> StubInfo:
    """Build (or reuse) the runtime stub for `target` on this host."""
    path = cross_stub_path(target)
    if path.is_file() and not force:
        return StubInfo(path, path.parent.name, built=False)
    with build_lock(target, log):
        if path.is_file() and not force:  # built by another llamapack while this one waited
            return StubInfo(path, path.parent.name, built=False)
        _module(target).build_stub(path, log)
    if not path.is_file():
        raise RuntimeStubError(f"the {target} runtime build wrote no {path}")
    return StubInfo(path, path.parent.name, built=True)
