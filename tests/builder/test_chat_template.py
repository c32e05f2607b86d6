"""Which chat template a build records: the GGUF's own, a built-in by name, or a
template file's text, checked at build time and kept in the manifest."""

from __future__ import annotations

from typing import Any

import pytest

from llamapack.builder.chat_template import TemplateFile, choose_chat_template
from llamapack.builder.errors import UsageError
from llamapack.builder.gguf_header import GGUFHeader
from llamapack.runtime import fileformat as ff

QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def header(architecture: str = "llama", chat_template: str | None = None) -> GGUFHeader:
    metadata: dict[str, Any] = {"general.architecture": architecture}
    if chat_template is not None:
        metadata["tokenizer.chat_template"] = chat_template
    return GGUFHeader(version=3, metadata=metadata, tensors=[], data_offset=0, file_size=0)


def test_a_template_file_is_kept_in_the_manifest_over_the_ggufs_own():
    choice = choose_chat_template(
        header(chat_template="{{ 'own' }}"), None, TemplateFile("qwen.jinja", QWEN_LIKE)
    )
    assert choice == ff.ChatTemplateChoice(
        "jinja", "qwen.jinja", "chosen with --chat-template-file", QWEN_LIKE
    )
    assert ff.ChatTemplateChoice.from_json(choice.to_json()) == choice
    assert choice.to_json() == {
        "source": "jinja",
        "name": "qwen.jinja",
        "reason": "chosen with --chat-template-file",
        "text": QWEN_LIKE,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{% for m in messages %}",
            r"^--chat-template-file bad.jinja: the chat template does not compile: .*line 1",
        ),
        (
            "{{ raise_exception('no system message') }}",
            "^--chat-template-file bad.jinja: .*no system message$",
        ),
        ("  \n", "^--chat-template-file bad.jinja: the file is empty$"),
    ],
)
def test_a_template_file_the_runtime_would_refuse_fails_the_build(text, message):
    with pytest.raises(UsageError, match=message):
        choose_chat_template(header(), None, TemplateFile("bad.jinja", text))


def test_a_template_file_and_a_builtin_name_are_exclusive():
    with pytest.raises(
        UsageError, match="^--chat-template and --chat-template-file cannot be used together$"
    ):
        choose_chat_template(header(), "chatml", TemplateFile("t.jinja", QWEN_LIKE))


def test_without_a_file_the_choice_is_as_before():
    assert choose_chat_template(header(chat_template=QWEN_LIKE), None) == ff.ChatTemplateChoice(
        "gguf", "gguf", "the GGUF's own template"
    )
    assert choose_chat_template(header("gemma3"), None).name == "gemma"
    assert choose_chat_template(header("mystery"), None) == ff.ChatTemplateChoice(
        "builtin", "chatml", "the GGUF has no template and mystery has no known one; using chatml"
    )


def test_a_jinja_choice_needs_its_text_and_only_it_has_one():
    with pytest.raises(ValueError, match="text goes with source 'jinja'"):
        ff.ChatTemplateChoice("jinja", "t.jinja")
    with pytest.raises(ValueError, match="text goes with source 'jinja'"):
        ff.ChatTemplateChoice("gguf", "gguf", text="{{ 'x' }}")
    with pytest.raises(ff.FormatError, match="^manifest.json has no chat_template.text$"):
        ff.ChatTemplateChoice.from_json({"source": "jinja", "name": "t.jinja"})
    with pytest.raises(ff.FormatError, match="is not gguf, builtin or jinja$"):
        ff.ChatTemplateChoice.from_json({"source": "url", "name": "x"})
    # What every earlier llamapack wrote still reads, and writes back the same.
    old = {"source": "builtin", "name": "llama2", "reason": "chosen with --chat-template"}
    assert ff.ChatTemplateChoice.from_json(old).to_json() == old
