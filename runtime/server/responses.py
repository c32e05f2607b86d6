"""OpenAI's Responses API (/v1/responses) as a translation of the chat completion.

llama-server answers /v1/responses by rewriting the request into a chat
completion and the chat results back into Responses objects and events
(tools/server/server-chat.cpp, server-task.cpp); this module is that rewrite,
model-free: `to_chat_request` for the request (`responses_error` for the chat
checks' errors), `to_response` for a whole reply,
`ResponseStream` for a streamed one, `sse_bytes` for its wire form. The shapes
are those the official `openai` SDK parses (its pydantic types validate them in
tests/runtime/server/test_responses.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamapack.runtime.server.requests import BadRequest

# An SSE event as it goes out: its `event:` name and its `data:` object.
StreamEvent = tuple[str, dict[str, Any]]

# Responses fields that this translation consumes or that refer to state kept
# by OpenAI: none of them reaches the chat request. Every other field passes
# through, as llama-server copies the body, so its own sampling fields work here too.
_CONSUMED = frozenset(
    {
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "reasoning",
        "text",
        "include",
        "top_logprobs",
        "stream_options",
        "previous_response_id",
        "conversation",
        "prompt",
    }
)
# Stored server-side state that llama.cpp does not keep: answering without it
# would be answering another question.
_STORED_STATE = {
    "previous_response_id": "llama.cpp does not support 'previous_response_id'.",
    "conversation": "llama.cpp does not support 'conversation': send the whole input.",
    "prompt": "llama.cpp does not support stored prompts ('prompt').",
}
_LOGPROBS_INCLUDE = "message.output_text.logprobs"
_LENGTH = "length"  # the chat finish reason for a reply cut at its token limit


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ------------------------------------------------------------ request


def to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request body as the chat completion request that answers it.

    BadRequest, naming the Responses field, for what llama-server refuses and
    for the stored state (earlier responses, conversations) it does not keep."""
    if body.get("input") is None:
        raise BadRequest("'input' is required", "input")
    for name, message in _STORED_STATE.items():
        if body.get(name) not in (None, ""):
            raise BadRequest(message, name)
    chat = {name: value for name, value in body.items() if name not in _CONSUMED}
    chat["messages"] = _instructions(body.get("instructions")) + _input_messages(body["input"])
    if body.get("tools") is not None:
        tools = _chat_tools(body["tools"])
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    if _wants_logprobs(body):
        chat["logprobs"] = True
        chat["top_logprobs"] = body.get("top_logprobs") or 0
    if body.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}  # the usage response.completed carries
    return chat


