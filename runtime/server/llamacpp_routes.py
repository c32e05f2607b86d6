"""llama-server's native routes that llamafile clients call.

/completion, /tokenize and /detokenize, with llama-server's field names and
answer shapes (content, stop, timings, tokens_predicted, stop_type, ...).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from llamapack.runtime.engine.events import Event, PromptProgress, TokenLogprob, Usage
from llamapack.runtime.server import chat
from llamapack.runtime.server.common import (
    CONFIG,
    backend_of,
    collect,
    json_body,
    piece_text,
    send_chunks,
)
from llamapack.runtime.server.generation import close_all, merge, start_all
from llamapack.runtime.server.grammar import request_grammar
from llamapack.runtime.server.requests import (
    DetokenizeRequest,
    Generation,
    GenerationRequest,
    LlamaCompletionRequest,
    TokenizeRequest,
    parse,
)
from llamapack.runtime.server.tokens import known_tokens, prompt_tokens, token_biases


def add_routes(app: web.Application) -> None:
    app.router.add_post("/completion", completion)
    app.router.add_post("/completions", completion)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)


async def completion(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    if body.get("prompt") is None:
        # llama.cpp's older name for it: taken, though the schema asks for prompt
        body["prompt"] = body.get("content")
    completion = parse(body, LlamaCompletionRequest, request.app[CONFIG].request_defaults)
    generation = completion.generation()
    generation.sampling.grammar = request_grammar(completion)
    backend = backend_of(request)
    generation.sampling.logit_bias = token_biases(backend, completion.bias_entries())
    prompts = await asyncio.to_thread(prompt_tokens, backend, completion.prompt)
    alias = request.app[CONFIG].model_alias

    settings = generation_settings(generation, eog_tokens=backend.model.end_of_generation_tokens)

    def final(index: int, content: str, last: Event, parts: list[Event]) -> dict[str, Any]:
        usage = last.usage
        reply: dict[str, Any] = {
            "index": index,
            "content": content,
            "tokens": [],
            "id_slot": -1,
            "stop": True,
            "model": alias,
            "tokens_predicted": usage.completion_tokens,
            "tokens_evaluated": usage.prompt_tokens,
            "generation_settings": settings,
            "prompt": "",
            "has_new_line": "\n" in content,
            "truncated": False,
            "stop_type": last.stop_type,
            "stopping_word": last.stopping_word,
            "tokens_cached": usage.prompt_tokens + usage.completion_tokens,
            "timings": usage.timings(),
        }
        if generation.logprobs is not None and parts:
            reply["completion_probabilities"] = _probabilities(parts, generation.post_sampling_probs)
        if last.error:
            reply["error"] = {"message": last.error, "type": "server_error"}
        return reply

    produced = await start_all(backend, prompts, generation)
    try:
        if not completion.stream:
            results = await asyncio.gather(*(collect(events) for events in produced))
            replies = [final(i, text, last, parts) for i, (text, last, parts) in enumerate(results)]
            # One prompt, one object; several, a list of them (llama-server's shapes).
            return web.json_response(replies[0] if len(replies) == 1 else replies)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            async for index, event in merge(produced):
                if event.progress is not None:
                    yield _progress_chunk(index, event.progress)
                if event.text:
                    piece: dict[str, Any] = {
                        "index": index, "content": event.text, "tokens": [], "stop": False, "id_slot": -1,
                    }  # fmt: skip
                    if generation.logprobs is not None:
                        probabilities = _probabilities([event], generation.post_sampling_probs)
                        piece["completion_probabilities"] = probabilities
                    if completion.timings_per_token:
                        piece["timings"] = event.usage.timings()
                    yield piece
                if event.finish_reason is not None:
                    yield final(index, "", event, [])

        return await send_chunks(request, chunks(), done_marker=False)
    finally:
        await close_all(produced)


def _progress_chunk(index: int, progress: PromptProgress) -> dict[str, Any]:
    """llama-server's streamed prompt progress, with the timings so far."""
    evaluated = progress.processed - progress.cache
    timings = Usage(prompt_tokens=progress.processed, cached_tokens=progress.cache,
                    prompt_ms=progress.time_ms).timings()  # fmt: skip
    return {
        "index": index, "content": "", "tokens": [], "stop": False, "id_slot": -1,
        "tokens_predicted": 0, "tokens_evaluated": evaluated,
        "prompt_progress": progress.as_dict(), "timings": timings,
    }  # fmt: skip


def generation_settings(
    generation: Generation | None = None,
    defaults: dict[str, Any] | None = None,
    eog_tokens: Sequence[int] = (),
) -> dict[str, Any]:
    """The sampling parameters, named as llama-server names them: a request's, or
    the server's defaults."""
    if generation is None:
        generation = parse({}, GenerationRequest, defaults).generation()
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
        # llama-server lists the biases it samples with; ignore_eos bans the end-of-generation
        # tokens (bias -inf, null in JSON).
        "logit_bias": [
            {"token": token, "bias": None if math.isinf(bias) else bias}
            for token, bias in [
                *sampling.logit_bias,
                *((t, -math.inf) for t in eog_tokens if generation.ignore_eos),
            ]
        ],
        "n_probs": generation.logprobs or 0,
        "cache_prompt": generation.cache_prompt,
        "grammar": sampling.grammar or "",
    }


def _probabilities(events: list[Event], post_sampling: bool = False) -> list[dict[str, Any]]:
    """llama-server's completion_probabilities: logprobs, or with post_sampling_probs the
    probabilities the sampler chain left (`prob`, `top_probs`; none of zero)."""
    value, alternatives = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")

    def entry(token: int, piece: bytes, logprob: float) -> dict[str, Any]:
        number = math.exp(logprob) if post_sampling else logprob
        return {"id": token, "token": piece_text(piece), value: number, "bytes": list(piece)}

    rows = []
    for event in events:
        for item in event.logprobs:
            assert isinstance(item, TokenLogprob)
            row = entry(item.token, item.piece, item.logprob)
            top = [(t, p, lp) for t, p, lp in item.top if not (post_sampling and math.isinf(lp))]
            row[alternatives] = [entry(t, p, lp) for t, p, lp in top]
            rows.append(row)
    return rows


async def apply_template(request: web.Request) -> web.Response:
    """The prompt a chat request becomes, without generating (llama-server's route)."""
    job = await chat.prepare(request, await json_body(request))
    return web.json_response({"prompt": job.prompt.text})


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
