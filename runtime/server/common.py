"""What every route module shares: the app's keys, errors in OpenAI's shape, SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from llamapack.runtime.backend import Backend
from llamapack.runtime.engine.events import Event
from llamapack.runtime.fileformat import Manifest
from llamapack.runtime.server.requests import BadRequest


@dataclass
class ServerConfig:
    load_backend: Callable[[], Backend]
    model_alias: str
    manifest: Manifest | None = None  # None when serving a GGUF given with -m
    max_body: int = 10 * 1024 * 1024
    on_ready: Callable[[], None] | None = None
    on_load_error: Callable[[str], None] | None = None
    ui_dir: Path | None = None
    close_backend: bool = True  # False when the caller shares one backend between apps
    api_key: str | None = None  # when set, API routes want `Authorization: Bearer <key>` or `x-api-key`
    # The address the server is bound to: the Host header must name it (or a
    # loopback name) unless `allow_hosts` does, against DNS rebinding.
    bind_host: str = "127.0.0.1"
    allow_hosts: tuple[str, ...] = ()
    cors_origin: str | None = None  # the one foreign web origin that may call the API


@dataclass
class State:
    """What changes while the app runs."""

    backend: Backend | None = None
    load_error: str | None = None
    loader: asyncio.Task[None] | None = None


CONFIG: web.AppKey[ServerConfig] = web.AppKey("config", ServerConfig)
STATE: web.AppKey[State] = web.AppKey("state", State)


class EngineFailure(Exception):
    """Generation failed inside llama.cpp before producing anything."""


class NotServed(Exception):
    """A feature this server was not started with (embeddings without --embedding)."""


def error_response(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class Unavailable(web.HTTPServiceUnavailable):
    def __init__(self, message: str):
        body = {"error": {"message": message, "type": "unavailable_error", "code": 503}}
        super().__init__(text=json.dumps(body), content_type="application/json")


def backend_of(request: web.Request) -> Backend:
    state = request.app[STATE]
    if state.backend is None:
        raise Unavailable(state.load_error or "the model is still loading")
    return state.backend


async def json_body(request: web.Request) -> dict[str, Any]:
    # JSON is UTF-8 (RFC 8259): a declared charset is ignored, so a bogus one
    # cannot raise LookupError; nesting deep enough to exhaust the parser's
    # recursion is refused like any other malformed body.
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_json_number)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return _without_lone_surrogates(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser takes NaN and Infinity; JSON does not


def _json_number(text: str) -> float | int:
    """JSON has one kind of number: 2.0 is the integer 2, as JSON Schema (and so
    /openapi.json) reads it, and an integer field takes it."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _without_lone_surrogates(body: dict[str, Any]) -> dict[str, Any]:
    """JSON's `\\ud800` escapes decode to strings that cannot be encoded as UTF-8
    (tokenizer, templates, replies); they become U+FFFD, as invalid bytes would."""

    def clean(text: str) -> str:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")

    # Iterative, so a deeply nested body cannot exhaust the stack here either.
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in list(node):
                value = node[key]
                if isinstance(value, str):
                    value = clean(value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
                if isinstance(key, str) and clean(key) != key:
                    del node[key]
                    node[clean(key)] = value
                else:
                    node[key] = value
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, str):
                    node[i] = clean(value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
    return body


async def collect(events: AsyncIterator[Event]) -> tuple[str, Event, list[Event]]:
    """Run a request to its end: the text, the final event and every event with text."""
    parts: list[Event] = []
    last = Event()
    async for event in events:
        if event.text or event.logprobs:
            parts.append(event)
        last = event
    if last.error and not last.usage.completion_tokens:
        raise EngineFailure(last.error)
    return "".join(e.text for e in parts), last, parts


async def started(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Wait for the first event, so a refused request fails before any byte is sent."""
    first = await anext(events)
    if first.error and first.finish_reason is not None:
        raise EngineFailure(first.error)  # nothing was generated: a plain error, not a stream

    async def chain() -> AsyncIterator[Event]:
        yield first
        if first.finish_reason is None:
            async for event in events:
                yield event

    return chain()


def openai_usage(event: Event) -> dict[str, Any]:
    usage = event.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )


async def stream_events(
    request: web.Request,
    events: AsyncIterator[Event],
    chunk: Callable[[Event], dict[str, Any]],
    closing: Callable[[Event], list[dict[str, Any]]],
    opening: dict[str, Any] | None = None,
    done_marker: bool = True,
) -> web.StreamResponse:
    """Server-sent events: `opening`, one `chunk` per event with text, the `closing`
    chunks made from the last event, then OpenAI's `[DONE]`. A client that leaves
    ends it quietly: the caller's `aclose` of `events` cancels the request."""
    response = sse_response()
    await response.prepare(request)
    try:
        if opening is not None:
            await send_event(response, opening)
        last = Event()
        async for event in events:
            last = event
            if event.text:
                await send_event(response, chunk(event))
        for payload in closing(last):
            await send_event(response, payload)
        if done_marker:
            await response.write(b"data: [DONE]\n\n")
    except ConnectionError:
        pass
    return response


async def send_event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())


def piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")
