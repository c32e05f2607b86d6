"""Shared by the API tests: the real Gemma backend behind the real app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from llamapack.runtime.backend import Backend, BackendOptions
from llamapack.runtime.fileformat import ChatTemplateChoice, EngineRecord, Manifest, ModelRecord
from llamapack.runtime.llama.model import ModelSource
from llamapack.runtime.server.app import ServerConfig, create_app

ALIAS = "gemma-test"
GEMMA_TEMPLATE = ChatTemplateChoice("builtin", "gemma")
# What a built file of the test model would say about itself.
GEMMA_MANIFEST = Manifest(
    name=ALIAS,
    engine=EngineRecord(llamapack="0.1.0", llama_cpp_python="0.3.36", target="linux-x86_64"),
    model=ModelRecord(
        file="gemma.gguf",
        size=253_000_000,
        sha256="0" * 64,
        offset=65536,
        name="Gemma",
        architecture="gemma3",
        parameters=268_000_000,
        quantization="Q4_K_M",
        context_length=32768,
    ),
    chat_template=GEMMA_TEMPLATE,
)


def gemma_backend(gguf: Any, **overrides: Any) -> Backend:
    settings: dict[str, Any] = {
        "source": ModelSource(gguf),
        "chat_template": GEMMA_TEMPLATE,
        "ctx_size": 4096,
        "parallel": 4,
        "threads": 2,
        **overrides,
    }
    return Backend(BackendOptions(**settings))


def gemma_app(backend: Backend | None, **overrides: Any) -> web.Application:
    """The app serving `backend`; with None, an app for its routes and documents alone
    (its model never loads, so generating routes answer 503)."""

    def load() -> Backend:
        if backend is None:
            raise RuntimeError("no model: this app is for its routes alone")
        return backend

    settings = {
        "load_backend": load,
        "model_alias": ALIAS,
        "manifest": GEMMA_MANIFEST,
        "close_backend": False,
        "metrics": True,
        **overrides,
    }
    return create_app(ServerConfig(**settings))


async def wait_ready(client: Any) -> None:
    for _ in range(200):
        if (await client.get("/health")).status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the model did not load")


async def sse_data(response: Any) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    events = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def sse_json(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in events if e != "[DONE]"]
