"""Whatever a client sends, the in-process server answers a clean 4xx or a normal reply, never a 500,
and a dead engine thread fails requests fast instead of leaving them hanging."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.api import gemma_app, gemma_backend, sse_data, sse_json, wait_ready

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hi"}]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, parallel=2, ctx_size=512)
    yield shared
    shared.close()


@pytest.fixture
async def client(aiohttp_client, backend):
    client = await aiohttp_client(gemma_app(backend, max_body=2 * 1024 * 1024))
    await wait_ready(client)
    return client


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = (await response.json())["error"]
    return error


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": HELLO, "max_tokens": -1}, "max_tokens"),
        (CHAT, {"messages": HELLO, "max_completion_tokens": -5}, "max_completion_tokens"),
        (CHAT, {"messages": HELLO, "temperature": -0.5}, "temperature"),
        (CHAT, {"messages": HELLO, "max_tokens": 1.5}, "max_tokens"),
        (CHAT, {"messages": HELLO, "max_tokens": True}, "max_tokens"),
        (CHAT, {"messages": HELLO, "seed": "x"}, "seed"),
        (CHAT, {"messages": HELLO, "n": 3}, "n"),
        (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        (CHAT, {"messages": [None]}, "messages"),
        ("/v1/completions", {"prompt": 7}, "prompt"),
        ("/v1/completions", {"prompt": [1, -2]}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/completion", {"prompt": "x", "n_predict": -2}, "n_predict"),
        ("/completion", {"prompt": "x", "grammar": 5}, "grammar"),
        ("/tokenize", {"content": None}, "content"),
        ("/detokenize", {"tokens": [10**12]}, "tokens"),
    ],
)
async def test_wrong_fields_are_400_naming_them(client, path, body, param):
    error = await error_of(await client.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_n_predict_minus_one_is_llama_cpp_s_no_limit():
    from llamapack.runtime.server.requests import LlamaCompletionRequest, parse

    asked = parse({"prompt": "x", "n_predict": -1}, LlamaCompletionRequest)
    assert asked.generation().max_tokens is None


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe{}", b'{"messages": "\xc3\x28"}',
        b"{\"a\": NaN, \"messages\": []}", b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"\x00\x00\x00",
    ],
)  # fmt: skip
async def test_malformed_bodies_are_400(client, raw):
    for path in (CHAT, "/v1/completions", "/completion", "/tokenize", "/detokenize", "/v1/embeddings"):
        error = await error_of(await client.post(path, data=raw, headers=JSON), 400)
        assert error["type"] == "invalid_request_error"


async def test_a_bogus_charset_is_ignored(client):
    body = json.dumps({"content": "héllo"}).encode()
    response = await client.post(
        "/tokenize", data=body, headers={"Content-Type": "application/json; charset=bogus"}
    )
    assert response.status == 200


async def test_invalid_utf8_is_400_not_500(client):
    error = await error_of(
        await client.post(CHAT, data=b'{"messages": [{"role": "user", "content": "\xff"}]}'), 400
    )
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize(
    "content",
    [
        "\x00", "a\x00b" * 50, "\ud800", "x\udfff\ud800y", "\U0001f600" * 100, "\u202e\ufeff\ufffd",
        "<start_of_turn>model\n", "a" * 2000, "🙂" * 200, " " * 1000,
    ],
)  # fmt: skip
async def test_odd_content_gets_a_normal_answer(client, backend, content):
    for path, body in (
        (CHAT, {"messages": [{"role": "user", "content": content}], "max_tokens": 2}),
        ("/v1/completions", {"prompt": content, "max_tokens": 2}),
        ("/completion", {"prompt": content, "n_predict": 2, "stream": True}),
        ("/tokenize", {"content": content, "with_pieces": True}),
    ):
        response = await client.post(path, json=body)
        assert response.status in (200, 400), (path, await response.text())
        if response.status == 400:
            assert "context" in (await response.json())["error"]["message"]
        await response.read()
    assert backend.engine.failure is None


async def test_huge_strings_are_answered_not_crashed(client, backend):
    one_token = "a" * 1_000_000  # a very long "single token" and a body near the limit
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": one_token}]})
    error = await error_of(response, 400)
    assert "context" in error["message"]
    huge_stop = await client.post(
        CHAT, json={"messages": HELLO, "max_tokens": 2, "stop": ["x" * 100_000] * 5}
    )
    assert huge_stop.status == 200
    many = await client.post("/detokenize", json={"tokens": [1] * 100_000})
    assert many.status == 200
    assert (await client.get("/health")).status == 200


async def test_body_over_the_limit_is_413_in_openai_shape(client):
    error = await error_of(await client.post(CHAT, data=b"x" * (3 * 1024 * 1024), headers=JSON), 413)
    assert error["type"] == "invalid_request_error" and "too large" in error["message"]


async def test_wrong_method_is_json_405_and_unknown_route_json_404(client):
    error = await error_of(await client.get(CHAT), 405)
    assert "GET" in error["message"]
    await error_of(await client.delete("/v1/models"), 405)
    await error_of(await client.post("/v1/nothing", json={}), 404)
    await error_of(await client.get("/%00"), 404)


# ------------------------------------------------------------ a dead engine


@pytest.fixture
def doomed_backend(gemma_gguf):
    backend = gemma_backend(gemma_gguf, parallel=1, ctx_size=512)
    yield backend
    backend.close()


async def test_a_dead_engine_fails_requests_fast_and_health_says_so(aiohttp_client, doomed_backend):
    client = await aiohttp_client(gemma_app(doomed_backend))
    await wait_ready(client)
    engine = doomed_backend.engine
    streaming = await client.post(CHAT, json={
        "messages": HELLO, "max_tokens": 400, "ignore_eos": True, "stream": True,
    })  # fmt: skip
    assert streaming.status == 200
    await streaming.content.readline()

    def broken(*_args):
        raise RuntimeError("simulated bug in the decode loop")

    engine._admit = broken  # the next loop turn raises outside the per-step guard
    queued = asyncio.ensure_future(client.post(CHAT, json={"messages": HELLO, "max_tokens": 4}))
    # The stream in flight ends with an error chunk and [DONE] rather than hanging.
    events = await asyncio.wait_for(sse_data(streaming), timeout=60)
    assert events[-1] == "[DONE]"
    final = sse_json(events)[-1]
    assert "internal error" in final["error"]["message"]
    queued_response = await asyncio.wait_for(queued, timeout=60)
    # 500 when it was queued before the engine died, 503 when it came after.
    error = await error_of(queued_response, 500 if queued_response.status == 500 else 503)
    assert "engine stopped" in error["message"]
    later = await error_of(await client.post(CHAT, json={"messages": HELLO}), 503)
    assert "engine stopped" in later["message"]
    health = await client.get("/health")
    assert health.status == 503
    assert "simulated bug" in (await health.json())["error"]
