"""A chat request's `tools` and `tool_choice`, checked as llama-server checks them.

common_chat_tools_parse_oaicompat: `tools` is an array of {"type": "function",
"function": {"name", "description"?, "parameters"?}}. llama-server reads
`tool_choice` as one of "auto", "none", "required" (another string is an error);
OpenAI's named form, {"type": "function", "function": {"name": ...}}, is taken
here too: the model must call that function.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from llamapack.runtime.server.requests import BadRequest


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema; {} or absent means no arguments

    @property
    def schema(self) -> dict[str, Any]:
        """common_chat_tool_parameters: a tool without parameters takes an empty object."""
        if not self.parameters:
            return {"type": "object", "properties": {}}
        return self.parameters

    def to_openai(self) -> dict[str, Any]:
        """As the chat template is given it (common_chat_tools_to_json_oaicompat)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ChoiceMode(str, enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = ChoiceMode.AUTO
    function: str | None = None  # a named choice: REQUIRED, restricted to this function

    @property
    def required(self) -> bool:
        return self.mode is ChoiceMode.REQUIRED

    def callable_tools(self, tools: list[Tool]) -> list[Tool]:
        """The tools the model may call under this choice."""
        if self.mode is ChoiceMode.NONE:
            return []
        if self.function is not None:
            return [tool for tool in tools if tool.name == self.function]
        return list(tools)


def parse_tools(tools: Any) -> list[Tool]:
    """`tools` as sent (JSON values), or BadRequest."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", "tools")
    parsed = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"'tools[{index}]'"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object", "tools")
        if "type" not in tool:
            raise BadRequest(f"{where} is missing 'type'", "tools")
        if tool["type"] != "function":
            raise BadRequest(f"{where} has an unsupported type: {tool['type']!r} (only 'function')", "tools")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise BadRequest(f"{where} is missing its 'function' object", "tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.function needs a 'name' string", "tools")
        if name in seen:
            raise BadRequest(f"{where} repeats the function name {name!r}", "tools")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequest(f"{where}.function.description must be a string", "tools")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest(f"{where}.function.parameters must be a JSON schema object", "tools")
        parsed.append(Tool(name, description or "", parameters or {}))
    return parsed


def parse_tool_choice(tool_choice: Any, tools: list[Tool]) -> ToolChoice:
    """`tool_choice` as sent (absent: auto), checked against the request's tools."""
    if tool_choice is None:
        return ToolChoice()
    if isinstance(tool_choice, str):
        try:
            mode = ChoiceMode(tool_choice)
        except ValueError:
            raise BadRequest(f"Invalid tool_choice: {tool_choice}", "tool_choice") from None
        if mode is ChoiceMode.REQUIRED and not tools:
            raise BadRequest("'tool_choice' is 'required' but the request has no 'tools'", "tool_choice")
        return ToolChoice(mode)
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        raise BadRequest(
            "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", ...}", "tool_choice"
        )
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise BadRequest("'tool_choice.function' needs a 'name' string", "tool_choice")
    if name not in {tool.name for tool in tools}:
        raise BadRequest(f"'tool_choice' names a function not in 'tools': {name!r}", "tool_choice")
    return ToolChoice(ChoiceMode.REQUIRED, name)
