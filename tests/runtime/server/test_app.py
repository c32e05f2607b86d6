"""The aiohttp app in-process, on the real Gemma model."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from llamapack.runtime.backend import Backend, BackendOptions
from llamapack.runtime.llama.model import ModelSource
from llamapack.runtime.server.app import ServerConfig, create_app
from tests.support.api import GEMMA_MANIFEST, GEMMA_TEMPLATE, sse_data, wait_ready

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def backend(gemma_gguf):
    options = BackendOptions(
        source=ModelSource(gemma_gguf),
        chat_template=GEMMA_TEMPLATE,
        ctx_size=4096,
        parallel=4,
        threads=2,
    )
    shared = Backend(options)
    yield shared
    shared.close()


def make_app(backend, **overrides):
    settings = {
        "load_backend": lambda: backend,
        "model_alias": "gemma-test",
        "manifest": GEMMA_MANIFEST,
        "close_backend": False,
        **overrides,
    }
    return create_app(ServerConfig(**settings))


@pytest.fixture
async def client(aiohttp_client, backend):
    client = await aiohttp_client(make_app(backend))
    await wait_ready(client)
    return client


async def test_health_is_503_until_the_model_is_loaded(aiohttp_client, backend):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return backend

    client = await aiohttp_client(make_app(backend, load_backend=slow_load))
    response = await client.get("/health")
    assert response.status == 503 and (await response.json())["status"] == "loading model"
    response = await client.post(CHAT, json={"messages": HELLO})
    assert response.status == 503
    release.set()
    for _ in range(100):
        response = await client.get("/health")
        if response.status == 200:
            break
        await asyncio.sleep(0.05)
    assert await response.json() == {"status": "ok"}


async def test_models(client):
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert body["data"][0]["id"] == "gemma-test"
    assert body["data"][0]["meta"]["architecture"] == "gemma3"


async def test_chat_completion(client):
    response = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 24})
    assert response.status == 200
    body = await response.json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["model"] == "gemma-test"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_streaming_chat_completion(client):
    response = await client.post(CHAT, json={
        "messages": HELLO, "max_tokens": 12, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True},
    })  # fmt: skip
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await sse_data(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


async def test_max_tokens_limits_the_reply(client):
    body = await (
        await client.post(CHAT, json={"messages": HELLO, "max_tokens": 3, "ignore_eos": True})
    ).json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


async def test_same_seed_same_reply(client):
    request = {"messages": HELLO, "max_tokens": 16, "temperature": 1.0, "seed": 42, "cache_prompt": False}
    first = await (await client.post(CHAT, json=request)).json()
    second = await (await client.post(CHAT, json=request)).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


async def test_stop_string_cuts_the_reply(client):
    request = {
        "messages": HELLO,
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    full = (await (await client.post(CHAT, json=request)).json())["choices"][0]["message"]["content"]
    stop = full[len(full) // 2 :][:3]
    assert stop.strip(), full
    cut = await (await client.post(CHAT, json={**request, "stop": [stop]})).json()
    assert cut["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


async def test_four_streams_at_once(client):
    async def one(seed):
        response = await client.post(CHAT, json={
            "messages": HELLO, "max_tokens": 16, "stream": True, "seed": seed, "ignore_eos": True,
            "stream_options": {"include_usage": True},
        })  # fmt: skip
        return await sse_data(response)

    results = await asyncio.gather(*(one(seed) for seed in range(4)))
    for events in results:
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks[-1]["usage"]["completion_tokens"] == 16
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
        assert sum(bool(c["choices"] and c["choices"][0]["delta"].get("content")) for c in chunks) >= 8


async def test_disconnect_frees_the_slot(client, backend):
    response = await client.post(CHAT, json={
        "messages": HELLO, "max_tokens": 2000, "stream": True, "ignore_eos": True,
    })  # fmt: skip
    for _ in range(3):
        await response.content.readline()
    response.close()
    for _ in range(500):
        if backend.engine.busy_slots == 0:
            break
        await asyncio.sleep(0.02)
    assert backend.engine.busy_slots == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": HELLO, "temperature": -1}, "temperature"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": HELLO, "top_p": 2}, "top_p"),
        ({"messages": HELLO, "stop": 5}, "stop"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
    ],
)
async def test_invalid_fields_are_400_naming_the_field(client, body, param):
    response = await client.post(CHAT, json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_malformed_json_is_400(client):
    response = await client.post(CHAT, data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "not valid JSON" in (await response.json())["error"]["message"]


async def test_unknown_route_is_json_404(client):
    response = await client.get("/v1/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "not_found_error"


async def test_body_over_the_limit_is_413(aiohttp_client, backend):
    client = await aiohttp_client(make_app(backend, max_body=1024))
    response = await client.post(CHAT, data=b"x" * 4096)
    assert response.status == 413


async def test_prompt_longer_than_the_context_is_400(client, backend):
    long_text = "word " * (backend.engine.n_ctx + 10)
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": long_text}]})
    assert response.status == 400
    assert "context" in (await response.json())["error"]["message"]


async def test_chat_page_is_served_with_a_csp(client):
    response = await client.get("/")
    assert response.status == 200
    page = await response.text()
    assert "<textarea" in page
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http" not in csp
    script = await client.get("/static/app.js")
    assert script.status == 200
    assert (await client.get("/static/../server.py")).status == 404


async def test_ignore_eos_bans_the_end_tokens_as_llama_server_does(client, backend):
    """Not sampled and then dropped (which would give empty text): never sampled.
    An end token pushed far ahead of every other one shows the difference."""
    (end, *_) = backend.model.end_of_generation_tokens
    body = {"prompt": "Once upon a time", "n_predict": 8, "temperature": 0, "n_probs": 1,
            "logit_bias": [[end, 100]], "ignore_eos": True}  # fmt: skip
    answer = await (await client.post("/completion", json=body)).json()
    tokens = [probability["id"] for probability in answer["completion_probabilities"]]
    assert len(tokens) == 8 and not set(tokens) & set(backend.model.end_of_generation_tokens), tokens
    assert answer["content"].strip()
    ended = await (await client.post("/completion", json={**body, "ignore_eos": False})).json()
    assert ended["tokens_predicted"] <= 1 and ended["content"] == ""  # the bias alone: it ends at once
