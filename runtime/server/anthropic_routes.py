"""Anthropic's Messages API: /v1/messages and /v1/messages/count_tokens.

As llama-server does, a request is translated into an OpenAI chat request
(anthropic.py), run by the chat pipeline (chat.py), and its reply or chunks
translated back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from llamapack.runtime.server import anthropic, chat
from llamapack.runtime.server.common import CONFIG, json_body, send_sse
from llamapack.runtime.server.requests import MessagesChatRequest


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)


async def messages(request: web.Request) -> web.StreamResponse:
    body = anthropic.to_chat_request(await json_body(request))
    job = await chat.prepare(request, body, MessagesChatRequest)
    if not job.chat.stream:
        reply = await chat.reply(request, job)
        return web.json_response(anthropic.to_message(reply, stop_sequence=job.stopping_words.get(0) or None))
    chunks = await chat.chunks(request, job)
    stream = anthropic.MessageStream(request.app[CONFIG].model_alias, input_tokens=len(job.prompt.tokens))

    async def events() -> AsyncIterator[bytes]:
        try:
            for event in stream.start():
                yield anthropic.sse_bytes(*event)
            async for chunk in chunks:
                for event in stream.feed(chunk, stop_sequence=job.stopping_words.get(0) or None):
                    yield anthropic.sse_bytes(*event)
            for event in stream.end(stop_sequence=job.stopping_words.get(0) or None):
                yield anthropic.sse_bytes(*event)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return await send_sse(request, events())


async def count_tokens(request: web.Request) -> web.Response:
    body = anthropic.count_tokens_request(await json_body(request))
    job = await chat.prepare(request, body, MessagesChatRequest)
    return web.json_response(anthropic.count_tokens_reply(len(job.prompt.tokens)))
