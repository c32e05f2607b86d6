"""The executable side of the file format: where a runtime stub can take the
model, and how each executable format is patched around the insertion.

PyInstaller's bootloader finds its archive by a backwards scan for a cookie
and addresses it relative to that cookie, on every system. So the model always
goes just before the archive, and only the executable's own headers need
moving past the insertion point:

* ELF (Linux): the archive is the non-loaded `pydata` section; the offsets of
  that section, the ones after it and the section header table move.
* PE (Windows): the archive is overlay data after the last section; nothing
  refers to it, so nothing moves. Signed stubs are refused (the certificate
  would no longer match).
* Mach-O (macOS): PyInstaller makes the archive the tail of the symbol
  table's string table inside `__LINKEDIT`, then signs the file ad hoc. The
  string table, `__LINKEDIT` and the code signature move, and the ad-hoc
  signature is written anew over the new contents (SHA-256 of every 4 KiB
  page), since code signing covers everything before the signature.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import BinaryIO

PYI_COOKIE_MAGIC = b"MEI\x0c" + b"\x0b\x0a\x0b\x0e"  # split so this file never contains it whole
PYI_COOKIE = struct.Struct("!8sIIii64s")
INSERT_GRANULE = 16384  # keeps every moved section aligned, and arm64's page size


class StubError(Exception):
    """The runtime stub is not an executable llamapack can insert a model into."""


@dataclass(frozen=True)
class Stub:
    """A runtime executable, split where the model is inserted."""

    data: bytes
    insert_at: int
    kind: str  # "elf", "pe" or "macho"

    def parts(self, shift: int) -> tuple[bytes, bytes]:
        """(head, tail) with every offset past the insertion point moved by `shift`.

        For Mach-O the tail ends with a zero-filled code signature of the size the
        new file needs; `finish` writes it once the rest of the file is in place."""
        if shift % INSERT_GRANULE:
            raise ValueError("insertions must keep section alignment")
        patched = bytearray(self.data)
        if self.kind == "elf":
            _relocate_elf(patched, self.insert_at, shift)
            return bytes(patched[: self.insert_at]), bytes(patched[self.insert_at :])
        if self.kind == "pe":
            return self.head, self.data[self.insert_at :]
        signature_at = _macho(self.data).signature_at or len(self.data)
        new_signature_at = signature_at + shift
        signature_len = _signature_length(new_signature_at)
        _relocate_macho(patched, self.insert_at, shift, new_signature_at, signature_len)
        tail = bytes(patched[self.insert_at : signature_at]) + bytes(signature_len)
        return bytes(patched[: self.insert_at]), tail

    @property
    def head(self) -> bytes:
        return self.data[: self.insert_at]

    def tail_length(self, shift: int) -> int:
        if self.kind != "macho":
            return len(self.data) - self.insert_at
        signature_at = _macho(self.data).signature_at or len(self.data)
        return signature_at - self.insert_at + _signature_length(signature_at + shift)

    def finish(self, file: BinaryIO, shift: int) -> None:
        """Complete the written file: for Mach-O, sign it ad hoc over its new contents."""
        if self.kind != "macho":
            return
        signature_at = (_macho(self.data).signature_at or len(self.data)) + shift
        exec_seg = _macho(self.data)  # __TEXT does not move
        pages = _read_pages(file, signature_at)
        signature = adhoc_signature(pages, SIGNING_IDENTIFIER, signature_at,
                                    (exec_seg.text_fileoff, exec_seg.text_filesize))  # fmt: skip
        assert len(signature) == _signature_length(signature_at)
        file.seek(signature_at)
        file.write(signature)


def read_stub(data: bytes) -> Stub:
    """Find where PyInstaller's archive starts: the model goes just before it."""
    kind = executable_kind(data)
    search_end = len(data)
    if kind == "macho":
        search_end = _macho(data).signature_at or len(data)
    cookie_at = data.rfind(PYI_COOKIE_MAGIC, 0, search_end)
    if cookie_at < 0 or cookie_at + PYI_COOKIE.size > len(data):
        raise StubError("no PyInstaller archive found (not a llamapack runtime stub)")
    archive_len = PYI_COOKIE.unpack_from(data, cookie_at)[1]
    archive_at = cookie_at + PYI_COOKIE.size - archive_len
    if not 0 < archive_at <= cookie_at:
        raise StubError("the PyInstaller archive's cookie is damaged")
    if kind == "elf":
        _check_elf(data, archive_at)
    elif kind == "pe":
        _check_pe(data)
    else:
        _check_macho(data, archive_at)
    return Stub(data=data, insert_at=archive_at, kind=kind)


