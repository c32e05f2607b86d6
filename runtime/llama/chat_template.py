"""Turn chat messages into a prompt with the template the manifest names.

Two kinds of template:

* a Jinja template from the GGUF (`tokenizer.chat_template`), rendered in a
  sandbox the way Hugging Face's tokenizers do;
* one of llama.cpp's built-in templates by name (`gemma`, `chatml`, ...),
  applied by `llama_chat_apply_template`, for GGUFs that carry none.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama

from llamapack.runtime.fileformat import ChatTemplateChoice
from llamapack.runtime.llama.model import Model


class ChatTemplateError(ValueError):
    """The messages cannot be formatted with this template."""


def message_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; keep the text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                raise ChatTemplateError("only text content parts are supported")
        return "".join(texts)
    raise ChatTemplateError("message content must be a string or a list of text parts")


def builtin_template_names() -> list[str]:
    count = llama.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    llama.llama_chat_builtin_templates(names, count)
    return sorted(name.decode() for name in names if name)


@dataclass(frozen=True)
class Prompt:
    text: str
    add_special: bool  # whether tokenizing must add BOS itself


class ChatFormatter:
    def __init__(self, model: Model, choice: ChatTemplateChoice):
        self.model = model
        self.name = choice.name
        self.source = choice.source
        self._jinja = None
        if self.source == "gguf":
            template = model.chat_template()
            if not template:
                raise ChatTemplateError("the manifest names the GGUF's chat template, but it has none")
            self._jinja = _compile_jinja(template)
        elif self.name not in builtin_template_names():
            raise ChatTemplateError(f"unknown built-in chat template {self.name!r}")

    @property
    def label(self) -> str:
        return "gguf" if self._jinja is not None else self.name

    def format(self, messages: Sequence[dict[str, Any]]) -> Prompt:
        cleaned = [
            {"role": str(m.get("role", "")), "content": message_text(m.get("content"))} for m in messages
        ]
        if self._jinja is not None:
            text = self._render_jinja(cleaned)
        else:
            text = self._apply_builtin(cleaned)
        bos = self.model.bos_text
        # A template that writes BOS itself must not get a second one.
        return Prompt(text=text, add_special=not (bos and text.startswith(bos)))

    def _render_jinja(self, messages: list[dict[str, str]]) -> str:
        import jinja2

        assert self._jinja is not None
        try:
            text: str = self._jinja.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.model.bos_text,
                eos_token=self.model.eos_text,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template rejected the messages: {exc}") from None
        return text

    def _apply_builtin(self, messages: list[dict[str, str]]) -> str:
        encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
        chat = (llama.llama_chat_message * len(encoded))(
            *[llama.llama_chat_message(role, content) for role, content in encoded]
        )
        size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
        while True:
            buffer = ctypes.create_string_buffer(size)
            length = llama.llama_chat_apply_template(
                self.name.encode(), chat, len(encoded), True, buffer, size
            )
            if length < 0:
                raise ChatTemplateError(f"llama.cpp's {self.name!r} template rejected the messages")
            if length <= size:
                return buffer.raw[:length].decode("utf-8", errors="replace")
            size = length


def _compile_jinja(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    try:
        return environment.from_string(template)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the GGUF's chat template does not compile: {exc}") from None
