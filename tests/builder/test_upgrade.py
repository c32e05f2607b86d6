"""`llamapack upgrade`: a new engine around the same model and settings."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from click.testing import CliRunner

from llamapack.builder.assemble import engine_info, write_file
from llamapack.builder.cli import cli
from llamapack.builder.sources import Source, resolve
from llamapack.runtime import fileformat as ff
from tests.support.fakes import elf_stub, write_gguf


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def make_stub(path: Path, marker: bytes) -> Path:
    path.write_bytes(elf_stub(archive_payload=marker * 100))
    return path


def model_record(source: Source) -> ff.ModelRecord:
    """What a build records of a model; write_file fills in its hash and offset."""
    return ff.ModelRecord(file=source.file_name, size=source.size, sha256="", offset=0, name=None,
                          architecture=source.header.architecture, parameters=1, quantization="F32",
                          context_length=2048)  # fmt: skip


def built_with(stub: Path, source: Path, out: Path, *extra: str) -> Path:
    code, output = run("build", str(source), "-o", str(out), "--runtime", str(stub), *extra)
    assert code == 0, output
    return out


def test_upgrade_round_trip_keeps_model_and_settings(tiny_gguf, tmp_path):
    old_stub, new_stub = (
        make_stub(tmp_path / "old", b"OLD-ENGINE"),
        make_stub(tmp_path / "new", b"NEW-ENGINE!"),
    )
    original = built_with(old_stub, tiny_gguf, tmp_path / "model", "--name", "Tiny", "--temp", "0.2")
    before = original.read_bytes()
    upgraded = tmp_path / "upgraded"
    code, output = run("upgrade", str(original), "-o", str(upgraded), "--runtime", str(new_stub))
    assert code == 0, output
    assert original.read_bytes() == before, "the input must stay untouched when -o is given"
    assert b"NEW-ENGINE!" in upgraded.read_bytes() and b"OLD-ENGINE" not in upgraded.read_bytes()
    old, new = ff.read_layout(original), ff.read_layout(upgraded)
    assert new.args == old.args
    assert new.manifest.model == replace(old.manifest.model, offset=new.model_offset)
    assert replace(new.manifest, engine=old.manifest.engine) == replace(
        old.manifest, model=new.manifest.model
    )
    assert new.manifest.engine.stub_sha256 != old.manifest.engine.stub_sha256
    assert run("verify", str(upgraded))[0] == 0
    unpacked = tmp_path / "unpacked.gguf"
    assert run("unpack", str(upgraded), "-o", str(unpacked))[0] == 0
    assert unpacked.read_bytes() == tiny_gguf.read_bytes()
    # Back to the first engine: byte-identical to the original build.
    again = tmp_path / "again"
    assert run("upgrade", str(upgraded), "-o", str(again), "--runtime", str(old_stub))[0] == 0
    assert again.read_bytes() == before


def test_upgrade_in_place(tiny_gguf, tmp_path):
    original = built_with(make_stub(tmp_path / "a", b"A"), tiny_gguf, tmp_path / "model")
    code, output = run("upgrade", str(original), "--runtime", str(make_stub(tmp_path / "b", b"BB")))
    assert code == 0, output
    assert b"BB" * 100 in original.read_bytes()
    assert run("verify", str(original))[0] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_upgrade_refuses_a_model_the_engine_cannot_load(tmp_path):
    """A file whose model family the engine does not know (llamafile issue #730)."""
    source = resolve(str(write_gguf(tmp_path / "future.gguf", arch="arch-from-the-future")))
    stub = make_stub(tmp_path / "stub", b"S")
    manifest = ff.Manifest(name="future", engine=engine_info(), model=model_record(source),
                           chat_template=ff.ChatTemplateChoice("builtin", "chatml"))  # fmt: skip
    out = tmp_path / "future"
    # As an older engine that knew this architecture would have written it.
    write_file(source, out, manifest, ["..."], stub.read_bytes(), stub, check_model=False)
    before = out.read_bytes()
    code, output = run("upgrade", str(out), "-o", str(tmp_path / "new"), "--runtime", str(stub))
    assert code == 1 and "unknown model architecture" in output and "arch-from-the-future" in output
    assert out.read_bytes() == before and not (tmp_path / "new").exists()


def test_upgrade_refuses_damaged_weights(tiny_gguf, tmp_path):
    stub = make_stub(tmp_path / "stub", b"S")
    original = built_with(stub, tiny_gguf, tmp_path / "model")
    layout = ff.read_layout(original)
    data = bytearray(original.read_bytes())
    data[layout.model_offset + layout.model_size - 1] ^= 0x01
    original.write_bytes(bytes(data))
    code, output = run("upgrade", str(original), "-o", str(tmp_path / "new"), "--runtime", str(stub))
    assert code == 1 and "do not match its manifest" in output
    assert not (tmp_path / "new").exists()


def test_upgrade_refuses_a_broken_stub_and_other_files(tiny_gguf, tmp_path):
    original = built_with(make_stub(tmp_path / "a", b"A"), tiny_gguf, tmp_path / "model")
    not_a_stub = tmp_path / "junk"
    not_a_stub.write_bytes(b"\x7fELF" + bytes(64))
    code, output = run("upgrade", str(original), "--runtime", str(not_a_stub))
    assert code == 1 and "no PyInstaller archive" in output
    assert run("verify", str(original))[0] == 0
    code, output = run("upgrade", str(tiny_gguf), "--runtime", str(not_a_stub))
    assert code == 1 and "not a complete llamapack file" in output


def test_inspect_says_when_this_llamapack_has_a_newer_engine(tmp_path):
    source = resolve(str(write_gguf(tmp_path / "m.gguf")))
    stub = make_stub(tmp_path / "stub", b"S")
    old_engine = ff.EngineRecord(llamapack="0.0.1", llama_cpp_python="0.3.1", target=engine_info().target)
    manifest = ff.Manifest(name="m", engine=old_engine, model=model_record(source),
                           chat_template=ff.ChatTemplateChoice("builtin", "chatml", "test"))  # fmt: skip
    out = tmp_path / "old-file"
    write_file(source, out, manifest, ["..."], stub.read_bytes(), stub)
    code, output = run("inspect", str(out), "--json")
    advice = json.loads(output)["upgrade"]
    installed = metadata.version("llama-cpp-python")
    assert "newer engine" in advice and f"llama-cpp-python {installed} (file has 0.3.1)" in advice
    code, output = run("inspect", str(out))
    assert "llamapack upgrade" in output
