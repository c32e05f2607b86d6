"""Choose the chat template a built file will use, and the mode its page opens in, and say why."""

from __future__ import annotations

from dataclasses import dataclass

from llamapack.runtime.fileformat import ChatTemplateChoice, UiMode
from llamapack.runtime.server.ui_mode import NAME_KEYS, decide_ui_mode

from .errors import UsageError
from .gguf_header import GGUFHeader

# llama.cpp's built-in template for architectures whose GGUFs may lack one.
# Only families with a single chat format are listed; others fall back to chatml.
ARCHITECTURE_TEMPLATES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "phi3": "phi3",
    "command-r": "command-r",
    "deepseek2": "deepseek2",
    "chatglm": "chatglm4",
    "exaone": "exaone3",
    "granite": "granite",
}
FALLBACK_TEMPLATE = "chatml"


@dataclass(frozen=True)
class TemplateFile:
    """A Jinja chat template given with --chat-template-file: its name and its text."""

    name: str  # the file's name, as the manifest records it
    text: str


def choose_chat_template(
    header: GGUFHeader, override: str | None, template_file: TemplateFile | None = None
) -> ChatTemplateChoice:
    """The manifest's `chat_template` entry: where the template comes from and its name.

    `override` is a llama.cpp built-in template's name (--chat-template); a template
    file's text is kept in the manifest, checked first as the runtime will use it."""
    if override and template_file:
        raise UsageError("--chat-template and --chat-template-file cannot be used together")
    if template_file:
        return _checked_file_template(template_file)
    if override:
        # Loads llama.cpp: only when a template is named.
        from llamapack.runtime.llama.chat_template import builtin_template_names

        names = builtin_template_names()
        if override not in names:
            raise UsageError(f"unknown chat template {override!r}; llama.cpp knows: {', '.join(names)}")
        return ChatTemplateChoice("builtin", override, "chosen with --chat-template")
    if header.chat_template:
        return ChatTemplateChoice("gguf", "gguf", "the GGUF's own template")
    arch = header.architecture
    name = ARCHITECTURE_TEMPLATES.get(arch)
    if name:
        reason = f"the GGUF has no template; llama.cpp's built-in one for {arch}"
        return ChatTemplateChoice("builtin", name, reason)
    reason = f"the GGUF has no template and {arch} has no known one; using {FALLBACK_TEMPLATE}"
    return ChatTemplateChoice("builtin", FALLBACK_TEMPLATE, reason)


def choose_ui_mode(
    header: GGUFHeader, chat_template: ChatTemplateChoice, file_name: str, override: str | None = None
) -> UiMode:
    """The manifest's `ui_mode`: chat, or completion for a base model (the rule is
    runtime/server/ui_mode.py's); `override` is --ui-mode."""
    if override:
        return UiMode("chat" if override == "chat" else "completion", "chosen with --ui-mode")
    names = [*(_text(header.metadata.get(key)) for key in NAME_KEYS), file_name]
    return decide_ui_mode(chosen=chat_template, own_template=header.chat_template is not None, names=names)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class _NoTokens:
    """A model stand-in for checking a template: no BOS or EOS text is known at build time."""

    bos_text = ""
    eos_text = ""
    add_bos = False

    def chat_template(self) -> str | None:
        return None


def _checked_file_template(template_file: TemplateFile) -> ChatTemplateChoice:
    from llamapack.runtime.llama.chat_template import ChatFormatter, ChatTemplateError

    if not template_file.text.strip():
        raise UsageError(f"--chat-template-file {template_file.name}: the file is empty")
    choice = ChatTemplateChoice(
        "jinja", template_file.name, "chosen with --chat-template-file", text=template_file.text
    )
    try:
        # Compiles the template and renders one user message, as the runtime does at start.
        ChatFormatter(_NoTokens(), choice)
    except ChatTemplateError as exc:
        raise UsageError(f"--chat-template-file {template_file.name}: {exc}") from None
    return choice
