"""Small stand-ins made in tests: GGUF files and runtime stubs.

The fake stub is a minimal ELF64 laid out like a PyInstaller onefile build:
a loaded segment, then a non-loaded `pydata` section holding an "archive"
that ends with PyInstaller's cookie, then `.shstrtab` and the section headers.
"""

from __future__ import annotations

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


def elf_stub(archive_payload: bytes = b"PYZ-fake-archive" * 64, machine: int = 0x3E) -> bytes:
    """A tiny ELF executable image followed by a pydata section and headers."""
    text = b"\x90" * 200
    header_size, phdr_size, shdr_size = 64, 56, 64
    text_at = header_size + phdr_size
    pydata_at = text_at + len(text) + 7  # odd offset, as PyInstaller's is
    archive = archive_payload
    cookie = COOKIE.pack(COOKIE_MAGIC, len(archive) + COOKIE.size, 0, 0, 311, b"libpython3.11.so")
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


def macho_stub(archive_payload: bytes = b"macho-archive" * 40) -> bytes:
    """An arm64 Mach-O header, then PyInstaller's archive as the string table's
    tail, then (as PyInstaller leaves it) an ad-hoc code signature blob."""
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 2, 0, 0, 0x200085, 0)
    image = header + bytes(0x4000 - len(header)) + b"\0_main\0"
    signature = struct.pack(">III", 0xFADE0CC0, 12, 0) + bytes(500)
    return image + pyinstaller_archive(archive_payload, b"Python") + signature
