"""The ZIP side of the file format: where each entry goes and in what order a
built file is written.

Every offset is computed before a byte is written (`plan_file`), so the builder
only streams: `Plan.write_head`, the model's bytes, then `Plan.write_tail`.
"""

from __future__ import annotations

import functools
import io
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from llamapack.runtime.fileformat.executables import REACH, Stub
from llamapack.runtime.fileformat.magic import (
    ZIP64_END_SIG,
    ZIP64_LOCATOR_SIG,
    ZIP_CENTRAL_SIG,
    ZIP_END_SIG,
    ZIP_LOCAL_SIG,
)

MODEL_ALIGNMENT = 64 * 1024
MANIFEST_NAME = "manifest.json"
ARGS_NAME = ".args"

# ZIP structures (APPNOTE 6.3.x); all little-endian.
LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_RECORD = struct.Struct("<IHHHHIIH")
_ZIP64_END_RECORD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_ZIP64_EXTRA_ID = 0x0001
# The extra-field id Android's zipalign uses for padding; readers skip it.
_ALIGN_EXTRA_ID = 0xD935
_MAX32 = 0xFFFFFFFF
# 1980-01-01 00:00:00 in DOS format: a fixed stamp keeps builds reproducible.
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1
_UNIX_FILE_MODE = 0o100644 << 16
_MADE_BY_UNIX = 3 << 8
LOCAL_SIGNATURE = struct.pack("<I", ZIP_LOCAL_SIG)


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
        return self.header_at + LOCAL_HEADER.size + len(self.name.encode()) + self.extra_len

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
        fixed = LOCAL_HEADER.pack(
            ZIP_LOCAL_SIG, _version_needed(self), 0x0800, 0, _DOS_TIME, _DOS_DATE,
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
    """Where every part of a built file goes; computed before a byte is written.

    The order, and why:

    * the stub first, byte for byte: it is the executable;
    * the model, 64 KiB aligned and STORED, because llama.cpp maps tensors at
      their absolute file offsets (absent when the model lies beside the file);
    * a GPU runtime too big for every file (`--gpu-runtime cuda`), when there is
      one: xz-compressed libraries, STORED, which the runtime unpacks once per user;
    * manifest.json and .args, small, after the model so their size (the
      manifest holds the model's hash) never moves the model;
    * the pointer to PyInstaller's archive (executables.Stub.pointer: its table
      of contents and a cookie), so the bootloader's backward scan for the cookie
      stops a few KiB from the end and reads the archive inside the stub; or,
      ahead of a model the pointer cannot reach over (about 4 GiB), the stub's own
      archive, moved there (Stub.split: with an ELF's section headers; a Mach-O's
      image signed again without it) while its image stays first;
    * the ZIP central directory and end records, which ZIP readers start from;
      they follow absolute offsets, so the stub and the pointer are invisible
      to them.
    """

    stub: Stub
    model: Member | None  # None when the model lies beside the executable
    manifest: Member
    args: Member
    members: list[Member] = field(default_factory=list)
    payload: list[Member] = field(default_factory=list)  # the GPU runtime's members

    @property
    def archive_at(self) -> int:
        return self.args.end

    @functools.cached_property
    def split(self) -> tuple[bytes, bytes] | None:
        if self.model is None or not _beyond_reach(self.stub, self.model.size, _total(self.payload)):
            return None
        return self.stub.split(self.archive_at)

    @property
    def front(self) -> bytes:
        """What comes before the model: the stub, or its image alone."""
        return self.split[0] if self.split else self.stub.data

    @functools.cached_property
    def pointer(self) -> bytes:
        return self.split[1] if self.split else self.stub.pointer(self.archive_at)

    @property
    def central_directory_at(self) -> int:
        return self.archive_at + len(self.pointer)

    def write_head(self, target: BinaryIO) -> None:
        """Everything before the model's bytes: the stub (or its image), then the
        model's local header."""
        target.write(self.front)
        if self.model is not None:
            target.write(bytes(self.model.header_at - len(self.front)))
            target.write(self.model.local_header())

    def write_payload(self, target: BinaryIO, sources: Sequence[BinaryIO]) -> None:
        """The GPU runtime's members, right after the model, each streamed from its
        source (whose CRC-32 the plan already holds)."""
        if len(sources) != len(self.payload):
            raise ValueError("one source is needed for each GPU runtime member")
        for member, source in zip(self.payload, sources, strict=True):
            if target.tell() != member.header_at:
                raise ValueError(f"{member.name} is not where the plan put it")
            target.write(member.local_header())
            shutil.copyfileobj(source, target, 1 << 20)
            if target.tell() != member.end:
                raise ValueError(f"{member.name} changed size after the file was planned")

    def write_tail(
        self, target: BinaryIO, manifest: bytes, args: bytes, model_crc: int | None = None
    ) -> None:
        """Everything after the model's bytes: manifest.json, .args, the archive's pointer
        and the ZIP directory; then the model's CRC, known only once its bytes are
        written, is patched into its local header."""
        if len(manifest) != self.manifest.size or len(args) != self.args.size:
            raise ValueError("manifest.json or .args changed length after the file was planned")
        if self.model is not None:
            if model_crc is None:
                raise ValueError("the model's CRC is needed to finish the file")
            self.model.crc = model_crc
        for member, data in ((self.manifest, manifest), (self.args, args)):
            member.crc = zlib.crc32(data)
            target.write(member.local_header())
            target.write(data)
        target.write(self.pointer)
        target.write(central_directory(self))
        if self.model is not None:
            target.seek(self.model.header_at)
            target.write(self.model.local_header())


# More than manifest.json, .args, the archive's table of contents and the ZIP records
# take between the model and the pointer's end.
_SMALL_PARTS = 1 << 20


def moves_archive(stub: Stub, model_size: int, payload_size: int = 0) -> bool:
    """Whether the model goes between the stub's image and its archive: where no
    pointer could reach back over it (and the GPU runtime after it), and the stub
    can be split (an ELF, or a Mach-O signed ad hoc)."""
    return _beyond_reach(stub, model_size, payload_size) and stub.split(len(stub.data)) is not None


def _beyond_reach(stub: Stub, model_size: int, payload_size: int) -> bool:
    """Whether a pointer written after the model could not reach back to the archive."""
    between = MODEL_ALIGNMENT + model_size + payload_size + _SMALL_PARTS
    return len(stub.data) + between - stub.archive_at >= REACH


def place_model(stub: Stub, model_name: str, model_size: int, payload_size: int = 0) -> Member:
    """The model's ZIP member, placed so its data starts 64 KiB aligned; `payload_size`:
    the GPU runtime's members that will follow it."""
    split = stub.split(len(stub.data)) if _beyond_reach(stub, model_size, payload_size) else None
    start = len(stub.data) if split is None else len(split[0])  # where the stub's image ends
    name_len = len(model_name.encode())
    zip64_extra = 20 if model_size >= _MAX32 else 0
    data_at = _align_up(start + LOCAL_HEADER.size + name_len + zip64_extra + 6, MODEL_ALIGNMENT)
    # Padding lives in the header's extra field (max 64 KiB); any excess becomes
    # a gap before the header, which ZIP readers never look at.
    extra_len = min(data_at - start - LOCAL_HEADER.size - name_len, 0xFFFF)
    header_at = data_at - LOCAL_HEADER.size - name_len - extra_len
    return Member(model_name, model_size, header_at, extra_len)


@dataclass(frozen=True)
class PayloadEntry:
    """A GPU runtime member to place: its name, size and CRC-32, known before writing."""

    name: str
    size: int
    crc: int


def payload_size(entries: Sequence[PayloadEntry]) -> int:
    """What the entries take in the file, headers included (for place_model)."""
    return sum(_header_size(entry.name, entry.size) + entry.size for entry in entries)


def plan_file(
    stub: Stub, model: Member | None, manifest_len: int, args_len: int, payload: Sequence[PayloadEntry] = ()
) -> Plan:
    at = model.end if model else len(stub.data)
    placed = []
    for entry in payload:
        member = Member(
            entry.name, entry.size, header_at=at, extra_len=_zip64_extra_len(entry.size), crc=entry.crc
        )
        placed.append(member)
        at = member.end
    manifest = Member(MANIFEST_NAME, manifest_len, header_at=at)
    args = Member(ARGS_NAME, args_len, header_at=manifest.end)
    members = [*([model] if model else []), *placed, manifest, args]
    return Plan(stub, model, manifest, args, members, placed)


def _zip64_extra_len(size: int) -> int:
    return len(_zip64_local_extra(size)) if size >= _MAX32 else 0


def _header_size(name: str, size: int) -> int:
    return LOCAL_HEADER.size + len(name.encode()) + _zip64_extra_len(size)


def _total(members: Sequence[Member]) -> int:
    return sum(member.end - member.header_at for member in members)


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
                ZIP_CENTRAL_SIG,
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
            ZIP64_END_SIG, _ZIP64_END_RECORD.size - 12, _MADE_BY_UNIX | 45, 45, 0, 0,
            count, count, len(directory), at,
        )  # fmt: skip
        end += _ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIG, 0, zip64_end_at, 1)
    end += _END_RECORD.pack(ZIP_END_SIG, 0, 0, count, count, min(len(directory), _MAX32), min(at, _MAX32), 0)
    return directory + end


def member_data_offset(raw: BinaryIO, header_at: int) -> int:
    """Where a member's data starts, from its local header: zipfile gives only the
    header's offset, and the local extra field may differ from the central one."""
    raw.seek(header_at)
    header = raw.read(LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
        raise ValueError("bad local header")
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return int(header_at + LOCAL_HEADER.size + name_len + extra_len)
