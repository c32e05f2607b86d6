"""The llamapack file format, defined once for the builder (which writes it)
and the runtime (which reads it).

A built file is at once the runtime executable and a ZIP archive::

    [runtime stub, byte for byte: executable image + PyInstaller archive]
    [model.gguf local header, padded] [GGUF bytes, 64 KiB aligned, STORED]
    [manifest.json local header + data] [.args local header + data]
    [a copy of PyInstaller's archive, ending with its cookie]
    [ZIP central directory] [ZIP64 end records when needed] [end record]

Why this order:

* PyInstaller's bootloader scans backwards from the end for its cookie at
  every launch; the archive copy puts it a few hundred bytes from the end
  however big the model is (see `executables.py`).
* ZIP readers start from the end record and follow absolute offsets, so the
  stub before the entries and the archive copy between the entries and the
  central directory are invisible to them: `unzip -l` and `zipfile` see three
  members.
* llama.cpp maps tensors at their absolute file offsets, so the GGUF data must
  be aligned in the file; 64 KiB also satisfies every page size in use.
* A Windows file that would reach 4 GiB keeps the model beside it instead
  (`model.external` in the manifest), since Windows will not start it.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .executables import PYI_COOKIE_MAGIC, STUB_TAIL_LIMIT, Stub, StubError, read_stub

__all__ = ["Stub", "StubError", "read_stub"]  # the executable side, re-exported

FORMAT_VERSION = 1
MODEL_ALIGNMENT = 64 * 1024
MANIFEST_NAME = "manifest.json"
ARGS_NAME = ".args"
USER_ARGS_MARKER = "..."
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSource:
    """Where the GGUF lies: a whole file, or a span inside a bigger one."""

    path: Path
    offset: int = 0


# ZIP structures (APPNOTE 6.3.x); all little-endian.
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_RECORD = struct.Struct("<IHHHHIIH")
_ZIP64_END_RECORD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_LOCAL_SIG, _CENTRAL_SIG, _END_SIG = 0x04034B50, 0x02014B50, 0x06054B50
_ZIP64_END_SIG, _ZIP64_LOCATOR_SIG = 0x06064B50, 0x07064B50
_ZIP64_EXTRA_ID = 0x0001
# The extra-field id Android's zipalign uses for padding; readers skip it.
_ALIGN_EXTRA_ID = 0xD935
_MAX32 = 0xFFFFFFFF
# 1980-01-01 00:00:00 in DOS format: a fixed stamp keeps builds reproducible.
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1
_UNIX_FILE_MODE = 0o100644 << 16
_MADE_BY_UNIX = 3 << 8


class FormatError(Exception):
    """The file is not a llamapack file, or is damaged."""


# ------------------------------------------------------------ ZIP writing


@dataclass
class Member:
    """One ZIP member as placed in the file."""

    name: str
    size: int
    header_at: int = 0
    extra_len: int = 0
    crc: int = 0

    @property
    def data_at(self) -> int:
        return self.header_at + _LOCAL_HEADER.size + len(self.name.encode()) + self.extra_len

    @property
    def end(self) -> int:
        return self.data_at + self.size

    def local_header(self) -> bytes:
        name = self.name.encode()
        extra = _zip64_local_extra(self.size) if self.size >= _MAX32 else b""
        pad = self.extra_len - len(extra)
        if pad:
            extra += struct.pack("<HHH", _ALIGN_EXTRA_ID, pad - 4, MODEL_ALIGNMENT % 0x10000) + bytes(pad - 6)
        size32 = _MAX32 if self.size >= _MAX32 else self.size
        fixed = _LOCAL_HEADER.pack(
            _LOCAL_SIG, _version_needed(self), 0x0800, 0, _DOS_TIME, _DOS_DATE,
            self.crc, size32, size32, len(name), len(extra),
        )  # fmt: skip
        return fixed + name + extra

    def crc_field_at(self) -> int:
        return self.header_at + 14


def _version_needed(member: Member) -> int:
    return 45 if member.size >= _MAX32 or member.header_at >= _MAX32 else 10


def _zip64_local_extra(size: int) -> bytes:
    return struct.pack("<HHQQ", _ZIP64_EXTRA_ID, 16, size, size)


@dataclass
class Plan:
    """Where every part of a built file goes; computed before a byte is written."""

    stub: Stub
    model: Member | None  # None when the model lies beside the executable
    manifest: Member
    args: Member
    members: list[Member] = field(default_factory=list)

    @property
    def archive_at(self) -> int:
        return self.args.end

    @property
    def central_directory_at(self) -> int:
        return self.archive_at + len(self.stub.archive)


def place_model(stub: Stub, model_name: str, model_size: int) -> Member:
    """The model's ZIP member, placed so its data starts 64 KiB aligned."""
    start = len(stub.data)
    name_len = len(model_name.encode())
    zip64_extra = 20 if model_size >= _MAX32 else 0
    data_at = _align_up(start + _LOCAL_HEADER.size + name_len + zip64_extra + 6, MODEL_ALIGNMENT)
    # Padding lives in the header's extra field (max 64 KiB); any excess becomes
    # a gap before the header, which ZIP readers never look at.
    extra_len = min(data_at - start - _LOCAL_HEADER.size - name_len, 0xFFFF)
    header_at = data_at - _LOCAL_HEADER.size - name_len - extra_len
    return Member(model_name, model_size, header_at, extra_len)


