"""Chat messages and tools as llama-server hands them to a chat template.

llama-server checks an OpenAI request's messages (tools/server/server-common.cpp),
parses them into its own records (common_chat_msgs_parse_oaicompat) and writes them
back as JSON for the template (common_chat_msg::to_json_oaicompat): every message
gets a `content` (a string, typed text parts, or ""), tool-call arguments become
text, empty optional fields are dropped. Then it adapts them to what the template
can take (common_chat_templates_apply_jinja's workarounds and the per-family
adjustments of common/parsers/). This module does the same steps in Python, so a
template sees exactly what it would see under llama-server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llamapack.runtime.llama.chat_jinja import ChatTemplateError, TemplateCaps

JSON = Any
PART_TYPES = ("text",)  # llama-server's other part type, media_marker, comes from images: we have none


def _dump(value: JSON) -> str:
    """JSON as llama.cpp's nlohmann dump() writes it: compact, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def join_parts(texts: Iterable[str], separator: str = "\n") -> str:
    """Text parts as one string, as llama.cpp joins them: a separator between parts,
    none before the first non-empty text."""
    joined = ""
    for text in texts:
        joined = joined + separator + text if joined else text
    return joined


def _message_error(problem: str) -> ChatTemplateError:
    return ChatTemplateError(f"Failed to parse messages: {problem}")


