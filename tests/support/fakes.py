"""Small stand-ins made in tests: GGUF files and runtime stubs.

The fake stub is a minimal ELF64 laid out like a PyInstaller onefile build:
a loaded segment, then a non-loaded `pydata` section holding an "archive"
that ends with PyInstaller's cookie, then `.shstrtab` and the section headers.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from pathlib import Path

import gguf
import numpy as np

COOKIE_MAGIC = b"MEI\x0c\x0b\x0a\x0b\x0e"
COOKIE = struct.Struct("!8sIIii64s")
SECTION_NAMES = [b"", b".text", b"pydata", b".shstrtab"]


def write_gguf(
    path: Path,
    arch: str = "llama",
    chat_template: str | None = None,
    tensor_elements: int = 4096,
    context_length: int = 2048,
) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test model")
    writer.add_context_length(context_length)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_tiny_vocabulary(writer)
    if chat_template:
        writer.add_chat_template(chat_template)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.random((tensor_elements // 64, 64), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_tiny_vocabulary(writer: gguf.GGUFWriter) -> None:
    """Enough hyperparameters and vocabulary for llama.cpp's vocab-only load."""
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "a"]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1, 1])


def elf_stub(
    archive_payload: bytes = b"PYZ-fake-archive" * 64, machine: int = 0x3E, toc: bytes = b""
) -> bytes:
    """A tiny ELF executable image followed by a pydata section and headers; the
    archive's table of contents (`toc`) ends it, as PyInstaller's does."""
    text = b"\x90" * 200
    header_size, phdr_size, shdr_size = 64, 56, 64
    text_at = header_size + phdr_size
    pydata_at = text_at + len(text) + 7  # odd offset, as PyInstaller's is
    archive = archive_payload + toc
    cookie = COOKIE.pack(
        COOKIE_MAGIC, len(archive) + COOKIE.size, len(archive_payload), len(toc), 311, b"libpython3.11.so"
    )
    pydata = archive + cookie
    shstrtab = b"\0".join(SECTION_NAMES) + b"\0"
    shstrtab_at = pydata_at + len(pydata)
    shoff = shstrtab_at + len(shstrtab)
    shoff += -shoff % 8
    image = bytearray(shoff + shdr_size * len(SECTION_NAMES))
    struct.pack_into(
        "<4sBBBBB7xHHIQQQIHHHHHH", image, 0,
        b"\x7fELF", 2, 1, 1, 0, 0, 2, machine, 1, 0x400000 + text_at, header_size, shoff, 0,
        header_size, phdr_size, 1, shdr_size, len(SECTION_NAMES), 3,
    )  # fmt: skip
    end_of_load = text_at + len(text)
    struct.pack_into("<IIQQQQQQ", image, header_size, 1, 5, 0, 0x400000, 0x400000,
                     end_of_load, end_of_load, 0x1000)  # fmt: skip
    image[text_at : text_at + len(text)] = text
    image[pydata_at : pydata_at + len(pydata)] = pydata
    image[shstrtab_at : shstrtab_at + len(shstrtab)] = shstrtab
    sections = [
        (0, 0, 0, 0, 0),
        (1, 1, text_at, len(text), 6),
        (len(b".text") + 2, 1, pydata_at, len(pydata), 0),
        (len(b".text") + len(b"pydata") + 3, 3, shstrtab_at, len(shstrtab), 0),
    ]
    for i, (name, kind, offset, size, flags) in enumerate(sections):
        struct.pack_into("<IIQQQQIIQQ", image, shoff + i * shdr_size,
                         name, kind, flags, 0, offset, size, 0, 0, 1, 0)  # fmt: skip
    return bytes(image)


