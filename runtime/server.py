"""The HTTP server: an OpenAI-compatible API and the chat page.

`create_app(config)` builds the aiohttp application. The model loads in a
worker thread after the server starts listening, so `/health` answers 503
("loading model") at once and 200 as soon as generation can start.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from .backend import Backend
from .engine import Event, QueueFullError, RequestError
from .params import BadRequest, read_generation, read_messages

CONFIG: web.AppKey[ServerConfig] = web.AppKey("config")
STATE: web.AppKey[_State] = web.AppKey("state")
UI_DIR = web.AppKey("ui_dir", Path)

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@dataclass
class ServerConfig:
    load_backend: Callable[[], Backend]
    model_alias: str
    manifest: dict[str, Any] = field(default_factory=dict)
    max_body: int = 10 * 1024 * 1024
    on_ready: Callable[[], None] | None = None
    on_load_error: Callable[[str], None] | None = None
    ui_dir: Path | None = None
    close_backend: bool = True  # False when the caller shares one backend between apps


@dataclass
class _State:
    """What changes while the app runs."""

    backend: Backend | None = None
    load_error: str | None = None
    loader: asyncio.Task[None] | None = None


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body, middlewares=[_errors_middleware])
    app[CONFIG] = config
    app[STATE] = _State()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_get("/props", props)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/", index)
    app[UI_DIR] = config.ui_dir or Path(str(resources.files("llamapack.templates")))
    app.router.add_static("/static/", app[UI_DIR], follow_symlinks=False)
    app.on_startup.append(_start_loading)
    app.on_cleanup.append(_close_backend)
    app.on_response_prepare.append(_security_headers)
    return app


# -------------------------------------------------------------- lifecycle


async def _start_loading(app: web.Application) -> None:
    config, state = app[CONFIG], app[STATE]

    async def load() -> None:
        try:
            state.backend = await asyncio.to_thread(config.load_backend)
        except Exception as exc:  # reported by /health and by the CLI
            state.load_error = str(exc) or type(exc).__name__
            if config.on_load_error:
                config.on_load_error(state.load_error)
            return
        if config.on_ready:
            config.on_ready()

    state.loader = asyncio.get_running_loop().create_task(load())


async def _close_backend(app: web.Application) -> None:
    state = app[STATE]
    if state.loader:
        state.loader.cancel()
    if state.backend is not None and app[CONFIG].close_backend:
        await asyncio.to_thread(state.backend.close)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.path.startswith(("/v1/", "/health")):
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")


# ---------------------------------------------------------------- errors


def error_response(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request_error", exc.param)
    except RequestError as exc:
        return error_response(400, str(exc), "invalid_request_error")
    except EngineFailure as exc:
        return error_response(500, str(exc), "server_error")
    except QueueFullError as exc:
        response = error_response(503, str(exc), "server_overloaded")
        response.headers["Retry-After"] = "1"
        return response
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "the request body is too large", "invalid_request_error")
    except web.HTTPNotFound:
        return error_response(
            404, f"no route for {request.method} {request.path}", "not_found_error"
        )
    except web.HTTPMethodNotAllowed:
        return error_response(405, f"{request.method} is not allowed here", "invalid_request_error")


def _backend(request: web.Request) -> Backend:
    state = request.app[STATE]
    if state.backend is None:
        raise _Unavailable(state.load_error or "the model is still loading")
    return state.backend


class EngineFailure(Exception):
    """Generation failed inside llama.cpp before producing anything."""


class _Unavailable(web.HTTPServiceUnavailable):
    def __init__(self, message: str):
        body = {"error": {"message": message, "type": "unavailable_error", "code": 503}}
        super().__init__(text=json.dumps(body), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


# ---------------------------------------------------------------- routes


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.backend is not None:
        return web.json_response({"status": "ok"})
    if state.load_error:
        return web.json_response({"status": "error", "error": state.load_error}, status=503)
    return web.json_response({"status": "loading model"}, status=503)


async def models(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    model = config.manifest.get("model", {})
    entry = {
        "id": config.model_alias,
        "object": "model",
        "created": 0,
        "owned_by": "llamapack",
        "meta": {k: model.get(k) for k in ("architecture", "parameters", "quantization", "size")},
    }
    return web.json_response({"object": "list", "data": [entry]})


async def props(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    backend = request.app[STATE].backend
    body: dict[str, Any] = {"model_alias": config.model_alias, "manifest": config.manifest}
    if backend is not None:
        body.update(
            n_ctx=backend.engine.n_ctx,
            total_slots=backend.engine.n_parallel,
            chat_template=backend.formatter.label,
        )
    return web.json_response(body)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        request.app[UI_DIR] / "index.html", headers={"Cache-Control": "no-cache"}
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    messages = read_messages(body)
    generation = read_generation(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    backend = _backend(request)
    prompt = await asyncio.to_thread(backend.chat_prompt, messages)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    alias = request.app[CONFIG].model_alias
    events = backend.generate(prompt, generation)
    first = await anext(events)  # raises before any byte is sent if the request is refused

    def envelope(kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": completion_id, "object": kind, "created": created, "model": alias,
                "choices": choices}  # fmt: skip

    if not stream:
        parts, last = [], first
        async for event in _chain(first, events):
            parts.append(event.text)
            last = event
        if last.error and not last.usage.completion_tokens:
            raise EngineFailure(last.error)
        message = {"role": "assistant", "content": "".join(parts)}
        reply = envelope("chat.completion", [
            {"index": 0, "message": message, "finish_reason": last.finish_reason}
        ])  # fmt: skip
        reply["usage"] = _usage(last)
        reply["timings"] = last.usage.timings()
        return web.json_response(reply)

    stream_options = body.get("stream_options") or {}
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    response = _sse_response()
    await response.prepare(request)
    try:
        await _send(response, envelope("chat.completion.chunk", [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ]))  # fmt: skip
        last = first
        async for event in _chain(first, events):
            last = event
            if event.text:
                await _send(response, envelope("chat.completion.chunk", [
                    {"index": 0, "delta": {"content": event.text}, "finish_reason": None}
                ]))  # fmt: skip
        final = envelope("chat.completion.chunk", [
            {"index": 0, "delta": {}, "finish_reason": last.finish_reason}
        ])  # fmt: skip
        if last.error:
            final["error"] = {"message": last.error, "type": "server_error"}
        final["timings"] = last.usage.timings()
        await _send(response, final)
        if include_usage:
            usage_chunk = envelope("chat.completion.chunk", [])
            usage_chunk["usage"] = _usage(last)
            await _send(response, usage_chunk)
        await response.write(b"data: [DONE]\n\n")
    except ConnectionError:
        pass  # the client left; closing the generator below cancels the request
    finally:
        await events.aclose()
    return response


# --------------------------------------------------------------- helpers


async def _chain(first: Event, rest: Any) -> Any:
    yield first
    if first.finish_reason is None:
        async for event in rest:
            yield event


def _usage(event: Event) -> dict[str, int]:
    usage = event.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())
