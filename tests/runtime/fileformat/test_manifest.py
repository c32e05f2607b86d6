"""manifest.json as typed records: round trips, old files, newer formats, damage,
and the exact bytes a build writes."""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llamapack.builder.cli import cli
from llamapack.runtime import fileformat as ff
from tests.support.fakes import elf_stub

ENGINE = ff.EngineRecord(
    llamapack="0.1.0",
    llama_cpp_python="0.3.36",
    target="linux-x86_64",
    llama_cpp=ff.LlamaCppBuild(version="0.25.3", commit="0c1e570"),
    stub_sha256="ab" * 32,
)
MODEL = ff.ModelRecord(
    file="tiny-model.gguf",
    size=4544,
    sha256="cd" * 32,
    offset=65536,
    name="Tiny",
    architecture="llama",
    parameters=4160,
    quantization="F32",
    context_length=2048,
)
MANIFEST = ff.Manifest(
    name="Tiny",
    engine=ENGINE,
    source=ff.LocalProvenance(file="tiny-model.gguf"),
    model=MODEL,
    chat_template=ff.ChatTemplateChoice("builtin", "chatml", "the GGUF has no template; using chatml"),
    defaults=ff.Defaults(ctx_size=1024, temperature=0.3, system_prompt="Be brief.", args=("--nobrowser",)),
)

