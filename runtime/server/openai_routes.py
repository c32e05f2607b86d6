"""OpenAI's routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import numpy as np
from aiohttp import web

from llamapack.runtime.backend import Backend
from llamapack.runtime.engine.events import Event, TokenLogprob
from llamapack.runtime.server.common import (
    CONFIG,
    NotServed,
    backend_of,
    collect,
    json_body,
    openai_usage,
    piece_text,
    started,
    stream_events,
)
from llamapack.runtime.server.grammar import response_format_grammar
from llamapack.runtime.server.requests import (
    BadRequest,
    ChatCompletionRequest,
    EmbeddingsRequest,
    Prompt,
    TextCompletionRequest,
    parse,
)


def add_routes(app: web.Application) -> None:
    # Without /v1 too, as llama-server; bare /completions is its native route.
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
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
    chat = parse(await json_body(request), ChatCompletionRequest)
    generation = chat.generation()
    generation.sampling.grammar = response_format_grammar(chat.response_format)
    backend = backend_of(request)
    messages = msgspec.to_builtins(chat.messages)  # the chat template reads plain dicts
    prompt = await asyncio.to_thread(backend.chat_prompt, messages)
    envelope = _Envelope(request, "chatcmpl")
    events = backend.generate(prompt, generation)
    try:
        produced = await started(events)
        if not chat.stream:
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
        return await _stream_chat(request, chat.include_usage, envelope, produced, generation.logprobs)
    finally:
        await events.aclose()  # cancels the request if it is still running


async def _stream_chat(
    request: web.Request,
    include_usage: bool,
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
    closing = _closing_chunks(include_usage, envelope, kind, last_choice)
    return await stream_events(request, events, chunk, closing, opening=opening)


def _closing_chunks(
    include_usage: bool, envelope: _Envelope, kind: str, last_choice: Callable[[str | None], dict[str, Any]]
) -> Callable[[Event], list[dict[str, Any]]]:
    """The chunk with the finish reason (and llama-server's timings), then the usage
    chunk when `stream_options.include_usage` asks for it."""

    def closing(last: Event) -> list[dict[str, Any]]:
        final = envelope(kind, [last_choice(last.finish_reason)])
        if last.error:
            final["error"] = {"message": last.error, "type": "server_error"}
        final["timings"] = last.usage.timings()
        chunks = [final]
        if include_usage:
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


def prompt_tokens(backend: Backend, prompt: Prompt) -> list[int]:
    """A prompt's text tokenized, or its token ids checked against the vocabulary."""
    if isinstance(prompt.value, str):
        return backend.text_prompt(prompt.value)
    return known_tokens(backend, prompt.value, "prompt")


def known_tokens(backend: Backend, tokens: list[int], param: str) -> list[int]:
    """`tokens`, all in the model's vocabulary: requests.py declares them non-negative,
    and the vocabulary's size is known only once the model is loaded."""
    n_vocab = backend.model.n_vocab
    if any(token >= n_vocab for token in tokens):
        raise BadRequest(f"'{param}' must hold token ids below {n_vocab}, the model's vocabulary", param)
    return tokens


async def completions(request: web.Request) -> web.StreamResponse:
    completion = parse(await json_body(request), TextCompletionRequest)
    generation = completion.generation()
    generation.sampling.grammar = response_format_grammar(completion.response_format)
    backend = backend_of(request)
    prompt = await asyncio.to_thread(prompt_tokens, backend, completion.prompt)
    envelope = _Envelope(request, "cmpl")
    events = backend.generate(prompt, generation)
    want_logprobs = generation.logprobs is not None

    def choice(text: str, parts: list[Event], reason: str | None) -> dict[str, Any]:
        logprobs = _legacy_logprobs(parts) if want_logprobs else None
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}

    try:
        produced = await started(events)
        if not completion.stream:
            text, last, parts = await collect(produced)
            reply = envelope("text_completion", [choice(text, parts, last.finish_reason)])
            reply["usage"] = openai_usage(last)
            reply["timings"] = last.usage.timings()
            return web.json_response(reply)

        def chunk(event: Event) -> dict[str, Any]:
            return envelope("text_completion", [choice(event.text, [event], None)])

        closing = _closing_chunks(
            completion.include_usage, envelope, "text_completion", lambda reason: choice("", [], reason)
        )
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
            embedding = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    used = sum(len(tokens) for tokens in token_lists)
    return web.json_response({
        "object": "list", "data": data, "model": request.app[CONFIG].model_alias,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    })  # fmt: skip
