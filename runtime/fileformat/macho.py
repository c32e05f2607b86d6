"""Mach-O: the load commands a built file reads or rewrites, and the ad-hoc code
signature a linker gives an arm64 executable.

PyInstaller appends its archive to a macOS bootloader as the tail of the string
table (so __LINKEDIT covers it) and codesign then signs the whole image: the
archive cannot move without a new signature, and on arm64 macOS will not run an
image whose signature does not match. No cookie reaches back over a model of
4 GiB or more, so for such a file `without_archive` rewrites the image as it was
before the archive was appended (the string table and __LINKEDIT end where the
archive began) and signs it again, ad hoc, exactly as Apple's linker does: one
CodeDirectory of SHA-256 hashes, one per 4 KiB page of everything before it. The
archive, which addresses everything relative to its cookie, then follows the
model, and the runtime is still in the file once.

Only a plain ad-hoc signature that holds is replaced: a stub signed with a real
identity, with entitlements, or changed since it was signed keeps its signature,
and its file a copy of the archive instead (see `executables`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

# Load commands (mach-o/loader.h) and code-signing blobs (Security's cs_blobs.h).
_HEADER_SIZE = 32  # mach_header_64
_MH_EXECUTE = 2
_CPU_ARM64 = 0x0100000C
LC_SYMTAB, LC_SEGMENT_64, LC_CODE_SIGNATURE = 0x2, 0x19, 0x1D
_EMBEDDED_SIGNATURE, _CODE_DIRECTORY, _CMS_WRAPPER = 0xFADE0CC0, 0xFADE0C02, 0xFADE0B01
_ENTITLEMENTS = (0xFADE7171, 0xFADE7172)  # as XML and as DER
_CS_ADHOC, _CS_LINKER_SIGNED = 0x2, 0x20000
_CS_EXECSEG_MAIN_BINARY = 0x1
_SUPPORTS_EXECSEG = 0x20400  # the CodeDirectory version ld64 writes
_SHA256, _PAGE_SHIFT = 2, 12
_SUPER_BLOB = struct.Struct(">IIIII")  # magic, length, count, then one index: type, offset
_CODE_DIRECTORY_HEADER = struct.Struct(">9I4B4IQQQQ")  # 88 bytes for version 0x20400


class MachOError(Exception):
    """A Mach-O image llamapack cannot read or re-sign."""


@dataclass(frozen=True)
class LoadCommand:
    command: int
    at: int  # where the command starts in the image
    size: int


def load_commands(data: bytes | bytearray) -> list[LoadCommand]:
    try:
        count = struct.unpack_from("<I", data, 16)[0]
        commands, at = [], _HEADER_SIZE
        for _ in range(count):
            command, size = struct.unpack_from("<II", data, at)
            if size < 8:
                break
            commands.append(LoadCommand(command, at, size))
            at += size
    except struct.error:
        raise MachOError("the Mach-O load commands are cut short") from None
    return commands


def code_signature_at(data: bytes) -> int | None:
    """Where a 64-bit Mach-O's code signature starts, if it has one."""
    for command in load_commands(data):
        if command.command == LC_CODE_SIGNATURE:
            return int(struct.unpack_from("<I", data, command.at + 8)[0])
    return None


def without_archive(data: bytes, archive_at: int, archive_end: int) -> bytes | None:
    """The image with PyInstaller's archive (at [archive_at, archive_end), inside
    the string table) taken out and an ad-hoc signature written where the archive
    began; None where this image is not laid out so, or its signature is not a plain
    ad-hoc one that holds (`_adhoc_identifier`)."""
    try:
        commands = {command.command: command for command in load_commands(data)}
        symtab, signature = commands.get(LC_SYMTAB), commands.get(LC_CODE_SIGNATURE)
        if symtab is None or signature is None:
            return None
        string_table_at, string_table_size = struct.unpack_from("<II", data, symtab.at + 16)
        signature_at = struct.unpack_from("<I", data, signature.at + 8)[0]
        # PyInstaller's layout: the string table runs from before the archive to past
        # it, and the signature follows. Checked before the signature's page hashes.
        if not string_table_at <= archive_at < archive_end <= string_table_at + string_table_size:
            return None
        if signature_at < archive_end:
            return None
        identifier = _adhoc_identifier(data, signature_at)
        if identifier is None:
            return None
        body = bytearray(data[:archive_at])
        struct.pack_into("<I", body, symtab.at + 20, archive_at - string_table_at)
        return sign(body, identifier)
    except (struct.error, MachOError):
        return None


