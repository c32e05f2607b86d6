"""What a parsed reply holds, whole (ParsedReply) or as streamed pieces (Delta), in OpenAI's shapes.

llama-server returns `content` ("" when empty), `reasoning_content` only when there is
some, and `tool_calls` only when there are some; a streamed call's first delta carries
its index, id, type and name, later ones only argument text (server-chat.cpp,
server_chat_msg_diff_to_json_oaicompat).
"""

from __future__ import annotations

import enum
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_ID_ALPHABET = string.digits + string.ascii_letters


class ReasoningFormat(str, enum.Enum):
    """llama-server's --reasoning-format: `none` leaves thoughts in the content; every
    other value puts them in `reasoning_content` (chat-auto-parser-generator.cpp:
    extract_reasoning = reasoning_format != NONE; deepseek-legacy's in-content copy is
    not used by this llama.cpp)."""

    NONE = "none"
    AUTO = "auto"
    DEEPSEEK = "deepseek"
    DEEPSEEK_LEGACY = "deepseek-legacy"

    @property
    def extracts(self) -> bool:
        return self is not ReasoningFormat.NONE


def random_id(length: int = 32) -> str:
    """llama-server's gen_tool_call_id: 32 letters and digits."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def mistral_id() -> str:
    # Mistral's templates refuse a later turn whose call ids are not 9 letters and digits.
    return random_id(9)


IdFactory = Callable[[], str]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ParsedReply:
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        """The assistant message of a non-streamed chat completion."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message

    @property
    def finish_reason(self) -> str:
        """For a reply that ended on EOS or a stop string (llama-server keeps "length")."""
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str | None  # set, with name, on the call's first delta only
    name: str | None
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        delta: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            delta["id"] = self.id
            delta["type"] = "function"
        function: dict[str, Any] = {}
        if self.name is not None:
            function["name"] = self.name
        if self.arguments:
            function["arguments"] = self.arguments
        if function:
            delta["function"] = function
        return delta


@dataclass(frozen=True)
class Delta:
    """One streamed piece: text of one kind, or a piece of one tool call."""

    content: str = ""
    reasoning_content: str = ""
    tool_call: ToolCallDelta | None = None

    def to_openai(self) -> dict[str, Any]:
        """The `delta` object of a chat.completion.chunk."""
        delta: dict[str, Any] = {}
        if self.reasoning_content:
            delta["reasoning_content"] = self.reasoning_content
        if self.content:
            delta["content"] = self.content
        if self.tool_call is not None:
            delta["tool_calls"] = [self.tool_call.to_openai()]
        return delta


def accumulate(deltas: list[Delta]) -> ParsedReply:
    """The reply a client rebuilds from the deltas it was streamed."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, str]] = []
    for delta in deltas:
        content.append(delta.content)
        reasoning.append(delta.reasoning_content)
        piece = delta.tool_call
        if piece is None:
            continue
        if piece.index == len(calls):
            calls.append({"id": piece.id or "", "name": piece.name or "", "arguments": ""})
        calls[piece.index]["arguments"] += piece.arguments
    return ParsedReply(
        content="".join(content),
        reasoning_content="".join(reasoning),
        tool_calls=[ToolCall(call["id"], call["name"], call["arguments"]) for call in calls],
    )
