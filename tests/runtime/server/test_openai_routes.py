"""OpenAI's API through the official `openai` SDK, against the app on a real port."""

from __future__ import annotations

import json
import math

import openai
import pytest

from tests.support.api import ALIAS, gemma_app, gemma_backend, wait_ready

HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture
async def sdk(aiohttp_server, aiohttp_client, backend):
    server = await aiohttp_server(gemma_app(backend))
    await wait_ready(await aiohttp_client(server))
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="none", max_retries=0
    ) as client:
        yield client


async def test_models_list(sdk):
    models = [model.id async for model in sdk.models.list()]
    assert models == [ALIAS]


async def test_chat(sdk):
    reply = await sdk.chat.completions.create(model=ALIAS, messages=HELLO, max_tokens=16)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_chat_streaming_with_usage(sdk):
    stream = await sdk.chat.completions.create(
        model=ALIAS, messages=HELLO, max_tokens=10, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


async def test_max_completion_tokens(sdk):
    reply = await sdk.chat.completions.create(
        model=ALIAS, messages=HELLO, max_completion_tokens=4, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 4 and reply.choices[0].finish_reason == "length"


async def test_chat_logprobs_come_from_the_sampled_position(sdk):
    reply = await sdk.chat.completions.create(
        model=ALIAS, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(item.token for item in content) == reply.choices[0].message.content
    for item in content:
        assert item.logprob <= 0 and bytes(item.bytes).decode(errors="replace") == item.token
        assert len(item.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one, with the same log-probability.
        assert item.top_logprobs[0].token == item.token
        assert math.isclose(item.top_logprobs[0].logprob, item.logprob, abs_tol=1e-4)
        ranked = [alt.logprob for alt in item.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)


# Each request evaluates its whole prompt: one that reuses the cached prompt of the
# request before may round its logits differently, and a near-tie then flips.
FRESH = {"ignore_eos": True, "cache_prompt": False}


async def test_completions_with_a_string_and_with_tokens(sdk, backend):
    text = "The capital of France is"
    by_text = await sdk.completions.create(
        model=ALIAS, prompt=text, max_tokens=8, temperature=0, extra_body=FRESH
    )
    tokens = backend.text_prompt(text)
    by_tokens = await sdk.completions.create(
        model=ALIAS, prompt=tokens, max_tokens=8, temperature=0, extra_body=FRESH
    )
    assert by_text.object == "text_completion" and by_text.choices[0].text
    assert by_text.choices[0].text == by_tokens.choices[0].text
    assert by_text.usage.prompt_tokens == len(tokens)
    assert by_text.choices[0].finish_reason == "length"


async def test_completions_streaming_and_legacy_logprobs(sdk):
    stream = await sdk.completions.create(
        model=ALIAS, prompt="Once upon a time", max_tokens=8, stream=True, temperature=0,
        extra_body=FRESH,
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    reply = await sdk.completions.create(
        model=ALIAS, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2,
        extra_body=FRESH,
    )  # fmt: skip
    assert streamed == reply.choices[0].text
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 8
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


async def test_json_object_response_format_constrains_the_reply(sdk):
    request = {
        "model": ALIAS, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "Describe a cat."}],
    }  # fmt: skip
    free = await sdk.chat.completions.create(**request)
    constrained = await sdk.chat.completions.create(**request, response_format={"type": "json_object"})
    # This small base model rambles, so the object may be cut by max_tokens;
    # without the grammar it answers in prose.
    assert not free.choices[0].message.content.startswith("{")
    assert constrained.choices[0].message.content.startswith("{")


async def test_json_schema_response_format_follows_the_schema(sdk):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = await sdk.chat.completions.create(
        model=ALIAS, max_tokens=60, temperature=0.7, seed=3,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )  # fmt: skip
    person = json.loads(reply.choices[0].message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


async def test_bad_requests_raise_the_sdk_error(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=ALIAS, messages=HELLO, n=99)  # more than the slots
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model=ALIAS, messages=HELLO, response_format={"type": "xml"})


async def test_embeddings_without_the_flag_are_refused(sdk):
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.embeddings.create(model=ALIAS, input="hello")
    assert caught.value.status_code == 501
    body = caught.value.body
    assert isinstance(body, dict) and "--embedding" in body["message"]


async def test_api_key_is_required_when_set(aiohttp_server, aiohttp_client, backend):
    server = await aiohttp_server(gemma_app(backend, api_key="s3cret"))
    await wait_ready(await aiohttp_client(server))
    url = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=url, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    async with openai.AsyncOpenAI(base_url=url, api_key="s3cret", max_retries=0) as client:
        assert [model.id async for model in client.models.list()] == [ALIAS]


@pytest.fixture(scope="module")
def embedding_backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, parallel=1, ctx_size=1024, embedding=True)
    yield shared
    shared.close()


async def test_embeddings(aiohttp_server, aiohttp_client, embedding_backend):
    server = await aiohttp_server(gemma_app(embedding_backend))
    await wait_ready(await aiohttp_client(server))
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="none", max_retries=0
    ) as client:
        reply = await client.embeddings.create(model=ALIAS, input=["a red apple", "the sea"])
        again = await client.embeddings.create(model=ALIAS, input="a red apple")
    first, second = reply.data[0].embedding, reply.data[1].embedding
    assert [item.index for item in reply.data] == [0, 1]
    assert len(first) == len(second) > 100
    assert math.isclose(sum(x * x for x in first), 1.0, rel_tol=1e-3)
    assert first != second
    assert again.data[0].embedding == pytest.approx(first, abs=1e-5)
    assert reply.usage.prompt_tokens > 4
