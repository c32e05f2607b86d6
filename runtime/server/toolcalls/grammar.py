"""Grammars that make the model write a tool call, in its own format (GBNF).

llama.cpp constrains a reply to tool calls with a grammar built from the tools'
parameter schemas: a full one when a call is required (tool_choice "required", or a
named function here) and always for the generic format; a lazy one for "auto",
which only applies once the model writes the format's trigger (<tool_call>,
[TOOL_CALLS], ...). Our engine has no lazy grammars (a trigger-word grammar
sampler), so "auto" gets none and the model writes calls unconstrained.

Argument schemas go through llama-cpp-python's port of llama.cpp's converter
(imported when needed: the rest of this package runs without the engine). A model
that may reason first gets to: the grammar lets the reasoning through, up to its
end tag, before the calls.
"""

from __future__ import annotations

import json
from typing import Any

from llamapack.runtime.server.requests import BadRequest
from llamapack.runtime.server.toolcalls import blocks
from llamapack.runtime.server.toolcalls.formats import ReasoningTags, ToolFormat
from llamapack.runtime.server.toolcalls.tools import Tool, ToolChoice

RESPONSE_KEY = "response"


def gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _char_class(chars: set[str], negate: bool) -> str:
    def escape(char: str) -> str:
        if char.isascii() and char.isalnum():
            return char
        code = ord(char)
        return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"

    return "[" + ("^" if negate else "") + "".join(escape(char) for char in sorted(chars)) + "]"


def excluding_rules(prefix: str, word: str) -> dict[str, str]:
    """Rules for any text that does not contain `word`, starting at rule `prefix`: the
    states of a matcher for `word`, where the character that would complete it has no
    way on (llama.cpp's gbnf_excluding_grammar, for one word)."""

    def next_state(state: int, char: str) -> int:
        seen = word[:state] + char
        for size in range(min(len(seen), len(word)), 0, -1):
            if seen.endswith(word[:size]):
                return size
        return 0

    def name(state: int) -> str:
        return prefix if state == 0 else f"{prefix}-{state}"

    rules = {}
    alphabet = set(word)
    for state in range(len(word)):
        ways: dict[int, set[str]] = {}
        specific: set[str] = set()
        for char in alphabet:
            target = next_state(state, char)
            if target == len(word):
                specific.add(char)
            elif target:
                ways.setdefault(target, set()).add(char)
                specific.add(char)
        alternatives = [""] + [
            f"{_char_class(chars, False)} {name(target)}" for target, chars in sorted(ways.items())
        ]
        alternatives.append(f"{_char_class(specific, True)} {name(0)}")
        rules[name(state)] = " | ".join(alternatives).strip()
    return rules


class _Builder:
    """One grammar: the converter's rules for the argument schemas, and ours."""

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter  # the engine's package, loaded on demand

        self.converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.rules: dict[str, str] = {}

    def schema(self, schema: dict[str, Any], name: str) -> str:
        try:
            resolved = self.converter.resolve_refs(json.loads(json.dumps(schema)), name)
            return str(self.converter.visit(resolved, name))
        except Exception as exc:  # the converter raises plain exceptions of many kinds
            raise BadRequest(
                f"the parameters of tool {name!r} cannot be turned into a grammar: {exc}", "tools"
            ) from None

    def arguments(self, tool: Tool) -> str:
        return self.schema(tool.schema, f"{tool.name}-args")

    def add(self, name: str, rule: str) -> str:
        self.rules[name] = rule
        return name

    def text(self, root: str) -> str:
        ours = "\n".join(f"{name} ::= {rule}" for name, rule in self.rules.items())
        return f"root ::= {root}\n{ours}\n{self.converter.format_grammar()}\n"


def _json_call(build: _Builder, tool: Tool, args_key: str, id_rule: str | None = None) -> str:
    """{"name": "<tool>", "<args_key>": <arguments>[, "id": ...]} as the converter spaces JSON."""
    field = ' space ":" space '
    parts = [
        f'"{{" space {gbnf_literal(json.dumps("name"))}{field}{gbnf_literal(json.dumps(tool.name))} space',
        f'"," space {gbnf_literal(json.dumps(args_key))}{field}{build.arguments(tool)}',
    ]
    if id_rule is not None:
        parts.append(f'"," space {gbnf_literal(json.dumps("id"))}{field}{id_rule}')
    return " ".join(parts) + ' "}" space'


def _choice(build: _Builder, name: str, alternatives: list[str]) -> str:
    return build.add(name, " | ".join(f"( {alternative} )" for alternative in alternatives))


def _repeat(item: str, parallel: bool, separator: str = "") -> str:
    if not parallel:
        return item
    return f"{item} ( {separator} {item} )*" if separator else f"{item}+"


def _reasoning(build: _Builder, tags: ReasoningTags | None, opened: bool) -> str:
    """What may come before the calls: the reasoning, up to its end tag."""
    if tags is None:
        return ""
    for name, rule in excluding_rules("reasoning-text", tags.end).items():
        build.add(name, rule)
    block = f"reasoning-text {gbnf_literal(tags.end)} [ \\t\\n]{{0,4}}"
    if opened:
        return build.add("reasoning", block) + " "
    return build.add("reasoning", f"( {gbnf_literal(tags.start)} {block} )?") + " "