def read_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """{name: (offset, size)} from an ELF64 file's section headers."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    entries = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_offset = entries[shstrndx][4]
    sections = {}
    for name_at, _, _, _, offset, size in entries:
        start = strtab_offset + name_at
        name = data[start : data.index(b"\0", start)].decode()
        sections[name] = (offset, size)
    return sections


def bootloader_view(data: bytes | bytearray | mmap.mmap) -> tuple[int, bytes]:
    """What PyInstaller's bootloader reads: the last cookie gives the archive's start
    and its table of contents (entries are addressed from that start)."""
    cookie_at = data.rfind(COOKIE_MAGIC)
    _, length, toc_offset, toc_length, _, _ = COOKIE.unpack_from(data, cookie_at)
    archive_at = cookie_at + COOKIE.size - length
    return archive_at, bytes(data[archive_at + toc_offset : archive_at + toc_offset + toc_length])


def pyinstaller_archive(payload: bytes, pylib: bytes = b"libpython3.11.so") -> bytes:
    return payload + COOKIE.pack(COOKIE_MAGIC, len(payload) + COOKIE.size, 0, 0, 311, pylib)


def pe_stub(archive_payload: bytes = b"PE-archive" * 50, signed: bool = False) -> bytes:
    """A minimal PE32+ image with PyInstaller's archive appended as overlay."""
    pe_at = 0x80
    image = bytearray(0x400)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, pe_at)
    image[pe_at : pe_at + 4] = b"PE\0\0"
    optional_size = 240
    struct.pack_into("<HHIIIHH", image, pe_at + 4, 0x8664, 0, 0, 0, 0, optional_size, 0x22)
    optional_at = pe_at + 24
    struct.pack_into("<H", image, optional_at, 0x20B)  # PE32+
    struct.pack_into("<I", image, optional_at + 108, 16)  # NumberOfRvaAndSizes
    if signed:
        struct.pack_into("<II", image, optional_at + 112 + 4 * 8, 0x10000, 0x200)
    return bytes(image) + pyinstaller_archive(archive_payload, b"python311.dll")


def pe_dll(imports: list[str]) -> bytes:
    """A minimal PE32+ DLL whose import directory names `imports`, in one section
    mapped at a different address than its file offset (as a linker lays it out)."""
    pe_at, optional_at, section_rva, section_at = 0x80, 0x80 + 24, 0x2000, 0x400
    names_rva = section_rva + 20 * (len(imports) + 1)
    descriptors, names = bytearray(), bytearray()
    for name in imports:
        descriptors += struct.pack("<5I", 0, 0, 0, names_rva + len(names), 0)
        names += name.encode() + b"\0"
    section = bytes(descriptors) + bytes(20) + bytes(names)
    image = bytearray(section_at)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, pe_at)
    image[pe_at : pe_at + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", image, pe_at + 4, 0x8664, 1, 0, 0, 0, 240, 0x2022)
    struct.pack_into("<H", image, optional_at, 0x20B)  # PE32+
    struct.pack_into("<I", image, optional_at + 108, 16)  # NumberOfRvaAndSizes
    struct.pack_into("<II", image, optional_at + 112 + 8, section_rva, len(section))  # import directory
    struct.pack_into(
        "<8sIIII", image, optional_at + 240, b".idata", len(section), section_rva, len(section), section_at
    )
    return bytes(image) + section


def macho_stub(archive_payload: bytes = b"macho-archive" * 40) -> bytes:
    """An arm64 Mach-O header, then PyInstaller's archive as the string table's
    tail, then (as PyInstaller leaves it) an ad-hoc code signature blob."""
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 2, 0, 0, 0x200085, 0)
    image = header + bytes(0x4000 - len(header)) + b"\0_main\0"
    signature = struct.pack(">III", 0xFADE0CC0, 12, 0) + bytes(500)
    return image + pyinstaller_archive(archive_payload, b"Python") + signature


def arm64_slice(binary: bytes) -> bytes:
    """The arm64 image of a universal (fat) Mach-O, or the image itself when thin."""
    magic, count = struct.unpack_from(">II", binary, 0)
    if magic != 0xCAFEBABE:
        return binary
    for index in range(count):
        cputype, _, offset, size, _ = struct.unpack_from(">iiIII", binary, 8 + 20 * index)
        if cputype == 0x0100000C:
            return binary[offset : offset + size]
    raise ValueError("no arm64 slice")


