"""Model sources (ZIP, Hugging Face, split files), build options and provenance commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder import progress
from llamapack.builder.cli import cli
from llamapack.runtime import fileformat as ff
from tests.support.fakes import write_gguf
from tests.support.hub_standin import HubStandin, Repo


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def build(source: Path | str, out: Path, stub: Path, *extra: str) -> tuple[int, str]:
    return run("build", str(source), "-o", str(out), "--runtime", str(stub), *extra)


def unpacked(built: Path, tmp_path: Path) -> bytes:
    target = tmp_path / "unpacked.gguf"
    code, output = run("unpack", str(built), "-o", str(target), "--force")
    assert code == 0, output
    return target.read_bytes()


# ------------------------------------------------------------------ ZIP


@pytest.mark.parametrize("method", ["stored", "deflated", "deflate64"])
def test_zip_sources_build_and_unpack_byte_exact(method, tiny_gguf, fake_stub, tmp_path):
    archive = tmp_path / "model.zip"
    if method == "deflate64":
        # As Windows Explorer writes archives of large files.
        subprocess.run(["7z", "a", "-tzip", "-mm=Deflate64", str(archive), str(tiny_gguf)],
                       check=True, capture_output=True)  # fmt: skip
        import zipfile_deflate64  # noqa: F401

        assert zipfile.ZipFile(archive).infolist()[0].compress_type == 9  # Deflate64
    else:
        compression = zipfile.ZIP_STORED if method == "stored" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(archive, "w", compression) as out:
            out.write(tiny_gguf, "models/" + tiny_gguf.name)
    built = tmp_path / "built"
    code, output = build(archive, built, fake_stub)
    assert code == 0, output
    assert unpacked(built, tmp_path) == tiny_gguf.read_bytes()
    manifest = ff.read_layout(built).manifest
    assert isinstance(manifest.source, ff.ZipProvenance) and manifest.source.archive == "model.zip"
    assert manifest.model.file == tiny_gguf.name
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_zip_with_several_ggufs_needs_member(tmp_path, fake_stub):
    archive = tmp_path / "two.zip"
    first, second = write_gguf(tmp_path / "a.gguf"), write_gguf(tmp_path / "b.gguf", arch="gemma3")
    with zipfile.ZipFile(archive, "w") as out:
        out.write(first, "a.gguf")
        out.write(second, "b.gguf")
    code, output = build(archive, tmp_path / "m", fake_stub)
    assert code == 2 and "--member" in output and "a.gguf, b.gguf" in output
    code, output = build(archive, tmp_path / "m", fake_stub, "--member", "b.gguf")
    assert code == 0, output
    assert ff.read_layout(tmp_path / "m").manifest.model.architecture == "gemma3"
    code, output = build(archive, tmp_path / "m2", fake_stub, "--member", "c.gguf")
    assert code == 1 and "no GGUF member 'c.gguf'" in output


def test_zip_without_gguf_and_corrupt_zip(tmp_path, fake_stub):
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("readme.txt", "no model here")
    code, output = build(archive, tmp_path / "m", fake_stub)
    assert code == 1 and "holds no .gguf file" in output
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    code, output = build(broken, tmp_path / "m", fake_stub)
    assert code == 1 and "not a readable ZIP archive" in output
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ checks


def test_split_gguf_is_refused_with_merge_instructions(tmp_path, fake_stub):
    part = write_gguf(tmp_path / "model-00001-of-00003.gguf")
    code, output = build(part, tmp_path / "m", fake_stub)
    assert code == 1
    assert (
        "split GGUF" in output and "llama-gguf-split --merge model-00001-of-00003.gguf model.gguf" in output
    )


def test_unknown_architecture_is_refused_by_the_vocab_check(tmp_path, fake_stub):
    source = write_gguf(tmp_path / "odd.gguf", arch="no-such-arch")
    code, output = build(source, tmp_path / "m", fake_stub)
    assert code == 1 and "unknown model architecture" in output and "no-such-arch" in output
    assert not (tmp_path / "m").exists()


def test_build_reports_what_it_built(tiny_gguf, fake_stub, tmp_path):
    code, output = build(tiny_gguf, tmp_path / "m", fake_stub, "--ctx-size", "1024")
    assert code == 0
    assert "4K parameters" in output or "0M parameters" in output
    assert "F32" in output and "trained context 2048" in output
    assert "memory:        about" in output and "context 1024" in output


# ------------------------------------------------------------------ options


def test_build_options_go_into_args_and_manifest(tiny_gguf, fake_stub, tmp_path):
    out = tmp_path / "m"
    code, output = build(tiny_gguf, out, fake_stub, "--name", "Tiny", "--ctx-size", "1024",
                         "--temp", "0.3", "--system-prompt", "Be brief.\tReally.",
                         "--args", "--port 9000 --nobrowser")  # fmt: skip
    assert code == 0, output
    layout = ff.read_layout(out)
    assert layout.args == ["--alias", "Tiny", "--ctx-size", "1024", "--temp", "0.3",
                           "--system-prompt", "Be brief.\tReally.", "--port", "9000",
                           "--nobrowser", "..."]  # fmt: skip
    assert layout.manifest.defaults is not None
    assert layout.manifest.defaults.to_json() == {"ctx_size": 1024, "temperature": 0.3,
                                                     "system_prompt": "Be brief.\tReally.",
                                                     "args": ["--port", "9000", "--nobrowser"]}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--no-such-flag", "unrecognized arguments: --no-such-flag"),
        ("--port", "expected one argument"),
        ("'unclosed", "cannot be split"),
    ],
)
def test_bad_default_args_are_refused_at_build_time(args, message, tiny_gguf, fake_stub, tmp_path):
    code, output = build(tiny_gguf, tmp_path / "m", fake_stub, "--args", args)
    assert code == 2 and message in output
    assert not (tmp_path / "m").exists()


def test_system_prompt_with_newline_is_refused(tiny_gguf, fake_stub, tmp_path):
    code, output = build(tiny_gguf, tmp_path / "m", fake_stub, "--system-prompt", "two\nlines")
    assert code != 0 and "newline" in output


def test_same_options_same_bytes(tiny_gguf, fake_stub, tmp_path):
    options = ("--name", "T", "--temp", "0.5", "--system-prompt", "Hi")
    assert build(tiny_gguf, tmp_path / "a", fake_stub, *options)[0] == 0
    assert build(tiny_gguf, tmp_path / "b", fake_stub, *options)[0] == 0
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


# ------------------------------------------------------------------ provenance


@pytest.fixture
def built(tiny_gguf: Path, fake_stub: Path, tmp_path: Path) -> Path:
    out = tmp_path / "built"
    assert build(tiny_gguf, out, fake_stub)[0] == 0
    return out


def test_inspect_human_and_json(built, tiny_gguf):
    import hashlib

    code, output = run("inspect", str(built))
    assert code == 0, output
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    engine = f"llama-cpp-python {metadata.version('llama-cpp-python')}"
    assert sha in output and "offset 65536" in output and engine in output
    code, output = run("inspect", str(built), "--json")
    report = json.loads(output)
    assert report["manifest"]["model"]["sha256"] == sha
    assert report["layout"]["model_offset"] % ff.MODEL_ALIGNMENT == 0
    assert report["layout"]["model_size"] == tiny_gguf.stat().st_size
    assert report["engine"]["llama_cpp_python"] == metadata.version("llama-cpp-python")
    assert "as new as" in report["upgrade"]


def test_verify_passes_then_catches_a_flipped_byte(built):
    code, output = run("verify", str(built))
    assert code == 0 and output.startswith("OK:")
    layout = ff.read_layout(built)
    data = bytearray(built.read_bytes())
    data[layout.model_offset + layout.model_size - 10] ^= 0xFF
    built.write_bytes(bytes(data))
    code, output = run("verify", str(built))
    assert code == 1 and "MISMATCH" in output


def test_unpack_is_byte_exact_and_never_overwrites(built, tiny_gguf, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, output = run("unpack", str(built))
    assert code == 0, output
    restored = elsewhere / tiny_gguf.name
    assert restored.read_bytes() == tiny_gguf.read_bytes()
    restored.write_bytes(b"my own notes")
    code, output = run("unpack", str(built))
    assert code == 1 and "--force" in output
    assert restored.read_bytes() == b"my own notes"
    code, output = run("unpack", str(built), "-o", str(built))
    assert code == 1 and built.stat().st_size > 1000


@pytest.mark.parametrize("command", ["inspect", "verify", "unpack"])
def test_provenance_commands_refuse_other_files(command, tiny_gguf, tmp_path):
    code, output = run(command, str(tiny_gguf))
    assert code == 1 and output.startswith("Error:") and len(output.strip().splitlines()) == 1
    code, output = run(command, str(tmp_path / "missing"))
    assert code == 1 and "no such file" in output


# ------------------------------------------------------------------ progress bars


def test_progress_bars_follow_tty_env_and_quiet(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("LLAMAPACK_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    progress.set_quiet(False)
    assert progress.bars_enabled()
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert not progress.bars_enabled()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    progress.set_quiet(True)
    assert not progress.bars_enabled()
    progress.set_quiet(False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not progress.bars_enabled()


# ------------------------------------------------------------------ Hugging Face


def hub_build(hub: HubStandin, spec: str, out: Path, stub: Path, home: Path, *extra: str,
              token: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    llamapack = Path(sys.executable).parent / "llamapack"
    command = [str(llamapack), "build", spec, "-o", str(out), "--runtime", str(stub), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def hub_repo(tmp_path) -> dict[str, Path]:
    files = {}
    for quant in ("Q4_K_M", "Q8_0"):
        files[f"tiny-{quant}.gguf"] = write_gguf(tmp_path / f"tiny-{quant}.gguf")
    files["README.md"] = tmp_path / "README.md"
    files["README.md"].write_text("# tiny\n")
    return files


def test_hub_file_download_records_the_commit(hub_repo, fake_stub, tmp_path):
    repo = Repo(files=hub_repo)
    with HubStandin({"acme/tiny-GGUF": repo}) as hub:
        result = hub_build(
            hub, "hf://acme/tiny-GGUF/tiny-Q8_0.gguf", tmp_path / "m", fake_stub, tmp_path / "hf"
        )
        assert result.returncode == 0, result.stderr
        source = ff.read_layout(tmp_path / "m").manifest.source
        assert source == ff.HubProvenance(repo="acme/tiny-GGUF", file="tiny-Q8_0.gguf", revision="main",
                                          commit=repo.commit)  # fmt: skip
        assert any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)
        # Pinned revision: served from huggingface_hub's cache, same commit.
        pinned = f"hf://acme/tiny-GGUF/tiny-Q8_0.gguf@{repo.commit}"
        result = hub_build(hub, pinned, tmp_path / "m2", fake_stub, tmp_path / "hf")
        assert result.returncode == 0, result.stderr
    pinned_source = ff.read_layout(tmp_path / "m2").manifest.source
    assert isinstance(pinned_source, ff.HubProvenance) and pinned_source.revision == repo.commit


def test_hub_quant_choice(hub_repo, fake_stub, tmp_path):
    with HubStandin({"acme/tiny-GGUF": Repo(files=hub_repo)}) as hub:
        home = tmp_path / "hf"
        ok = hub_build(hub, "hf://acme/tiny-GGUF", tmp_path / "m", fake_stub, home, "--quant", "q4_k_m")
        assert ok.returncode == 0, ok.stderr
        source = ff.read_layout(tmp_path / "m").manifest.source
        assert isinstance(source, ff.HubProvenance) and source.file == "tiny-Q4_K_M.gguf"
        ambiguous = hub_build(hub, "hf://acme/tiny-GGUF", tmp_path / "m2", fake_stub, home)
        assert ambiguous.returncode == 2 and "Q4_K_M, Q8_0" in ambiguous.stderr
        missing = hub_build(hub, "hf://acme/tiny-GGUF", tmp_path / "m3", fake_stub, home, "--quant", "Q2_K")
        assert missing.returncode == 1 and "no Q2_K GGUF; available: Q4_K_M, Q8_0" in missing.stderr
        assert "Traceback" not in missing.stderr + ambiguous.stderr


def test_hub_gated_repo_needs_token(hub_repo, fake_stub, tmp_path):
    with HubStandin({"acme/gated": Repo(files=hub_repo, token="hf_secret")}) as hub:
        spec = "hf://acme/gated/tiny-Q8_0.gguf"
        refused = hub_build(hub, spec, tmp_path / "m", fake_stub, tmp_path / "hf")
        assert refused.returncode == 1 and "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
        allowed = hub_build(hub, spec, tmp_path / "m", fake_stub, tmp_path / "hf", token="hf_secret")
        assert allowed.returncode == 0, allowed.stderr
        assert any(h.get("authorization") == "Bearer hf_secret" for _, _, h in hub.requests)


def test_hub_missing_repo_and_file(hub_repo, fake_stub, tmp_path):
    with HubStandin({"acme/tiny-GGUF": Repo(files=hub_repo)}) as hub:
        no_repo = hub_build(hub, "hf://acme/nothing/x.gguf", tmp_path / "m", fake_stub, tmp_path / "hf")
        assert no_repo.returncode == 1 and "no repository acme/nothing" in no_repo.stderr
        no_file = hub_build(hub, "hf://acme/tiny-GGUF/x.gguf", tmp_path / "m", fake_stub, tmp_path / "hf")
        assert no_file.returncode == 1 and "has no file x.gguf" in no_file.stderr


def test_hub_download_resumes(tmp_path, fake_stub):
    # huggingface_hub reads in 10 MiB chunks and resumes after the last whole one.
    big = write_gguf(tmp_path / "big-Q8_0.gguf", tensor_elements=6 << 20)  # 24 MiB of weights
    with HubStandin({"acme/big": Repo(files={"big-Q8_0.gguf": big})}, fail_after_bytes=15 << 20) as hub:
        # The connection breaks half-way; huggingface_hub resumes from where it stopped.
        result = hub_build(hub, "hf://acme/big/big-Q8_0.gguf", tmp_path / "m", fake_stub, tmp_path / "hf")
        assert result.returncode == 0, result.stderr
        ranges = [h["range"] for method, _, h in hub.requests if method == "GET" and "range" in h]
        assert ranges and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"
    assert unpacked(tmp_path / "m", tmp_path) == big.read_bytes()
    shutil.rmtree(tmp_path / "hf")