def tool_grammar(
    format: ToolFormat,
    tools: list[Tool],
    tool_choice: ToolChoice,
    parallel_tool_calls: bool,
    *,
    reasoning: ReasoningTags | None = None,
    reasoning_opened: bool = False,
    lazy: bool = False,
) -> str | None:
    """The GBNF grammar for a reply to this request, or None to leave it free.

    `lazy`: for an engine with trigger-word grammars, also a grammar under "auto",
    to apply from the first of `grammar_triggers(format)` the model writes on."""
    callable_tools = tool_choice.callable_tools(tools)
    if not callable_tools or format is ToolFormat.CONTENT_ONLY:
        return None
    if format is ToolFormat.GENERIC:
        return generic_grammar(callable_tools, tool_choice.required, parallel_tool_calls)
    build = _Builder()
    if not tool_choice.required:
        if not lazy or not grammar_triggers(format):
            return None  # llama.cpp: a lazy grammar; our engine has none yet
        return build.text(_format_calls(build, format, callable_tools, parallel_tool_calls))
    before = _reasoning(build, reasoning, reasoning_opened)
    calls = _format_calls(build, format, callable_tools, parallel_tool_calls)
    return build.text(before + calls)


def grammar_triggers(format: ToolFormat) -> tuple[str, ...]:
    """The words that start a lazy grammar: what opens the format's calls. Llama 3's
    calls open with plain JSON, which no word tells apart (llama.cpp has none either)."""
    if format in (ToolFormat.GENERIC, ToolFormat.CONTENT_ONLY, ToolFormat.LLAMA_3):
        return ()
    if format is ToolFormat.FUNCTIONARY_V3_1:
        return (blocks.FUNCTIONARY_OPEN,)  # its <|python_tag|> code is free text
    return blocks.SYNTAXES[format].markers[:1]


def _format_calls(build: _Builder, format: ToolFormat, tools: list[Tool], parallel: bool) -> str:
    if format is ToolFormat.HERMES:
        call = _choice(build, "tool-call", [_json_call(build, tool, "arguments") for tool in tools])
        block = f'{gbnf_literal(blocks.HERMES_OPEN)} "\\n"? {call} "\\n"? {gbnf_literal(blocks.HERMES_CLOSE)}'
        return _repeat(build.add("tool-call-block", block), parallel, '"\\n"?')
    if format is ToolFormat.LLAMA_3:
        return _choice(build, "tool-call", [_json_call(build, tool, "parameters") for tool in tools])
    if format in (ToolFormat.MISTRAL_NEMO, ToolFormat.FIREFUNCTION_V2):
        if format is ToolFormat.MISTRAL_NEMO:
            id_rule = build.add("tool-call-id", '"\\"" [a-zA-Z0-9]{9} "\\"" space')
            opening = gbnf_literal(blocks.MISTRAL_CALLS + "[")
        else:
            id_rule, opening = None, gbnf_literal(blocks.FIREFUNCTION_OPENS[0])
        call = _choice(build, "tool-call", [_json_call(build, tool, "arguments", id_rule) for tool in tools])
        calls = _repeat(call, parallel, '"," space')
        return f'{opening} space {calls} "]"'
    if format is ToolFormat.MISTRAL:
        alternatives = [
            f"{gbnf_literal(blocks.MISTRAL_CALLS + tool.name + blocks.MISTRAL_ARGS)} {build.arguments(tool)}"
            for tool in tools
        ]
        return _repeat(_choice(build, "tool-call", alternatives), parallel)
    if format is ToolFormat.FUNCTIONARY_V3_1:
        alternatives = [
            f"{gbnf_literal(blocks.FUNCTIONARY_OPEN + tool.name + '>')} {build.arguments(tool)} "
            f"{gbnf_literal(blocks.FUNCTIONARY_CLOSE)}"
            for tool in tools
        ]
        return _repeat(_choice(build, "tool-call", alternatives), parallel, '"\\n"?')
    if format is ToolFormat.DEEPSEEK_R1:
        alternatives = [
            f"{gbnf_literal(blocks.DEEPSEEK_CALL_BEGIN + 'function' + blocks.DEEPSEEK_SEP + tool.name)} "
            f'"\\n```json\\n" {build.arguments(tool)} "\\n```" {gbnf_literal(blocks.DEEPSEEK_CALL_END)}'
            for tool in tools
        ]
        call = _choice(build, "tool-call", alternatives)
        inner = _repeat(call, parallel, '"\\n"?')
        return (
            f"{gbnf_literal(blocks.DEEPSEEK_CALLS_BEGIN)} {inner} {gbnf_literal(blocks.DEEPSEEK_CALLS_END)}"
        )
    raise ValueError(f"no grammar for the {format.value} format")


def generic_schema(tools: list[Tool], required: bool, parallel: bool) -> dict[str, Any]:
    """The JSON schema of a generic-format reply (common_chat_params_init_generic)."""
    call_schemas = []
    for tool in tools:
        call: dict[str, Any] = {
            "type": "object",
            "properties": {"name": {"type": "string", "const": tool.name}, "arguments": tool.schema},
            "required": ["name", "arguments"],
        }
        if tool.description:
            call["description"] = tool.description
        if parallel:
            call["properties"]["id"] = {"type": "string", "minLength": 4}
            call["required"].append("id")
        call_schemas.append(call)
    one = call_schemas[0] if len(call_schemas) == 1 else {"anyOf": call_schemas}
    if parallel:
        calls = {
            "type": "object",
            "properties": {"tool_calls": {"type": "array", "items": one, "minItems": 1}},
            "required": ["tool_calls"],
        }
    else:
        calls = {"type": "object", "properties": {"tool_call": one}, "required": ["tool_call"]}
    if required:
        return calls
    response = {
        "type": "object",
        "properties": {RESPONSE_KEY: {"type": "string"}},
        "required": [RESPONSE_KEY],
    }
    return {"anyOf": [calls, response]}


def generic_grammar(tools: list[Tool], required: bool, parallel: bool) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(generic_schema(tools, required, parallel))))
    except Exception as exc:  # the converter raises plain exceptions of many kinds
        raise BadRequest(f"the tools' parameters cannot be turned into a grammar: {exc}", "tools") from None
