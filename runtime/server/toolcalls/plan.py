"""One chat request's tools, from the template and the request, in the terms the route needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamapack.runtime.server.toolcalls.formats import (
    ReasoningTags,
    ToolFormat,
    describes_tools,
    detect_format,
    detect_reasoning,
    opened_reasoning,
    supports_parallel_calls,
)
from llamapack.runtime.server.toolcalls.grammar import tool_grammar
from llamapack.runtime.server.toolcalls.parser import ReplyParser
from llamapack.runtime.server.toolcalls.prompt import prompt_messages
from llamapack.runtime.server.toolcalls.reply import IdFactory, ReasoningFormat
from llamapack.runtime.server.toolcalls.tools import (
    ChoiceMode,
    Tool,
    ToolChoice,
    parse_tool_choice,
    parse_tools,
)


@dataclass(frozen=True)
class ChatTools:
    format: ToolFormat
    reasoning: ReasoningTags | None
    tools: list[Tool]
    choice: ToolChoice
    parallel: bool
    template_describes_tools: bool

    @property
    def prompt_tools(self) -> list[Tool]:
        """The tools the prompt shows the model: none under tool_choice "none"."""
        return [] if self.choice.mode is ChoiceMode.NONE else self.tools

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The template's `tools` variable (None: leave it undefined, as llama.cpp does
        without tools). The generic format describes them in the system message instead."""
        if self.format is ToolFormat.GENERIC:
            return None
        # Under tool_choice "none" too, as llama-server: the model sees the tools it may not call.
        return [tool.to_openai() for tool in self.tools] or None

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The request's messages (plain JSON values) as the template should render them."""
        return prompt_messages(messages, self.format, self.prompt_tools, self.template_describes_tools)

    def grammar(self, prompt: str) -> str | None:
        """The reply's grammar once the prompt is rendered (None: free)."""
        opened = bool(opened_reasoning(prompt, self.reasoning))
        return tool_grammar(
            self.format,
            self.tools,
            self.choice,
            self.parallel,
            reasoning=self.reasoning,
            reasoning_opened=opened,
        )

    def parser(
        self, prompt: str, reasoning_format: ReasoningFormat | str, new_id: IdFactory | None = None
    ) -> ReplyParser:
        """A reader for the reply to this prompt."""
        return ReplyParser(
            self.format,
            reasoning_format,
            tools=[tool.name for tool in self.choice.callable_tools(self.tools)],
            reasoning=self.reasoning,
            reasoning_opened=opened_reasoning(prompt, self.reasoning),
            new_id=new_id,
        )


def chat_tools(
    template_source: str | None,
    tools: Any,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    *,
    generic: bool = True,
) -> ChatTools:
    """Check `tools`, `tool_choice` and `parallel_tool_calls` (JSON values as sent; BadRequest
    when they do not fit) against the template's format. Absent, `parallel_tool_calls`
    is whether the template can render parallel calls, as in llama-server.

    `generic`: a template that knows no tools gets the generic format (the llama.cpp of
    per-family handlers); False leaves its replies as text, as this llama.cpp does
    (its autoparser finds no calls in such a template)."""
    parsed = parse_tools(tools)
    choice = parse_tool_choice(tool_choice, parsed)
    if parallel_tool_calls is None:
        parallel_tool_calls = supports_parallel_calls(template_source)
    fmt = detect_format(template_source)
    if fmt is ToolFormat.GENERIC and not generic:
        fmt = ToolFormat.CONTENT_ONLY
    return ChatTools(
        format=fmt,
        reasoning=detect_reasoning(template_source),
        tools=parsed,
        choice=choice,
        parallel=parallel_tool_calls,
        template_describes_tools=describes_tools(template_source),
    )