# ------------------------------------------------------------ parsed records


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # as text, whatever the client sent: templates that want an object get it parsed
    id: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One message as llama.cpp's common_chat_msg holds it."""

    role: str
    content: str = ""
    parts: tuple[str, ...] = ()  # the text of typed parts, when content came as a list
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning_content: str = ""
    name: str = ""  # a tool result's tool
    tool_call_id: str = ""
    typed: bool = False  # content came as a list of parts

    def text(self) -> str:
        """The content as one string, for llama.cpp's built-in templates."""
        return join_parts([self.content, *self.parts])

    def to_json(self) -> dict[str, JSON]:
        """common_chat_msg::to_json_oaicompat: what the template's `messages` holds."""
        message: dict[str, JSON] = {"role": self.role}
        if self.content:
            message["content"] = self.content
        elif self.parts:
            message["content"] = [{"type": "text", "text": text} for text in self.parts]
        else:
            message["content"] = ""
        if self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if self.name:
            message["name"] = self.name
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            calls = []
            for call in self.tool_calls:
                entry: dict[str, JSON] = {
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                if call.id:
                    entry["id"] = call.id
                calls.append(entry)
            message["tool_calls"] = calls
        return message


# ------------------------------------------------------------ parsing requests


def parse_messages(messages: object) -> list[ChatMessage]:
    """The request's messages, checked as llama-server checks them."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ChatTemplateError("Expected 'messages' to be an array")
    _check_presence(messages)
    return [_parse_message(message) for message in messages]


def _check_presence(messages: Sequence[object]) -> None:
    # oaicompat_chat_params_parse's checks, before the messages are parsed.
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role == "assistant":
            if "content" not in message and "tool_calls" not in message:
                raise ChatTemplateError("Assistant message must contain either 'content' or 'tool_calls'!")
        elif "content" not in message:
            raise ChatTemplateError("All non-assistant messages must contain 'content'")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ChatTemplateError("Expected 'content' to be a string or an array")


def _parse_message(message: object) -> ChatMessage:
    if not isinstance(message, Mapping):
        raise _message_error(f"Expected 'message' to be an object, got {_dump(message)}")
    if "role" not in message:
        raise _message_error(f"Missing 'role' in message: {_dump(message)}")
    role = _text(message, "role")
    content = message.get("content")
    text, typed = "", False
    parts: tuple[str, ...] = ()
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts, typed = tuple(_part_text(part) for part in content), True
    tool_calls = message.get("tool_calls")
    return ChatMessage(
        role=role,
        content=text,
        parts=parts,
        typed=typed,
        tool_calls=tuple(_parse_tool_call(call) for call in _list(tool_calls, "tool_calls")),
        reasoning_content=_optional_text(message, "reasoning_content"),
        name=_optional_text(message, "name"),
        tool_call_id=_optional_text(message, "tool_call_id"),
    )


def _part_text(part: object) -> str:
    if not isinstance(part, Mapping) or "type" not in part:
        raise _message_error(f"Missing content part type: {_dump(part)}")
    if part["type"] not in PART_TYPES:
        raise _message_error(f"Unsupported content part type: {_dump(part['type'])}")
    if not isinstance(part.get("text"), str):
        raise _message_error(f"Content part text must be a string: {_dump(part)}")
    return str(part["text"])


def _parse_tool_call(call: object) -> ToolCall:
    if not isinstance(call, Mapping) or "type" not in call:
        raise _message_error(f"Missing tool call type: {_dump(call)}")
    if call["type"] != "function":
        raise _message_error(f"Unsupported tool call type: {_dump(call)}")
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise _message_error(f"Missing tool call function: {_dump(call)}")
    if not isinstance(function.get("name"), str):
        raise _message_error(f"Missing tool call name: {_dump(call)}")
    if "arguments" not in function:
        raise _message_error(f"Missing tool call arguments: {_dump(call)}")
    arguments = function["arguments"]
    return ToolCall(
        name=str(function["name"]),
        arguments=arguments if isinstance(arguments, str) else _dump(arguments),
        id=_optional_text(call, "id"),
    )


def _text(record: Mapping[str, object], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise _message_error(f"'{key}' must be a string, got {_dump(value)}")
    return value


def _optional_text(record: Mapping[str, object], key: str) -> str:
    # null reads as absent: clients echo back fields the API gave them as null.
    return "" if record.get(key) is None else _text(record, key)


def _list(value: object, key: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _message_error(f"'{key}' must be an array, got {_dump(value)}")
    return value


def parse_tools(tools: object) -> list[dict[str, JSON]]:
    """The request's tools as the template's `tools` (common_chat_tools_to_json_oaicompat)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ChatTemplateError(f"Failed to parse tools: Expected 'tools' to be an array, got {_dump(tools)}")
    parsed = []
    for tool in tools:
        if not isinstance(tool, Mapping) or "type" not in tool:
            raise ChatTemplateError(f"Failed to parse tools: Missing tool type: {_dump(tool)}")
        if tool["type"] != "function":
            raise ChatTemplateError(f"Failed to parse tools: Unsupported tool type: {_dump(tool)}")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise ChatTemplateError(f"Failed to parse tools: Missing tool function: {_dump(tool)}")
        if not isinstance(function.get("name"), str):
            raise ChatTemplateError(f"Failed to parse tools: Missing tool name: {_dump(tool)}")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise ChatTemplateError(
                f"Failed to parse tools: tool description must be a string: {_dump(tool)}"
            )
        parsed.append(
            {
                "type": "function",
                "function": {
                    "name": function["name"],
                    "description": description,
                    "parameters": function.get("parameters", {}),
                },
            }
        )
    return parsed


# ------------------------------------------------------------ fitting the template


def template_messages(
    messages: Sequence[ChatMessage], source: str, caps: TemplateCaps
) -> list[dict[str, JSON]]:
    """The `messages` a template gets: llama.cpp's JSON, fitted to the template."""
    if STEPFUN_MARKER in source:
        # StepFun loops on leftover whitespace (llama.cpp issue #24181): trimmed first.
        messages = [_trimmed(message) for message in messages]
    fitted = [fit_content(message.to_json(), caps) for message in messages]
    if "<|channel|>" not in source:
        # GPT-OSS has a developer role of its own; every other template gets system.
        for message in fitted:
            if message["role"] == "developer":
                message["role"] = "system"
    if not caps.supports_system_role:
        fitted = _merge_system_message(fitted)
    if caps.supports_object_arguments:
        for message in fitted:
            for call in message.get("tool_calls", ()):
                call["function"]["arguments"] = _parsed_arguments(call["function"]["arguments"])
    return _family_adjustments(fitted, source)


STEPFUN_MARKER = "You have access to the following functions in JSONSchema format"


def _trimmed(message: ChatMessage) -> ChatMessage:
    return ChatMessage(
        role=message.role,
        content=message.content.strip(),
        parts=tuple(part.strip() for part in message.parts),
        typed=message.typed,
        tool_calls=message.tool_calls,
        reasoning_content=message.reasoning_content.strip(),
        name=message.name,
        tool_call_id=message.tool_call_id,
    )


def fit_content(message: dict[str, JSON], caps: TemplateCaps) -> dict[str, JSON]:
    """A template that reads content only as a string gets parts joined with newlines;
    one that reads only typed parts gets a string as one text part."""
    only_string = caps.supports_string_content and not caps.supports_typed_content
    only_typed = caps.supports_typed_content and not caps.supports_string_content
    content = message["content"]
    if only_string and isinstance(content, list):
        message["content"] = join_parts(part["text"] for part in content)
    elif only_typed and isinstance(content, str):
        message["content"] = [{"type": "text", "text": content}]
    return message


def _merge_system_message(messages: list[dict[str, JSON]]) -> list[dict[str, JSON]]:
    """A template without a system role gets the system message prepended to the next one."""
    if not messages or messages[0]["role"] != "system":
        return messages
    if len(messages) == 1:
        return []
    system, following = messages[0], messages[1]
    if not isinstance(system["content"], str) or not isinstance(following["content"], str):
        raise ChatTemplateError(
            "this chat template has no system role, and the system message cannot be merged"
        )
    following["content"] = system["content"] + "\n" + following["content"]
    return messages[1:]


def _parsed_arguments(arguments: JSON) -> JSON:
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise ChatTemplateError(f"Failed to parse tool call arguments as JSON: {exc}") from None


# ------------------------------------------------------------ per-family adjustments

# llama.cpp's specialized handlers (common_chat_try_specialized_template), in its
# order: the first whose markers are all in the source (and none of its exclusions) wins.
FAMILIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("ministral-3", ("[SYSTEM_PROMPT]", "[TOOL_CALLS]", "[ARGS]"), ("[CALL_ID]",)),
    ("gpt-oss", ("<|channel|>",), ()),
    ("muse-glimmer", ("<atem:function_calls>", "<|eom|>"), ()),
    ("functionary-v3.2", (">>>all", ">>>${recipient}"), ()),
    ("kimi-k2", ("<|tool_calls_section_begin|>", "<|tool_call_begin|>"), ()),
    ("kimi-k3", ("<|open|>", "<|close|>", "<|end_of_msg|>"), ()),
    ("ling-3", ("<role>ASSISTANT</role>", "<arg_key>"), ()),
    ("cohere2-moe", ("<|START_TEXT|>", "<|START_ACTION|>"), ()),
    ("lfm2", ("<|tool_list_start|>", "<|tool_list_end|>"), ()),
    ("lfm2.5", ("List of tools: [",), ("<|tool_list_start|>",)),
    ("gigachat-v3", ("<|role_sep|>", "<|message_sep|>"), ("<|function_call|>",)),
    ("minimax-m3", ("]<]minimax[>[", "<tool_call>", "<invoke name="), ()),
    ("deepseek-v3.2", ("dsml_token", "DSML"), ()),
    ("gemma4", ("'<|tool_call>call:'",), ()),
    ("minicpm5", ("Tool usage guidelines:", '<function name="', '<param name="'), ()),
    (
        "qwen3-coder",
        ("<tool_call>", "<function=", "<parameter="),
        ("'<tool_call><function=' ~ tool_call.name ~ '>'",),
    ),
)