def _instructions(instructions: Any) -> list[dict[str, Any]]:
    if instructions is None:
        return []
    if not isinstance(instructions, str):
        raise BadRequest("'instructions' must be a string", "instructions")
    return [{"role": "system", "content": instructions}]


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """`input`: a user's text, or a list of items, as chat messages.

    An assistant's turn comes as several items (reasoning, message, function
    calls): consecutive ones fold into one assistant message, as llama-server does."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequest("'input' must be a string or a list of items", "input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object", "input")
        kind = item.get("type")
        if kind == "item_reference":
            raise BadRequest(f"'{where}': llama.cpp keeps no items to refer to", "input")
        if kind == "function_call":
            _fold_into_assistant(messages, {"tool_calls": [_chat_tool_call(item, where)]})
        elif kind == "function_call_output":
            messages.append(_tool_result(item, where))
        elif kind == "reasoning":
            text = _reasoning_text(item, where)
            if text:
                _fold_into_assistant(messages, {"reasoning_content": text})
        elif kind in (None, "message") and "role" in item:
            _add_message(messages, item, where)
        else:
            raise BadRequest(
                f"'{where}' must be a message, function_call, function_call_output or reasoning item", "input"
            )
    return messages


def _add_message(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    role = item["role"]
    content = item.get("content")
    if role == "assistant":
        parts = _content_parts(content, f"{where}.content", _ASSISTANT_PARTS)
        _fold_into_assistant(messages, {"content": parts})
    elif role in ("user", "system", "developer"):
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        else:
            parts = _content_parts(content, f"{where}.content", _INPUT_PARTS)
            messages.append({"role": role, "content": parts})
    else:
        raise BadRequest(f"'{where}.role' must be one of user, assistant, system or developer", "input")


def _fold_into_assistant(messages: list[dict[str, Any]], turn: dict[str, Any]) -> None:
    """Adds content parts, tool calls or reasoning to the assistant message that
    ends `messages`, or starts one."""
    if not messages or messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant"})
    last = messages[-1]
    for name, value in turn.items():
        if name == "reasoning_content":
            last[name] = last.get(name, "") + value
        else:
            last.setdefault(name, []).extend(value)


def _text_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(part.get("text"), str):
        raise BadRequest(f"'{where}.text' must be a string", "input")
    return {"type": "text", "text": part["text"]}


def _image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(part.get("image_url"), str):
        raise BadRequest(f"'{where}.image_url' is required (llama.cpp keeps no files)", "input")
    return {"type": "image_url", "image_url": {"url": part["image_url"]}}


def _refusal_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(part.get("refusal"), str):
        raise BadRequest(f"'{where}.refusal' must be a string", "input")
    return {"type": "refusal", "refusal": part["refusal"]}


def _no_files(part: dict[str, Any], where: str) -> dict[str, Any]:
    raise BadRequest(f"'{where}': 'input_file' is not supported by llama.cpp", "input")


PartConverter = Callable[[dict[str, Any], str], dict[str, Any]]
# Which Responses content parts each side of a conversation may hold, and their chat form.
_INPUT_PARTS: dict[str, PartConverter] = {
    "input_text": _text_part,
    "input_image": _image_part,
    "input_file": _no_files,
}
_TOOL_OUTPUT_PARTS: dict[str, PartConverter] = {"input_text": _text_part, "input_image": _image_part}
# An assistant's text comes back as output_text; a plain string is read as input_text (llama-server's).
_ASSISTANT_PARTS: dict[str, PartConverter] = {
    "output_text": _text_part,
    "input_text": _text_part,
    "refusal": _refusal_part,
}


def _content_parts(content: Any, where: str, allowed: dict[str, PartConverter]) -> list[dict[str, Any]]:
    """`content` (found at `where`) as chat content parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"'{where}' must be a string or a list of content parts", "input")
    parts = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        convert = allowed.get(kind) if isinstance(kind, str) else None
        if convert is None:
            raise BadRequest(f"'{at}.type' must be one of {', '.join(allowed)}", "input")
        parts.append(convert(part, at))
    return parts


def _chat_tool_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise BadRequest(f"'{where}.{name}' must be a string", "input")
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }


