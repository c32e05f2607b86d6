"""Shared by the API tests: the real Gemma backend behind the real app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from llamapack.runtime.backend import Backend, BackendOptions
from llamapack.runtime.model import ModelSource
from llamapack.runtime.server import ServerConfig, create_app

ALIAS = "gemma-test"


def gemma_backend(gguf: Any, **overrides: Any) -> Backend:
    settings: dict[str, Any] = {
        "source": ModelSource(gguf),
        "chat_template": {"source": "builtin", "name": "gemma"},
        "ctx_size": 4096,
        "parallel": 4,
        "threads": 2,
        **overrides,
    }
    return Backend(BackendOptions(**settings))


def gemma_app(backend: Backend, **overrides: Any) -> Any:
    settings = {
        "load_backend": lambda: backend,
        "model_alias": ALIAS,
        "manifest": {"model": {"architecture": "gemma3"}},
        "close_backend": False,
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
