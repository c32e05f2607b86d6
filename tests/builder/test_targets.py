"""Building for other systems with stand-in stubs of each executable format."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder.cli import cli
from llamapack.runtime import fileformat as ff
from tests.support.fakes import elf_stub, macho_stub, pe_stub

STUBS = {
    "linux-x86_64": lambda: elf_stub(machine=0x3E),
    "linux-aarch64": lambda: elf_stub(machine=0xB7),
    "macos-arm64": macho_stub,
    "windows-x86_64": pe_stub,
}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("target", list(STUBS))
def test_every_target_gets_its_layout(target, tiny_gguf, tmp_path, monkeypatch):
    stub = tmp_path / "stub"
    stub.write_bytes(STUBS[target]())
    monkeypatch.chdir(tmp_path)
    code, output = run("build", str(tiny_gguf), "--target", target, "--runtime", str(stub))
    assert code == 0, output
    out = tmp_path / "dist" / ("tiny-model.exe" if target.startswith("windows") else "tiny-model")
    layout = ff.read_layout(out)
    assert layout.manifest.engine.target == target
    assert layout.model_offset % ff.MODEL_ALIGNMENT == 0
    assert zipfile.ZipFile(out).testzip() is None
    assert out.read_bytes()[:4] == stub.read_bytes()[:4]
    assert run("verify", str(out))[0] == 0


@pytest.mark.parametrize(("target", "wrong"), [("linux-aarch64", "linux-x86_64"),
                                               ("windows-x86_64", "macos-arm64")])  # fmt: skip
def test_a_stub_for_another_system_is_refused(target, wrong, tiny_gguf, tmp_path):
    stub = tmp_path / "stub"
    stub.write_bytes(STUBS[wrong]())
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "m"), "--target", target,
                       "--runtime", str(stub))  # fmt: skip
    assert code == 1 and f"another system than {target}" in output


def test_windows_model_over_4_gib_goes_beside_the_exe(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr("llamapack.builder.assemble.WINDOWS_MAX_FILE", 4096)  # as if the model were huge
    stub = tmp_path / "stub.exe"
    stub.write_bytes(pe_stub())
    exe = tmp_path / "out" / "model.exe"
    code, output = run("build", str(tiny_gguf), "-o", str(exe), "--target", "windows-x86_64",
                       "--runtime", str(stub))  # fmt: skip
    assert code == 0, output
    assert "model.gguf beside it" in output and "4 GiB" in output
    beside = exe.with_suffix(".gguf")
    assert beside.read_bytes() == tiny_gguf.read_bytes()
    assert zipfile.ZipFile(exe).namelist() == ["manifest.json", ".args"]
    layout = ff.read_layout(exe)
    assert layout.model_path == beside and layout.model_offset == 0 and layout.external
    assert layout.manifest.model.external == "model.gguf"
    assert layout.manifest.model.sha256 == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert run("verify", str(exe))[0] == 0
    unpacked = tmp_path / "back.gguf"
    assert run("unpack", str(exe), "-o", str(unpacked))[0] == 0
    assert unpacked.read_bytes() == tiny_gguf.read_bytes()
    beside.rename(tmp_path / "elsewhere.gguf")
    with pytest.raises(ff.FormatError, match="keep the two files together"):
        ff.read_layout(exe)


class _Release:
    """A local stand-in for a release page: stubs plus SHA256SUMS."""

    def __init__(self, folder: Path):
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stub_from_a_release_is_checked_and_cached(tiny_gguf, tmp_path, monkeypatch):
    release = tmp_path / "release"
    release.mkdir()
    stub = release / "llamapack-runtime-windows-x86_64.exe"
    stub.write_bytes(pe_stub())
    digest = hashlib.sha256(stub.read_bytes()).hexdigest()
    (release / "SHA256SUMS").write_text(f"{digest}  {stub.name}\n")
    server = _Release(release)
    monkeypatch.setenv("LLAMAPACK_RUNTIME_URL", server.url)
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))
    try:
        code, output = run(
            "build", str(tiny_gguf), "-o", str(tmp_path / "a.exe"), "--target", "windows-x86_64"
        )
        assert code == 0, output
    finally:
        server.close()
    # Cached: no server needed the second time.
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "b.exe"), "--target", "windows-x86_64")
    assert code == 0, output
    assert (tmp_path / "a.exe").read_bytes() == (tmp_path / "b.exe").read_bytes()


def test_a_release_stub_with_a_wrong_checksum_is_not_used(tiny_gguf, tmp_path, monkeypatch):
    release = tmp_path / "release"
    release.mkdir()
    (release / "llamapack-runtime-macos-arm64").write_bytes(macho_stub())
    (release / "SHA256SUMS").write_text(f"{'0' * 64}  llamapack-runtime-macos-arm64\n")
    server = _Release(release)
    monkeypatch.setenv("LLAMAPACK_RUNTIME_URL", server.url)
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))
    try:
        code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "m"), "--target", "macos-arm64")
    finally:
        server.close()
    assert code == 1 and "does not match the release's SHA256SUMS" in output
    assert not list((tmp_path / "cache").rglob("llamapack-runtime-*"))


def test_unreachable_release_says_how_to_proceed(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPACK_RUNTIME_URL", "http://127.0.0.1:9/none")
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "m"), "--target", "linux-aarch64")
    assert code == 1 and "--runtime PATH" in output
