"""The built file's format, checked on tiny GGUFs and a stand-in ELF stub."""

from __future__ import annotations

import io
import json
import mmap
import struct
import subprocess
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

import pytest

from llamapack.builder.assemble import BuildOptions, build
from llamapack.builder.gguf_header import read_header
from llamapack.builder.sources import resolve
from llamapack.builder.stub import StubInfo
from llamapack.runtime import fileformat as ff
from llamapack.runtime.fileformat import read_stub
from llamapack.runtime.fileformat.executables import REACH
from llamapack.runtime.fileformat.zip_layout import moves_archive
from tests.support.fakes import (
    COOKIE_MAGIC,
    bootloader_view,
    elf_stub,
    macho_stub,
    pe_stub,
    read_sections,
    write_gguf,
)


def _build(source: Path, stub: Path, output: Path, **options: object) -> Path:
    build(resolve(str(source)), BuildOptions(output=output, **options), StubInfo(stub, "test", False))  # type: ignore[arg-type]
    return output


def test_output_is_a_zip_with_the_model_stored_and_aligned(tiny_gguf, fake_stub, tmp_path):
    out = _build(tiny_gguf, fake_stub, tmp_path / "out" / "model")
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["tiny-model.gguf", "manifest.json", ".args"]
        assert archive.testzip() is None  # every CRC matches
        info = archive.getinfo("tiny-model.gguf")
        assert info.compress_type == zipfile.ZIP_STORED
        assert archive.read("tiny-model.gguf") == tiny_gguf.read_bytes()
    layout = ff.read_layout(out)
    assert layout.model_offset % ff.MODEL_ALIGNMENT == 0
    assert out.read_bytes()[layout.model_offset : layout.model_offset + layout.model_size] == (
        tiny_gguf.read_bytes()
    )
    # llama.cpp maps tensors at absolute offsets: the data section must stay 32-byte aligned.
    assert (layout.model_offset + read_header(tiny_gguf).data_offset) % 32 == 0