RECORDS = [
    MODEL,
    ff.ModelRecord(
        file="m.gguf",
        size=1,
        sha256="0" * 64,
        offset=0,
        name=None,
        architecture="qwen3",
        parameters=1,
        quantization="Q4_K_M",
        context_length=None,
        external="m.gguf",
    ),
    ENGINE.llama_cpp,
    ENGINE,
    ff.EngineRecord(llamapack="0.0.1", llama_cpp_python="0.3.1", target="windows-x86_64"),
    ff.ChatTemplateChoice("gguf", "gguf", "the GGUF's own template"),
    ff.ChatTemplateChoice("builtin", "chatml"),
    ff.Defaults(),
    ff.Defaults(ctx_size=0, temperature=0.0, system_prompt="", args=("-ngl", "99")),
    ff.UiMode("completion", "the GGUF has no chat template and no name says instruct or chat: a base model"),
    ff.UiMode("chat"),
    MANIFEST,
    ff.Manifest(name="old", engine=ENGINE, model=MODEL, chat_template=ff.ChatTemplateChoice("gguf", "gguf")),
    replace(MANIFEST, ui_mode=ff.UiMode("chat", "the GGUF has its own chat template")),
    replace(
        MANIFEST,
        gpu_runtime=ff.GpuRuntime(
            "cuda",
            (
                ff.GpuLibrary("libcudart.so.13", "gpu/cuda/libcudart.so.13.xz", "ef" * 32, 800_000, 300_000),
                ff.GpuLibrary(
                    "libggml-cuda.so", "gpu/cuda/libggml-cuda.so.xz", "12" * 32, 90_000_000, 40_000_000
                ),
            ),
        ),
    ),
]
PROVENANCES = [
    ff.LocalProvenance(file="model.gguf"),
    ff.ZipProvenance(archive="models.zip", member="sub/model.gguf"),
    ff.HubProvenance(repo="acme/tiny-GGUF", file="q/tiny-Q8_0.gguf", revision="main", commit="f" * 40),
    ff.HubProvenance(repo="acme/tiny-GGUF", file="tiny.gguf", revision="v1", commit=None),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips(record):
    assert type(record).from_json(record.to_json()) == record
    # and through the JSON text, as a file holds it
    assert type(record).from_json(json.loads(json.dumps(record.to_json()))) == record


@pytest.mark.parametrize("provenance", PROVENANCES, ids=lambda p: type(p).__name__)
def test_every_source_round_trips(provenance):
    assert ff.provenance_from_json(provenance.to_json()) == provenance
    manifest = ff.Manifest(name="m", engine=ENGINE, model=MODEL, chat_template=MANIFEST.chat_template,
                           source=provenance)  # fmt: skip
    assert ff.Manifest.decode(manifest.encode()) == manifest


# The bytes of manifest.json for MANIFEST, as every llamapack so far writes them:
# sorted keys, two-space indent, non-ASCII kept, a final newline.
EXPECTED_JSON = """{
  "chat_template": {
    "name": "chatml",
    "reason": "the GGUF has no template; using chatml",
    "source": "builtin"
  },
  "defaults": {
    "args": [
      "--nobrowser"
    ],
    "ctx_size": 1024,
    "system_prompt": "Be brief.",
    "temperature": 0.3
  },
  "format": 1,
  "model": {
    "architecture": "llama",
    "context_length": 2048,
    "file": "tiny-model.gguf",
    "name": "Tiny",
    "offset": 65536,
    "parameters": 4160,
    "quantization": "F32",
    "sha256": "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
    "size": 4544
  },
  "name": "Tiny",
  "runtime": {
    "llama_cpp": {
      "commit": "0c1e570",
      "version": "0.25.3"
    },
    "llama_cpp_python": "0.3.36",
    "llamapack": "0.1.0",
    "stub_sha256": "abababababababababababababababababababababababababababababababab",
    "target": "linux-x86_64"
  },
  "source": {
    "file": "tiny-model.gguf",
    "type": "local"
  }
}
"""


def test_the_json_written_is_byte_for_byte_what_files_hold():
    assert MANIFEST.encode() == EXPECTED_JSON.encode()
    assert ff.Manifest.decode(EXPECTED_JSON.encode()) == MANIFEST


def test_the_page_mode_is_written_only_when_set():
    """Files built before `ui_mode` have no such key, and re-encode unchanged (above);
    a newer build's manifest has it last, and nothing else changes."""
    assert MANIFEST.ui_mode is None and "ui_mode" not in MANIFEST.to_json()
    with_mode = replace(MANIFEST, ui_mode=ff.UiMode("completion", "a base model"))
    raw = with_mode.encode()
    added = '  "ui_mode": {\n    "mode": "completion",\n    "reason": "a base model"\n  }\n'
    assert raw == (EXPECTED_JSON.removesuffix("  }\n}\n") + "  },\n" + added + "}\n").encode()
    assert ff.Manifest.decode(raw) == with_mode and ff.Manifest.decode(raw).encode() == raw
    without_reason = {"mode": "chat"}
    assert ff.UiMode.from_json(without_reason).to_json() == without_reason
    with pytest.raises(ValueError, match="chat or completion, not 'notebook'"):
        ff.UiMode("notebook")  # type: ignore[arg-type]


def test_a_built_manifest_reads_back_to_the_same_bytes(tiny_gguf, fake_stub, tmp_path):
    out = tmp_path / "m"
    result = CliRunner().invoke(cli, ["build", str(tiny_gguf), "-o", str(out), "--runtime", str(fake_stub),
                                      "--name", "Tiny", "--temp", "0.3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = zipfile.ZipFile(out).read("manifest.json")
    assert ff.Manifest.decode(raw).encode() == raw
    assert ff.read_layout(out).manifest == ff.Manifest.decode(raw)
    assert ff.Manifest.decode(raw).ui_mode is not None  # a new build says which mode its page opens in


# -- a file as the first llamapack wrote it: no source, no defaults, no llama.cpp build

OLD_MANIFEST: dict[str, Any] = {
    "format": 1,
    "name": "tiny-model",
    "runtime": {
        "llamapack": "0.1.0",
        "llama_cpp_python": "0.3.2",
        "target": "linux-x86_64",
        "stub_sha256": "ef" * 32,
    },
    "model": {
        "file": "tiny-model.gguf",
        "size": 0,
        "name": None,
        "architecture": "llama",
        "parameters": 4160,
        "quantization": "F32",
        "context_length": 2048,
        "sha256": "",
        "offset": 0,
    },
    "chat_template": {"source": "builtin", "name": "llama2", "reason": "chosen with --chat-template"},
}


def test_an_old_manifest_reads_and_is_written_back_unchanged():
    manifest = ff.Manifest.from_json(OLD_MANIFEST)
    assert manifest.source is None and manifest.defaults is None and manifest.engine.llama_cpp is None
    assert manifest.to_json() == OLD_MANIFEST
    raw = json.dumps(OLD_MANIFEST, indent=2, sort_keys=True).encode() + b"\n"
    assert ff.Manifest.decode(raw).encode() == raw


def write_by_hand(path: Path, gguf: Path, manifest: dict, args: bytes = b"...\n") -> Path:
    """A built file laid out with the format's own pieces but any manifest at all,
    as an older (or newer) llamapack would have written it."""
    stub = ff.read_stub(elf_stub())
    data = gguf.read_bytes()
    model = ff.place_model(stub, gguf.name, len(data))
    manifest = manifest | {"model": manifest["model"] | {
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "offset": model.data_at}}  # fmt: skip
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    plan = ff.plan_file(stub, model, len(manifest_bytes), len(args))
    with path.open("wb") as out:
        plan.write_head(out)
        out.write(data)
        plan.write_tail(out, manifest_bytes, args, model_crc=zlib.crc32(data))
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_a_file_built_by_the_first_llamapack_still_verifies_inspects_and_upgrades(tiny_gguf, tmp_path):
    old = write_by_hand(tmp_path / "old", tiny_gguf, OLD_MANIFEST)
    assert zipfile.ZipFile(old).testzip() is None
    layout = ff.read_layout(old)
    assert layout.manifest.model.architecture == "llama" and layout.manifest.source is None
    assert run("verify", str(old))[0] == 0
    code, output = run("inspect", str(old))
    assert code == 0 and "llama2 (chosen with --chat-template)" in output and "source:" not in output
    report = json.loads(run("inspect", str(old), "--json")[1])
    assert report["manifest"] == layout.manifest.to_json()
    stub = tmp_path / "stub"
    stub.write_bytes(elf_stub())
    code, output = run("upgrade", str(old), "-o", str(tmp_path / "new"), "--runtime", str(stub))
    assert code == 0, output
    new = ff.read_layout(tmp_path / "new").manifest
    # Everything but the engine is kept as it was, absent fields included.
    assert new.to_json()["model"] == layout.manifest.to_json()["model"]
    assert not {"source", "defaults", "ui_mode"} & new.to_json().keys()


def test_a_newer_format_version_is_refused_in_one_line(tiny_gguf, tmp_path):
    newer = write_by_hand(tmp_path / "newer", tiny_gguf, OLD_MANIFEST | {"format": 2, "runtime": "?"})
    with pytest.raises(ff.FormatError) as refused:
        ff.read_layout(newer)
    message = str(refused.value)
    assert message == (
        f"{newer}: file format 2 is newer than this llamapack reads (format 1); use a newer llamapack"
    )
    code, output = run("inspect", str(newer))
    assert code == 1 and output.strip().splitlines() == [f"Error: {message}"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "format"}, "manifest.json has no format version"),
        (lambda m: m | {"format": "1"}, "manifest.json's format is not an integer"),
        (lambda m: m | {"format": 0}, "file format 0 is unknown"),
        (lambda m: {k: v for k, v in m.items() if k != "model"}, "manifest.json has no model"),
        (lambda m: m | {"model": [1]}, "manifest.json's model is not a JSON object"),
        (lambda m: m | {"model": {k: v for k, v in m["model"].items() if k != "sha256"}},
         "manifest.json has no model.sha256"),
        (lambda m: m | {"model": m["model"] | {"size": "1"}}, "manifest.json's model.size is not an integer"),
        (lambda m: m | {"model": m["model"] | {"size": True}}, "manifest.json's model.size is not an int"),
        (lambda m: m | {"model": m["model"] | {"name": 3}}, "manifest.json's model.name is not a string"),
        (lambda m: m | {"runtime": m["runtime"] | {"llama_cpp": {"version": "1"}}},
         "manifest.json has no runtime.llama_cpp.commit"),
        (lambda m: m | {"source": {"type": "ftp"}}, "manifest.json's source.type 'ftp' is not local"),
        (lambda m: m | {"source": {"type": "zip", "archive": "a.zip"}}, "manifest.json has no source.member"),
        (lambda m: m | {"chat_template": {"source": "jinja", "name": "x"}},
         "manifest.json has no chat_template.text"),
        (lambda m: m | {"chat_template": {"source": "url", "name": "x"}},
         "manifest.json's chat_template.source 'url' is not gguf, builtin or jinja"),
        (lambda m: m | {"defaults": {"args": "--nobrowser"}},
         "manifest.json's defaults.args is not a list of strings"),
        (lambda m: m | {"ui_mode": "chat"}, "manifest.json's ui_mode is not a JSON object"),
        (lambda m: m | {"ui_mode": {"reason": "x"}}, "manifest.json has no ui_mode.mode"),
        (lambda m: m | {"ui_mode": {"mode": "notebook"}},
         "manifest.json's ui_mode.mode 'notebook' is not chat or completion"),
        (lambda m: [m], "manifest.json's top level is not a JSON object"),
        (lambda m: m | {"gpu_runtime": {"backend": "cuda", "libraries": []}},
         "manifest.json's gpu_runtime.libraries is not a non-empty list"),
        (lambda m: m | {"gpu_runtime": {"backend": "cuda", "libraries": [{"file": "a"}]}},
         "manifest.json has no gpu_runtime.libraries\\[\\].member"),
        (lambda m: m | {"gpu_runtime": {"libraries": [{}]}}, "manifest.json has no gpu_runtime.backend"),
    ],
)  # fmt: skip
def test_a_damaged_manifest_is_a_format_error(damage, message):
    with pytest.raises(ff.FormatError, match="^" + message.replace("(", r"\(")):
        ff.Manifest.from_json(damage(OLD_MANIFEST))


