"""What every route module shares: the app's keys, errors in OpenAI's shape, SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from llamapack.runtime.backend import Backend
from llamapack.runtime.engine.events import Event
from llamapack.runtime.engine.stats import EngineStats
from llamapack.runtime.fileformat import ChatTemplateChoice, Manifest, UiMode
from llamapack.runtime.server.requests import BadRequest

if TYPE_CHECKING:
    from llamapack.runtime.server.vertex import VertexSettings


@dataclass
class ServerConfig:
    load_backend: Callable[[], Backend]
    model_alias: str  # the model's id in the API
    manifest: Manifest | None = None  # None when serving a GGUF given with -m
    model_aliases: tuple[str, ...] = ()  # every name the model answers to (--alias a,b), id included
    model_tags: tuple[str, ...] = ()
    model_path: str = ""  # the GGUF (inside a built file: FILE/MEMBER, as in a ZIP path)
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
    metrics: bool = False  # serve /metrics (--metrics)
    slots: bool = True  # serve /slots
    ui: bool = True  # serve the chat page
    # Server-wide defaults for the request fields a request leaves out (--temp,
    # --seed, ...), by request field name, as llama-server applies its flags.
    request_defaults: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None  # the system message of chats that bring none (--system-prompt)
    reasoning_format: str = "auto"  # where <think> text goes, unless a request says (--reasoning-format)
    mcp_proxy: bool = False  # /cors-proxy fetches URLs for the caller (--ui-mcp-proxy)
    vertex: VertexSettings | None = None  # Vertex AI's /predict (AIP_MODE=PREDICTION)
    sleep_idle_seconds: float = -1  # free the model after this long unused; -1: never
    verbose: bool = False  # replies carry `__verbose` (the prompt as the model saw it), as llama-server's
    # The mode the page opens in (--ui-mode): "chat" or "completion"; None: as the
    # manifest says, else as ui_mode.py's rule decides for the model.
    ui_mode: Literal["chat", "completion"] | None = None
    chat_template: ChatTemplateChoice | None = None  # the template the model runs with, for that rule


@dataclass
class State:
    """What changes while the app runs."""

    backend: Backend | None = None
    load_error: str | None = None
    loader: asyncio.Task[None] | None = None
    sleeping: bool = False  # the model was freed after --sleep-idle-seconds; a request loads it again
    stats: EngineStats | None = None  # the engine's counters, kept while it sleeps
    ui_mode: UiMode | None = None  # the page's mode, once decided with the model loaded


CONFIG: web.AppKey[ServerConfig] = web.AppKey("config", ServerConfig)
STATE: web.AppKey[State] = web.AppKey("state", State)


class EngineFailure(Exception):
    """Generation failed inside llama.cpp before producing anything."""


class NotServed(Exception):
    """A feature this server was not started with (embeddings without --embedding)."""


def error_response(
    status: int, message: str, kind: str, param: str | None = None, **details: Any
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status, **details}}
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


# A body already parsed, set on an internal request (vertex.py's /predict instances).
BODY_OVERRIDE: web.RequestKey[dict[str, Any]] = web.RequestKey("body", dict)


async def json_body(request: web.Request) -> dict[str, Any]:
    override = request.get(BODY_OVERRIDE)
    if override is not None:
        return dict(override)
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
    if last.error:  # a reply cut short by a failure is an error, not a shorter reply (llama-server's)
        raise EngineFailure(last.error)
    return "".join(e.text for e in parts), last, parts


class StartedEvents:
    """A request's events once its first has come; `aclose` cancels the request,
    whether or not anyone has read on."""

    def __init__(self, first: Event, rest: AsyncGenerator[Event, None]):
        self._first: Event | None = first
        self._ended = first.finish_reason is not None
        self._rest = rest

    def __aiter__(self) -> StartedEvents:
        return self

    async def __anext__(self) -> Event:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._ended:
            raise StopAsyncIteration
        return await anext(self._rest)

    async def aclose(self) -> None:
        await self._rest.aclose()


async def started(events: AsyncGenerator[Event, None]) -> StartedEvents:
    """Wait for the first event, so a refused request fails before any byte is sent."""
    first = await anext(events)
    if first.error and first.finish_reason is not None:
        raise EngineFailure(first.error)  # nothing was generated: a plain error, not a stream
    return StartedEvents(first, events)


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


async def send_chunks(
    request: web.Request, chunks: AsyncIterator[dict[str, Any]], done_marker: bool = True
) -> web.StreamResponse:
    """Server-sent events, one per object of `chunks`, then OpenAI's `[DONE]`. A client
    that leaves ends it quietly, and closing `chunks` cancels what runs."""
    response = sse_response()
    try:
        await response.prepare(request)
        async for payload in chunks:
            await send_event(response, payload)
        if done_marker:
            await response.write(b"data: [DONE]\n\n")
    except ConnectionError:
        pass
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    return response


async def send_sse(request: web.Request, events: AsyncIterator[bytes]) -> web.StreamResponse:
    """Server-sent events already encoded (Anthropic's and OpenAI Responses' name each
    event); closing `events` cancels what runs, also when the client leaves."""
    response = sse_response()
    try:
        await response.prepare(request)
        async for data in events:
            await response.write(data)
    except ConnectionError:
        pass
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return response


async def send_event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())


def piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")
