"""Look inside built files: inspect, verify and unpack."""

from __future__ import annotations

import hashlib
import lzma
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamapack.runtime import __version__
from llamapack.runtime import fileformat as ff

from .atomic import atomic_output
from .copying import copy_with_digests
from .errors import BuiltFileError, OutputError, VerifyError
from .progress import progress_bar
from .stub import llama_cpp_version, target_name

_CHUNK = 8 * 1024 * 1024


def open_layout(file: Path) -> ff.Layout:
    if not file.exists():
        raise BuiltFileError(f"no such file: {file}")
    if file.is_dir():
        raise BuiltFileError(f"{file} is a directory, not a built file")
    try:
        return ff.read_layout(file)
    except ff.FormatError as exc:
        raise BuiltFileError(str(exc)) from None


@dataclass(frozen=True)
class Inspection:
    """What `inspect` shows: the file's layout (with its manifest) and upgrade advice."""

    file: Path
    layout: ff.Layout
    upgrade: str

    def to_json(self) -> dict[str, Any]:
        layout = self.layout
        return {
            "file": str(self.file),
            "manifest": layout.manifest.to_json(),
            "engine": layout.manifest.engine.to_json(),
            "layout": {
                "model_beside": str(layout.model_path) if layout.external else None,
                "file_size": layout.file_size,
                "model_offset": layout.model_offset,
                "model_size": layout.model_size,
                "stub_size": layout.file_size - (0 if layout.external else layout.model_size),
                "args": layout.args,
            },
            "upgrade": self.upgrade,
        }


def inspect_file(file: Path) -> Inspection:
    layout = open_layout(file)
    return Inspection(file, layout, upgrade_advice(layout.manifest.engine, file))


def upgrade_advice(engine: ff.EngineRecord, file: Path) -> str:
    if engine.target != target_name():
        return f"built for {engine.target}; this llamapack builds for {target_name()}"
    newer = [
        f"{name} {mine} (file has {theirs})"
        for name, mine, theirs in (
            ("llamapack", __version__, engine.llamapack),
            ("llama-cpp-python", llama_cpp_version(), engine.llama_cpp_python),
        )
        if _version_key(mine) > _version_key(theirs)
    ]
    if newer:
        return f"this llamapack carries a newer engine: {', '.join(newer)}; run `llamapack upgrade {file}`"
    return "the file's engine is as new as this llamapack's"


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def hash_model(file: Path, layout: ff.Layout) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    remaining = layout.model_size
    with layout.model_path.open("rb", buffering=0) as raw, progress_bar(layout.model_size, "Hashing") as bar:
        raw.seek(layout.model_offset)
        while remaining:
            got = raw.readinto(view[: min(_CHUNK, remaining)])
            if not got:
                raise BuiltFileError(f"{file} is truncated inside the model")
            digest.update(view[:got])
            remaining -= got
            bar.update(got)
    return digest.hexdigest()


def verify_file(file: Path) -> str:
    """The weights' sha256, checked against the manifest (and a GPU runtime's libraries too)."""
    layout = open_layout(file)
    expected = layout.manifest.model.sha256
    actual = hash_model(file, layout)
    if actual != expected:
        raise VerifyError(
            f"MISMATCH: the weights in {file} hash to {actual}, but the manifest says {expected}; "
            "the file is damaged: download or copy it again"
        )
    if layout.manifest.gpu_runtime is not None:
        for library in layout.manifest.gpu_runtime.libraries:
            if _unpacked_sha256(file, library.member) != library.sha256:
                raise VerifyError(
                    f"MISMATCH: {library.member} in {file} is not the library it was built with; "
                    "the file is damaged: download or copy it again"
                )
    return actual


def _unpacked_sha256(file: Path, member: str) -> str | None:
    """The sha256 of an xz member's contents, or None when it does not decompress."""
    digest = hashlib.sha256()
    decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        with zipfile.ZipFile(file) as archive, archive.open(member) as packed:
            while chunk := packed.read(_CHUNK):
                digest.update(decompressor.decompress(chunk))
    except (KeyError, OSError, lzma.LZMAError, zipfile.BadZipFile):
        return None
    return digest.hexdigest() if decompressor.eof else None


def unpack_file(file: Path, output: Path | None, force: bool) -> Path:
    layout = open_layout(file)
    output = output or Path(layout.model_name)
    if output.is_dir():
        output = output / layout.model_name
    if output.exists():
        if output.resolve() == file.resolve():
            raise OutputError(f"the output {output} is the built file itself; choose another -o")
        if not force:
            raise OutputError(f"{output} exists; pass --force to replace it")
    expected = layout.manifest.model.sha256

    def check(_: Path) -> None:
        if digests.sha256 != expected:
            raise VerifyError(f"MISMATCH: the weights in {file} do not match its manifest; not written")

    with (
        atomic_output(output, check, executable=False) as target,
        layout.model_path.open("rb", buffering=0) as raw,
    ):
        raw.seek(layout.model_offset)
        with progress_bar(layout.model_size, f"Writing {output.name}") as bar:
            try:
                digests = copy_with_digests(raw, target, layout.model_size, bar)
            except EOFError:
                raise BuiltFileError(f"{file} is truncated inside the model") from None
    return output
