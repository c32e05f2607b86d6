"""Reading a built file: find the model, the manifest and `.args`, and check
that they agree before anything is loaded."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llamapack.runtime.fileformat.executables import STUB_TAIL_LIMIT
from llamapack.runtime.fileformat.magic import GGUF_MAGIC, PYI_COOKIE_MAGIC
from llamapack.runtime.fileformat.manifest import FormatError, Manifest
from llamapack.runtime.fileformat.zip_layout import (
    ARGS_NAME,
    LOCAL_SIGNATURE,
    MANIFEST_NAME,
    MODEL_ALIGNMENT,
    member_data_offset,
)

USER_ARGS_MARKER = "..."


@dataclass(frozen=True)
class ModelSource:
    """Where the GGUF lies: a whole file, or a span inside a bigger one."""

    path: Path
    offset: int = 0


@dataclass(frozen=True)
class Layout:
    """What the runtime needs from its own file."""

    path: Path
    manifest: Manifest
    args: list[str]
    model_name: str
    model_path: Path  # the file itself, or the GGUF beside it (Windows files over 4 GiB)
    model_offset: int
    model_size: int
    file_size: int

    @property
    def external(self) -> bool:
        return self.model_path != self.path


# ------------------------------------------------------------ .args


def encode_args(args: list[str]) -> bytes:
    for arg in args:
        if "\n" in arg:
            raise ValueError(f"default argument {arg!r} contains a newline")
    return "".join(arg + "\n" for arg in args).encode()


def decode_args(data: bytes) -> list[str]:
    return [line for line in data.decode().split("\n") if line != ""]


def merge_args(defaults: list[str], user: list[str]) -> list[str]:
    """llamafile's rule: user arguments go where `...` stands, else after the defaults."""
    if USER_ARGS_MARKER not in defaults:
        return defaults + user
    at = defaults.index(USER_ARGS_MARKER)
    return defaults[:at] + user + [a for a in defaults[at + 1 :] if a != USER_ARGS_MARKER]


# ------------------------------------------------------------ reading


def classify(path: str | Path) -> str:
    """ "built" (a ZIP end record), "stub" (a bare runtime: its cookie is near
    the end) or "incomplete" (neither: a built file cut short)."""
    try:
        if zipfile.is_zipfile(path):
            return "built"
        with open(path, "rb") as raw:
            size = raw.seek(0, io.SEEK_END)
            raw.seek(max(0, size - STUB_TAIL_LIMIT))
            tail = raw.read()
    except OSError:
        return "incomplete"
    cookie_at = tail.rfind(PYI_COOKIE_MAGIC)
    # A built file's first ZIP entry follows the stub; a bare stub has none.
    if cookie_at < 0 or LOCAL_SIGNATURE in tail[cookie_at:]:
        return "incomplete"
    return "stub"


def read_layout(path: str | Path) -> Layout:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest_bytes = archive.read(MANIFEST_NAME)
            args = decode_args(archive.read(ARGS_NAME)) if ARGS_NAME in archive.namelist() else []
            manifest = _decode_manifest(path, manifest_bytes)
            model = manifest.model
            if model.external is not None:
                return _external_layout(path, manifest, model.external, args)
            info = archive.getinfo(model.file)
            with path.open("rb") as raw:
                model_offset = member_data_offset(raw, info.header_offset)
                raw.seek(model_offset)
                magic = raw.read(4)
                file_size = raw.seek(0, io.SEEK_END)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise FormatError(f"{path} is not a complete llamapack file ({exc})") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"{path}: the model entry is compressed, so it cannot be memory-mapped")
    if info.file_size != model.size or model_offset + info.file_size > file_size:
        raise FormatError(f"{path} is truncated: the model needs bytes past the end of the file")
    if model_offset % MODEL_ALIGNMENT or magic != GGUF_MAGIC:
        raise FormatError(f"{path}: the embedded model is not an aligned GGUF")
    return Layout(path, manifest, args, model.file, path, model_offset, info.file_size, file_size)


def _decode_manifest(path: Path, data: bytes) -> Manifest:
    try:
        return Manifest.decode(data)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _external_layout(path: Path, manifest: Manifest, external: str, args: list[str]) -> Layout:
    beside = path.parent / Path(external).name
    try:
        with beside.open("rb") as raw:
            magic = raw.read(4)
            size = raw.seek(0, io.SEEK_END)
    except OSError:
        raise FormatError(f"{path} needs {beside.name} beside it; keep the two files together") from None
    if size != manifest.model.size or magic != GGUF_MAGIC:
        raise FormatError(f"{beside} is not the model {path.name} was built with (wrong size or not a GGUF)")
    return Layout(path, manifest, args, manifest.model.file, beside, 0, size, path.stat().st_size)
