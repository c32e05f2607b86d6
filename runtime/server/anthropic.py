"""Anthropic's Messages API (/v1/messages) as a translation to and from OpenAI's chat completion.

The route runs the chat pipeline: `to_chat_request` turns an Anthropic body into
a chat request, `to_message` turns the chat reply into a message, and a
`MessageStream` turns chat chunks into Anthropic's server-sent events. Nothing
here touches the model, so every form is tested without one.

llama-server does the same (server-chat.cpp's server_chat_convert_anthropic_to_oai,
server-task.cpp's to_json_anthropic*); it is followed where a client or its test
suite would notice, and Anthropic's API where llama-server is looser than a
client expects (block order in a stream, named tool choice, stop_sequence).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from llamapack.runtime.server.requests import BadRequest

# Anthropic requires max_tokens; llama-server takes its absence as this.
DEFAULT_MAX_TOKENS = 4096

# The sampling fields that keep their name from one API to the other (llama-server's list).
_PASSED_THROUGH = ("temperature", "top_p", "top_k", "chat_template_kwargs")

# A server-sent event: its name and its data.
Sse = tuple[str, dict[str, Any]]


class ImageInputUnsupported(BadRequest):
    """An image block: the model reads text only.

    llama-server answers this with 500 and its test suite holds to that, so the
    route maps it apart from other bad requests; the message keeps llama-server's
    words, which the suite looks for."""


# ------------------------------------------------------------ requests


def to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat completion request that answers an Anthropic Messages body.

    Only what is converted is checked here; the fields that keep their name
    (max_tokens, temperature, top_p, top_k) are checked by the chat request's
    own parse, which names them as the client wrote them."""
    present = _present(body)
    chat = _conversation(present)
    chat["max_tokens"] = present.get("max_tokens", DEFAULT_MAX_TOKENS)
    for name in _PASSED_THROUGH:
        if name in present:
            chat[name] = present[name]
    if "stop_sequences" in present:
        chat["stop"] = _strings(present["stop_sequences"], "stop_sequences")
    stream = present.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    if stream:
        # message_delta carries the output tokens: the last chunk must hold the usage.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    budget = _thinking_budget(present.get("thinking"))
    if budget is not None:
        chat["thinking_budget_tokens"] = budget
    return chat


def count_tokens_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request whose prompt /v1/messages/count_tokens measures: the
    conversation and its tools, nothing about generation (no max_tokens needed)."""
    present = _present(body)
    chat = _conversation(present)
    if "chat_template_kwargs" in present:
        chat["chat_template_kwargs"] = present["chat_template_kwargs"]
    return chat


def count_tokens_reply(input_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens}


def _present(body: dict[str, Any]) -> dict[str, Any]:
    """As for every body the server reads, a top-level null means absent."""
    present = {name: value for name, value in body.items() if value is not None}
    if "model" in present and not isinstance(present["model"], str):
        raise BadRequest("'model' must be a string", "model")
    return present


def _conversation(present: dict[str, Any]) -> dict[str, Any]:
    """Messages, tools and tool choice: what the prompt is made of."""
    if "messages" not in present:
        raise BadRequest("'messages' is required", "messages")
    messages = _system(present.get("system")) + _messages(present["messages"])
    chat: dict[str, Any] = {"messages": messages}
    tools = _tools(present["tools"]) if "tools" in present else []
    if "tool_choice" in present:
        choice, tools, parallel = _tool_choice(present["tool_choice"], tools)
        chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if tools:
        chat["tools"] = tools
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        text = _steady_billing_header(system)
    elif isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            where = f"system[{i}]"
            if not isinstance(block, dict) or block.get("type") != "text":
                raise BadRequest(f"'{where}' must be a text block", "system")
            texts.append(_steady_billing_header(_string(block.get("text"), f"{where}.text", "system")))
        # Blocks are paragraphs (Claude Code splits its prompt so): llama-server joins
        # them with nothing between, which runs the last sentence into the next.
        text = "\n\n".join(text for text in texts if text)
    else:
        raise BadRequest("'system' must be a string or a list of text blocks", "system")
    if not text:
        return []
    return [{"role": "system", "content": text}]


# "x-anthropic-billing-header: cc_version=...; cc_entrypoint=cli; cch=a5145;..." opens
# Claude Code's system prompt; cch changes with every request, so the prompt cache
# would stop there. llama-server writes it as fffff (its PR 21793); so does this.
_BILLING_CCH = re.compile(r"\A(x-anthropic-billing-header:.*?cch=).{5}(?=;)")


def _steady_billing_header(text: str) -> str:
    return _BILLING_CCH.sub(r"\g<1>fffff", text, count=1)


def _messages(value: Any) -> list[dict[str, Any]]:
    # An empty list is taken, as llama-server takes it (its test suite holds to that).
    if not isinstance(value, list):
        raise BadRequest("'messages' must be a list of messages", "messages")
    converted: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object", "messages")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f'\'{where}.role\' must be "user" or "assistant"', "messages")
        content = message.get("content")
        if isinstance(content, str):
            converted.append({"role": role, "content": content})
        elif isinstance(content, list):
            converted.extend(_blocks(role, content, where))
        else:
            raise BadRequest(f"'{where}.content' must be a string or a list of content blocks", "messages")
    return converted


class _Turn:
    """One OpenAI message being gathered from an Anthropic message's blocks."""

    def __init__(self, role: str):
        self.role = role
        self.parts: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.reasoning = ""

    def take(self) -> list[dict[str, Any]]:
        """The message gathered so far (none if nothing was), and a fresh start."""
        if not (self.parts or self.tool_calls or self.reasoning):
            return []
        # "" rather than null beside tool calls: templates print content, and null prints "None".
        message: dict[str, Any] = {"role": self.role, "content": self.parts or ""}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        self.parts, self.tool_calls, self.reasoning = [], [], ""
        return [message]