def signed_macho_stub(image: bytes, archive: bytes, identity_signed: bool = False) -> bytes:
    """What PyInstaller makes of its macOS bootloader (building/osx.py): the linker's
    signature removed, the archive appended as the string table's tail
    (`fix_exe_for_code_signing`: LC_SYMTAB and __LINKEDIT grown over it), then
    `codesign -s -`: an ad-hoc signature after the archive, as codesign writes one
    (a CodeDirectory of SHA-256 page hashes and two special slots, an empty
    requirements blob, an empty CMS blob; with `identity_signed`, a CMS signature
    with content, as a Developer ID signature has)."""
    commands = macho_commands(image)
    signature_command, linkedit_command, symtab_command = (
        commands["LC_CODE_SIGNATURE"],
        commands["__LINKEDIT"],
        commands["LC_SYMTAB"],
    )
    old_signature_at = struct.unpack_from("<I", image, signature_command + 8)[0]
    body = bytearray(image[:old_signature_at]) + archive
    string_table_at = struct.unpack_from("<I", body, symtab_command + 16)[0]
    struct.pack_into("<I", body, symtab_command + 20, len(body) - string_table_at)
    body += bytes(-len(body) % 16)
    code_limit = len(body)
    requirements = struct.pack(">III", 0xFADE0C01, 12, 0)
    certificates = bytes(64 if identity_signed else 0)
    cms = struct.pack(">II", 0xFADE0B01, 8 + len(certificates)) + certificates
    identifier = b"llamapack-runtime\0"
    header_size = 88  # CodeDirectory version 0x20400
    hash_offset = header_size + len(identifier) + 2 * 32
    pages = -(-code_limit // 4096)
    directory_size = hash_offset + 32 * pages
    blobs_at = 12 + 3 * 8
    size = blobs_at + directory_size + len(requirements) + len(cms)
    struct.pack_into("<II", body, signature_command + 8, code_limit, size)
    linkedit_at = struct.unpack_from("<Q", body, linkedit_command + 40)[0]
    linkedit_size = code_limit + size - linkedit_at
    struct.pack_into("<Q", body, linkedit_command + 32, -(-linkedit_size // 0x4000) * 0x4000)  # vmsize
    struct.pack_into("<Q", body, linkedit_command + 48, linkedit_size)  # filesize
    page_hashes = b"".join(
        hashlib.sha256(bytes(body[page : page + 4096])).digest() for page in range(0, code_limit, 4096)
    )
    special = hashlib.sha256(requirements).digest() + bytes(32)  # slots -2 (requirements), -1 (Info.plist)
    directory = struct.pack(
        ">9I4B4IQQQQ", 0xFADE0C02, directory_size, 0x20400, 0x2, hash_offset, header_size, 2, pages,
        code_limit, 32, 2, 0, 12, 0, 0, 0, 0, 0, 0, 0x4000, 1,
    ) + identifier + special + page_hashes  # fmt: skip
    index = struct.pack(
        ">IIIIIIIII", 0xFADE0CC0, size, 3, 0, blobs_at, 2, blobs_at + len(directory),
        0x10000, blobs_at + len(directory) + len(requirements),
    )  # fmt: skip
    return bytes(body) + index + directory + requirements + cms


def macho_commands(image: bytes | bytearray) -> dict[str, int]:
    """Where a Mach-O's LC_SYMTAB, LC_CODE_SIGNATURE and segment commands (by name) are."""
    count, at, found = struct.unpack_from("<I", image, 16)[0], 32, {}
    for _ in range(count):
        command, size = struct.unpack_from("<II", image, at)
        if command == 0x1D:
            found["LC_CODE_SIGNATURE"] = at
        elif command == 0x2:
            found["LC_SYMTAB"] = at
        elif command == 0x19:
            found[bytes(image[at + 8 : at + 24]).rstrip(b"\0").decode()] = at
        at += size
    return found


def adhoc_signature_holds(image: bytes | bytearray) -> bool:
    """What macOS checks of an ad-hoc signed image, read independently of the
    builder's signer: LC_CODE_SIGNATURE points at a signature that __LINKEDIT ends
    with, the string table ends before it, and its CodeDirectory hashes every 4 KiB
    page up to it."""
    commands = macho_commands(image)
    signature_at, signature_size = struct.unpack_from("<II", image, commands["LC_CODE_SIGNATURE"] + 8)
    linkedit_at, linkedit_size = struct.unpack_from("<QQ", image, commands["__LINKEDIT"] + 40)
    string_table_at, string_table_size = struct.unpack_from("<II", image, commands["LC_SYMTAB"] + 16)
    if linkedit_at + linkedit_size != signature_at + signature_size or signature_at % 16:
        return False
    if string_table_at + string_table_size > signature_at:
        return False
    magic, _, count = struct.unpack_from(">III", image, signature_at)
    for index in range(count):
        _, offset = struct.unpack_from(">II", image, signature_at + 12 + 8 * index)
        at = signature_at + offset
        if struct.unpack_from(">I", image, at)[0] != 0xFADE0C02:
            continue
        _, _, _, _, hash_offset, _, _, pages, code_limit = struct.unpack_from(">9I", image, at)
        page_size = 1 << image[at + 39]
        hashes = bytes(image[at + hash_offset : at + hash_offset + 32 * pages])
        expected = b"".join(
            hashlib.sha256(bytes(image[page : min(page + page_size, code_limit)])).digest()
            for page in range(0, code_limit, page_size)
        )
        return magic == 0xFADE0CC0 and code_limit == signature_at and hashes == expected
    return False