def executable_kind(data: bytes) -> str:
    if data[:4] == b"\x7fELF":
        return "elf"
    if data[:2] == b"MZ":
        return "pe"
    if data[:4] == b"\xcf\xfa\xed\xfe":
        return "macho"
    raise StubError("not an executable llamapack knows (ELF, PE or 64-bit Mach-O)")


# ------------------------------------------------------------------- ELF

_SHT_NOBITS = 8


@dataclass(frozen=True)
class _Elf:
    endian: str
    phoff: int
    phentsize: int
    phnum: int
    shoff: int
    shentsize: int
    shnum: int


def _elf(data: bytes | bytearray) -> _Elf:
    if data[4] != 2:
        raise StubError("only 64-bit ELF runtimes are supported")
    endian = "<" if data[5] == 1 else ">"
    phoff, shoff = struct.unpack_from(endian + "QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", data, 0x36)
    return _Elf(endian, phoff, phentsize, phnum, shoff, shentsize, shnum)


def _check_elf(data: bytes, insert_at: int) -> None:
    elf = _elf(data)
    for i in range(elf.phnum):
        entry = elf.phoff + i * elf.phentsize
        p_offset, _, _, p_filesz = struct.unpack_from(elf.endian + "QQQQ", data, entry + 8)
        if p_filesz and p_offset + p_filesz > insert_at:
            raise StubError("a loaded ELF segment lies past PyInstaller's archive")


def _relocate_elf(data: bytearray, insert_at: int, shift: int) -> None:
    elf = _elf(data)
    if elf.shoff >= insert_at:
        struct.pack_into(elf.endian + "Q", data, 0x28, elf.shoff + shift)
    shoff = elf.shoff  # section headers are read where they are in the stub
    for i in range(elf.shnum):
        entry = shoff + i * elf.shentsize
        sh_type = struct.unpack_from(elf.endian + "I", data, entry + 4)[0]
        sh_offset = struct.unpack_from(elf.endian + "Q", data, entry + 0x18)[0]
        if sh_type != _SHT_NOBITS and sh_offset >= insert_at:
            struct.pack_into(elf.endian + "Q", data, entry + 0x18, sh_offset + shift)


# -------------------------------------------------------------------- PE


def _check_pe(data: bytes) -> None:
    pe_at = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe_at : pe_at + 4] != b"PE\0\0":
        raise StubError("a DOS executable without a PE header")
    optional_at = pe_at + 24
    magic = struct.unpack_from("<H", data, optional_at)[0]
    directories_at = optional_at + (112 if magic == 0x20B else 96)
    security_offset, security_size = struct.unpack_from("<II", data, directories_at + 4 * 8)
    if security_size:
        raise StubError("the stub is Authenticode-signed; build from an unsigned stub and sign the result")


# ---------------------------------------------------------------- Mach-O

_LC_SEGMENT_64 = 0x19
_LC_SYMTAB = 0x2
_LC_CODE_SIGNATURE = 0x1D
_CS_SUPERBLOB = 0xFADE0CC0
_CS_CODEDIRECTORY = 0xFADE0C02
_CS_REQUIREMENTS = 0xFADE0C01
_CS_ADHOC = 0x2
_CS_PAGE_BITS = 12  # 4 KiB pages, as codesign uses on every architecture
_EXEC_SEG_MAIN_BINARY = 0x1
_CD_HEADER = 88  # CodeDirectory version 0x20400, up to the exec segment fields
_PAGE = 1 << _CS_PAGE_BITS
_SEGMENT_PAGE = 0x4000  # arm64 segments are 16 KiB aligned
SIGNING_IDENTIFIER = "llamapack-runtime"


@dataclass(frozen=True)
class _MachO:
    linkedit_cmd: int  # offset of the __LINKEDIT segment command
    linkedit_fileoff: int
    symtab_cmd: int
    stroff: int
    signature_cmd: int | None
    signature_at: int | None
    text_fileoff: int
    text_filesize: int