def specialized_family(source: str) -> str | None:
    """Which of llama.cpp's specialized chat handlers takes this template, if any."""
    for name, markers, exclusions in FAMILIES:
        if all(m in source for m in markers) and not any(e in source for e in exclusions):
            if name == "deepseek-v3.2" and "function_calls" not in source and "tool_calls" not in source:
                continue
            return name
    return None


def _family_adjustments(messages: list[dict[str, JSON]], source: str) -> list[dict[str, JSON]]:
    """What common/parsers/ changes in the messages before rendering, for the families
    whose templates read reasoning or tool results under other names or shapes."""
    family = specialized_family(source)
    if family == "ministral-3":
        return [_ministral_blocks(message) for message in messages]
    if family == "gpt-oss":
        return [_with_thinking(message, drop_content_beside_calls=True) for message in messages]
    if family in ("lfm2", "lfm2.5"):
        return [_with_thinking(message) for message in messages]
    if family == "deepseek-v3.2" and "function_calls" not in source:  # V4
        return _deepseek_v4_tool_order(messages)
    if family == "gemma4" and "{#- OpenAI Chat Completions:" not in source:
        # Older Gemma 4 templates read tool results from the assistant turn.
        return _gemma4_tool_responses(messages)
    return messages


def _with_thinking(message: dict[str, JSON], drop_content_beside_calls: bool = False) -> dict[str, JSON]:
    """GPT-OSS and LFM2 templates read reasoning as `thinking`."""
    if isinstance(message.get("reasoning_content"), str):
        message["thinking"] = message["reasoning_content"]
        if drop_content_beside_calls and message.get("tool_calls"):
            message.pop("content", None)
    return message