def sign(image: bytes | bytearray, identifier: bytes) -> bytes:
    """`image` (its last segment __LINKEDIT, an LC_CODE_SIGNATURE among its load
    commands) padded to 16 bytes and signed ad hoc, as ld64 signs what it links:
    LC_CODE_SIGNATURE and __LINKEDIT are set to cover the signature, then every
    4 KiB page before it is hashed."""
    body = bytearray(image)
    body += bytes(-len(body) % 16)
    code_limit = len(body)
    pages = -(-code_limit // (1 << _PAGE_SHIFT))
    name = identifier + b"\0"
    directory_size = _CODE_DIRECTORY_HEADER.size + len(name) + 32 * pages
    signature_size = _SUPER_BLOB.size + directory_size
    commands = load_commands(body)
    signature = next((c for c in commands if c.command == LC_CODE_SIGNATURE), None)
    segments = {_segment_name(body, c): c for c in commands if c.command == LC_SEGMENT_64}
    linkedit, text = segments.get(b"__LINKEDIT"), segments.get(b"__TEXT")
    if signature is None or linkedit is None or text is None:
        raise MachOError("the Mach-O image has no LC_CODE_SIGNATURE, __TEXT or __LINKEDIT")
    struct.pack_into("<II", body, signature.at + 8, code_limit, signature_size)
    linkedit_at = struct.unpack_from("<Q", body, linkedit.at + 40)[0]
    linkedit_size = code_limit + signature_size - linkedit_at
    page = 0x4000 if struct.unpack_from("<i", body, 4)[0] == _CPU_ARM64 else 0x1000
    struct.pack_into("<Q", body, linkedit.at + 32, -(-linkedit_size // page) * page)  # vmsize
    struct.pack_into("<Q", body, linkedit.at + 48, linkedit_size)  # filesize
    text_at, text_size = struct.unpack_from("<QQ", body, text.at + 40)
    exec_flags = _CS_EXECSEG_MAIN_BINARY if struct.unpack_from("<I", body, 12)[0] == _MH_EXECUTE else 0
    header = _CODE_DIRECTORY_HEADER.pack(
        _CODE_DIRECTORY, directory_size, _SUPPORTS_EXECSEG, _CS_ADHOC | _CS_LINKER_SIGNED,
        _CODE_DIRECTORY_HEADER.size + len(name), _CODE_DIRECTORY_HEADER.size, 0, pages, code_limit,
        32, _SHA256, 0, _PAGE_SHIFT, 0, 0, 0, 0, 0, text_at, text_size, exec_flags,
    )  # fmt: skip
    hashes = _page_hashes(body, code_limit, 1 << _PAGE_SHIFT, "sha256")
    blob = _SUPER_BLOB.pack(_EMBEDDED_SIGNATURE, signature_size, 1, 0, _SUPER_BLOB.size)
    return bytes(body) + blob + header + name + hashes


def _segment_name(data: bytes | bytearray, command: LoadCommand) -> bytes:
    return bytes(data[command.at + 8 : command.at + 24]).rstrip(b"\0")


def _adhoc_identifier(data: bytes, signature_at: int) -> bytes | None:
    """The identifier of a plain ad-hoc signature that holds: a CodeDirectory flagged
    ad hoc whose page hashes match the image (a damaged stub is never signed again:
    macOS refuses it, as it refuses the stub), no CMS signature with content, no
    entitlements (a new signature would drop them). None for any other signature."""
    signature = data[signature_at:]
    try:
        magic, _, count = struct.unpack_from(">III", signature, 0)
        if magic != _EMBEDDED_SIGNATURE:
            return None
        identifier = None
        for index in range(count):
            _, offset = struct.unpack_from(">II", signature, 12 + 8 * index)
            blob_magic, blob_length = struct.unpack_from(">II", signature, offset)
            if blob_magic == _CMS_WRAPPER and blob_length > 8:
                return None  # signed with an identity: ours would replace it
            if blob_magic in _ENTITLEMENTS:
                return None
            if blob_magic == _CODE_DIRECTORY and identifier is None:
                flags, hashes_at, ident_at = struct.unpack_from(">III", signature, offset + 12)
                if not flags & _CS_ADHOC or not _pages_hold(data, signature, offset, hashes_at):
                    return None
                end = signature.index(b"\0", offset + ident_at)
                identifier = signature[offset + ident_at : end]
        return identifier
    except (struct.error, ValueError):
        return None


def _pages_hold(data: bytes, signature: bytes, directory_at: int, hashes_at: int) -> bool:
    """Whether a CodeDirectory's page hashes (SHA-256 or SHA-1) match the image."""
    _, pages, code_limit = struct.unpack_from(">III", signature, directory_at + 24)
    hash_size, hash_type, _, page_shift = struct.unpack_from(">4B", signature, directory_at + 36)
    algorithm = {_SHA256: "sha256", 1: "sha1"}.get(hash_type)
    page = 1 << page_shift
    if algorithm is None or code_limit > len(data) or pages != -(-code_limit // page):
        return False
    stored = signature[directory_at + hashes_at : directory_at + hashes_at + hash_size * pages]
    return stored == _page_hashes(data, code_limit, page, algorithm, hash_size)


def _page_hashes(
    image: bytes | bytearray, code_limit: int, page: int, algorithm: str, size: int = 32
) -> bytes:
    """A CodeDirectory's code slots: each `page` of `image` up to `code_limit` hashed."""
    view = memoryview(image)
    return b"".join(
        hashlib.new(algorithm, view[at : min(at + page, code_limit)]).digest()[:size]
        for at in range(0, code_limit, page)
    )
