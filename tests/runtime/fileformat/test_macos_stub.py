"""A macOS stub as PyInstaller really makes it: its ad-hoc code signature comes after
the archive, so the cookie is far more than a few KiB from the end of the file.
Made here from PyInstaller's own macOS bootloader (from its macOS wheel), whose
linker signature also checks llamapack's own signer byte for byte."""

from __future__ import annotations

import mmap
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import PyInstaller
import pytest
from click.testing import CliRunner

from llamapack.builder.cli import cli
from llamapack.builder.stub import cache_dir
from llamapack.runtime import fileformat as ff
from llamapack.runtime.fileformat import macho
from llamapack.runtime.fileformat.macho import code_signature_at
from tests.support.fakes import (
    adhoc_signature_holds,
    arm64_slice,
    bootloader_view,
    macho_commands,
    pyinstaller_archive,
    signed_macho_stub,
)

BOOTLOADER = "PyInstaller/bootloader/Darwin-64bit/run"


@pytest.fixture(scope="session")
def macos_bootloader() -> bytes:
    """The arm64 slice of the installed PyInstaller version's macOS bootloader,
    downloaded once from PyPI and kept in the cache folder."""
    folder = cache_dir() / "test-assets" / f"pyinstaller-{PyInstaller.__version__}-macos"
    bootloader = folder / "run"
    if not bootloader.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", "macosx_10_13_universal2", f"pyinstaller=={PyInstaller.__version__}",
             "--dest", str(folder)],
            check=True,
        )  # fmt: skip
        wheel = next(folder.glob("pyinstaller-*.whl"))
        bootloader.write_bytes(zipfile.ZipFile(wheel).read(BOOTLOADER))
    return arm64_slice(bootloader.read_bytes())


@pytest.fixture(scope="session")
def signed_stub(macos_bootloader: bytes) -> bytes:
    # 9 MiB of archive: a signature over 64 KiB, as any real stub's (25 MB and more) is.
    return signed_macho_stub(macos_bootloader, ARCHIVE)


ARCHIVE = pyinstaller_archive(bytes(range(256)) * 36_000, b"Python")


def test_the_real_bootloader_is_signed_and_the_cookie_lies_far_from_the_end(signed_stub: bytes) -> None:
    cookie_at = signed_stub.rfind(ff.PYI_COOKIE_MAGIC)
    signature_at = code_signature_at(signed_stub)
    assert signature_at is not None and cookie_at + ff.PYI_COOKIE.size <= signature_at
    assert len(signed_stub) - cookie_at > ff.STUB_TAIL_LIMIT  # where a tail-only search looked


def test_a_signed_macos_stub_is_accepted(signed_stub: bytes) -> None:
    stub = ff.read_stub(signed_stub)
    assert stub.kind == "macho" and stub.header.machine == 0x0100000C
    archive = bytes(stub.archive)
    assert archive.endswith(signed_stub[stub.cookie_at : stub.cookie_at + ff.PYI_COOKIE.size])
    assert archive.startswith(bytes(range(256)))


def test_a_file_built_from_it_keeps_the_signed_stub_and_reads_back(
    signed_stub: bytes, tiny_gguf: Path, tmp_path: Path
) -> None:
    runtime = tmp_path / "llamapack-runtime-macos-arm64"
    runtime.write_bytes(signed_stub)
    out = tmp_path / "tiny"
    result = CliRunner().invoke(
        cli, ["build", str(tiny_gguf), "-o", str(out), "--target", "macos-arm64", "--runtime", str(runtime)]
    )
    assert result.exit_code == 0, result.output
    built = out.read_bytes()
    assert built[: len(signed_stub)] == signed_stub  # the signature stays valid: nothing in it moved
    layout = ff.read_layout(out)
    assert layout.manifest.engine.target == "macos-arm64"
    assert built[layout.model_offset : layout.model_offset + 4] == ff.GGUF_MAGIC


def test_the_signer_writes_the_signature_apples_linker_wrote(macos_bootloader: bytes) -> None:
    """PyInstaller's bootloader was linked and signed ad hoc by Apple's ld64: signing
    its image again gives the same bytes, page hashes, execution segment and all."""
    signature_at = code_signature_at(macos_bootloader)
    assert signature_at is not None
    assert macho.sign(macos_bootloader[:signature_at], b"run") == macos_bootloader
    assert adhoc_signature_holds(macos_bootloader)
    assert macho._adhoc_identifier(macos_bootloader, signature_at) == b"run"  # read back, hashes checked