def test_a_manifest_that_is_not_json_is_a_format_error(tiny_gguf, tmp_path):
    with pytest.raises(ff.FormatError, match="manifest.json is not JSON"):
        ff.Manifest.decode(b"\xff{")
    with pytest.raises(ff.FormatError, match="manifest.json is not JSON"):
        ff.Manifest.decode(b'{"format": 1,')


def test_a_damaged_manifest_in_a_file_names_the_file(tiny_gguf, tmp_path):
    damaged = OLD_MANIFEST | {
        "model": {k: v for k, v in OLD_MANIFEST["model"].items() if k != "architecture"}
    }
    path = write_by_hand(tmp_path / "damaged", tiny_gguf, damaged)
    with pytest.raises(ff.FormatError, match=f"^{path}: manifest.json has no model.architecture$"):
        ff.read_layout(path)
    code, output = run("verify", str(path))
    assert code == 1 and "has no model.architecture" in output and "Traceback" not in output


def test_unknown_keys_are_ignored():
    """A later llamapack may add fields without a new format version."""
    manifest = ff.Manifest.from_json(OLD_MANIFEST | {"signature": "..."})
    assert manifest == ff.Manifest.from_json(OLD_MANIFEST)


def test_one_header_parser_serves_stubs_and_targets():
    from tests.support.fakes import macho_stub, pe_stub

    assert ff.read_executable_header(elf_stub(machine=0xB7)) == ff.ExecutableHeader("elf", 0xB7)
    assert ff.read_executable_header(pe_stub()) == ff.ExecutableHeader("pe", 0x8664)
    assert ff.read_executable_header(pe_stub(signed=True)).signed
    assert ff.read_executable_header(macho_stub()) == ff.ExecutableHeader("macho", 0x0100000C)
    with pytest.raises(ff.StubError, match="cut short"):
        ff.read_executable_header(b"\x7fELF")
