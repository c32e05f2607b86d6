"""Which mode a built file's page opens in: chat, or completion for a base model.
The rule (runtime/server/ui_mode.py) decided at build time and kept in the manifest."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llamapack.builder.chat_template import choose_chat_template, choose_ui_mode
from llamapack.builder.cli import cli
from llamapack.builder.gguf_header import GGUFHeader
from llamapack.runtime import fileformat as ff
from llamapack.runtime.server.ui_mode import decide_ui_mode, template_was_chosen
from tests.support.fakes import write_gguf

TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"
BASE_REASON = "the GGUF has no chat template and no name says instruct or chat: a base model"


def header(architecture: str = "gemma3", chat_template: str | None = None, **general: Any) -> GGUFHeader:
    metadata: dict[str, Any] = {"general.architecture": architecture}
    metadata |= {f"general.{key}": value for key, value in general.items()}
    if chat_template is not None:
        metadata["tokenizer.chat_template"] = chat_template
    return GGUFHeader(version=3, metadata=metadata, tensors=[], data_offset=0, file_size=0)


def mode_of(gguf: GGUFHeader, file_name: str = "model.gguf", override: str | None = None,
            template: str | None = None) -> ff.UiMode:  # fmt: skip
    return choose_ui_mode(gguf, choose_chat_template(gguf, template), file_name, override)


def test_the_gemma_base_model_opens_in_completion():
    # What the test model's GGUF says: no template, no word of chat in any name.
    gemma = header(name="Gemma 3 270m", basename="gemma-3", size_label="270M")
    assert mode_of(gemma, "gemma-3-270m-q4_k_m.gguf") == ff.UiMode("completion", BASE_REASON)


def test_a_ggufs_own_template_opens_in_chat():
    assert mode_of(header(chat_template=TEMPLATE, name="Qwen2.5 7B")) == ff.UiMode(
        "chat", "the GGUF has its own chat template"
    )


def test_a_template_chosen_at_build_time_opens_in_chat():
    assert mode_of(header(name="Gemma 3 270m"), template="gemma") == ff.UiMode(
        "chat", "the chat template was chosen with --chat-template"
    )
    jinja = ff.ChatTemplateChoice("jinja", "t.jinja", "chosen with --chat-template-file", text=TEMPLATE)
    assert decide_ui_mode(chosen=jinja, own_template=False, names=[]).mode == "chat"


@pytest.mark.parametrize(
    ("general", "file_name", "word"),
    [
        ({"finetune": "it"}, "gemma-3-1b.gguf", "it"),
        ({"name": "Gemma 3 1b It"}, "g.gguf", "it"),
        ({"name": "Qwen2.5 7B Instruct"}, "q.gguf", "instruct"),
        ({"basename": "llama-2-chat"}, "l.gguf", "chat"),
        ({}, "gemma-3-270m-it-Q4_K_M.gguf", "it"),
        ({}, "tulu-7b-DPO.gguf", "dpo"),
    ],
)  # fmt: skip
def test_no_template_but_a_chat_name_opens_in_chat(general, file_name, word):
    mode = mode_of(header(**general), file_name)
    assert mode.mode == "chat" and mode.reason is not None
    assert mode.reason.startswith("the GGUF has no chat template, but its name")
    assert mode.reason.endswith(f"says {word!r}")


@pytest.mark.parametrize(
    ("general", "file_name"),
    [
        ({"name": "Gemma 3 1b Pt"}, "gemma-3-1b-pt.gguf"),
        ({"name": "Llama 3.1 8B", "finetune": "base"}, "llama.gguf"),
        ({"name": "GPT2 small"}, "gpt2.gguf"),  # "it" only as a whole word, never inside one
        ({"name": "Mistral 7B"}, "mistral-7b-instruction-free.gguf"),
        ({}, "kit-chatter-edit.gguf"),
    ],
)  # fmt: skip
def test_no_template_and_no_chat_word_opens_in_completion(general, file_name):
    assert mode_of(header(**general), file_name) == ff.UiMode("completion", BASE_REASON)


def test_ui_mode_chosen_at_build_time_wins():
    assert mode_of(header(chat_template=TEMPLATE), override="completion") == ff.UiMode(
        "completion", "chosen with --ui-mode"
    )
    assert mode_of(header(), override="chat") == ff.UiMode("chat", "chosen with --ui-mode")


def test_only_a_template_given_by_hand_counts_as_chosen():
    assert template_was_chosen(ff.ChatTemplateChoice("builtin", "chatml", "chosen with --chat-template"))
    assert not template_was_chosen(choose_chat_template(header("gemma3"), None))  # guessed from gemma3
    assert not template_was_chosen(ff.ChatTemplateChoice("gguf", "gguf", "the GGUF's own template"))
    assert not template_was_chosen(ff.ChatTemplateChoice("builtin", "gemma"))
    assert not template_was_chosen(None)


def build(source: Path, out: Path, stub: Path, *options: str) -> tuple[ff.Manifest, str]:
    result = CliRunner().invoke(cli, ["build", str(source), "-o", str(out), "--runtime", str(stub), *options])
    assert result.exit_code == 0, result.output
    return ff.Manifest.decode(zipfile.ZipFile(out).read("manifest.json")), result.output


def test_the_build_records_the_mode_and_says_it(tmp_path, fake_stub):
    base = write_gguf(tmp_path / "tiny-base.gguf", arch="gemma3")
    manifest, output = build(base, tmp_path / "a", fake_stub)
    assert manifest.ui_mode == ff.UiMode("completion", BASE_REASON)
    assert f"page opens in: completion mode ({BASE_REASON})" in output
    manifest, _ = build(base, tmp_path / "b", fake_stub, "--chat-template", "chatml")
    assert manifest.ui_mode == ff.UiMode("chat", "the chat template was chosen with --chat-template")
    manifest, _ = build(base, tmp_path / "c", fake_stub, "--ui-mode", "chat")
    assert manifest.ui_mode == ff.UiMode("chat", "chosen with --ui-mode")
    chat = write_gguf(tmp_path / "tiny-chat.gguf", chat_template=TEMPLATE)
    manifest, output = build(chat, tmp_path / "d", fake_stub)
    assert manifest.ui_mode == ff.UiMode("chat", "the GGUF has its own chat template")
    code = CliRunner().invoke(cli, ["inspect", str(tmp_path / "d")])
    assert "page opens in: chat mode (the GGUF has its own chat template)" in code.output


def test_the_same_inputs_still_give_the_same_bytes(tmp_path, fake_stub):
    base = write_gguf(tmp_path / "tiny-base.gguf", arch="gemma3")
    build(base, tmp_path / "a", fake_stub)
    build(base, tmp_path / "b", fake_stub)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