_BLOCKS_OF = {
    "user": "text, image or tool_result",
    "assistant": "text, thinking, redacted_thinking or tool_use",
}


def _blocks(role: str, blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic message's blocks as OpenAI messages, in their order: a
    tool_result becomes a message of its own (role tool), between the text before
    and after it."""
    converted: list[dict[str, Any]] = []
    turn = _Turn(role)
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "image" and role == "user":
            raise _no_image(at)
        if kind == "text":
            turn.parts.append({"type": "text", "text": _string(block.get("text"), f"{at}.text", "messages")})
        elif kind == "tool_result" and role == "user":
            converted += turn.take()
            converted.append(_tool_message(block, at))
        elif kind == "tool_use" and role == "assistant":
            turn.tool_calls.append(_tool_call(block, at))
        elif kind == "thinking" and role == "assistant":
            turn.reasoning += _string(block.get("thinking"), f"{at}.thinking", "messages")
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # encrypted by Anthropic for Anthropic: nothing a local model can read
        else:
            raise BadRequest(f"'{at}' must be a {_BLOCKS_OF[role]} block in a {role} message", "messages")
    return converted + turn.take()


def _no_image(where: str) -> ImageInputUnsupported:
    return ImageInputUnsupported(
        f"image input is not supported ({where}): this model reads text only", "messages"
    )


def _tool_call(block: dict[str, Any], at: str) -> dict[str, Any]:
    call_id = _string(block.get("id"), f"{at}.id", "messages")
    name = _string(block.get("name"), f"{at}.name", "messages")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise BadRequest(f"'{at}.input' must be an object", "messages")
    return {
        "id": call_id,
        "type": "function",
        # Compact, as llama-server writes it: the same history, the same prompt tokens.
        "function": {
            "name": name,
            "arguments": json.dumps(arguments, ensure_ascii=False, separators=(",", ":")),
        },
    }


def _tool_message(block: dict[str, Any], at: str) -> dict[str, Any]:
    call_id = _string(block.get("tool_use_id"), f"{at}.tool_use_id", "messages")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            part_at = f"{at}.content[{k}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                raise _no_image(part_at)
            if kind != "text":
                raise BadRequest(f"'{part_at}' must be a text or image block", "messages")
            texts.append(_string(part.get("text"), f"{part_at}.text", "messages"))
        text = "".join(texts)  # as llama-server joins them
    else:
        raise BadRequest(f"'{at}.content' must be a string or a list of text blocks", "messages")
    # is_error is dropped, as llama-server drops it: OpenAI's tool message has no such flag.
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list of tools", "tools")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"'{where}' must be an object", "tools")
        name = _string(tool.get("name"), f"{where}.name", "tools")
        if not name:
            raise BadRequest(f"'{where}.name' must not be empty", "tools")
        description = tool.get("description", "")
        if not isinstance(description, str):
            raise BadRequest(f"'{where}.description' must be a string", "tools")
        # Anthropic's own client tools (bash_..., text_editor_...) come without a schema.
        schema = tool.get("input_schema", {"type": "object", "properties": {}})
        if not isinstance(schema, dict):
            raise BadRequest(f"'{where}.input_schema' must be an object", "tools")
        function = {"name": name, "description": description, "parameters": schema}
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], bool | None]:
    """OpenAI's tool_choice, the tools the model is offered, and parallel_tool_calls."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise BadRequest('\'tool_choice.type\' must be "auto", "any", "tool" or "none"', "tool_choice")
    disable_parallel = value.get("disable_parallel_tool_use")
    if disable_parallel is not None and not isinstance(disable_parallel, bool):
        raise BadRequest("'tool_choice.disable_parallel_tool_use' must be true or false", "tool_choice")
    parallel = None if disable_parallel is None else not disable_parallel
    if kind in ("any", "tool") and not tools:
        raise BadRequest(f"'tool_choice' of type \"{kind}\" needs 'tools'", "tool_choice")
    if kind == "tool":
        name = _string(value.get("name"), "tool_choice.name", "tool_choice")
        named = [tool for tool in tools if tool["function"]["name"] == name]
        if not named:
            raise BadRequest(f"'tool_choice.name' names no tool in 'tools': {name!r}", "tool_choice")
        # Calling this one tool is calling some tool with it the only one offered,
        # which the chat pipeline's "required" already does (llama-server drops the name).
        return "required", named, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[kind], tools, parallel


