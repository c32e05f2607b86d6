"""What the prompt needs for tools the chat template cannot render itself.

llama.cpp rendered templates through minja, which filled in for what a template
lacks (chat-template.hpp's polyfills): the tools, described in the system message
with an example call; past calls, written as JSON in the assistant's content; tool
results, as user messages. For the generic format, llama.cpp first asked for JSON
replies in the system message (common_chat_params_init_generic). Texts, layout and
order here are theirs, to the character: JSON indented by 2, system additions joined
by a blank line.
"""

from __future__ import annotations

import json
from typing import Any

from llamapack.runtime.server.toolcalls import blocks
from llamapack.runtime.server.toolcalls.formats import ToolFormat
from llamapack.runtime.server.toolcalls.tools import Tool

RESPOND_IN_JSON = (
    "Respond in JSON format, either with `tool_call` (a request to call tools) "
    "or with `response` reply to the user's request"
)
TOOLS_INTRO = "You can call any of the following tools to satisfy the user's requests: "

# minja's sample call: tool_name with {"arg1": "some_value"}, and the id call_1___.
_EXAMPLE_ARGS = '{"arg1": "some_value"}'


def _dump(value: Any) -> str:
    """nlohmann's dump(2): an indent of 2, ", " never on one line, UTF-8 as is."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def tool_call_example(format: ToolFormat) -> str:
    """How the model writes a call (minja derived it by rendering one with the template)."""
    name = "tool_name"
    if format is ToolFormat.HERMES:
        return (
            f'{blocks.HERMES_OPEN}\n{{"name": "{name}", "arguments": {_EXAMPLE_ARGS}}}\n{blocks.HERMES_CLOSE}'
        )
    if format is ToolFormat.LLAMA_3:
        return f'{{"name": "{name}", "parameters": {_EXAMPLE_ARGS}}}'
    if format is ToolFormat.MISTRAL_NEMO:
        return f'{blocks.MISTRAL_CALLS}[{{"name": "{name}", "arguments": {_EXAMPLE_ARGS}, "id": "call1___"}}]'
    if format is ToolFormat.MISTRAL:
        return f"{blocks.MISTRAL_CALLS}{name}{blocks.MISTRAL_ARGS}{_EXAMPLE_ARGS}"
    if format is ToolFormat.FUNCTIONARY_V3_1:
        return f"{blocks.FUNCTIONARY_OPEN}{name}>{_EXAMPLE_ARGS}{blocks.FUNCTIONARY_CLOSE}"
    if format is ToolFormat.FIREFUNCTION_V2:
        return f'functools[{{"name": "{name}", "arguments": {_EXAMPLE_ARGS}}}]'
    if format is ToolFormat.DEEPSEEK_R1:
        return (
            f"{blocks.DEEPSEEK_CALLS_BEGIN}{blocks.DEEPSEEK_CALL_BEGIN}function{blocks.DEEPSEEK_SEP}{name}\n"
            f"```json\n{_EXAMPLE_ARGS}\n```{blocks.DEEPSEEK_CALL_END}{blocks.DEEPSEEK_CALLS_END}"
        )
    if format is ToolFormat.GENERIC:
        call = {"name": name, "arguments": json.loads(_EXAMPLE_ARGS), "id": "call_1___"}
        return _dump({"tool_calls": [call]})
    return ""


def tools_description(tools: list[Tool], format: ToolFormat) -> str:
    """minja's system text for a template that does not render `tools`."""
    text = TOOLS_INTRO + _dump([tool.to_openai() for tool in tools])
    example = tool_call_example(format)
    if example:
        text += "\n\nExample tool call syntax:\n\n" + example + "\n\n"
    return text


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def add_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """minja's add_system: append to a leading system message (after a blank line), or open with one."""
    if messages and messages[0].get("role") == "system":
        first = {"role": "system", "content": _text(messages[0].get("content")) + "\n\n" + text}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def written_out(message: dict[str, Any]) -> dict[str, Any]:
    """A message with tool calls or a tool result, as text a template without tool
    support renders (minja's polyfill_tool_calls and polyfill_tool_responses)."""
    if message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            function = call.get("function", {})
            entry = {"name": function.get("name"), "arguments": _arguments(function.get("arguments"))}
            if call.get("id") is not None:
                entry["id"] = call["id"]
            calls.append(entry)
        body: dict[str, Any] = {"tool_calls": calls}
        if message.get("content"):
            body["content"] = message["content"]
        rewritten = {key: value for key, value in message.items() if key != "tool_calls"}
        rewritten["content"] = _dump(body)
        return rewritten
    if message.get("role") == "tool":
        response: dict[str, Any] = {}
        if message.get("name") is not None:
            response["tool"] = message["name"]
        response["content"] = message.get("content")
        if message.get("tool_call_id") is not None:
            response["tool_call_id"] = message["tool_call_id"]
        rewritten = {key: value for key, value in message.items() if key != "name"}
        rewritten.update(role="user", content=_dump({"tool_response": response}))
        return rewritten
    return message


def prompt_messages(
    messages: list[dict[str, Any]], format: ToolFormat, tools: list[Tool], template_describes_tools: bool
) -> list[dict[str, Any]]:
    """The messages the chat template renders for a request with these tools (none:
    `tool_choice` "none", or no tools) in this format."""
    adjusted = list(messages)
    if format is ToolFormat.GENERIC:
        adjusted = [written_out(message) for message in adjusted]
        if tools:
            adjusted = add_system(adjusted, RESPOND_IN_JSON)
    if tools and not template_describes_tools:
        adjusted = add_system(adjusted, tools_description(tools, format))
    return adjusted
