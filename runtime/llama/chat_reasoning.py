"""Whether a chat template reasons, with which tags, and how a prefilled assistant
message continues, as llama.cpp finds out.

llama-server turns `enable_thinking` on by default only for templates it finds
reasoning in (common_chat_templates_support_enable_thinking), and continues a
prefilled assistant message inside or after the reasoning tags it found. Its
specialized handlers (common/parsers/) say so for their families; for the others
its automatic analysis (common/chat-diff-analyzer.cpp) renders the template with
and without reasoning and compares the outputs. This is that analysis's reasoning
part: the comparison (calculate_diff_split), what a marker is (`<...>` or `[...]`),
and the patches llama.cpp applies to a few families.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llamapack.runtime.llama.chat_messages import specialized_family

USER_MESSAGE = {"role": "user", "content": "U_USER_MSG Hello END_U"}
ASSISTANT_TEXT = "A_ASST_MSG I can help END_A"
THINKING = "REASON_PART I am thinking END_R"
ANCHOR_LENGTH = 64

_ARGUMENT_SCHEMA = {
    "type": "object",
    "properties": {
        "AA_ARG_FST_AA": {"type": "string", "description": "First argument"},
        "BB_ARG_SND_BB": {"type": "string", "description": "Second argument"},
    },
    "required": [],
}
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": _ARGUMENT_SCHEMA},
    }
    for name, description in (
        ("FFF_FIRST_FUN_F", "Test function foo"),
        ("SSS_SECOND_FUN_S", "Test function bar"),
    )
]

# Render(messages, add_generation_prompt, enable_thinking, tools): the output, or None when it fails.
Render = Callable[[list[dict[str, Any]], bool, bool, "list[dict[str, Any]] | None"], "str | None"]


@dataclass(frozen=True)
class ReasoningTags:
    supported: bool = False
    start: str = ""  # e.g. "<think>"; may be empty when only the end tag shows
    end: str = ""


# What each specialized handler declares (supports_thinking, thinking start and end).
FAMILY_REASONING = {
    "cohere2-moe": ReasoningTags(True, "<|START_THINKING|>", "<|END_THINKING|>"),
    "deepseek-v3.2": ReasoningTags(True, "<think>", "</think>"),
    "gemma4": ReasoningTags(True, "<|channel>thought"),
    "gigachat-v3": ReasoningTags(False),
    "gpt-oss": ReasoningTags(True, "<|channel|>analysis<|message|>"),
    "kimi-k2": ReasoningTags(True, "<think>", "</think>"),
    "kimi-k3": ReasoningTags(True, "<think>", "</think>"),
    "lfm2": ReasoningTags(True, "<think>", "</think>"),
    "lfm2.5": ReasoningTags(True, "<think>", "</think>"),
    "ling-3": ReasoningTags(True, "<think>", "</think>"),
    "minicpm5": ReasoningTags(True, "<think>", "</think>"),
    "minimax-m3": ReasoningTags(True, "<mm:think>"),
    "ministral-3": ReasoningTags(True, "[THINK]", "[/THINK]"),
    "muse-glimmer": ReasoningTags(True),
    "functionary-v3.2": ReasoningTags(False),
}


def reasoning_tags(source: str, render: Render, supports_tool_calls: bool) -> ReasoningTags:
    family = specialized_family(source)
    if family == "qwen3-coder":
        return ReasoningTags(True, "<think>", "</think>") if "<think>" in source else ReasoningTags(False)
    if family is not None:
        return FAMILY_REASONING[family]
    tags = _analyze(render, supports_tool_calls)
    return _patched(source, tags)


# ------------------------------------------------------------ continuing a message

# How llama.cpp's specialized handlers continue an assistant message: what opens
# its reasoning, and what goes between the reasoning and the content.
FAMILY_CONTINUATIONS = {
    "cohere2-moe": (
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|>",
        "<|END_THINKING|><|START_TEXT|>",
    ),
    "gpt-oss": (
        "<|start|>assistant<|channel|>analysis<|message|>",
        "<|end|><|start|>assistant<|channel|>final<|message|>",
    ),
    "kimi-k2": ("<|im_assistant|>assistant<|im_middle|><think>", "</think>"),
    "kimi-k3": (
        '<|open|>message role="assistant"<|sep|><|open|>think<|sep|>',
        "<|close|>think<|sep|><|open|>response<|sep|>",
    ),
    "lfm2": ("<|im_start|>assistant\n<think>", "</think>"),
    "lfm2.5": ("<|im_start|>assistant\n<think>", "</think>"),
    "ling-3": ("<role>ASSISTANT</role>\n<think>", "</think>"),
    "minicpm5": ("<|im_start|>assistant\n<think>\n", "\n</think>\n\n"),
    "ministral-3": ("[THINK]", "[/THINK]"),
    "muse-glimmer": ("<|start|>assistant to=self<|message|>", "<|eom|><|start|>assistant to=user<|message|>"),
}
# Families whose continuation is the content alone, after a fixed opening.
CONTENT_CONTINUATIONS = {
    "functionary-v3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n>>>all\n",
    "gigachat-v3": "assistant<|role_sep|>\n",
}


@dataclass(frozen=True)
class Continued:
    """The message being continued: its reasoning and content, and whether only its
    reasoning goes on (llama.cpp's REASONING continuation: no content yet)."""

    reasoning: str
    content: str
    reasoning_only: bool


def continuation(source: str, tags: ReasoningTags, prompt: str, generation: str, message: Continued) -> str:
    """What follows the prompt (the conversation before the message) so that the
    model continues the message; `generation` is the template's own generation prompt."""
    family = specialized_family(source)
    reasoning, content = message.reasoning, "" if message.reasoning_only else message.content
    close = not message.reasoning_only
    if family in FAMILY_CONTINUATIONS:
        opening, between = FAMILY_CONTINUATIONS[family]
        return opening + reasoning + (between + content if close else "")
    if family in CONTENT_CONTINUATIONS:
        return CONTENT_CONTINUATIONS[family] + message.content
    if family == "deepseek-v3.2":
        if "function_calls" not in source and not reasoning:  # V4 without reasoning
            return "<｜Assistant｜></think>" + content
        return "<｜Assistant｜><think>" + reasoning + ("</think>" + content if close else "")
    if family == "qwen3-coder":
        text = "<|im_start|>assistant\n"
        if "<think>" in source:
            text += "<think>\n" + reasoning + ("\n</think>\n\n" if close else "")
        return text + content
    if family == "minimax-m3":
        return generation + "<mm:think>" + reasoning + ("</mm:think>" + content if close else "")
    if family == "gemma4":
        turn = "<|turn>model\n" if prompt.endswith("<turn|>\n") else ""
        return turn + "<|channel>thought\n" + reasoning + ("<channel|>" + content if close else "")
    if tags.start:
        cut = generation.find(tags.start)
        generation = (generation if cut < 0 else generation[:cut]) + tags.start + reasoning
        if close:
            generation += tags.end
    return generation + content


# ------------------------------------------------------------ the analysis


def _analyze(render: Render, supports_tool_calls: bool) -> ReasoningTags:
    mode, start, end = False, "", ""

    # Reasoning in an earlier assistant turn: between which markers does it show?
    plain = render([USER_MESSAGE, {"role": "assistant", "content": ASSISTANT_TEXT}], False, True, None)
    reasoned = render(
        [USER_MESSAGE, {"role": "assistant", "content": ASSISTANT_TEXT, "reasoning_content": THINKING}],
        False,
        True,
        None,
    )
    if plain is not None and reasoned is not None:
        diff = calculate_diff_split(plain, reasoned)
        if THINKING in diff.right:
            pre, post = _markers_around(reasoned)
            if pre and post:
                mode, start, end = True, pre, post
            elif post:
                mode, end = True, post

    # The generation prompt with thinking off and on: a tag opened or closed at its end?
    off = render([USER_MESSAGE], True, False, None)
    on = render([USER_MESSAGE], True, True, None)
    if off is not None and on is not None:
        diff = calculate_diff_split(off, on)
        left, right = diff.left.strip(), diff.right.strip()
        if not left and diff.right:
            if right and on.endswith(right) and not start:
                start, mode = diff.right, True
        elif not right and diff.left:
            if left and off.endswith(left) and not end:
                segments = _visible(segmentize_markers(off))
                if len(segments) >= 2 and segments[-1].value == left and segments[-2].marker:
                    start = segments[-2].value
                end, mode = diff.left, True
        elif left and right:
            found = _tail_markers(off, on)
            if found is not None:
                start, end, mode = start or found[0], end or found[1], True
    if not mode and not start and end:
        mode = True

    if supports_tool_calls:
        mode, start, end = _reasoning_scope(render, mode, start, end)
    return ReasoningTags(mode, start, end)


def _reasoning_scope(render: Render, mode: bool, start: str, end: str) -> tuple[bool, str, str]:
    """Reasoning shown only beside tool calls (llama.cpp's TOOLS_ONLY): its markers there."""
    call = {
        "id": "call00001",
        "type": "function",
        "function": {
            "name": "FFF_FIRST_FUN_F",
            "arguments": {"AA_ARG_FST_AA": "VVVV", "BB_ARG_SND_BB": "XXXX"},
        },
    }
    with_content = {"role": "assistant", "content": ASSISTANT_TEXT, "reasoning_content": THINKING}
    with_calls = {"role": "assistant", "content": None, "reasoning_content": THINKING, "tool_calls": [call]}
    plain = render([USER_MESSAGE, with_content], False, True, PROBE_TOOLS)
    calling = render([USER_MESSAGE, with_calls], False, True, PROBE_TOOLS)
    if plain is None or calling is None or THINKING in plain or THINKING not in calling:
        return mode, start, end
    pre, post = _markers_around(calling, post_space_first=False)
    if pre and post:
        return True, pre, post
    if post:
        return True, start, post
    return False, start, end


_MARKER = r"(?:<[^>]*>|\[[^\]]*\])"
_SPACE = r"[ \t\r\n]*"


def _markers_around(text: str, post_space_first: bool = True) -> tuple[str, str]:
    """The markers directly before and after the reasoning text (the PEG parses
    `marker space THINKING space marker space`, else `THINKING space (marker space)?`)."""
    post = f"({_SPACE}{_MARKER}{_SPACE})" if post_space_first else f"{_SPACE}({_MARKER}{_SPACE})"
    wrapped = re.search(f"({_MARKER}{_SPACE}){re.escape(THINKING)}{post}", text)
    if wrapped:
        return wrapped.group(1), wrapped.group(2)
    delimited = re.search(f"{re.escape(THINKING)}{_SPACE}({_MARKER}{_SPACE})?", text)
    return "", (delimited.group(1) or "") if delimited else ""


def _tail_markers(off: str, on: str) -> tuple[str, str] | None:
    """One output's end reappears in the other followed by exactly two markers (SmolLM3)."""
    for base, extended in ((on, off), (off, on)):
        anchor = base[-ANCHOR_LENGTH:]
        position = extended.rfind(anchor)
        if position < 0 or position + len(anchor) >= len(extended):
            continue
        extra = extended[position + len(anchor) :].strip()
        if not extra:
            continue
        segments = _visible(segmentize_markers(extra))
        if len(segments) == 2 and segments[0].marker and segments[1].marker:
            return segments[0].value, segments[1].value
    return None


def _patched(source: str, tags: ReasoningTags) -> ReasoningTags:
    """llama.cpp's per-family corrections to the analysis (chat-diff-analyzer.cpp's workarounds)."""
    old_qwen = "content.split('</think>')" in source and "reasoning_content" not in source
    if old_qwen and "<SPECIAL_12>" not in source and not tags.supported:
        tags = ReasoningTags(True, "<think>", "</think>")  # older Qwen and DeepSeek thinking templates
    if (
        "Write your thoughts between <think></think> and write your response between <response></response>"
        in source
    ):
        tags = ReasoningTags(True, "<think>", "</think>")  # Granite 3.3
    if all(mark in source for mark in ("<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>", "<TOOL_RESPONSE>")):
        tags = ReasoningTags(True, "<think>\n", "</think>")  # Nemotron Nano v2
    if "laguna_glm_thinking" in source:
        tags = ReasoningTags(tags.supported, tags.start.strip(), tags.end.strip())
    return tags


# ------------------------------------------------------------ llama.cpp's diff of two renders


@dataclass(frozen=True)
class Segment:
    marker: bool  # `<...>` or `[...]`; else text
    value: str


def segmentize_markers(text: str) -> list[Segment]:
    segments: list[Segment] = []
    opener = ""
    border = 0
    for position, char in enumerate(text):
        if not opener and char in "<[":
            if border < position:
                segments.append(Segment(False, text[border:position]))
            border, opener = position, char
        elif opener and char == {"<": ">", "[": "]"}[opener]:
            segments.append(Segment(True, text[border : position + 1]))
            border, opener = position + 1, ""
    if border < len(text):
        segments.append(Segment(False, text[border:]))
    return segments


def _visible(segments: list[Segment]) -> list[Segment]:
    return [segment for segment in segments if segment.value.strip()]


@dataclass(frozen=True)
class DiffSplit:
    prefix: str
    suffix: str
    left: str
    right: str


def common_prefix_length(left: str, right: str) -> int:
    length = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        length += 1
    return length


def _common_suffix(left: str, right: str) -> int:
    return common_prefix_length(left[::-1], right[::-1])


def calculate_diff_split(left: str, right: str) -> DiffSplit:
    """What differs between two renders: common marker and text segments are peeled
    off both ends, then common characters of the text left over (llama.cpp's
    calculate_diff_split, step for step)."""
    left_segments, right_segments = segmentize_markers(left), segmentize_markers(right)
    if not left_segments:
        return DiffSplit("", "", "", right)
    if not right_segments:
        return DiffSplit("", "", left, "")
    prefix, suffix = "", ""
    ls, le, rs, re_ = 0, len(left_segments) - 1, 0, len(right_segments) - 1
    left_done = right_done = False
    while ls != le and rs != re_:
        advanced = False
        if left_segments[ls] == right_segments[rs]:
            prefix += left_segments[ls].value
            ls, rs, advanced = ls + 1, rs + 1, True
        if left_segments[le] == right_segments[re_]:
            suffix = left_segments[le].value + suffix
            if ls != le:
                le -= 1
            else:
                left_done = True
            if rs != re_:
                re_ -= 1
            else:
                right_done = True
            advanced = True
        if not advanced:
            break
    if ls == le and rs != re_:
        if left_segments[ls] == right_segments[re_]:
            suffix = right_segments[re_].value + suffix
            re_ -= 1
            left_done = True
        elif left_segments[ls] == right_segments[rs]:
            prefix += right_segments[rs].value
            rs += 1
            left_done = True
    elif rs == re_ and ls != le:
        if left_segments[le] == right_segments[rs]:
            suffix = left_segments[le].value + suffix
            le -= 1
            right_done = True
        elif left_segments[ls] == right_segments[rs]:
            prefix += left_segments[ls].value
            ls += 1
            right_done = True
    elif ls == le and rs == re_ and left_segments[ls] == right_segments[rs] and left_segments[ls].marker:
        prefix += right_segments[rs].value
        left_done = right_done = True

    text_suffix = not left_segments[le].marker and not right_segments[re_].marker
    text_prefix = not right_segments[rs].marker and not left_segments[ls].marker
    rest_left = "".join(s.value for s in left_segments[ls : le if left_done else le + 1])
    rest_right = "".join(s.value for s in right_segments[rs : re_ if right_done else re_ + 1])
    suffix_length = _common_suffix(rest_left, rest_right) if text_suffix else 0
    prefix_length = (
        common_prefix_length(
            rest_left[: len(rest_left) - suffix_length], rest_right[: len(rest_right) - suffix_length]
        )
        if text_prefix
        else 0
    )
    prefix += rest_left[:prefix_length]
    suffix = rest_left[len(rest_left) - suffix_length :] + suffix
    only_left = rest_left[prefix_length : len(rest_left) - suffix_length]
    only_right = rest_right[prefix_length : len(rest_right) - suffix_length]
    if not only_left and not only_right:
        return DiffSplit(left, "", "", "")
    if not only_left and only_right and right.startswith(left):
        return DiffSplit(left, "", "", right[len(left) :])
    return DiffSplit(prefix, suffix, only_left, only_right)