def _macho(data: bytes | bytearray) -> _MachO:
    ncmds, sizeofcmds = struct.unpack_from("<II", data, 16)
    at, end = 32, 32 + sizeofcmds
    linkedit = symtab = signature = None
    linkedit_fileoff = stroff = text_fileoff = text_filesize = 0
    signature_at = None
    for _ in range(ncmds):
        if at + 8 > end:
            raise StubError("the Mach-O load commands are damaged")
        cmd, size = struct.unpack_from("<II", data, at)
        if cmd == _LC_SEGMENT_64:
            name = bytes(data[at + 8 : at + 24]).rstrip(b"\0")
            fileoff, filesize = struct.unpack_from("<QQ", data, at + 40)
            if name == b"__LINKEDIT":
                linkedit, linkedit_fileoff = at, fileoff
            elif name == b"__TEXT":
                text_fileoff, text_filesize = fileoff, filesize
        elif cmd == _LC_SYMTAB:
            symtab, stroff = at, struct.unpack_from("<I", data, at + 16)[0]
        elif cmd == _LC_CODE_SIGNATURE:
            signature, signature_at = at, struct.unpack_from("<I", data, at + 8)[0]
        at += size
    if linkedit is None or symtab is None:
        raise StubError("the Mach-O stub has no __LINKEDIT segment or symbol table")
    return _MachO(linkedit, linkedit_fileoff, symtab, stroff, signature, signature_at,
                  text_fileoff, text_filesize)  # fmt: skip


def _check_macho(data: bytes, insert_at: int) -> None:
    macho = _macho(data)
    if not macho.stroff <= insert_at:
        raise StubError("PyInstaller's archive is not inside the Mach-O string table")


def _relocate_macho(
    data: bytearray, insert_at: int, shift: int, signature_at: int, signature_len: int
) -> None:
    macho = _macho(data)
    if macho.signature_cmd is None:
        raise StubError("the Mach-O stub is not signed; PyInstaller signs its macOS stubs ad hoc")
    strsize = struct.unpack_from("<I", data, macho.symtab_cmd + 20)[0]
    struct.pack_into("<I", data, macho.symtab_cmd + 20, strsize + shift)
    linkedit_end = signature_at + signature_len
    filesize = linkedit_end - macho.linkedit_fileoff
    vmsize = -(-filesize // _SEGMENT_PAGE) * _SEGMENT_PAGE
    struct.pack_into("<Q", data, macho.linkedit_cmd + 32, vmsize)
    struct.pack_into("<Q", data, macho.linkedit_cmd + 48, filesize)
    struct.pack_into("<II", data, macho.signature_cmd + 8, signature_at, signature_len)


def _read_pages(file: BinaryIO, limit: int) -> list[bytes]:
    file.seek(0)
    pages = []
    remaining = limit
    while remaining > 0:
        page = file.read(min(_PAGE, remaining))
        if not page:
            raise StubError("the file ended before its code signature")
        pages.append(page)
        remaining -= len(page)
    return pages


def _signature_length(code_limit: int) -> int:
    pages = -(-code_limit // _PAGE)
    ident = len(SIGNING_IDENTIFIER) + 1
    directory = _CD_HEADER + ident + 2 * 32 + pages * 32
    return _align(12 + 2 * 8 + directory + 12, 16)


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def adhoc_signature(pages: list[bytes], identifier: str, code_limit: int, exec_seg: tuple[int, int]) -> bytes:
    """An ad-hoc code signature (what `codesign -s -` writes): a CodeDirectory of
    SHA-256 page hashes and an empty requirement set, in a SuperBlob."""
    ident = identifier.encode() + b"\0"
    hash_size = 32
    # Special slots sit just before the code hashes, highest slot first:
    # -2 the requirements blob, -1 Info.plist (none here, so zeros).
    requirements = struct.pack(">III", _CS_REQUIREMENTS, 12, 0)
    special = hashlib.sha256(requirements).digest() + bytes(hash_size)
    hash_at = _CD_HEADER + len(ident) + len(special)
    code_hashes = b"".join(hashlib.sha256(page).digest() for page in pages)
    directory = struct.pack(
        ">IIIIIIIIIBBBBIIIIQQQQ",
        _CS_CODEDIRECTORY, hash_at + len(code_hashes), 0x20400, _CS_ADHOC, hash_at, _CD_HEADER,
        2, len(pages), min(code_limit, 0xFFFFFFFF), hash_size, 2, 0, _CS_PAGE_BITS,
        0, 0, 0, 0, code_limit if code_limit > 0xFFFFFFFF else 0,
        exec_seg[0], exec_seg[1], _EXEC_SEG_MAIN_BINARY,
    )  # fmt: skip
    assert len(directory) == _CD_HEADER
    directory += ident + special + code_hashes
    index_len = 12 + 2 * 8
    superblob = struct.pack(">III", _CS_SUPERBLOB, index_len + len(directory) + len(requirements), 2)
    superblob += struct.pack(">IIII", 0, index_len, 2, index_len + len(directory))
    superblob += directory + requirements
    return superblob + bytes(_align(len(superblob), 16) - len(superblob))
