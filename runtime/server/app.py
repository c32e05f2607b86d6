"""The HTTP server: the app factory, shared middleware and the small routes.

`create_app(config)` builds the aiohttp application: OpenAI's API
(`api_openai`), llama-server's native routes (`api_llamacpp`), /health, /props
and the chat page. The model loads in a worker thread after the server starts
listening, so `/health` answers 503 ("loading model") at once and 200 as soon
as generation can start.
"""

from __future__ import annotations

import asyncio
import mimetypes
import traceback
from importlib import resources
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama
from aiohttp import web, web_fileresponse
from aiohttp.typedefs import Handler

from llamapack.runtime import __version__
from llamapack.runtime.engine.events import EngineStopped, PromptTooLong, QueueFullError, RequestError
from llamapack.runtime.server import (
    anthropic_routes,
    cors_proxy,
    guard,
    llamacpp_routes,
    openai_routes,
    openapi,
    responses_routes,
    sleep,
)
from llamapack.runtime.server.anthropic import ImageInputUnsupported
from llamapack.runtime.server.common import (
    CONFIG,
    STATE,
    EngineFailure,
    NotServed,
    ServerConfig,
    State,
    error_response,
)
from llamapack.runtime.server.metrics import add_metrics_routes
from llamapack.runtime.server.requests import BadRequest
from llamapack.runtime.server.ui_mode import page_mode
from llamapack.runtime.server.vertex import add_vertex_routes

UI_DIR = web.AppKey("ui_dir", Path)

# Module scripts need a JavaScript type: a machine whose registry lacks or
# misnames these (Windows' registry can) must still serve the page right.
# aiohttp's FileResponse guesses from its own table, so both are told.
for _type, _extension in (("text/javascript", ".js"), ("text/css", ".css"), ("image/svg+xml", ".svg")):
    mimetypes.add_type(_type, _extension)
    getattr(web_fileresponse, "CONTENT_TYPES", mimetypes).add_type(_type, _extension)

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
_PERMISSIONS = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[errors_middleware, *guard.middlewares(config), sleep.wake_middleware],
    )
    app[CONFIG] = config
    app[STATE] = State()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/props", props)
    app.router.add_get("/openapi.json", openapi_document)
    openai_routes.add_routes(app)
    llamacpp_routes.add_routes(app)
    anthropic_routes.add_routes(app)
    cors_proxy.add_routes(app)
    responses_routes.add_routes(app)
    add_metrics_routes(app)  # /metrics, /slots and the request counter
    if config.ui:
        app.router.add_get("/", index)
        app[UI_DIR] = config.ui_dir or Path(str(resources.files("llamapack.templates")))
        app.router.add_static("/static/", app[UI_DIR], follow_symlinks=False)
    if config.vertex is not None:
        add_vertex_routes(app, config.vertex)  # last: it routes to the others
    app.on_startup.append(_start_loading)
    if config.sleep_idle_seconds > 0:
        sleep.add_sleeper(app, config.sleep_idle_seconds)
    app.on_shutdown.append(_end_requests)
    app.on_cleanup.append(_close_backend)
    app.on_response_prepare.append(_security_headers)
    app.on_response_prepare.append(guard.cors_headers)
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


async def _end_requests(app: web.Application) -> None:
    """SIGTERM or SIGINT: streams in flight end now, with their final chunk and [DONE],
    rather than being cut off when the shutdown timeout runs out."""
    backend = app[STATE].backend
    if backend is not None and app[CONFIG].close_backend:  # not a backend other apps share
        backend.engine.cancel_all()


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
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        response.headers.setdefault("Permissions-Policy", _PERMISSIONS)
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")  # a newer file's page, not a stale one


# ------------------------------------------------------------- middleware


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as OpenAI's error object with the matching status."""
    try:
        return await handler(request)
    except ImageInputUnsupported as exc:  # llama-server's status for a model without vision
        return error_response(500, str(exc), "server_error", exc.param)
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request_error", exc.param)
    except PromptTooLong as exc:  # llama-server's error, with its two numbers
        return error_response(
            400, str(exc), "exceed_context_size_error", n_prompt_tokens=exc.n_prompt_tokens, n_ctx=exc.n_ctx
        )
    except RequestError as exc:
        return error_response(400, str(exc), "invalid_request_error")
    except NotServed as exc:
        return error_response(501, str(exc), "not_supported_error")
    except EngineFailure as exc:
        return error_response(500, str(exc), "server_error")
    except EngineStopped as exc:
        return error_response(503, str(exc), "unavailable_error")
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
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise  # already in OpenAI's shape (Unavailable), or not an error
        return error_response(exc.status, exc.reason, "invalid_request_error")
    except Exception as exc:  # a bug: the client still gets JSON, the log the traceback
        traceback.print_exc()
        return error_response(500, f"internal error: {exc!r}", "server_error")


# ---------------------------------------------------------------- routes


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.sleeping:
        return web.json_response({"status": "ok"})  # a request will load the model again
    if state.backend is not None and state.backend.engine.failure:
        return web.json_response({"status": "error", "error": state.backend.engine.failure}, status=503)
    if state.backend is not None:
        return web.json_response({"status": "ok"})
    if state.load_error:
        return web.json_response({"status": "error", "error": state.load_error}, status=503)
    return web.json_response({"status": "loading model"}, status=503)


async def props(request: web.Request) -> web.Response:
    config, state = request.app[CONFIG], request.app[STATE]
    backend = state.backend
    ui_mode = state.ui_mode or page_mode(config, backend)
    if backend is not None:
        state.ui_mode = ui_mode  # the model's own answer: kept while it sleeps
    body: dict[str, Any] = {
        "model_alias": config.model_alias,
        "model_path": config.model_path,
        "manifest": config.manifest.to_json() if config.manifest else {},
        "build_info": f"llamapack {__version__}, llama-cpp-python {llama_cpp.__version__}",
        "system_info": llama.llama_print_system_info().decode(errors="replace").strip(),
        "modalities": {"vision": False, "audio": False},
        "is_sleeping": state.sleeping,
        "ui_mode": ui_mode.mode,  # the mode the page opens in, and why
        "ui_mode_reason": ui_mode.reason,
    }
    if backend is not None:
        engine = backend.engine
        body.update(
            n_ctx=engine.n_ctx,
            total_slots=engine.n_parallel,
            chat_template=backend.formatter.source_text or backend.formatter.name,  # llama-server's
            chat_template_name=backend.formatter.label,  # what the page shows
            chat_template_caps=backend.formatter.caps.to_json(),
            bos_token=backend.model.bos_text,
            eos_token=backend.model.eos_text,
            embeddings=backend.embedder is not None,
            backend=backend.engine_report.as_dict(),  # devices, CPU variant, llama.cpp build
            default_generation_settings={
                "n_ctx": engine.n_ctx,
                "params": llamacpp_routes.generation_settings(defaults=config.request_defaults),
            },
        )
    return web.json_response(body)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(request.app[CONFIG].model_alias))


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[UI_DIR] / "index.html", headers={"Cache-Control": "no-cache"})


__all__ = ["ServerConfig", "create_app", "error_response"]
