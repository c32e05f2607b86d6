"""Which mode the page opens in: chat, or text completion for a base model.

The rule, the same at build time (recorded in the manifest as `ui_mode`) and at
run time for a file built before it was recorded, or a GGUF given with -m:

1. a chat template chosen by hand (--chat-template, --chat-template-file): chat;
2. the GGUF carries its own chat template (tokenizer.chat_template): chat;
3. no template, but a name says the model was tuned to chat: the word instruct,
   chat, it, sft, dpo or rlhf in general.finetune, general.name,
   general.basename or the GGUF's file name ("gemma-3-1b-it.gguf"): chat, with
   llama.cpp's built-in template for the architecture;
4. otherwise (no template, no such word: a base model): completion.

`--ui-mode chat|completion` at run time overrides the rule and the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from llamapack.runtime.fileformat.manifest import ChatTemplateChoice, UiMode

if TYPE_CHECKING:
    from llamapack.runtime.backend import Backend
    from llamapack.runtime.server.common import ServerConfig

# GGUF metadata whose words say what kind of model it is, checked in this order.
NAME_KEYS = ("general.finetune", "general.name", "general.basename")
CHAT_WORDS = frozenset({"instruct", "chat", "it", "sft", "dpo", "rlhf"})


def template_was_chosen(choice: ChatTemplateChoice | None) -> bool:
    """A template given by hand, as opposed to the GGUF's own or one guessed from
    the architecture: a Jinja text, or a built-in named with --chat-template."""
    if choice is None:
        return False
    by_hand = (choice.reason or "").startswith("chosen")  # "chosen with --chat-template"
    return choice.source == "jinja" or (choice.source == "builtin" and by_hand)


def decide_ui_mode(
    *, chosen: ChatTemplateChoice | None, own_template: bool, names: Iterable[str | None]
) -> UiMode:
    """The rule above: `chosen` is the chat template choice (it counts when made by
    hand, see `template_was_chosen`), `names` the model's names, file name last."""
    if chosen is not None and template_was_chosen(chosen):
        return UiMode("chat", f"the chat template was {chosen.reason or 'chosen by hand'}")
    if own_template:
        return UiMode("chat", "the GGUF has its own chat template")
    for name in names:
        words = set(re.split(r"[^a-z0-9]+", name.lower())) if name else set()
        word = next((w for w in sorted(CHAT_WORDS) if w in words), None)
        if word:
            return UiMode("chat", f"the GGUF has no chat template, but its name {name!r} says {word!r}")
    reason = "the GGUF has no chat template and no name says instruct or chat: a base model"
    return UiMode("completion", reason)


def page_mode(config: ServerConfig, backend: Backend | None) -> UiMode:
    """The mode the page opens in: --ui-mode, else the manifest's, else the rule,
    applied to the loaded model (or, while it is not loaded, to the manifest)."""
    if config.ui_mode is not None:
        return UiMode(config.ui_mode, "chosen with --ui-mode")
    manifest = config.manifest
    if manifest is not None and manifest.ui_mode is not None:
        return manifest.ui_mode
    choice = config.chat_template or (manifest.chat_template if manifest else None)
    file_name = manifest.model.file if manifest else config.model_path.replace("\\", "/").rsplit("/", 1)[-1]
    if backend is not None:
        own = backend.model.chat_template() is not None
        names = [*(backend.model.meta(key) for key in NAME_KEYS), file_name]
    else:  # asleep before anyone asked: the manifest says whether the GGUF had one
        own = choice is None or choice.source == "gguf"
        names = [manifest.model.name if manifest else None, file_name]
    return decide_ui_mode(chosen=choice, own_template=own, names=names)