def _tool_result(item: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str):
        raise BadRequest(f"'{where}.call_id' must be a string", "input")
    output = item.get("output")
    if not isinstance(output, str):
        output = _content_parts(output, f"{where}.output", _TOOL_OUTPUT_PARTS)
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """The text of a reasoning item given back: its reasoning_text content (what
    this server sends), else its summary."""
    parts = item.get("content") or item.get("summary") or []
    if not isinstance(parts, list):
        raise BadRequest(f"'{where}.content' must be a list of reasoning_text parts", "input")
    texts = [part.get("text") for part in parts if isinstance(part, dict)]
    if not all(isinstance(text, str) for text in texts):
        raise BadRequest(f"'{where}.content[].text' must be a string", "input")
    return "".join(str(text) for text in texts)


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Responses' flat function tools as chat's nested ones. Tools of other types
    (web search, files, ...) have no chat form: llama-server skips them, and so here."""
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be a list of tools", "tools")
    converted = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"'tools[{index}]' must be an object", "tools")
        if tool.get("type") != "function":
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise BadRequest(f"'tools[{index}].name' is required", "tools")
        function = {name: value for name, value in tool.items() if name != "type"}
        function.setdefault("strict", True)  # the Responses default, unlike chat's
        converted.append({"type": "function", "function": function})
    return converted


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            return choice["mode"]
    raise BadRequest("'tool_choice' must be auto, none, required, a function or allowed_tools", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    """`text.format` as the chat request's `response_format`."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise BadRequest("'text' must be an object", "text")
    spec = text.get("format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(spec.get("schema"), dict):
            raise BadRequest("'text.format.schema' must be a JSON schema object", "text")
        schema = {name: spec[name] for name in ("name", "description", "schema", "strict") if name in spec}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest("'text.format.type' must be one of text, json_object or json_schema", "text")


# Chat request fields a Responses field became, for the chat checks' errors.
_RESPONSES_FIELDS = {
    "max_tokens": "max_output_tokens",
    "response_format": "text",
    "reasoning_effort": "reasoning",
    "messages": "input",
}


def responses_error(error: BadRequest) -> BadRequest:
    """A BadRequest from the checks of the chat request, naming the Responses
    field that became the chat field it names (the message keeps chat's path
    into `messages`, whose indexes `instructions` shifts)."""
    field = _RESPONSES_FIELDS.get(error.param or "")
    if field is None:
        return error
    message = str(error)
    if error.param != "messages":
        message = message.replace(f"'{error.param}'", f"'{field}'", 1)
    return BadRequest(message, field)


def _wants_logprobs(body: dict[str, Any]) -> bool:
    include = body.get("include")
    return isinstance(include, list) and _LOGPROBS_INCLUDE in include


# ------------------------------------------------------------ response


def to_response(chat_reply: dict[str, Any], request_body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as the Responses object answering `request_body`."""
    choice = chat_reply["choices"][0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(_new_id("rs"), message["reasoning_content"]))
    if message.get("content"):
        logprobs = _logprobs(choice)
        output.append(_message_item(_new_id("msg"), message["content"], logprobs))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            _function_call_item(call.get("id"), function.get("name", ""), function.get("arguments", ""))
        )
    truncated = choice.get("finish_reason") == _LENGTH
    if truncated and output:
        output[-1]["status"] = "incomplete"
    reply = _response_object(
        request_body,
        response_id=_new_id("resp"),
        created_at=chat_reply.get("created") or int(time.time()),
        model=chat_reply.get("model", ""),
        status="incomplete" if truncated else "completed",
        output=output,
        usage=_usage(chat_reply.get("usage")),
    )
    if "timings" in chat_reply:
        reply["timings"] = chat_reply["timings"]  # llama-server's speeds, as on its chat replies
    return reply


def _response_object(
    request_body: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Responses object, with the request's settings echoed as OpenAI does
    (the SDK's `Response` type requires them)."""
    reasoning = request_body.get("reasoning")
    text = request_body.get("text")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request_body.get("instructions"),
        "max_output_tokens": request_body.get("max_output_tokens"),
        "metadata": request_body.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": request_body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": None,
        },
        "store": False,  # nothing is kept: previous_response_id cannot refer to it
        "temperature": request_body.get("temperature"),
        "text": {"format": (text.get("format") if isinstance(text, dict) else None) or {"type": "text"}},
        "tool_choice": request_body.get("tool_choice") or "auto",
        "tools": [tool for tool in request_body.get("tools") or [] if isinstance(tool, dict)],
        "top_logprobs": request_body.get("top_logprobs"),
        "top_p": request_body.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": request_body.get("user"),
    }


def _reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "encrypted_content": "",
        "status": status,
    }


