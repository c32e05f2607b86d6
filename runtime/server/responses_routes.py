"""OpenAI's Responses API: /v1/responses and /v1/responses/input_tokens.

As llama-server does, a request is translated into an OpenAI chat request
(responses.py), run by the chat pipeline (chat.py), and its reply or chunks
translated back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from llamapack.runtime.server import chat, responses
from llamapack.runtime.server.common import json_body, send_sse
from llamapack.runtime.server.requests import BadRequest


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/responses", create)
        app.router.add_post(f"{prefix}/responses/input_tokens", input_tokens)


async def _job(request: web.Request, body: dict[str, Any]) -> chat.ChatJob:
    try:
        return await chat.prepare(request, responses.to_chat_request(body))
    except BadRequest as exc:
        raise responses.responses_error(exc) from None  # named as the Responses API names the field


async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    job = await _job(request, body)
    if not job.chat.stream:
        return web.json_response(responses.to_response(await chat.reply(request, job), body))
    chunks = await chat.chunks(request, job)
    stream = responses.ResponseStream(body)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                for event in stream.feed(chunk):
                    yield responses.sse_bytes(*event)
            for event in stream.finish():
                yield responses.sse_bytes(*event)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return await send_sse(request, events())


async def input_tokens(request: web.Request) -> web.Response:
    job = await _job(request, await json_body(request))
    return web.json_response({"object": "response.input_tokens", "input_tokens": len(job.prompt.tokens)})
