"""Build for another system: the stub for a target, checked and cached.

Building is a copy job, so any machine can write a file for any system once it
has that system's runtime stub: given with `--runtime`, built here for the
host, built here earlier for the target (`llamapack runtime build --target`,
builder/cross/), or downloaded once from the release that matches this llamapack
(`LLAMAPACK_RUNTIME_URL`) and checked against the release's SHA256SUMS.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from llamapack.runtime import __version__
from llamapack.runtime.fileformat import StubError, read_stub

from .atomic import atomic_output
from .cross import CROSS_TARGETS, cached_cross_stub
from .errors import RuntimeStubError, UsageError
from .stub import STUB_NAME, StubInfo, cache_dir, ensure_stub, llama_cpp_version, target_name

# target -> (executable format, machine id in its header)
TARGETS = {
    "linux-x86_64": ("elf", 0x3E),
    "linux-aarch64": ("elf", 0xB7),
    "macos-arm64": ("macho", 0x0100000C),
    "windows-x86_64": ("pe", 0x8664),
}
# Windows will not start a PE file of 4 GiB or more; bigger models go beside it.
WINDOWS_MAX_FILE = (1 << 32) - 1
DEFAULT_RELEASE_URL = "https://github.com/llamapack/llamapack/releases/download/v{version}"


def exe_suffix(target: str) -> str:
    return ".exe" if target.startswith("windows") else ""


def stub_file_name(target: str) -> str:
    return f"{STUB_NAME}-{target}{exe_suffix(target)}"


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return target


def stub_for(target: str, runtime: Path | None) -> StubInfo:
    """The runtime stub to build `target` files with."""
    check_target(target)
    if runtime is not None:
        info = ensure_stub(runtime)
    elif target == target_name():
        info = ensure_stub()
    elif (built_here := cached_cross_stub(target)) is not None:
        info = StubInfo(built_here, built_here.parent.name, built=False)  # `llamapack runtime build --target`
    else:
        try:
            info = StubInfo(_downloaded_stub(target), f"release-{target}", built=False)
        except RuntimeStubError as exc:
            if target not in CROSS_TARGETS:
                raise
            hint = f"or build it here: llamapack runtime build --target {target}"
            raise RuntimeStubError(f"{exc}; {hint}") from None
    check_stub_target(info.path, target)
    return info


def check_stub_target(path: Path, target: str) -> None:
    """Refuse a stub for another system: the file would not start there."""
    try:
        header = read_stub(path.read_bytes()).header
    except StubError as exc:
        raise RuntimeStubError(f"{path}: {exc}") from None
    except OSError as exc:
        raise RuntimeStubError(f"cannot read the runtime stub {path}: {exc.strerror}") from None
    if (header.kind, header.machine) != TARGETS[target]:
        raise RuntimeStubError(f"{path} is a runtime for another system than {target}")


def _downloaded_stub(target: str) -> Path:
    folder = (
        cache_dir() / "runtimes" / f"{__version__}-llama-cpp-python-{llama_cpp_version()}-{target}-release"
    )
    path = folder / stub_file_name(target)
    if path.is_file():
        return path
    base = os.environ.get("LLAMAPACK_RUNTIME_URL", DEFAULT_RELEASE_URL).format(version=__version__)
    name = stub_file_name(target)
    sums = _fetch(f"{base}/SHA256SUMS").decode()
    expected = next((line.split()[0] for line in sums.splitlines() if line.strip().endswith(name)), None)
    if expected is None:
        raise RuntimeStubError(f"the release at {base} publishes no runtime for {target}")
    data = _fetch(f"{base}/{name}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RuntimeStubError(f"the downloaded {name} does not match the release's SHA256SUMS; not used")
    with atomic_output(path) as out:
        out.write(data)
    return path


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeStubError(f"cannot download {url}: HTTP {exc.code}; or pass --runtime PATH") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeStubError(f"cannot download {url}: {reason}; or pass --runtime PATH") from None
