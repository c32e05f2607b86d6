"""Turn chat messages into a prompt, as llama-server does.

The template is the one the manifest names (a ChatTemplateChoice):

* the GGUF's own Jinja template (`tokenizer.chat_template`), or llama.cpp's ChatML
  when the GGUF has none;
* a Jinja text given by the user (`--chat-template-file`, or `--chat-template` with
  a text that is not one of llama.cpp's built-in names), kept in the manifest;
* one of llama.cpp's built-in templates by name (`gemma`, `llama3`, ...).

With Jinja on (llama-server's default, `--jinja`), a Jinja template is rendered as
llama-server renders it (chat_jinja.py), with the messages it would hand over
(chat_messages.py). With Jinja off (`--no-jinja`), llama-server gives the template's
text to llama_chat_apply_template, which recognises the common formats by their
markers; so does this. A built-in name is always applied by llama.cpp itself:
llama-server under `--jinja` would render the name as literal Jinja text, except
"chatml", which it replaces with an equivalent Jinja template, as here (so chatml
accepts tools).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from llamapack.runtime.fileformat import ChatTemplateChoice
from llamapack.runtime.llama.chat_jinja import (
    ChatTemplateError,
    JinjaTemplate,
    TemplateCaps,
    detect_caps,
    preserve_reasoning_variables,
    reasoning_effort_variables,
)
from llamapack.runtime.llama.chat_messages import (
    ChatMessage,
    fit_content,
    join_parts,
    parse_messages,
    parse_tools,
    specialized_family,
    template_messages,
)
from llamapack.runtime.llama.chat_reasoning import (
    Continued,
    ReasoningTags,
    common_prefix_length,
    continuation,
    reasoning_tags,
)

__all__ = [
    "CHATML_TEMPLATE",
    "ChatFormatter",
    "ChatTemplateError",
    "Prompt",
    "TemplateModel",
    "builtin_template_names",
    "continues_final_message",
    "user_template_choice",
]

# llama.cpp's CHATML_TEMPLATE_SRC (common/chat.cpp): for GGUFs without a template, and "chatml".
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n"
    "{%- endif -%}"
)

# llama-server's own default for `--chat-template-kwargs` (common/arg.cpp): keep the
# reasoning of earlier turns, for templates that can.
SERVER_TEMPLATE_KWARGS: Mapping[str, Any] = {"preserve_reasoning": True}

# A first render for templates given by the user, as llama-server checks them at start.
VERIFY_MESSAGES = [{"role": "user", "content": "test"}]

# Fixes llama.cpp applies to two families' sources before compiling them
# (common_chat_templates_init): a GPT-OSS check that rejects its own output, and a
# Mistral check that rejects an assistant message with no content and no tool calls.
SOURCE_PATCHES = (
    (
        ("<|channel|>", "in message.content or"),
        '{%- if "<|channel|>analysis<|message|>" in message.content or '
        '"<|channel|>final<|message|>" in message.content %}',
    ),
    (
        ("[TOOL_CALLS]", "if (message['content'] is none or"),
        "{%- if (message['content'] is none or message['content'] == '' or "
        "message['content']|length == 0) and (message['tool_calls'] is not defined or "
        "message['tool_calls'] is none or message['tool_calls']|length == 0) %}",
    ),
)


class TemplateModel(Protocol):
    """What the formatter reads from the model (runtime/llama/model.py's Model)."""

    @property
    def bos_text(self) -> str: ...

    @property
    def eos_text(self) -> str: ...

    @property
    def add_bos(self) -> bool: ...

    def chat_template(self) -> str | None: ...


@dataclass(frozen=True)
class Prompt:
    text: str
    # llama-server tokenizes a chat prompt with special tokens added: BOS comes from the
    # vocabulary, once, as the template's own BOS is taken off the text when it adds one.
    add_special: bool = True


def builtin_template_names() -> list[str]:
    import llama_cpp.llama_cpp as llama

    count = llama.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    llama.llama_chat_builtin_templates(names, count)
    return sorted(name.decode() for name in names if name)


def continues_final_message(messages: Sequence[Mapping[str, Any]]) -> bool:
    """llama-server's --prefill-assistant rule (on by default): a request that ends
    with an assistant message has the model continue it."""
    roles = [message.get("role") if isinstance(message, Mapping) else None for message in messages[-2:]]
    if not roles or roles[-1] != "assistant":
        return False
    if roles == ["assistant", "assistant"]:
        raise ChatTemplateError("Cannot have 2 or more assistant messages at the end of the list.")
    return True


def user_template_choice(value: str, reason: str | None = None) -> ChatTemplateChoice:
    """`--chat-template VALUE`: one of llama.cpp's built-in names, else a Jinja text."""
    if value in builtin_template_names():
        return ChatTemplateChoice("builtin", value, reason)
    return ChatTemplateChoice("jinja", "--chat-template", reason, text=value)


class ChatFormatter:
    """Formats chat requests with one template, as llama-server would.

    `jinja=False` is llama-server's `--no-jinja`; `template_kwargs` its
    `--chat-template-kwargs` (extra template variables for every request, under
    the request's own)."""

    def __init__(
        self,
        model: TemplateModel,
        choice: ChatTemplateChoice,
        *,
        jinja: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = choice.name
        self.source = choice.source
        self._bos = model.bos_text
        self._eos = model.eos_text
        self._add_bos = model.add_bos
        self._server_kwargs = {**SERVER_TEMPLATE_KWARGS, **(template_kwargs or {})}
        text = _template_text(model, choice)
        self.source_text: str | None = _patched(text) if text is not None else None
        self._jinja: JinjaTemplate | None = None
        self._builtin: str | None = None  # what llama_chat_apply_template gets: a name or a text
        self.reasoning = ReasoningTags()
        if jinja and self.source_text is not None:
            self._jinja = JinjaTemplate(self.source_text)
            self.reasoning = reasoning_tags(
                self.source_text, self._probe, self._jinja.caps.supports_tool_calls
            )
        else:
            self._builtin = self.source_text if self.source_text is not None else choice.name
        if choice.source != "gguf":
            # As llama-server checks --chat-template at start; a GGUF's own fails per request.
            self._verify()
        self.caps: TemplateCaps = self._jinja.caps if self._jinja else detect_caps(self._builtin or "")

    @property
    def label(self) -> str:
        return self.name

    @property
    def uses_jinja(self) -> bool:
        return self._jinja is not None

    def format(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
        continue_final_message: bool = False,
    ) -> Prompt:
        """The prompt for a chat request; ChatTemplateError (one line) when the
        request or the template refuses.

        `continue_final_message` (vLLM's name, and llama-server's prefill of a last
        assistant message: see continues_final_message) has the model go on with the
        last message instead of starting a new turn."""
        parsed = parse_messages(messages)
        tool_list = parse_tools(tools)
        if continue_final_message:
            if add_generation_prompt:
                raise ChatTemplateError(
                    "Cannot set both add_generation_prompt and continue_final_message to true."
                )
            if parsed and parsed[-1].tool_calls:
                raise ChatTemplateError("Cannot continue an assistant message that contains tool calls.")
        if self._jinja is None:
            if tool_list:
                raise ChatTemplateError(
                    "tools param requires --jinja flag"
                    if self.source_text is not None
                    else f"tools need a Jinja chat template; {self.name!r} is a llama.cpp built-in one"
                )
            # llama.cpp's built-in templates format the last message like any other.
            return Prompt(self._apply_builtin(parsed, add_generation_prompt))
        if continue_final_message and parsed:
            return Prompt(self._continuation(self._jinja, parsed, tool_list, template_kwargs))
        return Prompt(self._render(self._jinja, parsed, tool_list, add_generation_prompt, template_kwargs))

    # -- Jinja

    def _render(
        self,
        template: JinjaTemplate,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        add_generation_prompt: bool,
        request_kwargs: Mapping[str, Any] | None,
    ) -> str:
        kwargs = {**self._server_kwargs, **(request_kwargs or {})}
        if isinstance(kwargs.get("enable_thinking"), str):
            raise ChatTemplateError('invalid type for "enable_thinking" (expected boolean, got string)')
        context: dict[str, Any] = {}
        # llama-server sets these on the context first; the variables below win.
        if isinstance(kwargs.get("preserve_reasoning"), bool):
            context.update(preserve_reasoning_variables(kwargs["preserve_reasoning"]))
        if isinstance(kwargs.get("reasoning_effort"), str) and kwargs["reasoning_effort"]:
            context.update(reasoning_effort_variables(kwargs["reasoning_effort"]))
        context.update(
            messages=template_messages(messages, template.source, template.caps),
            bos_token=self._bos,
            eos_token=self._eos,
            # llama-server's default (--reasoning auto): on when it found the template reasons.
            enable_thinking=self.reasoning.supported,
        )
        if tools:
            context["tools"] = tools  # left undefined without tools, as llama-server does
        context.update(_date_variables(datetime.now()))
        context.update(kwargs)
        if add_generation_prompt:
            context["add_generation_prompt"] = True
        text = template.render(context)
        if not add_generation_prompt and specialized_family(template.source) == "gpt-oss":
            # A finished GPT-OSS turn ends with <|end|> in a prompt, <|return|> only in output.
            head, found, tail = text.rpartition("<|return|>")
            text = head + "<|end|>" + tail if found else text
        if self._add_bos and self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]
        return text

    def _continuation(
        self,
        template: JinjaTemplate,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        request_kwargs: Mapping[str, Any] | None,
    ) -> str:
        """The conversation before the last message, the generation prompt, and the last
        message's text, as llama.cpp builds a continuation."""
        history, last = messages[:-1], messages[-1]
        prompt = self._render(template, history, tools, False, request_kwargs)
        with_turn = self._render(template, history, tools, True, request_kwargs)
        generation = with_turn[common_prefix_length(prompt, with_turn) :]
        continued = Continued(
            reasoning=last.reasoning_content,
            content=join_parts([last.content, *last.parts], separator="\n\n"),
            reasoning_only=bool(last.reasoning_content) and not last.content and not last.parts,
        )
        return prompt + continuation(template.source, self.reasoning, prompt, generation, continued)

    def _probe(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        enable_thinking: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str | None:
        """A render for llama.cpp's template analysis: the messages as given, with
        only their content fitted to the template; None when the template fails."""
        assert self._jinja is not None
        context: dict[str, Any] = {
            "messages": [fit_content(dict(message), self._jinja.caps) for message in messages],
            "bos_token": self._bos,
            "eos_token": self._eos,
            "enable_thinking": enable_thinking,
        }
        if tools:
            context["tools"] = tools
        if add_generation_prompt:
            context["add_generation_prompt"] = True
        try:
            return self._jinja.render(context)
        except ChatTemplateError:
            return None

    def _verify(self) -> None:
        try:
            if self._jinja is not None:
                self._render(self._jinja, parse_messages(VERIFY_MESSAGES), [], True, None)
            else:
                self._apply_builtin(parse_messages(VERIFY_MESSAGES), True)
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"the chat template {self.name!r} is not supported: {exc}") from None

    # -- llama.cpp's built-in templates

    def _apply_builtin(self, messages: list[ChatMessage], add_generation_prompt: bool) -> str:
        import llama_cpp.llama_cpp as llama

        assert self._builtin is not None
        encoded = [(m.role.encode(), m.text().encode()) for m in messages]
        chat = (llama.llama_chat_message * len(encoded))(
            *[llama.llama_chat_message(role, content) for role, content in encoded]
        )
        template = self._builtin.encode()
        size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
        while True:
            buffer = ctypes.create_string_buffer(size)
            length = llama.llama_chat_apply_template(
                template, chat, len(encoded), add_generation_prompt, buffer, size
            )
            if length < 0:
                raise ChatTemplateError("this custom template is not supported, try using --jinja")
            if length <= size:
                return buffer.raw[:length].decode("utf-8", errors="replace")
            size = length


def _template_text(model: TemplateModel, choice: ChatTemplateChoice) -> str | None:
    """The Jinja source behind a choice; None for a built-in applied by name."""
    if choice.source == "jinja":
        return choice.text
    if choice.source == "gguf":
        text = model.chat_template()
        return text if text and text != "chatml" else CHATML_TEMPLATE
    return CHATML_TEMPLATE if choice.name == "chatml" else None


def _patched(source: str) -> str:
    for markers, condition in SOURCE_PATCHES:
        if all(marker in source for marker in markers):
            source = source.replace(condition, "{%- if false %}")
    return source


def _date_variables(now: datetime) -> dict[str, str]:
    """Today's date under the names some templates read it (common_chat_extra_context)."""
    return {"datetime": now.strftime("%b %d %Y"), "date_string": now.strftime("%d %b %Y")}
