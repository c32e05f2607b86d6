"""Tools and reasoning for one chat request, between the chat pipeline (chat.py) and
the parsers (toolcalls/): what the template and the grammar get, and a reader that
turns the model's text back into content, reasoning and tool calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from llamapack.runtime.server import toolcalls
from llamapack.runtime.server.requests import BadRequest, ChatCompletionRequest


@dataclass
class ToolSetup:
    plan: toolcalls.ChatTools
    reasoning_format: str

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        return self.plan.template_tools()

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.plan.messages(messages)

    def grammar(self, prompt_text: str) -> str | None:
        """Depends on the prompt: a template may open the reasoning block itself."""
        return self.plan.grammar(prompt_text)


def tool_setup(chat: ChatCompletionRequest, template_source: str | None, reasoning_format: str) -> ToolSetup:
    tools = msgspec.to_builtins(chat.tools) if chat.tools else None
    if tools and chat.tool_choice != "none" and chat.grammar:
        raise BadRequest("Cannot use custom grammar constraints with tools.", "grammar")
    plan = toolcalls.chat_tools(
        template_source,
        tools,
        msgspec.to_builtins(chat.tool_choice) if chat.tool_choice is not None else None,
        chat.parallel_tool_calls,
    )
    return ToolSetup(plan, chat.reasoning_format or reasoning_format)


class ReplyReader:
    """The model's text in, OpenAI delta objects out (content, reasoning_content,
    tool_calls pieces); text that may still turn into a call is held back."""

    def __init__(self, setup: ToolSetup, prompt_text: str):
        self._parser = setup.plan.parser(prompt_text, setup.reasoning_format)

    def feed(self, text: str) -> list[dict[str, Any]]:
        return [delta.to_openai() for delta in self._parser.feed(text)]

    def finish(self) -> list[dict[str, Any]]:
        return [delta.to_openai() for delta in self._parser.finish()]


def reply_parser(setup: ToolSetup, prompt_text: str) -> ReplyReader:
    return ReplyReader(setup, prompt_text)