def test_unzip_lists_and_tests_the_file(tiny_gguf, fake_stub, tmp_path):
    out = _build(tiny_gguf, fake_stub, tmp_path / "model")
    listing = subprocess.run(["unzip", "-l", str(out)], capture_output=True, text=True, check=True)
    assert "tiny-model.gguf" in listing.stdout and "manifest.json" in listing.stdout
    tested = subprocess.run(["unzip", "-t", str(out)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout


def test_the_stub_is_kept_byte_for_byte(tiny_gguf, fake_stub, tmp_path):
    """No executable format is patched: ELF sections, PE images and Mach-O
    signatures stay exactly as PyInstaller made them."""
    stub = fake_stub.read_bytes()
    out = _build(tiny_gguf, fake_stub, tmp_path / "model").read_bytes()
    assert out[: len(stub)] == stub
    assert read_sections(out) == read_sections(stub)


def test_bootloader_finds_its_archive_from_the_end(tiny_gguf, tmp_path):
    """The bootloader scans backwards for the cookie: the last one must sit a few
    hundred bytes from the end, not behind the model, and lead to the stub's own
    archive and table of contents, so the runtime is in the file once."""
    stub_path = tmp_path / "stub"
    stub_path.write_bytes(elf_stub(toc=b"TOC-entries" * 40))
    stub = read_stub(stub_path.read_bytes())
    out = _build(tiny_gguf, stub_path, tmp_path / "model").read_bytes()
    assert bootloader_view(out) == bootloader_view(stub.data)
    assert bootloader_view(out)[1] == b"TOC-entries" * 40
    assert len(out) - out.rfind(COOKIE_MAGIC) < 1024
    # No second runtime: beyond the stub and the model, only the alignment padding,
    # the small members, the pointer and the ZIP directory.
    assert len(out) - tiny_gguf.stat().st_size < len(stub.data) + ff.MODEL_ALIGNMENT + 2048


def test_a_pointer_that_32_bits_cannot_reach_is_a_whole_archive_copy(tmp_path):
    """The cookie's lengths are 32-bit: 4 GiB past the archive, only a copy can follow."""
    stub = read_stub(elf_stub(toc=b"TOC-entries" * 40))
    gap = 1 << 20
    near = stub.pointer(len(stub.data) + gap)
    assert len(near) < 1024
    assert bootloader_view(stub.data + bytes(gap) + near) == bootloader_view(stub.data)
    far = stub.pointer(stub.archive_at + (1 << 32))
    assert far == bytes(stub.archive)  # relative addressing: valid wherever it lies
    assert bootloader_view(far) == (0, b"TOC-entries" * 40)


def test_manifest_describes_the_model(tiny_gguf, fake_stub, tmp_path):
    import hashlib

    out = _build(tiny_gguf, fake_stub, tmp_path / "model", name="Tiny")
    manifest = json.loads(zipfile.ZipFile(out).read("manifest.json"))
    model = manifest["model"]
    assert manifest["format"] == ff.FORMAT_VERSION
    assert manifest["name"] == "Tiny"
    assert manifest["runtime"]["llamapack"]
    assert manifest["runtime"]["llama_cpp_python"] == metadata.version("llama-cpp-python")
    assert model["file"] == "tiny-model.gguf"
    assert model["size"] == tiny_gguf.stat().st_size
    assert model["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert model["architecture"] == "llama"
    assert model["parameters"] == 4096 + 64
    assert model["quantization"] == "F32"
    assert model["context_length"] == 2048
    assert model["offset"] == ff.read_layout(out).model_offset
    assert manifest["chat_template"]["source"] == "builtin"


def test_args_file_holds_defaults_and_the_user_marker(tiny_gguf, fake_stub, tmp_path):
    out = _build(tiny_gguf, fake_stub, tmp_path / "model", name="Tiny")
    assert zipfile.ZipFile(out).read(".args") == b"--alias\nTiny\n...\n"
    assert ff.read_layout(out).args == ["--alias", "Tiny", "..."]


def test_builds_are_byte_identical(tiny_gguf, fake_stub, tmp_path):
    first = _build(tiny_gguf, fake_stub, tmp_path / "a" / "model").read_bytes()
    second = _build(tiny_gguf, fake_stub, tmp_path / "b" / "model").read_bytes()
    assert first == second


@pytest.mark.parametrize("stub_size", [100, 70_000, 65_536 - 50])
def test_alignment_holds_wherever_the_stub_ends(tmp_path, stub_size, tiny_gguf):
    stub = tmp_path / "stub"
    stub.write_bytes(elf_stub(archive_payload=b"x" * stub_size))
    out = _build(tiny_gguf, stub, tmp_path / "model")
    assert ff.read_layout(out).model_offset % ff.MODEL_ALIGNMENT == 0
    assert zipfile.ZipFile(out).testzip() is None


@pytest.mark.parametrize("make_stub", [pe_stub, macho_stub], ids=["pe", "macho"])
def test_pe_and_macho_stubs_are_kept_and_found(make_stub, tiny_gguf, tmp_path):
    stub = tmp_path / "stub"
    stub.write_bytes(make_stub())
    out = _build(tiny_gguf, stub, tmp_path / "model").read_bytes()
    assert out.startswith(stub.read_bytes())  # a Mach-O signature stays as it was
    assert bootloader_view(out)[0] == read_stub(stub.read_bytes()).archive_at
    assert len(out) - out.rfind(COOKIE_MAGIC) < 1024
    assert zipfile.ZipFile(tmp_path / "model").testzip() is None


def test_signed_pe_stub_is_refused(tiny_gguf, tmp_path):
    stub = tmp_path / "stub.exe"
    stub.write_bytes(pe_stub(signed=True))
    with pytest.raises(Exception, match="Authenticode-signed"):
        _build(tiny_gguf, stub, tmp_path / "model.exe")


def test_zip64_when_the_model_passes_4_gib(tmp_path):
    """A 5 GiB model, written sparsely by the Plan itself, read back with zipfile. No
    pointer reaches back over 5 GiB, so the ELF stub is split around the model: its
    image first, its archive and section headers past the model, every offset in the
    ELF header and section headers moved to match; the bootloader's scan from the
    end finds the archive there, and its runtime is still in the file once."""
    stub = ff.read_stub(elf_stub(toc=b"TOC-entries" * 30))
    size = 5 * 1024**3
    model = ff.place_model(stub, "big.gguf", size)
    manifest = ff.Manifest(
        name="big",
        engine=ff.EngineRecord("0.1.0", "0.3.36", "linux-x86_64"),
        model=ff.ModelRecord(file="big.gguf", size=size, sha256="0" * 64, offset=model.data_at, name=None,
                             architecture="llama", parameters=1, quantization="F32", context_length=None),
        chat_template=ff.ChatTemplateChoice("builtin", "chatml"),
    ).encode()  # fmt: skip
    args = ff.encode_args(["..."])
    plan = ff.plan_file(stub, model, len(manifest), len(args))
    path = tmp_path / "big"
    with path.open("w+b") as out:
        plan.write_head(out)
        out.write(b"GGUF")
        out.seek(plan.manifest.header_at)
        plan.write_tail(out, manifest, args, model_crc=0)
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("big.gguf").file_size == size
        assert archive.getinfo(".args").header_offset > 2**32
        assert archive.read(".args") == b"...\n"
    layout = ff.read_layout(path)
    assert layout.model_size == size and layout.model_offset == model.data_at
    assert path.stat().st_size - size < len(stub.data) + ff.MODEL_ALIGNMENT + 4096  # no second runtime
    before = read_sections(stub.data)
    with path.open("rb") as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as data:
        image = slice(0x30, stub.archive_at)  # all but e_shoff (0x28), which moved
        assert data[:0x28] == stub.data[:0x28] and data[image] == stub.data[image]
        after = sections_of(data)
        assert after[".text"] == before[".text"]
        pydata_at, pydata_size = after["pydata"]
        assert pydata_at > model.end and pydata_size == before["pydata"][1]
        assert data[pydata_at : pydata_at + pydata_size] == stub.data[before["pydata"][0] :][:pydata_size]
        archive_at, toc = bootloader_view(data)
        assert archive_at == pydata_at and toc == b"TOC-entries" * 30
        assert len(data) - data.rfind(COOKIE_MAGIC) < 4096


def sections_of(data: mmap.mmap) -> dict[str, tuple[int, int]]:
    """read_sections for a file too big to read: the header and tables in place."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    entries = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_at = entries[shstrndx][4]
    return {
        data[strtab_at + name : data.find(b"\0", strtab_at + name)].decode(): (offset, size)
        for name, _, _, _, offset, size in entries
    }


def test_a_stub_that_cannot_be_split_keeps_a_whole_archive_copy():
    """A Mach-O without the load commands to sign it again (here: none at all) or an
    ELF whose segments reach into the archive: past 4 GiB, a whole copy of the
    archive follows the model."""
    stub = ff.read_stub(macho_stub())
    assert stub.split(len(stub.data) + 100) is None
    model = ff.place_model(stub, "big.gguf", 5 * 1024**3)
    assert model.header_at >= len(stub.data)
    plan = ff.plan_file(stub, model, 100, 4)
    assert plan.front == stub.data and plan.pointer == bytes(stub.archive)


def test_truncated_file_is_reported(tiny_gguf, fake_stub, tmp_path):
    out = _build(tiny_gguf, fake_stub, tmp_path / "model")
    data = out.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: ff.read_layout(out).model_offset + 100])
    assert ff.classify(cut) == "incomplete"
    assert ff.classify(out) == "built"
    assert ff.classify(fake_stub) == "stub"
    with pytest.raises(ff.FormatError):
        ff.read_layout(cut)


@pytest.mark.parametrize(
    ("defaults", "user", "merged"),
    [
        (["--alias", "x", "..."], ["--port", "9"], ["--alias", "x", "--port", "9"]),
        (["-c", "512"], ["-c", "1024"], ["-c", "512", "-c", "1024"]),
        (["a", "...", "--nobrowser"], ["b"], ["a", "b", "--nobrowser"]),
        ([], [], []),
    ],
)
def test_merge_args(defaults, user, merged):
    assert ff.merge_args(defaults, user) == merged


def test_args_encoding_round_trips_and_refuses_newlines():
    args = ["--system-prompt", "Be brief. Use lists.", "..."]
    assert ff.decode_args(ff.encode_args(args)) == args
    with pytest.raises(ValueError):
        ff.encode_args(["two\nlines"])


def test_tiny_gguf_header(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch="gemma3", chat_template="{{ bos_token }}")
    header = read_header(path)
    assert header.architecture == "gemma3"
    assert header.chat_template == "{{ bos_token }}"
    assert header.data_end == path.stat().st_size


def test_a_gpu_runtime_after_the_model_counts_in_the_pointers_reach(tmp_path):
    """The GPU runtime's members lie between the model and the pointer, so they count
    toward the 32-bit reach: a model the pointer could still reach back over alone
    splits the stub once the runtime follows it, and the file still reads both ways."""
    stub = ff.read_stub(elf_stub(toc=b"TOC-entries" * 30))
    runtime = bytes(range(256)) * (3 * 4096)  # 3 MiB
    entry = ff.PayloadEntry("gpu/cuda/libcudart.so.13.xz", len(runtime), zlib.crc32(runtime))
    size = REACH - len(stub.data) + stub.archive_at - ff.MODEL_ALIGNMENT - (2 << 20)
    assert not moves_archive(stub, size)  # alone, the pointer reaches back over it
    assert moves_archive(stub, size, ff.payload_size([entry]))
    model = ff.place_model(stub, "big.gguf", size, ff.payload_size([entry]))
    assert model.header_at < len(stub.data)  # the stub split: the model where its archive was
    manifest = b"{}"
    args = ff.encode_args(["..."])
    plan = ff.plan_file(stub, model, len(manifest), len(args), [entry])
    path = tmp_path / "big"
    with path.open("w+b") as out:
        plan.write_head(out)
        out.write(b"GGUF")
        out.seek(model.end)
        plan.write_payload(out, [io.BytesIO(runtime)])
        plan.write_tail(out, manifest, args, model_crc=0)
    with zipfile.ZipFile(path) as archive:
        assert archive.read(entry.name) == runtime  # the CRC checked too
        assert archive.namelist() == ["big.gguf", entry.name, "manifest.json", ".args"]
    with path.open("rb") as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as data:
        archive_at, toc = bootloader_view(data)
        assert toc == b"TOC-entries" * 30 and archive_at > plan.payload[0].end
        assert len(data) - data.rfind(COOKIE_MAGIC) < 4096


def test_a_payload_that_changed_size_is_refused(tmp_path):
    stub = ff.read_stub(elf_stub())
    entry = ff.PayloadEntry("gpu/cuda/lib.xz", 10, 0)
    plan = ff.plan_file(stub, ff.place_model(stub, "m.gguf", 4), 2, 4, [entry])
    with (tmp_path / "out").open("w+b") as out:
        plan.write_head(out)
        out.write(b"GGUF")
        with pytest.raises(ValueError, match="changed size"):
            plan.write_payload(out, [io.BytesIO(b"eleven byte")])
