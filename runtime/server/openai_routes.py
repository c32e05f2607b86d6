"""OpenAI's routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import array
import asyncio
import base64
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from llamapack.runtime.engine.events import Event, TokenLogprob
from llamapack.runtime.server import chat
from llamapack.runtime.server.common import (
    CONFIG,
    NotServed,
    backend_of,
    collect,
    json_body,
    openai_usage,
    piece_text,
    send_chunks,
)
from llamapack.runtime.server.generation import close_all, merge, start_all
from llamapack.runtime.server.grammar import request_grammar
from llamapack.runtime.server.requests import (
    EmbeddingsRequest,
    TextCompletionRequest,
    parse,
)
from llamapack.runtime.server.tokens import known_tokens, prompt_tokens, token_biases


def add_routes(app: web.Application) -> None:
    # Without /v1 too, as llama-server; bare /completions is its native route.
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/chat/completions/input_tokens", input_tokens)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
    app.router.add_post("/v1/completions", completions)


async def models(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    model = config.manifest.model if config.manifest else None
    entry = {
        "id": config.model_alias,
        "object": "model",
        "created": 0,
        "owned_by": "llamapack",
        "aliases": list(config.model_aliases or (config.model_alias,)),
        "tags": list(config.model_tags),
        "meta": {
            "architecture": model.architecture if model else None,
            "parameters": model.parameters if model else None,
            "quantization": model.quantization if model else None,
            "size": model.size if model else None,
        },
    }
    return web.json_response({"object": "list", "data": [entry]})


class _Envelope:
    """The fields every object of one completion repeats."""

    def __init__(self, request: web.Request, prefix: str):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = request.app[CONFIG].model_alias

    def __call__(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}  # fmt: skip


# ------------------------------------------------------------ chat completions


async def chat_completions(request: web.Request) -> web.StreamResponse:
    job = await chat.prepare(request, await json_body(request))
    if not job.chat.stream:
        return web.json_response(await chat.reply(request, job))
    return await send_chunks(request, await chat.chunks(request, job))


async def input_tokens(request: web.Request) -> web.Response:
    """How many tokens a chat request's prompt is (llama-server's route)."""
    job = await chat.prepare(request, await json_body(request))
    return web.json_response({"input_tokens": len(job.prompt.tokens)})


async def completions(request: web.Request) -> web.StreamResponse:
    completion = parse(await json_body(request), TextCompletionRequest, request.app[CONFIG].request_defaults)
    generation = completion.generation()
    generation.sampling.grammar = request_grammar(completion)
    backend = backend_of(request)
    generation.sampling.logit_bias = token_biases(backend, completion.bias_entries())
    prompts = await asyncio.to_thread(prompt_tokens, backend, completion.prompt)
    envelope = _Envelope(request, "cmpl")
    want_logprobs = generation.logprobs is not None

    def choice(index: int, text: str, parts: list[Event], reason: str | None) -> dict[str, Any]:
        logprobs = _legacy_logprobs(parts) if want_logprobs else None
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    produced = await start_all(backend, prompts, generation)  # one choice per prompt
    try:
        if not completion.stream:
            results = await asyncio.gather(*(collect(events) for events in produced))
            choices = [
                choice(i, text, parts, last.finish_reason) for i, (text, last, parts) in enumerate(results)
            ]
            reply = envelope("text_completion", choices)
            reply["usage"] = _summed_usage([last for _, last, _ in results])
            reply["timings"] = results[0][1].usage.timings()
            return web.json_response(reply)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            lasts: list[Event] = [Event() for _ in produced]
            async for index, event in merge(produced):
                if event.text:
                    yield envelope("text_completion", [choice(index, event.text, [event], None)])
                if event.finish_reason is not None:
                    lasts[index] = event
                    final = envelope("text_completion", [choice(index, "", [], event.finish_reason)])
                    if event.error:
                        final["error"] = {"message": event.error, "type": "server_error"}
                    yield final
            last = envelope("text_completion", [])
            if completion.include_usage:
                last["usage"] = _summed_usage(lasts)
                last["timings"] = lasts[0].usage.timings()
                yield last

        return await send_chunks(request, chunks())
    finally:
        await close_all(produced)


def _summed_usage(lasts: list[Event]) -> dict[str, Any]:
    """OpenAI's usage over several generations."""
    usages = [openai_usage(last) for last in lasts]
    total = {
        key: sum(usage[key] for usage in usages)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    cached = sum(usage["prompt_tokens_details"]["cached_tokens"] for usage in usages)
    return {**total, "prompt_tokens_details": {"cached_tokens": cached}}


def _legacy_logprobs(events: list[Event]) -> dict[str, Any]:
    items: list[TokenLogprob] = [item for event in events for item in event.logprobs]
    offsets, at = [], 0
    for item in items:
        offsets.append(at)
        at += len(piece_text(item.piece))
    return {
        "tokens": [piece_text(item.piece) for item in items],
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [{piece_text(p): lp for _, p, lp in item.top} for item in items],
        "text_offset": offsets,
    }


# ---------------------------------------------------------------- embeddings


async def embeddings(request: web.Request) -> web.Response:
    asked = parse(await json_body(request), EmbeddingsRequest)
    backend = backend_of(request)
    if backend.embedder is None:
        raise NotServed("embeddings are off: start the server with --embedding")
    token_lists = []
    for item in asked.input.value:
        if isinstance(item, str):
            token_lists.append(await asyncio.to_thread(backend.text_prompt, item))
        else:
            token_lists.append(known_tokens(backend, item, "input"))
    embedder = backend.embedder
    data = []
    for index, tokens in enumerate(token_lists):
        vector = await asyncio.to_thread(embedder.embed, tokens)
        embedding: Any = vector
        if asked.encoding_format == "base64":  # what the openai SDK asks for: little-endian float32
            embedding = base64.b64encode(_little_endian_floats(vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    used = sum(len(tokens) for tokens in token_lists)
    return web.json_response({
        "object": "list", "data": data, "model": request.app[CONFIG].model_alias,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    })  # fmt: skip


def _little_endian_floats(vector: list[float]) -> bytes:
    """OpenAI's base64 embeddings: little-endian float32s."""
    floats = array.array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tobytes()