def _write_big_file(stub: ff.Stub, path: Path, size: int) -> ff.Plan:
    """A file with a `size`-byte model, written sparsely by the Plan itself."""
    model = ff.place_model(stub, "big.gguf", size)
    manifest, args = b"{}", ff.encode_args(["..."])
    plan = ff.plan_file(stub, model, len(manifest), len(args))
    with path.open("w+b") as out:
        plan.write_head(out)
        out.write(b"GGUF")
        out.seek(plan.manifest.header_at)
        plan.write_tail(out, manifest, args, model_crc=0)
    return plan


def test_a_file_over_4_gib_signs_the_image_again_and_holds_the_runtime_once(
    signed_stub: bytes, tmp_path: Path
) -> None:
    """No cookie reaches back over 5 GiB, and the signature covers the archive: the
    image is signed again without it (as before PyInstaller appended it), the model
    follows, then the archive, which the bootloader's scan from the end finds."""
    stub = ff.read_stub(signed_stub)
    assert adhoc_signature_holds(signed_stub)
    path = tmp_path / "big"
    size = 5 * 1024**3
    plan = _write_big_file(stub, path, size)
    assert plan.model is not None
    with path.open("rb") as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as data:
        front = data[: len(plan.front)]
        assert plan.model.header_at >= len(front) and adhoc_signature_holds(front)
        commands = macho_commands(front)
        string_table_at, string_table_size = struct.unpack_from("<II", front, commands["LC_SYMTAB"] + 16)
        assert string_table_at + string_table_size == stub.archive_at  # the string table as linked
        assert code_signature_at(front) == stub.archive_at + (-stub.archive_at % 16)
        load_commands_end = 32 + struct.unpack_from("<I", signed_stub, 20)[0]
        assert front[load_commands_end : stub.archive_at] == signed_stub[load_commands_end : stub.archive_at]
        archive_at, toc = bootloader_view(data)
        assert archive_at > plan.model.end and data[archive_at : archive_at + 4] == bytes(range(4))
        assert toc == bootloader_view(signed_stub)[1]
        assert len(data) - data.rfind(ff.PYI_COOKIE_MAGIC) < 4096
        assert len(data) - size <= len(signed_stub) + (1 << 20)  # the runtime once
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("big.gguf").file_size == size
        assert archive.read(".args") == b"...\n"


def _with_entitlements(signed: bytes) -> bytes:
    """The stub with its (empty) CMS blob turned into an entitlements blob."""
    data = bytearray(signed)
    cms_at = data.rindex(struct.pack(">II", 0xFADE0B01, 8))
    struct.pack_into(">I", data, cms_at, 0xFADE7171)
    return bytes(data)


def _damaged(signed: bytes) -> bytes:
    """The stub with one byte of its code changed after it was signed."""
    data = bytearray(signed)
    data[0x2000] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("kind", ["identity", "entitlements", "damaged"])
def test_a_stub_signed_with_an_identity_or_entitlements_or_damaged_keeps_its_signature(
    macos_bootloader: bytes, tmp_path: Path, kind: str
) -> None:
    """Signing again would void a Developer ID signature, drop the entitlements, or
    bless code changed after it was signed (macOS refuses to run that stub, and so
    the file): such a stub stays whole, and past 4 GiB a copy of its archive follows
    the model."""
    if kind == "identity":
        signed = signed_macho_stub(macos_bootloader, ARCHIVE, identity_signed=True)
    elif kind == "entitlements":
        signed = _with_entitlements(signed_macho_stub(macos_bootloader, ARCHIVE))
    else:
        signed = _damaged(signed_macho_stub(macos_bootloader, ARCHIVE))
        assert not adhoc_signature_holds(signed)
    stub = ff.read_stub(signed)
    assert stub.split(len(signed) + 100) is None
    path = tmp_path / "big"
    plan = _write_big_file(stub, path, 5 * 1024**3)
    assert plan.front == signed and plan.pointer == bytes(stub.archive)
    with path.open("rb") as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as data:
        assert data[: len(signed)] == signed
        assert bootloader_view(data)[1] == bootloader_view(signed)[1]
