"""llama-server's native routes that llamafile clients call.

/completion, /tokenize and /detokenize, with llama-server's field names and
answer shapes (content, stop, timings, tokens_predicted, stop_type, ...).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from llamapack.runtime.engine.events import Event, TokenLogprob
from llamapack.runtime.server.common import (
    CONFIG,
    backend_of,
    collect,
    json_body,
    piece_text,
    started,
    stream_events,
)
from llamapack.runtime.server.grammar import native_grammar
from llamapack.runtime.server.openai_routes import known_tokens, prompt_tokens
from llamapack.runtime.server.requests import (
    DetokenizeRequest,
    Generation,
    GenerationRequest,
    LlamaCompletionRequest,
    TokenizeRequest,
    parse,
)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/completion", completion)
    app.router.add_post("/completions", completion)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)


async def completion(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    if body.get("prompt") is None:
        # llama.cpp's older name for it: taken, though the schema asks for prompt
        body["prompt"] = body.get("content")
    completion = parse(body, LlamaCompletionRequest)
    generation = completion.generation()
    generation.sampling.grammar = native_grammar(completion.grammar, completion.json_schema)
    backend = backend_of(request)
    prompt = await asyncio.to_thread(prompt_tokens, backend, completion.prompt)
    alias = request.app[CONFIG].model_alias
    events = backend.generate(prompt, generation)

    def final(content: str, last: Event, parts: list[Event]) -> dict[str, Any]:
        usage = last.usage
        reply: dict[str, Any] = {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": -1,
            "stop": True,
            "model": alias,
            "tokens_predicted": usage.completion_tokens,
            "tokens_evaluated": usage.prompt_tokens,
            "generation_settings": generation_settings(generation),
            "prompt": "",
            "has_new_line": "\n" in content,
            "truncated": False,
            "stop_type": last.stop_type,
            "stopping_word": last.stopping_word,
            "tokens_cached": usage.prompt_tokens + usage.completion_tokens,
            "timings": usage.timings(),
        }
        if generation.logprobs is not None and parts:
            reply["completion_probabilities"] = _probabilities(parts)
        if last.error:
            reply["error"] = {"message": last.error, "type": "server_error"}
        return reply

    try:
        produced = await started(events)
        if not completion.stream:
            text, last, parts = await collect(produced)
            return web.json_response(final(text, last, parts))

        def chunk(event: Event) -> dict[str, Any]:
            piece: dict[str, Any] = {
                "index": 0, "content": event.text, "tokens": [], "stop": False, "id_slot": -1,
            }  # fmt: skip
            if generation.logprobs is not None:
                piece["completion_probabilities"] = _probabilities([event])
            return piece

        def closing(last: Event) -> list[dict[str, Any]]:
            return [final("", last, [])]

        return await stream_events(request, produced, chunk, closing, done_marker=False)
    finally:
        await events.aclose()


def generation_settings(generation: Generation | None = None) -> dict[str, Any]:
    """The sampling parameters, named as llama-server names them."""
    if generation is None:
        generation = GenerationRequest().generation()
    sampling = generation.sampling
    return {
        "n_predict": -1 if generation.max_tokens is None else generation.max_tokens,
        "seed": -1 if sampling.seed is None else sampling.seed,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "repeat_last_n": sampling.repeat_last_n,
        "repeat_penalty": sampling.repeat_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "stop": generation.stop,
        "ignore_eos": generation.ignore_eos,
        "n_probs": generation.logprobs or 0,
        "cache_prompt": generation.cache_prompt,
        "grammar": sampling.grammar or "",
    }


def _probabilities(events: list[Event]) -> list[dict[str, Any]]:
    def entry(token: int, piece: bytes, logprob: float) -> dict[str, Any]:
        return {"id": token, "token": piece_text(piece), "logprob": logprob, "bytes": list(piece)}

    rows = []
    for event in events:
        for item in event.logprobs:
            assert isinstance(item, TokenLogprob)
            row = entry(item.token, item.piece, item.logprob)
            row["top_logprobs"] = [entry(t, p, lp) for t, p, lp in item.top]
            rows.append(row)
    return rows


async def tokenize(request: web.Request) -> web.Response:
    asked = parse(await json_body(request), TokenizeRequest)
    model = backend_of(request).model
    tokens = await asyncio.to_thread(model.tokenize, asked.content, asked.add_special)
    if not asked.with_pieces:
        return web.json_response({"tokens": tokens})
    pieces = []
    for token in tokens:
        raw = model.piece(token)
        try:
            piece: Any = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)  # llama-server sends bytes that are not whole characters
        pieces.append({"id": token, "piece": piece})
    return web.json_response({"tokens": pieces})


async def detokenize(request: web.Request) -> web.Response:
    asked = parse(await json_body(request), DetokenizeRequest)
    backend = backend_of(request)
    tokens = known_tokens(backend, asked.tokens, "tokens")
    return web.json_response({"content": backend.model.detokenize(tokens)})
