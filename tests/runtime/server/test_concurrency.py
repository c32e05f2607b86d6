"""Slots, the waiting queue and the prompt cache, through the real server and model."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.api import gemma_app, gemma_backend, sse_data, wait_ready

CHAT = "/v1/chat/completions"


async def test_health_answers_while_four_streams_decode(client, backend):
    long = {"max_tokens": 4000, "stream": True, "ignore_eos": True}
    responses = [
        await client.post(
            CHAT,
            json={
                **long,
                "seed": i,
                "messages": [{"role": "user", "content": f"Story {i}:"}],
            },
        )  # fmt: skip
        for i in range(4)
    ]
    for response in responses:  # each stream is past its prompt, generating
        for _ in range(3):
            await response.content.readline()
    health = await client.get("/health")
    assert health.status == 200 and await health.json() == {"status": "ok"}
    assert backend.engine.busy_slots == 4
    for response in responses:
        response.close()
    for _ in range(500):  # the server notices at its next write
        if backend.engine.busy_slots == 0:
            break
        await asyncio.sleep(0.02)
    assert backend.engine.busy_slots == 0


async def test_follow_up_turns_evaluate_only_the_new_tokens(client):
    """The prompt cache: a longer history does not mean more prompt to evaluate."""
    messages: list[dict[str, str]] = []
    evaluated, prompt_sizes = [], []
    # 6 turns of 100 tokens pass Gemma 3's 512-token sliding window. Greedy: a
    # sampled reply may contain a token sequence that its own text does not
    # tokenize back to, and the cache then rightly ends at that point.
    for turn in range(6):
        messages.append({"role": "user", "content": f"Tell me fact {turn} about whales."})
        body = await (await client.post(CHAT, json={
            "messages": messages, "max_tokens": 100, "ignore_eos": True, "temperature": 0,
        })).json()  # fmt: skip
        timings = body["timings"]
        evaluated.append(timings["prompt_n"])
        prompt_sizes.append(body["usage"]["prompt_tokens"])
        assert timings["cache_n"] == body["usage"]["prompt_tokens_details"]["cached_tokens"]
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    assert prompt_sizes[-1] > 600
    # Each follow-up evaluates its own new message and the turn markers, about
    # 20 tokens, however long the history is.
    assert max(evaluated[1:]) < 40, evaluated


async def test_cache_prompt_false_evaluates_everything(client):
    request = {"prompt": "A long time ago in a galaxy far away", "n_predict": 4}
    await client.post("/completion", json=request)
    cached = await (await client.post("/completion", json=request)).json()
    assert cached["timings"]["cache_n"] == cached["tokens_evaluated"] - 1
    fresh = await (await client.post("/completion", json={**request, "cache_prompt": False})).json()
    assert fresh["timings"]["cache_n"] == 0
    assert fresh["timings"]["prompt_n"] == fresh["tokens_evaluated"]


async def test_cached_reply_is_the_same_as_a_fresh_one(client, backend):
    request = {"prompt": "The recipe for bread:", "n_predict": 12, "temperature": 0}
    fresh = await (await client.post("/completion", json={**request, "cache_prompt": False})).json()
    await client.post("/completion", json=request)
    cached = await (await client.post("/completion", json=request)).json()
    slots = [len(slot.cached) for slot in backend.engine.slots]
    assert cached["timings"]["cache_n"] == cached["tokens_evaluated"] - 1, slots
    assert cached["content"] == fresh["content"]


@pytest.fixture(scope="module")
def one_slot_backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, parallel=1, max_queue=2, ctx_size=1024)
    yield shared
    shared.close()


async def test_queue_is_first_come_first_served_and_503_when_full(aiohttp_client, one_slot_backend):
    client = await aiohttp_client(gemma_app(one_slot_backend))
    await wait_ready(client)
    engine = one_slot_backend.engine
    running = await client.post("/completion", json={
        "prompt": "Once", "n_predict": 4000, "ignore_eos": True, "stream": True,
    })  # fmt: skip
    await running.content.readline()
    finished: list[str] = []

    async def queued(name: str) -> None:
        response = await client.post("/completion", json={"prompt": name, "n_predict": 2})
        assert response.status == 200
        await response.json()
        finished.append(name)

    first = asyncio.create_task(queued("first"))
    while engine.queue_length < 1:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(queued("second"))
    while engine.queue_length < 2:
        await asyncio.sleep(0.01)
    refused = await client.post("/completion", json={"prompt": "third", "n_predict": 2})
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert (await refused.json())["error"]["type"] == "server_overloaded"
    running.close()
    await asyncio.gather(first, second)
    assert finished == ["first", "second"]
    events = await sse_data(await client.post("/completion", json={
        "prompt": "after", "n_predict": 2, "stream": True,
    }))  # fmt: skip
    assert events


async def test_a_slow_reader_does_not_hold_up_others(client, backend):
    """A client that stops reading its stream: its writes wait for it, nobody else does."""
    slow = await client.post(CHAT, json={
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 300, "stream": True, "ignore_eos": True,
    })  # fmt: skip
    await slow.content.readline()  # one event, then no more reading for a while
    others = await asyncio.gather(*(
        client.post(CHAT, json={
            "messages": [{"role": "user", "content": f"Count to {n}."}], "max_tokens": 8, "ignore_eos": True,
        })
        for n in (3, 4)
    ))  # fmt: skip
    for response in others:
        assert response.status == 200
        assert (await response.json())["usage"]["completion_tokens"] == 8
    slow.close()
    for _ in range(200):
        if backend.engine.busy_slots == 0:
            break
        await asyncio.sleep(0.02)
    assert backend.engine.busy_slots == 0  # the abandoned stream freed its slot


async def test_many_clients_leaving_mid_stream_free_every_slot(client, backend):
    streams = [
        await client.post(
            CHAT,
            json={
                "messages": [{"role": "user", "content": f"Story {i}"}],
                "max_tokens": 500,
                "stream": True,
                "ignore_eos": True,
            },
        )  # fmt: skip
        for i in range(4)  # every slot
    ]
    for stream in streams:
        await stream.content.readline()
    for stream in streams:
        stream.close()
    for _ in range(300):
        if backend.engine.busy_slots == 0 and backend.engine.queue_length == 0:
            break
        await asyncio.sleep(0.02)
    assert backend.engine.busy_slots == 0 and backend.engine.queue_length == 0
    after = await client.post(CHAT, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert after.status == 200
