"""`llamapack build` from the command line: results and one-line errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder.cli import cli
from tests.support.fakes import write_gguf


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_build_writes_the_file(tiny_gguf, fake_stub, tmp_path):
    out = tmp_path / "built"
    code, output = run("build", str(tiny_gguf), "-o", str(out), "--runtime", str(fake_stub))
    assert code == 0, output
    assert "Built" in output and "F32" in output
    assert zipfile.ZipFile(out).namelist()[0] == "tiny-model.gguf"
    assert out.stat().st_mode & 0o111, "the output must be executable"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_default_output_is_dist_model_stem(tiny_gguf, fake_stub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run("build", str(tiny_gguf), "--runtime", str(fake_stub), "-q")
    assert code == 0, output
    assert (tmp_path / "dist" / "tiny-model").is_file()
    assert output == ""  # --quiet


def test_output_folder_gets_the_file_inside(tiny_gguf, fake_stub, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    code, _ = run("build", str(tiny_gguf), "-o", str(folder), "--runtime", str(fake_stub))
    assert code == 0
    assert (folder / "tiny-model").is_file()


def test_chat_template_override_is_recorded(tiny_gguf, fake_stub, tmp_path):
    out = tmp_path / "m"
    code, output = run("build", str(tiny_gguf), "-o", str(out), "--runtime", str(fake_stub),
                       "--chat-template", "chatml")  # fmt: skip
    assert code == 0, output
    assert b'"name": "chatml"' in zipfile.ZipFile(out).read("manifest.json")


def test_gemma_without_template_gets_llamacpp_gemma(tmp_path, fake_stub):
    source = write_gguf(tmp_path / "g.gguf", arch="gemma3")
    out = tmp_path / "m"
    code, output = run("build", str(source), "-o", str(out), "--runtime", str(fake_stub))
    assert code == 0, output
    assert "chat template: gemma" in output


def test_gguf_template_is_used_when_present(tmp_path, fake_stub):
    source = write_gguf(
        tmp_path / "t.gguf", chat_template="{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    out = tmp_path / "m"
    code, output = run("build", str(source), "-o", str(out), "--runtime", str(fake_stub))
    assert code == 0, output
    assert '"source": "gguf"' in zipfile.ZipFile(out).read("manifest.json").decode()


def _not_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "notes.gguf"
    path.write_text("hello, this is not a model\n")
    return path


def _truncated(tmp_path: Path) -> Path:
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[: len(whole) - 1000])
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    return path


def _bad_version(tmp_path: Path) -> Path:
    data = bytearray(write_gguf(tmp_path / "v.gguf").read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    path = tmp_path / "v99.gguf"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda tmp: tmp / "missing.gguf", "no such file"),
        (lambda tmp: tmp, "is a directory"),
        (_empty, "is empty"),
        (_not_gguf, "not a GGUF file"),
        (_truncated, "truncated"),
        (_bad_version, "version 99"),
    ],
)
def test_bad_sources_fail_with_one_line(make_source, message, fake_stub, tmp_path):
    source = make_source(tmp_path)
    out = tmp_path / "out" / "model"
    code, output = run("build", str(source), "-o", str(out), "--runtime", str(fake_stub))
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], output
    assert "Traceback" not in output
    assert not out.exists() and not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_output_equal_to_input_is_refused(tiny_gguf, fake_stub):
    before = tiny_gguf.read_bytes()
    code, output = run("build", str(tiny_gguf), "-o", str(tiny_gguf), "--runtime", str(fake_stub))
    assert code == 1 and "is the input model" in output
    assert tiny_gguf.read_bytes() == before


def test_unknown_chat_template_is_a_usage_error(tiny_gguf, fake_stub, tmp_path):
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "m"), "--runtime",
                       str(fake_stub), "--chat-template", "nonsense")  # fmt: skip
    assert code == 2 and "unknown chat template 'nonsense'" in output and "chatml" in output


def test_a_stub_that_is_not_a_runtime_is_refused(tiny_gguf, tmp_path):
    stub = tmp_path / "stub"
    stub.write_bytes(b"\x7fELF" + bytes(1000))
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "m"), "--runtime", str(stub))
    assert code == 1 and "no PyInstaller archive" in output
    assert not (tmp_path / "m").exists()


def test_unwritable_output_folder(tiny_gguf, fake_stub, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, output = run("build", str(tiny_gguf), "-o", str(blocker / "sub" / "m"), "--runtime", str(fake_stub))
    assert code == 1 and output.startswith("Error: cannot write to")


def test_existing_output_is_replaced_only_when_complete(tiny_gguf, fake_stub, tmp_path):
    out = tmp_path / "m"
    out.write_bytes(b"previous build")
    bad = _truncated(tmp_path)
    code, _ = run("build", str(bad), "-o", str(out), "--runtime", str(fake_stub))
    assert code == 1 and out.read_bytes() == b"previous build"


def test_help_and_version():
    code, output = run("build", "-h")
    assert code == 0 and "Examples:" in output and "--chat-template" in output
    code, output = run("--version")
    assert code == 0 and output.startswith("llamapack, version ")