def _output_text(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(
    item_id: str, text: str, logprobs: list[dict[str, Any]], status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [_output_text(text, logprobs)],
    }


def _function_call_item(
    chat_id: str | None, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """A function call, its `call_id` the chat tool call's id (what the client
    sends back in function_call_output, and the next request turns into a
    tool_call_id), `call_`-prefixed as llama-server's."""
    bare = (chat_id or uuid.uuid4().hex).removeprefix("call_")
    return {
        "id": f"fc_{bare}",
        "type": "function_call",
        "status": status,
        "call_id": f"call_{bare}",
        "name": name,
        "arguments": arguments,
    }


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat logprobs as output_text's: the same entries, without chat's extras."""
    entries = (choice.get("logprobs") or {}).get("content") or []

    def entry(logprob: dict[str, Any]) -> dict[str, Any]:
        return {"token": logprob["token"], "logprob": logprob["logprob"], "bytes": logprob.get("bytes") or []}

    return [
        {**entry(logprob), "top_logprobs": [entry(top) for top in logprob.get("top_logprobs") or []]}
        for logprob in entries
    ]


def _usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if chat_usage is None:
        return None
    prompt = chat_usage.get("prompt_tokens", 0)
    completion = chat_usage.get("completion_tokens", 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": prompt,
        # cache_write_tokens counts OpenAI's explicit (billed) cache writes; llama.cpp has none.
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": chat_usage.get("total_tokens", prompt + completion),
    }


# ------------------------------------------------------------ streaming


@dataclass
class _Item:
    """The output item being streamed: its place, its id and what it has so far."""

    kind: str  # "reasoning", "message" or "function_call"
    index: int  # output_index
    item_id: str
    text: str = ""  # the reasoning or message text, or the call's arguments
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    tool_index: int | None = None  # the chat tool call's index


class ResponseStream:
    """Chat completion chunks in, Responses events out, for one streamed response.

    `feed` each chunk as it comes (chat.completion.chunk dicts: deltas, the
    finish reason, the usage chunk, llama-server's `timings` and
    `prompt_progress`), then call `finish` once: each returns the events to send,
    in order, numbered by `sequence_number`. The first events are
    response.created and response.in_progress; items open and close as the
    deltas move from reasoning to text to tool calls; the last event is
    response.completed (with status incomplete when the reply hit its token
    limit: llama-server's clients wait for response.completed) or response.failed."""

    def __init__(self, request_body: dict[str, Any]) -> None:
        self.id = _new_id("resp")
        self._body = request_body
        self._created_at = int(time.time())
        self._model = str(request_body.get("model") or "")
        self._sequence = 0
        self._started = False
        self._finished = False
        self._open: _Item | None = None
        self._output: list[dict[str, Any]] = []  # the closed items, in output order
        self._item_count = 0
        self._tool_indexes: set[int] = set()
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._timings: dict[str, Any] | None = None
        self._error: str | None = None

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("the response stream is finished")
        events: list[StreamEvent] = []
        if chunk.get("model"):
            self._model = chunk["model"]
        progress = chunk.get("prompt_progress")
        if not self._started:
            events += self._opening()
        elif progress is not None:
            events.append(self._event("response.in_progress", response=self._snapshot("in_progress")))
        if progress is not None:
            events[-1][1]["prompt_progress"] = progress  # llama-server's, on the in_progress event
        for choice in chunk.get("choices") or []:
            events += self._delta(choice.get("delta") or {}, choice)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        if chunk.get("usage") is not None:
            self._usage = _usage(chunk["usage"])
        if chunk.get("error"):
            error = chunk["error"]
            self._error = str(error.get("message") if isinstance(error, dict) else error)
        if chunk.get("timings") is not None:
            self._timings = chunk["timings"]
            if events:
                events[-1][1]["timings"] = chunk["timings"]
        return events

    def finish(self) -> list[StreamEvent]:
        """The closing events: the open item's done events, then the response's last."""
        if self._finished:
            raise RuntimeError("the response stream is finished")
        self._finished = True
        events = [] if self._started else self._opening()
        truncated = self._finish_reason == _LENGTH and self._error is None
        events += self._close(status="incomplete" if truncated else "completed")
        if self._error is not None:
            error = {"code": "server_error", "message": self._error}
            last = self._event("response.failed", response=self._snapshot("failed", error=error))
        else:
            status = "incomplete" if truncated else "completed"
            last = self._event("response.completed", response=self._snapshot(status))
        if self._timings is not None:
            last[1]["timings"] = self._timings
        return [*events, last]

    # -------------------------------------------------------- events

    def _event(self, kind: str, **fields: Any) -> StreamEvent:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return kind, data

    def _snapshot(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return _response_object(
            self._body,
            response_id=self.id,
            created_at=self._created_at,
            model=self._model,
            status=status,
            output=list(self._output) if status != "in_progress" else [],
            usage=self._usage if status != "in_progress" else None,
            error=error,
        )

    def _opening(self) -> list[StreamEvent]:
        self._started = True
        return [
            self._event("response.created", response=self._snapshot("in_progress")),
            self._event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def _delta(self, delta: dict[str, Any], choice: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if delta.get("reasoning_content"):
            events += self._reasoning_delta(delta["reasoning_content"])
        if delta.get("content"):
            events += self._text_delta(delta["content"], _logprobs(choice))
        for piece in delta.get("tool_calls") or []:
            events += self._tool_call_piece(piece)
        return events

    def _start(self, kind: str, item_id: str, **known: Any) -> tuple[_Item, list[StreamEvent]]:
        """Closes the open item and opens one of `kind`."""
        events = self._close(status="completed")
        item = _Item(kind, self._item_count, item_id, **known)
        self._item_count += 1
        self._open = item
        events.append(
            self._event(
                "response.output_item.added", output_index=item.index, item=self._item(item, "in_progress")
            )
        )
        return item, events

    def _reasoning_delta(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        item = self._open
        if item is None or item.kind != "reasoning":
            item, events = self._start("reasoning", _new_id("rs"))
            part = {"type": "reasoning_text", "text": ""}
            events.append(self._part_event("response.content_part.added", item, part=part))
        item.text += text
        events.append(self._part_event("response.reasoning_text.delta", item, delta=text))
        return events

    def _text_delta(self, text: str, logprobs: list[dict[str, Any]]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        item = self._open
        if item is None or item.kind != "message":
            item, events = self._start("message", _new_id("msg"))
            part = _output_text("", [])
            events.append(self._part_event("response.content_part.added", item, part=part))
        item.text += text
        item.logprobs += logprobs
        events.append(self._part_event("response.output_text.delta", item, delta=text, logprobs=logprobs))
        return events

    def _tool_call_piece(self, piece: dict[str, Any]) -> list[StreamEvent]:
        """One piece of a streamed tool call: its first opens a function_call item
        (chat streams each call's pieces together, under its `index`)."""
        events: list[StreamEvent] = []
        function = piece.get("function") or {}
        tool_index = piece.get("index", 0)
        item = self._open
        if item is None or item.kind != "function_call" or item.tool_index != tool_index:
            if tool_index in self._tool_indexes:
                raise ValueError(f"tool call {tool_index} resumed after another output item")
            self._tool_indexes.add(tool_index)
            shape = _function_call_item(piece.get("id"), function.get("name") or "", "")
            item, events = self._start(
                "function_call",
                shape["id"],
                call_id=shape["call_id"],
                name=shape["name"],
                tool_index=tool_index,
            )
        elif function.get("name"):
            item.name += function["name"]  # a name sent in pieces
        if function.get("arguments"):
            item.text += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.item_id,
                    output_index=item.index,
                    delta=function["arguments"],
                )
            )
        return events

    def _part_event(self, kind: str, item: _Item, **fields: Any) -> StreamEvent:
        return self._event(kind, item_id=item.item_id, output_index=item.index, content_index=0, **fields)

    def _close(self, status: str) -> list[StreamEvent]:
        """The done events of the open item, if any; `status` is its final one."""
        item = self._open
        if item is None:
            return []
        self._open = None
        events: list[StreamEvent] = []
        if item.kind == "reasoning":
            part = {"type": "reasoning_text", "text": item.text}
            events.append(self._part_event("response.reasoning_text.done", item, text=item.text))
            events.append(self._part_event("response.content_part.done", item, part=part))
        elif item.kind == "message":
            events.append(
                self._part_event("response.output_text.done", item, text=item.text, logprobs=item.logprobs)
            )
            part = _output_text(item.text, item.logprobs)
            events.append(self._part_event("response.content_part.done", item, part=part))
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.item_id,
                    output_index=item.index,
                    arguments=item.text,
                )
            )
        done = self._item(item, status)
        self._output.append(done)
        events.append(self._event("response.output_item.done", output_index=item.index, item=done))
        return events

    @staticmethod
    def _item(item: _Item, status: str) -> dict[str, Any]:
        """`item` as an output item: empty when just added, whole when done."""
        added = status == "in_progress"
        if item.kind == "reasoning":
            shape = _reasoning_item(item.item_id, item.text, status)
            if added:
                shape["content"] = []
            return shape
        if item.kind == "message":
            shape = _message_item(item.item_id, item.text, item.logprobs, status)
            if added:
                shape["content"] = []
            return shape
        return {
            "id": item.item_id,
            "type": "function_call",
            "status": status,
            "call_id": item.call_id,
            "name": item.name,
            "arguments": "" if added else item.text,
        }


def sse_bytes(event_type: str, data: dict[str, Any]) -> bytes:
    """One event on the wire, named as the SDK and llama-server expect (no [DONE] follows)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n".encode()
