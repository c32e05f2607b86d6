"""Choose the chat template a built file will use, and say why."""

from __future__ import annotations

from llamapack.runtime.fileformat import ChatTemplateChoice

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


def choose_chat_template(header: GGUFHeader, override: str | None) -> ChatTemplateChoice:
    """The manifest's `chat_template` entry: where the template comes from and its name."""
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