def _ministral_blocks(message: dict[str, JSON]) -> dict[str, JSON]:
    """Ministral 3 reads system and assistant content as blocks, reasoning as a `thinking` block."""
    if message["role"] not in ("system", "assistant"):
        return message
    blocks: list[JSON] = []
    if isinstance(message.get("reasoning_content"), str):
        blocks.append({"type": "thinking", "thinking": message.pop("reasoning_content")})
    content = message.get("content")
    if isinstance(content, str):
        blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        blocks.extend(content)
    message["content"] = blocks
    return message


def _deepseek_v4_tool_order(messages: list[dict[str, JSON]]) -> list[dict[str, JSON]]:
    """DeepSeek V4 renders a run of tool results in the order of the calls that asked for them."""
    order: dict[str, int] = {}
    adjusted = list(messages)
    index = 0
    while index < len(adjusted):
        message = adjusted[index]
        if message["role"] == "assistant" and message.get("tool_calls"):
            order = {call["id"]: n for n, call in enumerate(message["tool_calls"]) if call.get("id")}
            index += 1
            continue
        if message["role"] not in ("user", "tool"):
            index += 1
            continue
        end = index
        positions = []
        while end < len(adjusted) and adjusted[end]["role"] in ("user", "tool"):
            if adjusted[end]["role"] == "tool":
                positions.append(end)
            end += 1
        if len(positions) > 1 and order:
            results = sorted(
                (adjusted[p] for p in positions), key=lambda m: order.get(m.get("tool_call_id", ""), 0)
            )
            for position, result in zip(positions, results, strict=True):
                adjusted[position] = result
        index = end
    return adjusted


def _gemma4_tool_responses(messages: list[dict[str, JSON]]) -> list[dict[str, JSON]]:
    """assistant(tool calls), tool results, assistant(answer) become one assistant
    message with `tool_responses` (llama.cpp's convert_tool_responses_gemma4)."""
    result = []
    index = 0
    while index < len(messages):
        message = messages[index]
        if message["role"] != "assistant" or not message.get("tool_calls"):
            result.append(message)
            index += 1
            continue
        calls = list(message["tool_calls"])
        responses: list[JSON] = []
        index += 1
        while index < len(messages) and messages[index]["role"] == "tool":
            responses.append(_gemma4_response(messages[index], calls, len(responses)))
            index += 1
        turn: dict[str, JSON] = {"role": "assistant", "tool_calls": calls}
        if responses:
            turn["tool_responses"] = responses
        following = messages[index] if index < len(messages) else None
        answer = (
            following is not None and following["role"] == "assistant" and not following.get("tool_calls")
        )
        if answer and following is not None and following.get("content"):
            turn["content"] = following["content"]
            index += 1
        if isinstance(message.get("reasoning_content"), str):
            turn["reasoning_content"] = message["reasoning_content"]
        result.append(turn)
    return result


def _gemma4_response(message: dict[str, JSON], calls: list[JSON], position: int) -> dict[str, JSON]:
    content = message.get("content")
    response: JSON = content
    if isinstance(content, str):
        try:
            response = json.loads(content)
        except json.JSONDecodeError:
            response = content
    name = calls[position]["function"]["name"] if position < len(calls) else ""
    return {"name": name or message.get("tool_call_id", ""), "response": response}