def _thinking_budget(thinking: Any) -> int | None:
    """llama-server's thinking_budget_tokens, from an enabled `thinking`."""
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise BadRequest("'thinking' must be an object", "thinking")
    if thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens", 10000)  # llama-server's default
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise BadRequest("'thinking.budget_tokens' must be a non-negative integer", "thinking")
    return budget


def _string(value: Any, where: str, param: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"'{where}' must be a string", param)
    return value


def _strings(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"'{param}' must be a list of strings", param)
    return value


# ------------------------------------------------------------ replies


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def to_message(
    reply: dict[str, Any], *, stop_sequence: str | None = None, message_id: str | None = None
) -> dict[str, Any]:
    """An OpenAI chat.completion as an Anthropic message. `stop_sequence` is the stop
    string that ended the reply, if one did (OpenAI's reply does not say which)."""
    choice = reply["choices"][0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        # Anthropic signs its thinking; a local model's cannot be, and clients want the field.
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    tool_calls = message.get("tool_calls") or []
    for call in tool_calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_tool_use_id(),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments") or ""),
            }
        )
    if not content:
        # Clients read content[0]; an empty reply is one empty text block, not none.
        content.append({"type": "text", "text": ""})
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": reply.get("model", ""),
        "stop_reason": _stop_reason(choice.get("finish_reason"), bool(tool_calls), stop_sequence),
        "stop_sequence": stop_sequence or None,
        "usage": _usage(reply.get("usage") or {}),
    }


