"""The executable side of the file format: a runtime stub, its executable header
and its PyInstaller archive.

PyInstaller's bootloader, on every system, finds its archive by scanning the
file backwards for a cookie, and addresses the archive relative to where it
found it (start = cookie position + cookie size - archive length); the table of
contents, found through the cookie too, addresses every entry relative to that
start. Data appended after a stub is therefore scanned at every launch (3 GiB
took 21 s) unless a cookie follows it.

A built file keeps the stub byte for byte (ELF sections, PE image, Mach-O
segments and PyInstaller's ad-hoc signature stay valid), appends the model, and
ends with a *pointer*: a copy of the archive's table of contents (a few KiB) and
a cookie whose length reaches back over the model to the stub's own archive.
The scan stops in the last few KiB and the entries are read where the stub has
them, so the runtime is in the file once. A file cut short by an interrupted download
still starts (the bootloader then finds the stub's own cookie after a long scan)
and says it is incomplete instead of failing inside the bootloader (see
`layout.classify`).

The cookie's fields are 32-bit, so no pointer reaches back over a model of about
4 GiB or more. An ELF stub is then cut before its archive (`Stub.split`): the
executable image stays in front of the model and the archive, its cookie and the
section headers follow the model, their offsets in the ELF header and section
headers moved to match (the archive is a section no segment loads, so the program
is the same). PE files of that size keep the model beside the `.exe`. A Mach-O
stub's signature covers its archive, so its image is signed again without it
(`macho.without_archive`, ad hoc as the linker signs) and the archive follows the
model; only a stub whose signature that would void, drop entitlements from or
falsely renew (code changed since it was signed) is followed by a whole copy of
its archive instead (a fraction of a percent of such a file).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from llamapack.runtime.fileformat.macho import MachOError, code_signature_at, without_archive
from llamapack.runtime.fileformat.magic import (
    DOS_MAGIC,
    ELF_MAGIC,
    MACHO_64_MAGIC,
    PE_SIGNATURE,
    PYI_COOKIE_MAGIC,
)

PYI_COOKIE = struct.Struct("!8sIIii64s")  # magic, archive length, TOC offset, TOC length, pyvers, pylib
# A stub's cookie sits within this distance of the end of its archive's region:
# the end of the file (ELF section headers may follow the cookie), or on macOS
# the start of the code signature, which codesign writes after the archive
# (about 32 bytes per 4 KiB page: ~200 KB for a 25 MB stub).
STUB_TAIL_LIMIT = 64 * 1024

# PE: where the DOS header keeps the PE header's offset, and the optional
# header's magic for PE32+ (64-bit), whose data directories start 16 bytes later.
_PE_POINTER_AT = 0x3C
_PE32_PLUS = 0x20B
_IMPORT_DIRECTORY = 1  # IMAGE_DIRECTORY_ENTRY_IMPORT: the DLLs an image links
_SECURITY_DIRECTORY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the Authenticode signature

# ELF64: where the header keeps the program and section header tables, and the
# fields of their entries this module reads (ELF64_Phdr, ELF64_Shdr).
_ELF_PHOFF, _ELF_SHOFF, _ELF_PHENTSIZE, _ELF_PHNUM, _ELF_SHENTSIZE, _ELF_SHNUM = (
    0x20,
    0x28,
    0x36,
    0x38,
    0x3A,
    0x3C,
)
_PT_LOAD, _SHT_NOBITS = 1, 8
REACH = 1 << 32  # a cookie's lengths are 32-bit


class StubError(Exception):
    """The runtime stub is not an executable llamapack can build with."""


@dataclass(frozen=True)
class ExecutableHeader:
    """What the builder needs from an executable's header: its format, the
    machine it runs on, and whether it is signed in a way appending breaks."""

    kind: str  # "elf", "pe" or "macho"
    machine: int  # ELF e_machine, PE Machine, Mach-O cputype
    signed: bool = False  # a PE with an Authenticode certificate table


def executable_kind(data: bytes) -> str:
    if data[:4] == ELF_MAGIC:
        return "elf"
    if data[:2] == DOS_MAGIC:
        return "pe"
    if data[:4] == MACHO_64_MAGIC:
        return "macho"
    raise StubError("not an executable llamapack knows (ELF, PE or 64-bit Mach-O)")


def read_executable_header(data: bytes) -> ExecutableHeader:
    kind = executable_kind(data)
    try:
        if kind == "elf":
            return ExecutableHeader(kind, _u16(data, 18))
        if kind == "pe":
            return _pe_header(data)
        return ExecutableHeader(kind, int(struct.unpack_from("<i", data, 4)[0]))
    except struct.error:
        raise StubError(f"the {kind} header is cut short") from None


def _pe_header(data: bytes) -> ExecutableHeader:
    pe_at = _u32(data, _PE_POINTER_AT)
    if data[pe_at : pe_at + 4] != PE_SIGNATURE:
        raise StubError("a DOS executable without a PE header")
    optional_at = pe_at + 24
    directories_at = optional_at + (112 if _u16(data, optional_at) == _PE32_PLUS else 96)
    security_size = _u32(data, directories_at + 8 * _SECURITY_DIRECTORY + 4)
    return ExecutableHeader("pe", _u16(data, pe_at + 4), signed=security_size != 0)


def pe_imports(data: bytes) -> tuple[str, ...]:
    """The DLLs a PE image imports, in the order of its import directory: which C
    runtime a DLL uses is read here, not guessed (runtime/llama/model.py)."""
    try:
        pe_at = _u32(data, _PE_POINTER_AT)
        if data[:2] != DOS_MAGIC or data[pe_at : pe_at + 4] != PE_SIGNATURE:
            raise StubError("not a PE image")
        sections, optional_size = _u16(data, pe_at + 6), _u16(data, pe_at + 20)
        optional_at = pe_at + 24
        directories_at = optional_at + (112 if _u16(data, optional_at) == _PE32_PLUS else 96)
        imports_rva = _u32(data, directories_at + 8 * _IMPORT_DIRECTORY)
        # Each section: VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData.
        sections_at = optional_at + optional_size
        table = [
            struct.unpack_from("<IIII", data, at + 8)
            for at in range(sections_at, sections_at + 40 * sections, 40)
        ]

        def offset(rva: int) -> int:
            for virtual_size, address, raw_size, raw_at in table:
                if address <= rva < address + max(virtual_size, raw_size):
                    return int(raw_at + rva - address)
            raise StubError(f"PE address {rva:#x} is in no section")

        names: list[str] = []
        at = offset(imports_rva) if imports_rva else -1
        while at >= 0:
            descriptor = struct.unpack_from("<5I", data, at)  # IMAGE_IMPORT_DESCRIPTOR
            if not any(descriptor):
                break
            start = offset(descriptor[3])
            names.append(data[start : data.index(b"\0", start)].decode("ascii", "replace"))
            at += 20
        return tuple(names)
    except (struct.error, ValueError):
        raise StubError("the PE image is cut short or damaged") from None


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


@dataclass(frozen=True)
class Stub:
    """A runtime executable and where its PyInstaller archive lies."""

    data: bytes
    header: ExecutableHeader
    cookie_at: int
    archive_at: int

    @property
    def kind(self) -> str:
        return self.header.kind

    @property
    def archive(self) -> memoryview:
        """The archive with its cookie: relative addressing makes it valid anywhere."""
        return memoryview(self.data)[self.archive_at : self.cookie_at + PYI_COOKIE.size]

    def pointer(self, at: int) -> bytes:
        """What a built file writes at offset `at`, past the model, so the bootloader
        finds this stub's archive from there: the table of contents and a cookie
        reaching back to the archive, or a whole copy where 32 bits cannot reach."""
        magic, _, toc_offset, toc_length, python, library = PYI_COOKIE.unpack_from(self.data, self.cookie_at)
        toc_at = self.archive_at + toc_offset
        toc = self.data[toc_at : toc_at + toc_length]
        reach = at + len(toc) + PYI_COOKIE.size - self.archive_at
        if reach >= REACH:
            return bytes(self.archive)
        return toc + PYI_COOKIE.pack(magic, reach, at - self.archive_at, toc_length, python, library)

    def split(self, at: int) -> tuple[bytes, bytes] | None:
        """The stub cut before its archive, for a file whose model lies between the
        two parts: the front and the back, to be written at `at`. An ELF's front is
        its image with the section headers' offset moved, its back the archive, its
        cookie and the section names and headers, their offsets moved; a Mach-O's
        front is its image signed again without the archive, its back the archive.
        None where the stub is not laid out so: a PE, a loaded segment or a section
        reaching into the archive, section headers before it, or a Mach-O whose
        signature is not a plain ad-hoc one that holds (`macho.without_archive`)."""
        if self.kind == "macho":
            signed = without_archive(self.data, self.archive_at, self.cookie_at + PYI_COOKIE.size)
            return None if signed is None else (signed, bytes(self.archive))
        if self.kind != "elf":
            return None
        data, cut, shift = self.data, self.archive_at, at - self.archive_at
        try:
            phoff, shoff = struct.unpack_from("<QQ", data, _ELF_PHOFF)
            phentsize, phnum = _u16(data, _ELF_PHENTSIZE), _u16(data, _ELF_PHNUM)
            shentsize, shnum = _u16(data, _ELF_SHENTSIZE), _u16(data, _ELF_SHNUM)
            for entry in range(phoff, phoff + phentsize * phnum, phentsize):
                offset, size = (
                    struct.unpack_from("<Q", data, entry + 8)[0],
                    struct.unpack_from("<Q", data, entry + 32)[0],
                )
                if _u32(data, entry) == _PT_LOAD and offset + size > cut:
                    return None
            if shoff < cut:
                return None
            back = bytearray(data[cut:])
            for entry in range(shoff, shoff + shentsize * shnum, shentsize):
                kind = _u32(data, entry + 4)
                offset, size = struct.unpack_from("<QQ", data, entry + 24)
                if kind == _SHT_NOBITS or offset + size <= cut:
                    continue  # takes no room in the file, or stays in front
                if offset < cut:
                    return None  # a section across the cut
                struct.pack_into("<Q", back, entry - cut + 24, offset + shift)
        except struct.error:
            return None
        front = bytearray(data[:cut])
        struct.pack_into("<Q", front, _ELF_SHOFF, shoff + shift)
        return bytes(front), bytes(back)


def _archive_region_end(data: bytes, kind: str) -> int:
    if kind == "macho":
        try:
            signature_at = code_signature_at(data)
        except MachOError as exc:
            raise StubError(str(exc)) from None
        if signature_at is not None and 0 < signature_at <= len(data):
            return signature_at
    return len(data)


def read_stub(data: bytes) -> Stub:
    kind = executable_kind(data)  # an unknown format is named before a missing archive
    end = _archive_region_end(data, kind)
    cookie_at = data.rfind(PYI_COOKIE_MAGIC, max(0, end - STUB_TAIL_LIMIT), end)
    if cookie_at < 0 or cookie_at + PYI_COOKIE.size > end:
        raise StubError("no PyInstaller archive found (not a llamapack runtime stub)")
    _, archive_len, toc_offset, toc_length, _, _ = PYI_COOKIE.unpack_from(data, cookie_at)
    archive_at = cookie_at + PYI_COOKIE.size - archive_len
    if not 0 < archive_at <= cookie_at or toc_length < 0 or archive_at + toc_offset + toc_length > cookie_at:
        raise StubError("the PyInstaller archive's cookie is damaged")
    header = read_executable_header(data)
    if header.signed:
        raise StubError("the stub is Authenticode-signed; build from an unsigned stub and sign the result")
    return Stub(data=data, header=header, cookie_at=cookie_at, archive_at=archive_at)
