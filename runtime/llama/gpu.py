"""Which GPU backend runs the model: load one of ggml's, or say why none.

GPU backends are loadable ggml libraries like the CPU variants (GGML_BACKEND_DL):
ggml-vulkan (any vendor), ggml-cuda (NVIDIA), ggml-metal (Apple). `--gpu auto`
tries those this file carries, a vendor's own API first, and keeps the first that
brings a device; only one is loaded, or one GPU would show up twice (as CUDA0 and
Vulkan0) and get layers twice. Anything missing (the library, the system's Vulkan
loader or driver, a device) leaves the CPU engine as it was, with the reason.

A backend the builder packed (builder/gpu.py) travels xz-compressed in the stub:
llama_cpp/gpu/<library>.xz, listed in llama_cpp/gpu/backends.json with the
library's SHA-256 and size. It is unpacked once per user into the cache folder,
written under a temporary name and renamed into place (two launches racing write
the same bytes), and its SHA-256 is checked at every launch before it is loaded:
a half-written or altered copy is written again, never loaded.

A backend too big for every file (CUDA, with the CUDA runtime and cuBLAS: about
700 MB) is added to one file by `llamapack build --gpu-runtime cuda`: xz members of
the file's ZIP, listed in its manifest (`gpu_runtime`). They are unpacked the same
way, all into one folder, and loaded in the manifest's order. Hashing 700 MB at
every launch would cost more than the rest of the launch, so once a folder's
libraries are verified their sizes and times are recorded beside them, and a later
launch re-hashes only a library whose size or time differs.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from llamapack.runtime.fileformat.manifest import GpuLibrary, GpuRuntime

CHOICES = ("auto", "cuda", "metal", "vulkan", "none")
AUTO_ORDER = ("cuda", "metal", "vulkan")
NAMES = {"cuda": "CUDA", "metal": "Metal", "vulkan": "Vulkan"}
PACKED_DIR = "gpu"  # under llama_cpp/ in the stub
PACKED_INDEX = "backends.json"
UNPACKED_DIR = "gpu-backends"  # under the user cache folder, one folder per library hash
# The system library each backend needs before it can start (never carried in the stub).
_SYSTEM_LOADERS = {
    "vulkan": {"linux": "libvulkan.so.1", "win32": "vulkan-1.dll", "darwin": "libvulkan.1.dylib"},
    "cuda": {"linux": "libcuda.so.1", "win32": "nvcuda.dll"},
}


class GpuError(Exception):
    """A GPU backend asked for by name (--gpu vulkan) cannot run here."""


@dataclass(frozen=True)
class PackedBackend:
    """A GPU backend library as the stub carries it: <library>.xz and what it must unpack to."""

    name: str  # "vulkan"
    library: str  # "libggml-vulkan.so"
    sha256: str
    size: int
    packed_size: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "library": self.library,
            "sha256": self.sha256,
            "size": self.size,
            "packed_size": self.packed_size,
        }

    @classmethod
    def from_json(cls, name: str, value: dict[str, object]) -> PackedBackend:
        return cls(
            name,
            str(value["library"]),
            str(value["sha256"]),
            int(str(value["size"])),
            int(str(value.get("packed_size", 0))),
        )


@dataclass(frozen=True)
class Probe:
    """What trying one backend found."""

    backend: str
    devices: int = 0  # GPU devices it registered
    reason: str = ""  # why it brought none
    carried: bool = True  # False: not in this file (auto passes over it quietly)


@dataclass(frozen=True)
class GpuChoice:
    """The GPU backend in use (`backend`), or None and why (`reason`)."""

    requested: str  # one of CHOICES
    backend: str | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"requested": self.requested, "backend": self.backend, "reason": self.reason or None}


def choose(requested: str, probe: Callable[[str], Probe], platform: str = sys.platform) -> GpuChoice:
    """Try the backends `requested` names, in order, until one brings a device.
    A backend asked for by name that cannot run is a GpuError; `auto` falls back
    to the CPU with the reasons of the backends this file carries."""
    if requested == "none":
        return GpuChoice("none", reason="--gpu none")
    names = [name for name in AUTO_ORDER if _runs_on(name, platform)] if requested == "auto" else [requested]
    reasons = []
    for name in names:
        found = probe(name)
        if found.devices:
            return GpuChoice(requested, name)
        if requested != "auto":
            raise GpuError(f"--gpu {name}: {found.reason}")
        if found.carried:
            reasons.append(f"{NAMES[name]}: {found.reason}")
    return GpuChoice(requested, reason="; ".join(reasons) or "this file has no GPU backend")


def _runs_on(backend: str, platform: str) -> bool:
    if backend == "metal":
        return platform == "darwin"
    if backend == "cuda":
        return platform != "darwin"
    return True


@dataclass(frozen=True)
class FilePayload:
    """A GPU runtime carried as members of the built file (manifest's gpu_runtime)."""

    path: Path  # the built file
    runtime: GpuRuntime
    # Told before a first unpack, which takes seconds (CUDA: 700 MB from xz).
    on_unpack: Callable[[str], None] | None = field(default=None, compare=False)


# -- the real probe: find, unpack and load a backend library


def probe(name: str, payload: FilePayload | None = None) -> Probe:
    """Load backend `name` into ggml (registering its devices) and count its GPUs;
    `payload`: the GPU runtime the built file carries, if any."""
    from llamapack.runtime.llama.ggml import ggml

    api = ggml()
    built_in = api.ggml_backend_reg_by_name(NAMES[name].encode())
    if built_in:  # linked into ggml (Metal on a Mac): its devices are registered already
        return _counted(name, built_in)
    library = _library_file(name)
    packed = None if library.is_file() else _packed(name)
    in_file = payload if payload is not None and payload.runtime.backend == name and packed is None else None
    if not library.is_file() and packed is None and in_file is None:
        return Probe(name, reason=f"this file has no {NAMES[name]} backend", carried=False)
    loader = _SYSTEM_LOADERS.get(name, {}).get(_platform_key())
    driver = None
    if loader is not None:
        try:
            driver = ctypes.CDLL(loader)
        except OSError:
            return Probe(name, reason=f"no {NAMES[name]} driver on this system ({loader} not found)")
    if name == "cuda" and driver is not None and (too_old := _old_cuda_driver(driver)):
        return Probe(name, reason=too_old)
    dependencies: list[Path] = []
    try:
        if packed is not None:
            library = unpack(packed, Path(_package_dir()) / PACKED_DIR, cache_root())
        elif in_file is not None:
            *dependencies, library = unpack_payload(in_file, cache_root())
    except OSError as exc:
        return Probe(name, reason=f"cannot unpack its library: {exc.strerror or exc}")
    try:
        # ggml_backend_load's dlopen says nothing of why it failed. The libraries the
        # backend needs are loaded first, by path: its own lookup by soname then finds them.
        for needed in [*dependencies, library]:
            ctypes.CDLL(str(needed))
    except OSError as exc:
        return Probe(name, reason=f"cannot load {library.name}: {exc}")
    reg = api.ggml_backend_load(os.fsencode(library))
    if not reg:
        return Probe(name, reason=f"no working {NAMES[name]} driver")
    return _counted(name, reg)


CUDA_RUNTIME_MAJOR = 13  # the CUDA runtime builder/cuda.py packs (NVIDIA driver 580 or newer)


def _old_cuda_driver(driver: ctypes.CDLL) -> str:
    """Why an NVIDIA driver cannot run the carried CUDA runtime ("" when it can, or
    cannot say): the runtime would only report "insufficient driver" to ggml's log."""
    version = ctypes.c_int(0)
    try:
        status = driver.cuDriverGetVersion(ctypes.byref(version))
    except AttributeError:
        return ""
    if status != 0 or not 0 < version.value < CUDA_RUNTIME_MAJOR * 1000:
        return ""
    major, minor = divmod(version.value // 10, 100)
    return (
        f"the NVIDIA driver runs CUDA up to {major}.{minor}; this file's CUDA runtime needs "
        f"{CUDA_RUNTIME_MAJOR}.0 (driver 580 or newer)"
    )


def _counted(name: str, reg: int) -> Probe:
    """How many GPUs backend `name`'s registry brought."""
    from llamapack.runtime.llama.devices import DEVICE_TYPES, OFFLOAD_TYPES
    from llamapack.runtime.llama.ggml import ggml

    api = ggml()
    gpus = 0
    for index in range(api.ggml_backend_reg_dev_count(reg)):
        kind = api.ggml_backend_dev_type(api.ggml_backend_reg_dev_get(reg, index))
        gpus += 0 <= kind < len(DEVICE_TYPES) and DEVICE_TYPES[kind] in OFFLOAD_TYPES
    if not gpus:
        return Probe(name, reason=f"no {NAMES[name]} GPU found")
    return Probe(name, devices=gpus)


def unpack(backend: PackedBackend, packed_dir: Path, cache: Path) -> Path:
    """The library of `backend`, unpacked into `cache` unless a verified copy is there."""
    target = cache / UNPACKED_DIR / backend.sha256[:16] / backend.library
    if target.is_file() and _sha256(target) == backend.sha256:
        return target
    with (packed_dir / (backend.library + ".xz")).open("rb") as packed:
        _unpack_into(target, packed, backend.sha256, backend.size, f"{backend.library}.xz in this file")
    return target


def unpack_payload(payload: FilePayload, cache: Path) -> list[Path]:
    """The GPU runtime's libraries, in load order, unpacked into one folder of
    `cache` (named by payload_key) unless verified copies are there."""
    import json
    import zipfile

    libraries = payload.runtime.libraries
    folder = cache / UNPACKED_DIR / payload_key(payload.runtime)
    stamps_file = folder / ".verified.json"
    try:
        stamps = json.loads(stamps_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    paths, verified = [], {}
    told = payload.on_unpack is None
    with zipfile.ZipFile(payload.path) as archive:
        for library in libraries:
            target = folder / library.file
            stamp = _stamp(target, library)
            if stamp is None or stamps.get(library.file) != stamp:
                if not (target.is_file() and _sha256(target) == library.sha256):
                    if not told and payload.on_unpack is not None:
                        size = sum(item.size for item in libraries) / 1e6
                        payload.on_unpack(
                            f"unpacking the {NAMES[payload.runtime.backend]} runtime ({size:.0f} MB) into "
                            f"{folder} (once)..."
                        )
                        told = True
                    where = f"{library.member} in {payload.path.name}"
                    try:
                        member = archive.open(library.member)
                    except KeyError:
                        raise OSError(f"{where} is missing") from None
                    with member:
                        _unpack_into(target, member, library.sha256, library.size, where)
                stamp = _stamp(target, library)
            paths.append(target)
            verified[library.file] = stamp
    if verified != stamps:
        _write_quietly(stamps_file, json.dumps(verified, sort_keys=True))
    return paths


def payload_key(runtime: GpuRuntime) -> str:
    """The unpack folder's name: from every library's hash, so runtimes that share
    ggml-cuda but not cuBLAS never take turns rewriting one folder."""
    import hashlib

    names = "".join(f"{library.file}\0{library.sha256}\n" for library in runtime.libraries)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def _stamp(path: Path, library: GpuLibrary) -> list[object] | None:
    """What says a verified copy is unchanged: its hash's claim, size and time."""
    try:
        info = path.stat()
    except OSError:
        return None
    return [library.sha256, info.st_size, info.st_mtime_ns]


def _unpack_into(target: Path, packed: IO[bytes], sha256: str, size: int, where: str) -> None:
    """xz stream `packed`, checked (size, SHA-256) as it is decompressed into a
    temporary file beside `target`, then renamed into place."""
    import hashlib
    import lzma
    import tempfile
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    try:
        digest, written = hashlib.sha256(), 0
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        with os.fdopen(descriptor, "wb") as out:
            try:
                while chunk := packed.read(1 << 20):
                    data = decompressor.decompress(chunk)
                    digest.update(data)
                    written += len(data)
                    out.write(data)
                whole = decompressor.eof
            except (lzma.LZMAError, zipfile.BadZipFile):  # a ZIP member's CRC is checked too
                whole = False
        if not whole or written != size or digest.hexdigest() != sha256:
            raise OSError(f"{where} is damaged")
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        # Windows will not replace a DLL another launch has loaded meanwhile: that one is whole.
        if target.is_file() and _sha256(target) == sha256:
            return
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_quietly(path: Path, text: str) -> None:
    """A best-effort record: a launch that cannot write it only hashes again next time."""
    import tempfile

    try:
        descriptor, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)


def packed_backends(packed_dir: Path) -> dict[str, PackedBackend]:
    import json

    try:
        index = json.loads((packed_dir / PACKED_INDEX).read_text())
        return {name: PackedBackend.from_json(name, value) for name, value in index.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or not one the builder wrote
        return {}


def cache_root() -> Path:
    """The per-user cache folder (LLAMAPACK_CACHE moves it, and the builder's)."""
    override = os.environ.get("LLAMAPACK_CACHE")
    if override:
        return Path(override)
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return Path(local) / "llamapack" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llamapack"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llamapack"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _packed(name: str) -> PackedBackend | None:
    return packed_backends(Path(_package_dir()) / PACKED_DIR).get(name)


def _package_dir() -> str:
    import llama_cpp

    return os.path.dirname(llama_cpp.__file__)


def _library_file(name: str) -> Path:
    """Where an unpacked backend library would lie: beside the CPU variants."""
    from llamapack.runtime.llama.cpu import search_directories

    file_name = {"win32": f"ggml-{name}.dll"}.get(sys.platform, f"libggml-{name}.so")
    for folder in search_directories():
        if (folder / file_name).is_file():
            return folder / file_name
    return search_directories()[0] / file_name


def _platform_key() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform
