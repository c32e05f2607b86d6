"""A macOS stub as PyInstaller really makes it: its ad-hoc code signature comes after
the archive, so the cookie is far more than a few KiB from the end of the file.
Made here from PyInstaller's own macOS bootloader (from its macOS wheel)."""

from __future__ import annotations

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
from llamapack.runtime.fileformat.executables import macho_code_signature_at
from tests.support.fakes import arm64_slice, pyinstaller_archive, signed_macho_stub

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
    return signed_macho_stub(macos_bootloader, pyinstaller_archive(bytes(range(256)) * 36_000, b"Python"))


def test_the_real_bootloader_is_signed_and_the_cookie_lies_far_from_the_end(signed_stub: bytes) -> None:
    cookie_at = signed_stub.rfind(ff.PYI_COOKIE_MAGIC)
    signature_at = macho_code_signature_at(signed_stub)
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
