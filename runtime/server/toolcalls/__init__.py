"""Tool calls and reasoning, read out of the model's text as llama-server does.

A chat template tells which format the model writes tool calls in
(`detect_format`) and which tags hold its reasoning (`detect_reasoning`). A reply is
parsed whole (`parse`) or as it streams (`ReplyParser`, whose deltas add up to the
same reply); `tool_grammar` constrains sampling when a call is required or the
format is the generic one, and `prompt_messages` adds what a template without tool
support needs. `chat_tools` puts these together for one request.
"""

from __future__ import annotations

from llamapack.runtime.server.toolcalls.formats import (
    THINK,
    ReasoningTags,
    ToolFormat,
    describes_tools,
    detect_format,
    detect_reasoning,
    opened_reasoning,
    supports_parallel_calls,
)
from llamapack.runtime.server.toolcalls.grammar import generic_schema, grammar_triggers, tool_grammar
from llamapack.runtime.server.toolcalls.parser import ReplyParser, parse
from llamapack.runtime.server.toolcalls.plan import ChatTools, chat_tools
from llamapack.runtime.server.toolcalls.prompt import prompt_messages, tools_description
from llamapack.runtime.server.toolcalls.reply import (
    Delta,
    ParsedReply,
    ReasoningFormat,
    ToolCall,
    ToolCallDelta,
    accumulate,
)
from llamapack.runtime.server.toolcalls.tools import (
    ChoiceMode,
    Tool,
    ToolChoice,
    parse_tool_choice,
    parse_tools,
)

__all__ = [
    "THINK",
    "ChatTools",
    "ChoiceMode",
    "Delta",
    "ParsedReply",
    "ReasoningFormat",
    "ReasoningTags",
    "ReplyParser",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolFormat",
    "accumulate",
    "chat_tools",
    "describes_tools",
    "detect_format",
    "detect_reasoning",
    "generic_schema",
    "grammar_triggers",
    "opened_reasoning",
    "parse",
    "parse_tool_choice",
    "parse_tools",
    "prompt_messages",
    "supports_parallel_calls",
    "tool_grammar",
    "tools_description",
]
