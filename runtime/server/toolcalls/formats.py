"""Which tool-call format and which reasoning tags a chat template's model uses.

Detection reads the Jinja source for each family's markers, in the order the
llama.cpp of the old per-family handlers tested them (common/chat.cpp before the
differential autoparser, which this llama.cpp replaced them with: that one renders
the template to find the markers, a Jinja runtime of its own). A template that
names no tools at all gets the generic JSON format; one that renders tools in a
format of its own that is not among these gets none (its calls stay in the text).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class ToolFormat(str, enum.Enum):
    CONTENT_ONLY = "content-only"  # calls are not read out of the reply
    GENERIC = "generic"  # {"tool_call": ...} / {"tool_calls": [...]} / {"response": ...}, by grammar
    HERMES = (
        "hermes"  # <tool_call>{"name": .., "arguments": ..}</tool_call>: Hermes 2 Pro, Qwen 2.5, QwQ, Qwen3
    )
    LLAMA_3 = "llama-3"  # {"name": .., "parameters": ..} opening the reply, or <|python_tag|>code
    MISTRAL_NEMO = "mistral-nemo"  # [TOOL_CALLS][{"name": .., "arguments": .., "id": ..}]
    MISTRAL = "mistral"  # [TOOL_CALLS]name[CALL_ID]id[ARGS]{..}: Small 3.2, Devstral, Magistral
    FUNCTIONARY_V3_1 = "functionary-v3.1"  # <function=name>{..}</function>
    FIREFUNCTION_V2 = "firefunction-v2"  # functools[{"name": .., "arguments": ..}]
    DEEPSEEK_R1 = "deepseek-r1"  # <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name ...


@dataclass(frozen=True)
class ReasoningTags:
    start: str
    end: str


THINK = ReasoningTags("<think>", "</think>")
_REASONING_TAGS = (
    ReasoningTags("[THINK]", "[/THINK]"),  # Magistral, Ministral 3
    ReasoningTags("<|START_THINKING|>", "<|END_THINKING|>"),  # Command R7B
    ReasoningTags("<seed:think>", "</seed:think>"),  # Seed-OSS
    THINK,
)

# Families whose calls are XML or markup of their own: rendered by their template, not read back.
_OWN_MARKUP = ("<function=", "<parameter=", "<arg_key>", "<invoke", "<tool_calls>", "<|tool_call_begin|>")
_TOOLS_VARIABLE = re.compile(r"\btools\b")


def detect_format(template_source: str | None) -> ToolFormat:
    """The tool-call format of the model whose chat template this is (None: a
    llama.cpp built-in template by name, which knows no tools)."""
    if template_source is None:
        return ToolFormat.GENERIC
    src = template_source
    if "[TOOL_CALLS]" in src:
        return ToolFormat.MISTRAL if "[ARGS]" in src else ToolFormat.MISTRAL_NEMO
    if "<｜tool▁calls▁begin｜>" in src:
        return ToolFormat.DEEPSEEK_R1
    if "<|start_header_id|>" in src and "<function=" in src:
        return ToolFormat.FUNCTIONARY_V3_1
    if " functools[" in src:
        return ToolFormat.FIREFUNCTION_V2
    if "<tool_call>" in src and not any(marker in src for marker in _OWN_MARKUP):
        return ToolFormat.HERMES
    if "<|start_header_id|>ipython<|end_header_id|>" in src or (
        "<|start_header_id|>" in src and '"parameters": ' in src
    ):
        return ToolFormat.LLAMA_3
    if describes_tools(src):
        return ToolFormat.CONTENT_ONLY
    return ToolFormat.GENERIC


def detect_reasoning(template_source: str | None) -> ReasoningTags | None:
    """The tags around the model's reasoning, when the template knows of any: llama.cpp
    splits reasoning out only for such templates."""
    if template_source is None:
        return None
    for tags in _REASONING_TAGS:
        if tags.start in template_source or tags.end in template_source:
            return tags
    return None


def describes_tools(template_source: str | None) -> bool:
    """Whether the template renders the `tools` it is given (else the generic format
    describes them in a system message)."""
    return template_source is not None and bool(_TOOLS_VARIABLE.search(template_source))


def supports_parallel_calls(template_source: str | None) -> bool:
    """llama-server's default for `parallel_tool_calls`: whether the template can
    render two calls in one assistant message."""
    fmt = detect_format(template_source)
    if fmt in (ToolFormat.GENERIC, ToolFormat.CONTENT_ONLY, ToolFormat.LLAMA_3):
        return False
    return "only supports single tool-calls" not in (template_source or "")


def opened_reasoning(prompt: str, tags: ReasoningTags | None) -> str:
    """The reasoning start the prompt itself ends with (DeepSeek R1, QwQ: "<think>\\n"),
    which the reply continues: it is parsed as if the model had written it."""
    if tags is None:
        return ""
    stripped = prompt.rstrip()
    if not stripped.endswith(tags.start):
        return ""
    return prompt[len(stripped) - len(tags.start) :]
