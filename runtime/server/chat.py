"""The chat pipeline: one ChatCompletionRequest, from any chat-shaped API, run to
OpenAI chat objects.

OpenAI's /v1/chat/completions speaks it directly; Anthropic's /v1/messages and
OpenAI's /v1/responses translate their bodies into it and its results back
(anthropic.py, responses.py), as llama-server does. Here: the prompt from the
chat template (tools included), the grammar, `n` choices generated together, and
the model's text parsed back into content, reasoning and tool calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from llamapack.runtime.backend import ChatPrompt
from llamapack.runtime.engine.events import Event
from llamapack.runtime.llama.chat_template import ChatTemplateError, continues_final_message
from llamapack.runtime.server.chat_parsing import ReplyReader, reply_parser, tool_setup
from llamapack.runtime.server.common import (
    CONFIG,
    StartedEvents,
    backend_of,
    collect,
    openai_usage,
    piece_text,
)
from llamapack.runtime.server.generation import close_all, merge, start_all
from llamapack.runtime.server.grammar import request_grammar
from llamapack.runtime.server.requests import BadRequest, ChatCompletionRequest, Generation, parse
from llamapack.runtime.server.tokens import token_biases

Delta = dict[str, Any]


@dataclass
class ChatJob:
    """A chat request made ready to run: its prompt, sampling and reply parsing."""

    chat: ChatCompletionRequest
    prompt: ChatPrompt
    generation: Generation
    new_parser: Callable[[], ReplyReader]
    verbose: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    # The stop string that ended each choice, once it has ended: OpenAI's objects do
    # not say which, Anthropic's do (stop_sequence).
    stopping_words: dict[int, str] = field(default_factory=dict)


async def prepare(
    request: web.Request, body: dict[str, Any], kind: type[ChatCompletionRequest] = ChatCompletionRequest
) -> ChatJob:
    config = request.app[CONFIG]
    chat = parse(body, kind, config.request_defaults)
    backend = backend_of(request)
    if chat.n > backend.engine.n_parallel:
        raise BadRequest(f"'n' must be at most {backend.engine.n_parallel}, the server's slots", "n")
    generation = chat.generation()
    generation.sampling.logit_bias = token_biases(backend, chat.bias_entries())
    tools = tool_setup(chat, backend.formatter.source_text, config.reasoning_format)
    messages = msgspec.to_builtins(chat.messages)  # the chat template reads plain dicts
    if config.system_prompt and not any(m["role"] in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    # llama-server's prefill: a chat that ends with an assistant message has the
    # model continue that message rather than start a new one.
    explicit = bool(chat.continue_final_message)
    if explicit and chat.add_generation_prompt:
        message = "'continue_final_message' and 'add_generation_prompt' cannot both be true"
        raise BadRequest(message, "continue_final_message")
    try:
        continuing = explicit or continues_final_message(messages)
    except ChatTemplateError as exc:
        raise BadRequest(str(exc), "messages") from None
    prompt = await asyncio.to_thread(
        backend.chat_prompt,
        tools.messages(messages),
        tools=tools.template_tools,
        template_kwargs=_template_kwargs(chat),
        add_generation_prompt=chat.add_generation_prompt is not False and not continuing,
        continue_final_message=continuing,
    )
    generation.sampling.grammar = request_grammar(chat) or tools.grammar(prompt.text)
    return ChatJob(
        chat,
        prompt,
        generation,
        lambda: reply_parser(tools, prompt.text),
        verbose=config.verbose or chat.verbose,
    )


def _template_kwargs(chat: ChatCompletionRequest) -> dict[str, Any]:
    kwargs = dict(chat.chat_template_kwargs or {})
    if chat.reasoning_effort is not None:
        kwargs["reasoning_effort"] = chat.reasoning_effort
        if chat.reasoning_effort == "none":
            kwargs["enable_thinking"] = False
    return kwargs


# ------------------------------------------------------------- running


async def reply(request: web.Request, job: ChatJob) -> dict[str, Any]:
    """The whole chat.completion."""
    backend = backend_of(request)
    produced = await start_all(backend, [job.prompt.tokens] * job.chat.n, job.generation)
    try:
        results = await asyncio.gather(*(collect(events) for events in produced))
    finally:
        await close_all(produced)
    choices = []
    for index, (_text, last, parts) in enumerate(results):
        job.stopping_words[index] = last.stopping_word
        parser = job.new_parser()
        deltas = [delta for part in parts for delta in parser.feed(part.text)] + parser.finish()
        message = {"role": "assistant", **_merged(deltas)}
        choices.append({
            "index": index,
            "message": message,
            "logprobs": _logprobs(parts) if job.generation.logprobs is not None else None,
            "finish_reason": _finish_reason(last, bool(message.get("tool_calls"))),
        })  # fmt: skip
    lasts = [last for _text, last, _parts in results]
    body = _envelope(request, job, "chat.completion", choices)
    body["usage"] = _usage(lasts)
    body["timings"] = lasts[0].usage.timings()
    if job.verbose:
        body["__verbose"] = _verbose(job, results[0][0])
    return body


async def chunks(request: web.Request, job: ChatJob) -> AsyncIterator[dict[str, Any]]:
    """The chat.completion.chunk objects of a stream, started: a refused request
    raises before the first one. Choices interleave as their tokens come."""
    backend = backend_of(request)
    produced = await start_all(backend, [job.prompt.tokens] * job.chat.n, job.generation)
    return _stream(request, job, produced)


async def _stream(
    request: web.Request, job: ChatJob, produced: list[StartedEvents]
) -> AsyncIterator[dict[str, Any]]:
    kind = "chat.completion.chunk"
    want_logprobs = job.generation.logprobs is not None
    parsers = [job.new_parser() for _ in produced]
    called = [False] * len(produced)
    pending: list[list[Event]] = [[] for _ in produced]  # logprobs not yet sent with a delta
    lasts: list[Event] = [Event() for _ in produced]

    def chunk(index: int, delta: Delta, events: list[Event] | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if want_logprobs and events is not None:
            choice["logprobs"] = _logprobs(events)
        return _envelope(request, job, kind, [choice])

    try:
        for index in range(len(produced)):
            yield chunk(index, {"role": "assistant", "content": None})
        async for index, event in merge(produced):
            if event.progress is not None:
                progress = chunk(index, {"role": "assistant", "content": None})
                progress["prompt_progress"] = event.progress.as_dict()
                yield progress
                continue
            deltas = parsers[index].feed(event.text) if event.text else []
            if event.finish_reason is not None:
                deltas += parsers[index].finish()
            if want_logprobs and event.logprobs:
                pending[index].append(event)
            for delta in deltas:
                called[index] = called[index] or "tool_calls" in delta
                piece = chunk(index, delta, pending[index])
                if job.chat.timings_per_token and event.finish_reason is None:
                    piece["timings"] = event.usage.timings()
                yield piece
                pending[index] = []
            if event.finish_reason is not None:
                lasts[index] = event
                job.stopping_words[index] = event.stopping_word
                final = chunk(index, {})
                final["choices"][0]["finish_reason"] = _finish_reason(event, called[index])
                if event.error:
                    final["error"] = {"message": event.error, "type": "server_error"}
                yield final
        closing = _envelope(request, job, kind, [])
        if job.chat.include_usage:
            closing["usage"] = _usage(lasts)
            yield _with_timings(closing, lasts[0])
    finally:
        await close_all(produced)


def _with_timings(chunk: dict[str, Any], last: Event) -> dict[str, Any]:
    chunk["timings"] = last.usage.timings()
    return chunk


# ------------------------------------------------------------- shapes


def _envelope(request: web.Request, job: ChatJob, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": kind,
        "created": job.created,
        "model": request.app[CONFIG].model_alias,
        "choices": choices,
    }


def _merged(deltas: list[Delta]) -> dict[str, Any]:
    """A message from its stream of deltas: texts joined, tool calls assembled."""
    content = "".join(d["content"] for d in deltas if d.get("content"))
    reasoning = "".join(d["reasoning_content"] for d in deltas if d.get("reasoning_content"))
    calls: list[dict[str, Any]] = []
    for delta in deltas:
        for piece in delta.get("tool_calls", []):
            if piece["index"] >= len(calls):
                calls.append({"id": piece.get("id"), "type": "function",
                              "function": {"name": "", "arguments": ""}})  # fmt: skip
            call = calls[piece["index"]]
            function = piece.get("function", {})
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
    message: dict[str, Any] = {"content": content or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


def _finish_reason(last: Event, called: bool) -> str | None:
    if called and last.finish_reason == "stop":
        return "tool_calls"
    return last.finish_reason


def _usage(lasts: list[Event]) -> dict[str, Any]:
    usage = openai_usage(lasts[0])
    completion = sum(last.usage.completion_tokens for last in lasts)
    usage["completion_tokens"] = completion
    usage["total_tokens"] = usage["prompt_tokens"] + completion
    return usage


def _logprobs(events: list[Event]) -> dict[str, Any]:
    def entry(token: bytes, logprob: float) -> dict[str, Any]:
        return {"token": piece_text(token), "logprob": logprob, "bytes": list(token)}

    content = []
    for event in events:
        for item in event.logprobs:
            row = entry(item.piece, item.logprob)
            row["top_logprobs"] = [entry(piece, lp) for _, piece, lp in item.top]
            content.append(row)
    return {"content": content}


def _verbose(job: ChatJob, text: str) -> dict[str, Any]:
    """llama-server's `__verbose`: the prompt as the model saw it, and the raw reply."""
    return {"prompt": job.prompt.text, "content": text, "tokens_evaluated": len(job.prompt.tokens)}
