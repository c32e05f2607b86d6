"""The HTTP server: the app factory, shared middleware and the small routes.

`create_app(config)` builds the aiohttp application: OpenAI's API
(`api_openai`), llama-server's native routes (`api_llamacpp`), /health, /props
and the chat page. The model loads in a worker thread after the server starts
listening, so `/health` answers 503 ("loading model") at once and 200 as soon
as generation can start.
"""

from __future__ import annotations

import asyncio
import hmac
from importlib import resources
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama
from aiohttp import web

from . import __version__, api_llamacpp, api_openai
from .api_common import (
    CONFIG,
    STATE,
    EngineFailure,
    NotServed,
    ServerConfig,
    State,
    error_response,
)
from .engine import QueueFullError, RequestError
from .params import BadRequest

UI_DIR = web.AppKey("ui_dir", Path)

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
# Open without the API key: the page itself, its files and the probe.
_PUBLIC = ("/", "/health", "/favicon.ico")


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body, middlewares=[_errors_middleware, _auth_middleware])
    app[CONFIG] = config
    app[STATE] = State()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/props", props)
    api_openai.add_routes(app)
    api_llamacpp.add_routes(app)
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


# ------------------------------------------------------------- middleware


@web.middleware
async def _errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure leaves as OpenAI's error object with the matching status."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request_error", exc.param)
    except RequestError as exc:
        return error_response(400, str(exc), "invalid_request_error")
    except NotServed as exc:
        return error_response(501, str(exc), "not_supported_error")
    except EngineFailure as exc:
        return error_response(500, str(exc), "server_error")
    except QueueFullError as exc:
        response = error_response(503, str(exc), "server_overloaded")
        response.headers["Retry-After"] = "1"
        return response
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "the request body is too large", "invalid_request_error")
    except web.HTTPNotFound:
        return error_response(404, f"no route for {request.method} {request.path}", "not_found_error")
    except web.HTTPMethodNotAllowed:
        return error_response(405, f"{request.method} is not allowed here", "invalid_request_error")


@web.middleware
async def _auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app[CONFIG].api_key
    if key and request.path not in _PUBLIC and not request.path.startswith("/static/"):
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), key):
            return error_response(401, "invalid or missing API key", "authentication_error")
    return await handler(request)


# ---------------------------------------------------------------- routes


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.backend is not None:
        return web.json_response({"status": "ok"})
    if state.load_error:
        return web.json_response({"status": "error", "error": state.load_error}, status=503)
    return web.json_response({"status": "loading model"}, status=503)


async def props(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    backend = request.app[STATE].backend
    body: dict[str, Any] = {
        "model_alias": config.model_alias,
        "manifest": config.manifest,
        "build_info": f"llamapack {__version__}, llama-cpp-python {llama_cpp.__version__}",
        "system_info": llama.llama_print_system_info().decode(errors="replace").strip(),
        "modalities": {"vision": False, "audio": False},
    }
    if backend is not None:
        engine = backend.engine
        body.update(
            n_ctx=engine.n_ctx,
            total_slots=engine.n_parallel,
            chat_template=backend.formatter.label,
            bos_token=backend.model.bos_text,
            eos_token=backend.model.eos_text,
            embeddings=backend.embedder is not None,
            default_generation_settings={
                "n_ctx": engine.n_ctx,
                "params": api_llamacpp.generation_settings(),
            },
        )
    return web.json_response(body)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[UI_DIR] / "index.html", headers={"Cache-Control": "no-cache"})


__all__ = ["ServerConfig", "create_app", "error_response"]
