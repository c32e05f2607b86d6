"""The executable side of the file format: a runtime stub and its PyInstaller archive.

PyInstaller's bootloader, on every system, finds its archive by scanning the
file backwards for a cookie, and addresses the archive relative to where it
found it (start = cookie position + cookie size - archive length). Data
appended after a stub is therefore scanned at every launch (3 GiB took 21 s).

A built file keeps the stub byte for byte (ELF sections, PE image, Mach-O
segments and PyInstaller's ad-hoc signature stay valid), appends the model,
and then a second copy of the archive with its cookie, so the scan stops in
the last few hundred bytes. The copy costs the archive's size once (about
25 MB) and buys two things: no executable format is patched, and a file cut
short by an interrupted download still starts (the bootloader then finds the
stub's own archive after a long scan) and says it is incomplete instead of
failing inside the bootloader (see `fileformat.classify`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PYI_COOKIE_MAGIC = b"MEI\x0c" + b"\x0b\x0a\x0b\x0e"  # split so this file never contains it whole
PYI_COOKIE = struct.Struct("!8sIIii64s")  # magic, archive length, TOC offset, TOC length, pyvers, pylib
# A stub's cookie sits within this distance of its end (ELF section headers follow it).
STUB_TAIL_LIMIT = 64 * 1024


class StubError(Exception):
    """The runtime stub is not an executable llamapack can build with."""


@dataclass(frozen=True)
class Stub:
    """A runtime executable and where its PyInstaller archive lies."""

    data: bytes
    kind: str  # "elf", "pe" or "macho"
    cookie_at: int
    archive_at: int

    @property
    def archive(self) -> memoryview:
        """The archive with its cookie: relative addressing makes it valid anywhere."""
        return memoryview(self.data)[self.archive_at : self.cookie_at + PYI_COOKIE.size]


def read_stub(data: bytes) -> Stub:
    kind = executable_kind(data)
    cookie_at = data.rfind(PYI_COOKIE_MAGIC, max(0, len(data) - STUB_TAIL_LIMIT))
    if cookie_at < 0 or cookie_at + PYI_COOKIE.size > len(data):
        raise StubError("no PyInstaller archive found (not a llamapack runtime stub)")
    archive_len = PYI_COOKIE.unpack_from(data, cookie_at)[1]
    archive_at = cookie_at + PYI_COOKIE.size - archive_len
    if not 0 < archive_at <= cookie_at:
        raise StubError("the PyInstaller archive's cookie is damaged")
    if kind == "pe":
        _check_pe(data)
    return Stub(data=data, kind=kind, cookie_at=cookie_at, archive_at=archive_at)


def executable_kind(data: bytes) -> str:
    if data[:4] == b"\x7fELF":
        return "elf"
    if data[:2] == b"MZ":
        return "pe"
    if data[:4] == b"\xcf\xfa\xed\xfe":
        return "macho"
    raise StubError("not an executable llamapack knows (ELF, PE or 64-bit Mach-O)")


def _check_pe(data: bytes) -> None:
    pe_at = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe_at : pe_at + 4] != b"PE\0\0":
        raise StubError("a DOS executable without a PE header")
    optional_at = pe_at + 24
    magic = struct.unpack_from("<H", data, optional_at)[0]
    directories_at = optional_at + (112 if magic == 0x20B else 96)
    security_size = struct.unpack_from("<I", data, directories_at + 4 * 8 + 4)[0]
    if security_size:
        raise StubError("the stub is Authenticode-signed; build from an unsigned stub and sign the result")