def _tool_input(arguments: str) -> dict[str, Any]:
    """The arguments the model wrote, as an object; {} when they are not one (as llama-server)."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _new_tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex}"


def _stop_reason(finish_reason: str | None, called_tools: bool, stop_sequence: str | None) -> str:
    if finish_reason == "length":
        return "max_tokens"
    if called_tools or finish_reason == "tool_calls":
        return "tool_use"
    # llama-server says end_turn here too; Anthropic's clients read stop_sequence for it.
    return "stop_sequence" if stop_sequence else "end_turn"


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    """Anthropic counts the cached prompt tokens apart from the ones evaluated."""
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "cache_read_input_tokens": cached,
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


# ------------------------------------------------------------ streams


class MessageStream:
    """OpenAI chat.completion.chunk dicts in, Anthropic's events out.

    message_start first (from `start`, or the first `feed`), then each content
    block (thinking, text, tool_use) as content_block_start, its deltas and
    content_block_stop, one block open at a time, as Anthropic streams them
    (llama-server leaves every block open to the end, which a client that acts on
    content_block_stop would wait on); then message_delta and message_stop once
    both the finish reason and the usage chunk have come, or at `end`.
    """

    def __init__(
        self, model: str, input_tokens: int = 0, cached_tokens: int = 0, message_id: str | None = None
    ):
        self.id = message_id or new_message_id()
        self._model = model
        self._usage = {"cache_read_input_tokens": cached_tokens, "input_tokens": input_tokens - cached_tokens}
        self._started = False
        self._finished = False
        self._blocks = 0  # blocks started so far: the next one's index
        # The open block's kind ("text", "thinking", "tool:N") and index.
        self._open: tuple[str, int] | None = None
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._finish_reason: str | None = None
        self._finish_seen = False
        self._stop_sequence: str | None = None
        self._final_usage: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """message_stop (or an error event) has been sent: nothing more will be."""
        return self._finished

    def start(self) -> list[Sse]:
        """message_start, if not sent yet: the route may send it before the first token."""
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._usage, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, chunk: dict[str, Any], stop_sequence: str | None = None) -> list[Sse]:
        """The events one chunk makes. `stop_sequence`: the stop string that ended the
        reply, given with (or before) the chunk that carries the finish reason."""
        events = self.start()
        if self._finished:
            return events
        if stop_sequence:
            self._stop_sequence = stop_sequence
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            self._finished = True
            return [*events, ("error", error_body(500, message))]
        for choice in chunk.get("choices") or []:
            events += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason") is not None:
                self._finish_seen = True
                self._finish_reason = choice["finish_reason"]
                events += self._close()
        if chunk.get("usage"):
            self._final_usage = chunk["usage"]
        if self._finish_seen and self._final_usage is not None:
            events += self._message_end()
        return events

    def end(self, stop_sequence: str | None = None) -> list[Sse]:
        """Whatever is left once the chunks have ended (nothing if the usage chunk
        closed the message already): a stream without its usage chunk still ends well."""
        events = self.start()
        if self._finished:
            return events
        if stop_sequence:
            self._stop_sequence = stop_sequence
        return [*events, *self._close(), *self._message_end()]

    def _delta(self, delta: dict[str, Any]) -> list[Sse]:
        events: list[Sse] = []
        if delta.get("reasoning_content"):
            events += self._into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append(
                self._block_delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            )
        if delta.get("content"):
            events += self._into("text", {"type": "text", "text": ""})
            events.append(self._block_delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            events += self._tool_call_piece(call)
        return events

    def _tool_call_piece(self, call: dict[str, Any]) -> list[Sse]:
        events: list[Sse] = []
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self._tool_blocks:
            call_id = call.get("id") or _new_tool_use_id()
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call_id,
                "name": function.get("name") or "",
                "input": {},
            }
            events += self._into(f"tool:{position}", block)
            self._tool_blocks[position] = self._blocks - 1
        if function.get("arguments"):
            # A call's arguments come while its block is open; were they to resume after
            # another block, they still go to their own block rather than be lost.
            index = self._tool_blocks[position]
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(_block_delta(index, delta))
        return events

    def _into(self, kind: str, block: dict[str, Any]) -> list[Sse]:
        """Make a block of `kind` the open one: close the other, start this one."""
        if self._open is not None and self._open[0] == kind:
            return []
        events = self._close()
        index = self._blocks
        self._blocks += 1
        self._open = (kind, index)
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _block_delta(self, delta: dict[str, Any]) -> Sse:
        assert self._open is not None
        return _block_delta(self._open[1], delta)

    def _close(self) -> list[Sse]:
        if self._open is None:
            return []
        kind, index = self._open
        events: list[Sse] = []
        if kind == "thinking":
            # Anthropic closes thinking with its signature; clients wait for one, empty here.
            events.append(self._block_delta({"type": "signature_delta", "signature": ""}))
        self._open = None
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        return events

    def _message_end(self) -> list[Sse]:
        self._finished = True
        events: list[Sse] = []
        if not self._blocks:
            # As to_message answers an empty reply: one empty text block, not none.
            events = [*self._into("text", {"type": "text", "text": ""}), *self._close()]
        called_tools = bool(self._tool_blocks)
        usage: dict[str, int] = {"output_tokens": 0}
        if self._final_usage is not None:
            # Totals, which the SDK writes over message_start's (the cache is known only now).
            usage = _usage(self._final_usage)
        delta = {
            "stop_reason": _stop_reason(self._finish_reason, called_tools, self._stop_sequence),
            "stop_sequence": self._stop_sequence,
        }
        return [
            *events,
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]


def _block_delta(index: int, delta: dict[str, Any]) -> Sse:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def sse_bytes(event: str, data: dict[str, Any]) -> bytes:
    """One event on the wire, named (Anthropic's SDK dispatches on the name)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


# ------------------------------------------------------------ errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """An error in Anthropic's shape; its SDK reads error.type and error.message
    (llama-server's test suite reads error.message, which this shape has too)."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
