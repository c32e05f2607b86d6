"""OpenAI's routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from aiohttp import web

from .api_common import (
    CONFIG,
    NotServed,
    backend_of,
    collect,
    json_body,
    openai_usage,
    piece_text,
    read_include_usage,
    read_stream,
    started,
    stream_events,
)
from .backend import Backend
from .engine import Event, TokenLogprob
from .grammar import response_format_grammar
from .params import (
    BadRequest,
    read_chat_logprobs,
    read_choices,
    read_completion_logprobs,
    read_generation,
    read_messages,
)

MAX_EMBEDDING_INPUTS = 256


def add_routes(app: web.Application) -> None:
    # Without /v1 too, as llama-server; bare /completions is its native route.
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
    app.router.add_post("/v1/completions", completions)


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
    body = await json_body(request)
    messages = read_messages(body)
    read_choices(body)
    generation = read_generation(body)
    generation.logprobs = read_chat_logprobs(body)
    generation.sampling.grammar = response_format_grammar(body)
    stream = read_stream(body)
    backend = backend_of(request)
    prompt = await asyncio.to_thread(backend.chat_prompt, messages)
    envelope = _Envelope(request, "chatcmpl")
    events = backend.generate(prompt, generation)
    try:
        produced = await started(events)
        if not stream:
            text, last, parts = await collect(produced)
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": _chat_logprobs(parts) if generation.logprobs is not None else None,
                "finish_reason": last.finish_reason,
            }
            reply = envelope("chat.completion", [choice])
            reply["usage"] = openai_usage(last)
            reply["timings"] = last.usage.timings()
            return web.json_response(reply)
        return await _stream_chat(request, body, envelope, produced, generation.logprobs)
    finally:
        await events.aclose()  # cancels the request if it is still running


async def _stream_chat(
    request: web.Request,
    body: dict[str, Any],
    envelope: _Envelope,
    events: AsyncIterator[Event],
    logprobs: int | None,
) -> web.StreamResponse:
    kind = "chat.completion.chunk"

    def chunk(event: Event) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": event.text}, "finish_reason": None}
        if logprobs is not None:
            choice["logprobs"] = _chat_logprobs([event])
        return envelope(kind, [choice])

    def last_choice(reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": {}, "finish_reason": reason}

    opening = envelope(
        kind, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    )
    closing = _closing_chunks(body, envelope, kind, last_choice)
    return await stream_events(request, events, chunk, closing, opening=opening)


def _closing_chunks(
    body: dict[str, Any], envelope: _Envelope, kind: str, last_choice: Callable[[str | None], dict[str, Any]]
) -> Callable[[Event], list[dict[str, Any]]]:
    """The chunk with the finish reason (and llama-server's timings), then the usage
    chunk when `stream_options.include_usage` asks for it."""

    def closing(last: Event) -> list[dict[str, Any]]:
        final = envelope(kind, [last_choice(last.finish_reason)])
        if last.error:
            final["error"] = {"message": last.error, "type": "server_error"}
        final["timings"] = last.usage.timings()
        chunks = [final]
        if read_include_usage(body):
            usage_chunk = envelope(kind, [])
            usage_chunk["usage"] = openai_usage(last)
            chunks.append(usage_chunk)
        return chunks

    return closing


def _chat_logprobs(events: list[Event]) -> dict[str, Any]:
    def entry(token: bytes, logprob: float) -> dict[str, Any]:
        return {"token": piece_text(token), "logprob": logprob, "bytes": list(token)}

    content = []
    for event in events:
        for item in event.logprobs:
            row = entry(item.piece, item.logprob)
            row["top_logprobs"] = [entry(piece, lp) for _, piece, lp in item.top]
            content.append(row)
    return {"content": content}


# ------------------------------------------------------ legacy text completions


def read_prompt(backend: Backend, body: dict[str, Any]) -> list[int]:
    """`prompt`: a string, a list of token ids, or a one-element list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return backend.text_prompt(prompt)
    if isinstance(prompt, list) and prompt and all(_is_token(t, backend) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise BadRequest("only one prompt per request is supported", "prompt")
    raise BadRequest("'prompt' must be a string or a list of token ids", "prompt")


def _is_token(value: Any, backend: Backend) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (0 <= value < backend.model.n_vocab)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    read_choices(body)
    if body.get("echo") is True:
        raise BadRequest("'echo' is not supported", "echo")
    generation = read_generation(body)
    generation.logprobs = read_completion_logprobs(body)
    generation.sampling.grammar = response_format_grammar(body)
    stream = read_stream(body)
    backend = backend_of(request)
    prompt = await asyncio.to_thread(read_prompt, backend, body)
    envelope = _Envelope(request, "cmpl")
    events = backend.generate(prompt, generation)
    want_logprobs = generation.logprobs is not None

    def choice(text: str, parts: list[Event], reason: str | None) -> dict[str, Any]:
        logprobs = _legacy_logprobs(parts) if want_logprobs else None
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}

    try:
        produced = await started(events)
        if not stream:
            text, last, parts = await collect(produced)
            reply = envelope("text_completion", [choice(text, parts, last.finish_reason)])
            reply["usage"] = openai_usage(last)
            reply["timings"] = last.usage.timings()
            return web.json_response(reply)

        def chunk(event: Event) -> dict[str, Any]:
            return envelope("text_completion", [choice(event.text, [event], None)])

        closing = _closing_chunks(body, envelope, "text_completion", lambda reason: choice("", [], reason))
        return await stream_events(request, produced, chunk, closing)
    finally:
        await events.aclose()


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
    body = await json_body(request)
    backend = backend_of(request)
    if backend.embedder is None:
        raise NotServed("embeddings are off: start the server with --embedding")
    inputs = body.get("input")
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)
    ):
        inputs = [inputs]
    # Each input is one decode on a 2-core laptop: 2048 (OpenAI's limit) would
    # hold the embeddings context for most of a minute.
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_EMBEDDING_INPUTS:
        raise BadRequest(f"'input' must be a string or a list of 1 to {MAX_EMBEDDING_INPUTS} inputs", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be float or base64", "encoding_format")
    token_lists = []
    for item in inputs:
        if isinstance(item, str):
            token_lists.append(await asyncio.to_thread(backend.text_prompt, item))
        elif isinstance(item, list) and item and all(_is_token(t, backend) for t in item):
            token_lists.append(item)
        else:
            raise BadRequest("each input must be a string or a list of token ids", "input")
    embedder = backend.embedder
    data = []
    for index, tokens in enumerate(token_lists):
        vector = await asyncio.to_thread(embedder.embed, tokens)
        embedding: Any = vector
        if encoding == "base64":  # what the openai SDK asks for: little-endian float32
            embedding = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    used = sum(len(tokens) for tokens in token_lists)
    return web.json_response({
        "object": "list", "data": data, "model": request.app[CONFIG].model_alias,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    })  # fmt: skip