def plan_file(stub: Stub, model: Member | None, manifest_len: int, args_len: int) -> Plan:
    manifest = Member(MANIFEST_NAME, manifest_len, header_at=model.end if model else len(stub.data))
    args = Member(ARGS_NAME, args_len, header_at=manifest.end)
    members = [model, manifest, args] if model else [manifest, args]
    return Plan(stub, model, manifest, args, members)


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def central_directory(plan: Plan) -> bytes:
    out = io.BytesIO()
    for member in plan.members:
        name = member.name.encode()
        big_size = member.size >= _MAX32
        fields = ([member.size, member.size] if big_size else []) + (
            [member.header_at] if member.header_at >= _MAX32 else []
        )
        extra = b""
        if fields:
            extra = struct.pack(f"<HH{len(fields)}Q", _ZIP64_EXTRA_ID, 8 * len(fields), *fields)
        size32 = _MAX32 if big_size else member.size
        out.write(
            _CENTRAL_HEADER.pack(
                _CENTRAL_SIG,
                _MADE_BY_UNIX | 45,
                _version_needed(member),
                0x0800,
                0,
                _DOS_TIME,
                _DOS_DATE,
                member.crc,
                size32,
                size32,
                len(name),
                len(extra),
                0,
                0,
                0,
                _UNIX_FILE_MODE,
                min(member.header_at, _MAX32),
            )  # fmt: skip
        )
        out.write(name + extra)
    directory = out.getvalue()
    at, count = plan.central_directory_at, len(plan.members)
    end = b""
    if at >= _MAX32 or at + len(directory) >= _MAX32:
        zip64_end_at = at + len(directory)
        end += _ZIP64_END_RECORD.pack(
            _ZIP64_END_SIG, _ZIP64_END_RECORD.size - 12, _MADE_BY_UNIX | 45, 45, 0, 0,
            count, count, len(directory), at,
        )  # fmt: skip
        end += _ZIP64_LOCATOR.pack(_ZIP64_LOCATOR_SIG, 0, zip64_end_at, 1)
    end += _END_RECORD.pack(_END_SIG, 0, 0, count, count, min(len(directory), _MAX32), min(at, _MAX32), 0)
    return directory + end


# ------------------------------------------------------------ manifest/args


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    # Sorted keys and a fixed layout: the same inputs give the same bytes.
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


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


@dataclass(frozen=True)
class Layout:
    """What the runtime needs from its own file."""

    path: Path
    manifest: dict[str, Any]
    args: list[str]
    model_name: str
    model_path: Path  # the file itself, or the GGUF beside it (Windows files over 4 GiB)
    model_offset: int
    model_size: int
    file_size: int

    @property
    def external(self) -> bool:
        return self.model_path != self.path


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
    if cookie_at < 0 or struct.pack("<I", _LOCAL_SIG) in tail[cookie_at:]:
        return "incomplete"
    return "stub"


def read_layout(path: str | Path) -> Layout:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST_NAME))
            args = decode_args(archive.read(ARGS_NAME)) if ARGS_NAME in archive.namelist() else []
            model = manifest["model"]
            if model.get("external"):
                return _external_layout(path, manifest, args)
            info = archive.getinfo(model["file"])
            with path.open("rb") as raw:
                model_offset = _data_offset(raw, info)
                raw.seek(model_offset)
                magic = raw.read(4)
                file_size = raw.seek(0, io.SEEK_END)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, struct.error) as exc:
        raise FormatError(f"{path} is not a complete llamapack file ({exc})") from None
    _check_format(path, manifest)
    if info.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"{path}: the model entry is compressed, so it cannot be memory-mapped")
    if info.file_size != model["size"] or model_offset + info.file_size > file_size:
        raise FormatError(f"{path} is truncated: the model needs bytes past the end of the file")
    if model_offset % MODEL_ALIGNMENT or magic != GGUF_MAGIC:
        raise FormatError(f"{path}: the embedded model is not an aligned GGUF")
    return Layout(path, manifest, args, model["file"], path, model_offset, info.file_size, file_size)


def _check_format(path: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != FORMAT_VERSION:
        raise FormatError(f"{path} uses file format {manifest.get('format')}, expected {FORMAT_VERSION}")


def _external_layout(path: Path, manifest: dict[str, Any], args: list[str]) -> Layout:
    _check_format(path, manifest)
    model = manifest["model"]
    beside = path.parent / Path(model["external"]).name
    try:
        with beside.open("rb") as raw:
            magic = raw.read(4)
            size = raw.seek(0, io.SEEK_END)
    except OSError:
        raise FormatError(f"{path} needs {beside.name} beside it; keep the two files together") from None
    if size != model["size"] or magic != GGUF_MAGIC:
        raise FormatError(f"{beside} is not the model {path.name} was built with (wrong size or not a GGUF)")
    return Layout(path, manifest, args, model["file"], beside, 0, size, path.stat().st_size)


def _data_offset(raw: io.BufferedReader, info: zipfile.ZipInfo) -> int:
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != struct.pack("<I", _LOCAL_SIG):
        raise ValueError("bad local header")
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
