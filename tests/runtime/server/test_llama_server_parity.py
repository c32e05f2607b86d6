"""Behaviour llama-server clients rely on: server-wide defaults, logit_bias, grammars
on chat, several choices and prompts, llama-server's metric names and errors,
per-slot contexts, /apply-template, input token counts, and --sleep-idle-seconds."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from tests.support.api import gemma_app, gemma_backend, sse_data, sse_json, wait_ready

BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]


async def post(client, path: str, body: dict) -> Any:
    """The JSON answer to a POST."""
    return await (await client.post(path, json=body)).json()


async def test_server_defaults_fill_what_a_request_leaves_out(aiohttp_client, backend):
    # A server-wide seed and temperature make two unseeded requests agree.
    app = gemma_app(backend, request_defaults={"temperature": 1.5, "seed": 7})
    client = await aiohttp_client(app)
    await wait_ready(client)
    # From scratch each time: a reused cache evaluates the last token alone, rounded otherwise.
    body = {"prompt": "Once upon a time", "n_predict": 12, "cache_prompt": False}
    first, second = [await (await client.post("/completion", json=body)).json() for _ in range(2)]
    assert first["content"] == second["content"]
    assert first["generation_settings"]["seed"] == 7 and first["generation_settings"]["temperature"] == 1.5
    # The request's own value wins.
    own = await post(client, "/completion", {**body, "seed": 8})
    assert own["generation_settings"]["seed"] == 8
    props = await (await client.get("/props")).json()
    assert props["default_generation_settings"]["params"]["seed"] == 7


async def test_server_seed_keeps_the_prompt_cache(aiohttp_client, backend):
    """Only a request's own seed gives up the prompt cache for an exact replay."""
    client = await aiohttp_client(gemma_app(backend, request_defaults={"seed": 3}))
    await wait_ready(client)
    body = {"prompt": "The quick brown fox jumps over the lazy dog", "n_predict": 2}
    await client.post("/completion", json=body)
    again = await (await client.post("/completion", json=body)).json()
    assert again["timings"]["cache_n"] > 0


@pytest.mark.parametrize("openai_style", [False, True])
async def test_logit_bias_bans_words_by_text_or_id(client, openai_style):
    words = ["the", "The", "a", "and", "of", "to", "is", "was", "in", "it"]
    tokens = (await post(client, "/tokenize", {"content": " " + " ".join(words)}))["tokens"]
    bias: object = [[token, False] for token in tokens] + [[" " + word, -100] for word in words]
    if openai_style:
        bias = {str(token): -100 for token in tokens}
    body = {"prompt": "Tell me a story about the sea.", "n_predict": 48, "temperature": 0, "logit_bias": bias}
    plain = await post(client, "/completion", {**body, "logit_bias": None})
    biased = await (await client.post("/completion", json=body)).json()
    assert any(f" {word} " in plain["content"] for word in words)  # the bias has something to do
    assert not any(f" {word} " in biased["content"] for word in words)


async def test_logit_bias_refuses_token_ids_outside_the_vocabulary(client):
    response = await client.post("/completion", json={"prompt": "Hi", "logit_bias": [[10**8, 1.0]]})
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "logit_bias"


async def test_grammar_and_json_schema_on_chat(client):
    grammar = await client.post("/v1/chat/completions", json={
        "messages": BOOK, "max_tokens": 6, "grammar": 'root ::= "a"{5,5}',
    })  # fmt: skip
    assert (await grammar.json())["choices"][0]["message"]["content"] == "aaaaa"
    schema = await client.post("/v1/chat/completions", json={
        "messages": BOOK, "max_tokens": 6, "json_schema": {"const": "42"},
    })  # fmt: skip
    assert (await schema.json())["choices"][0]["message"]["content"] == '"42"'
    bad = await client.post("/v1/chat/completions", json={"messages": BOOK, "grammar": "root ::= (oops"})
    assert bad.status == 400


async def test_several_choices(client):
    body = {"messages": BOOK, "max_tokens": 8, "n": 2, "ignore_eos": True}
    reply = await (await client.post("/v1/chat/completions", json=body)).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in reply["choices"])
    assert reply["usage"]["completion_tokens"] == 16
    chunks = sse_json(
        await sse_data(await client.post("/v1/chat/completions", json={**body, "stream": True}))
    )
    by_choice = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            by_choice[choice["index"]] += choice["delta"].get("content") or ""
    assert by_choice[0] and by_choice[1]
    too_many = await client.post("/v1/chat/completions", json={**body, "n": 99})
    assert too_many.status == 400 and (await too_many.json())["error"]["param"] == "n"


async def test_stream_opens_with_a_null_content_role_chunk(client):
    body = {"messages": BOOK, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_json(await sse_data(await client.post("/v1/chat/completions", json=body)))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1] and "timings" in chunks[-1]


async def test_prompt_forms_of_llama_server(client):
    text = "I believe the meaning of life is"
    tokens = (await post(client, "/tokenize", {"content": text, "add_special": True}))["tokens"]
    # Evaluated from scratch, alone: the same prompt then gives the same greedy text. Two
    # prompts of one batch share each decode, and llama.cpp's kernels round by batch shape,
    # so their texts may part (README, API): in a batch, the prompts themselves are compared.
    base = {"n_predict": 6, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
    single = await post(client, "/completion", {**base, "prompt": tokens})
    for form in (text, [text], {"prompt_string": text}):
        alone = await post(client, "/completion", {**base, "prompt": form})
        assert alone["content"] == single["content"] and alone["tokens_evaluated"] == len(tokens), form
    batch = await post(client, "/completion", {**base, "prompt": [tokens, text]})
    assert isinstance(batch, list) and [r["index"] for r in batch] == [0, 1]
    assert [r["tokens_evaluated"] for r in batch] == [len(tokens), len(tokens)]
    assert all(r["content"] and r["tokens_predicted"] == 6 for r in batch)
    mixed = await client.post("/completion", json={**base, "prompt": [1, 2, 3, text, 7, text]})
    assert mixed.status == 200 and isinstance((await mixed.json())["content"], str)
    media = await client.post("/completion", json={
        **base, "prompt": {"prompt_string": text, "multimodal_data": ["aGk="]},
    })  # fmt: skip
    assert media.status == 400
    # OpenAI's legacy completions: one choice per prompt.
    reply = await (
        await client.post("/v1/completions", json={"prompt": [text, text], "max_tokens": 4})
    ).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]


async def test_apply_template_and_input_tokens(client):
    applied = await post(client, "/apply-template", {"messages": BOOK})
    assert applied["prompt"].endswith("<start_of_turn>model\n") and "Book" in applied["prompt"]
    counted = await post(client, "/v1/chat/completions/input_tokens", {"messages": BOOK})
    tokens = await (
        await client.post("/tokenize", json={"content": applied["prompt"], "add_special": True})
    ).json()
    assert counted["input_tokens"] == len(tokens["tokens"])
    without = await client.post("/apply-template", json={"messages": BOOK, "add_generation_prompt": False})
    assert not (await without.json())["prompt"].endswith("<start_of_turn>model\n")


async def test_verbose_reply_shows_the_prompt(aiohttp_client, backend, client):
    asked = await (await client.post("/v1/chat/completions", json={
        "messages": BOOK, "max_tokens": 2, "verbose": True,
    })).json()  # fmt: skip
    assert "Book" in asked["__verbose"]["prompt"]
    quiet = await post(client, "/v1/chat/completions", {"messages": BOOK, "max_tokens": 2})
    assert "__verbose" not in quiet
    verbose_server = await aiohttp_client(gemma_app(backend, verbose=True))
    await wait_ready(verbose_server)
    reply = await (
        await verbose_server.post("/v1/chat/completions", json={"messages": BOOK, "max_tokens": 2})
    ).json()
    assert reply["__verbose"]["prompt"].startswith("<bos>") or "Book" in reply["__verbose"]["prompt"]


async def test_metrics_with_llama_server_names(client):
    await client.post("/completion", json={"prompt": "I believe", "n_predict": 8, "ignore_eos": True})
    response = await client.get("/metrics")
    assert "Process-Start-Time-Unix" in response.headers
    text = await response.text()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("llamacpp:")
    }
    assert values["llamacpp:n_decode_total"] > 0 and values["llamacpp:tokens_predicted_total"] >= 8
    assert values["llamacpp:requests_processing"] == 0
    assert values["llamacpp:predicted_tokens_seconds"] > 0
    assert "# TYPE llamacpp:prompt_tokens_total counter" in text
    # The throughput gauges cover the time since the previous scrape.
    again = await (await client.get("/metrics")).text()
    assert "llamacpp:predicted_tokens_seconds 0.0" in again


async def test_metrics_and_slots_can_be_off(aiohttp_client, backend):
    client = await aiohttp_client(gemma_app(backend, metrics=False, slots=False, ui=False))
    await wait_ready(client)
    for path in ("/metrics", "/slots"):
        response = await client.get(path)
        assert response.status == 501 and (await response.json())["error"]["type"] == "not_supported_error"
    assert (await client.get("/")).status == 404


async def test_models_list_aliases_and_tags(aiohttp_client, backend):
    app = gemma_app(
        backend, model_alias="code", model_aliases=("code", "fim", "tiny"), model_tags=("chat", "small")
    )
    client = await aiohttp_client(app)
    model = (await (await client.get("/v1/models")).json())["data"][0]
    assert (
        model["id"] == "code"
        and model["aliases"] == ["code", "fim", "tiny"]
        and model["tags"] == ["chat", "small"]
    )


def test_timings_leave_out_the_first_token():
    from llamapack.runtime.engine.events import Usage

    one = Usage(prompt_tokens=3, completion_tokens=1, prompt_ms=5.0, predicted_ms=2.0).timings()
    assert one["predicted_per_second"] == 0.0 and one["predicted_per_token_ms"] == 0.0
    many = Usage(prompt_tokens=3, completion_tokens=16, prompt_ms=5.0, predicted_ms=30.0).timings()
    assert math.isclose(many["predicted_per_second"], 15 / 30.0 * 1000)


# ------------------------------------------------------------ per-slot context


@pytest.fixture(scope="module")
def split_backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, ctx_size=512, parallel=2, kv_unified=False)
    yield shared
    shared.close()


async def test_slots_split_the_context_unless_unified(aiohttp_client, split_backend):
    client = await aiohttp_client(gemma_app(split_backend))
    await wait_ready(client)
    props = await (await client.get("/props")).json()
    assert props["default_generation_settings"]["n_ctx"] == 256
    slots = await (await client.get("/slots")).json()
    assert [slot["n_ctx"] for slot in slots] == [256, 256]
    too_long = await client.post("/v1/chat/completions", json={"messages": BOOK * 40})
    error = (await too_long.json())["error"]
    assert too_long.status == 400 and error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == 256 and error["n_prompt_tokens"] > 256


# ------------------------------------------------------------ sleeping


async def test_sleep_frees_the_model_and_a_request_wakes_it(aiohttp_client, gemma_gguf):
    from llamapack.runtime.server.app import create_app
    from llamapack.runtime.server.common import ServerConfig

    loads: list[object] = []

    def load():
        backend = gemma_backend(gemma_gguf, ctx_size=256, parallel=1)
        loads.append(backend)
        return backend

    client = await aiohttp_client(create_app(ServerConfig(
        load_backend=load, model_alias="gemma", sleep_idle_seconds=0.5, metrics=True,
    )))  # fmt: skip
    await wait_ready(client)
    await client.post("/completion", json={"prompt": "Hello", "n_predict": 4, "ignore_eos": True})
    for _ in range(100):
        if (await (await client.get("/props")).json())["is_sleeping"]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the server did not go to sleep")
    # On a loaded machine it may also have slept (and woken) before the first request:
    # what counts is that a request to a sleeping server loads the model once more.
    loaded = len(loads)
    assert (await client.get("/health")).status == 200
    predicted = [line for line in (await (await client.get("/metrics")).text()).splitlines()
                 if line.startswith("llamacpp:tokens_predicted_total ")]  # fmt: skip
    assert predicted == ["llamacpp:tokens_predicted_total 4"]  # kept while asleep
    counted = await client.post("/v1/chat/completions/input_tokens", json={"messages": BOOK})
    # Awake now (it may doze off again half a second later on a busy machine: not checked).
    assert counted.status == 200 and len(loads) == loaded + 1


async def test_system_prompt_for_chats_that_bring_none(aiohttp_client, backend):
    client = await aiohttp_client(gemma_app(backend, system_prompt="You are a pirate."))
    await wait_ready(client)
    bare = await post(client, "/apply-template", {"messages": BOOK[1:]})
    assert "You are a pirate." in bare["prompt"]
    own = await post(client, "/apply-template", {"messages": BOOK})
    assert "pirate" not in own["prompt"] and "Book" in own["prompt"]


async def test_vertex_ai_predictions(aiohttp_client, backend):
    from llamapack.runtime.server.vertex import VertexSettings, request_format

    assert request_format("/v1/chat/completions") == "chatCompletions"
    assert request_format("/apply-template") == "applyTemplate"
    client = await aiohttp_client(gemma_app(backend, vertex=VertexSettings()))
    await wait_ready(client)
    chat = {"@requestFormat": "chatCompletions", "max_tokens": 4, "messages": BOOK, "stream": True}
    answer = await post(client, "/predict", {"instances": [
        chat,
        {"@requestFormat": "/apply-template", "messages": BOOK},
        {"@requestFormat": "chatCompletions", "messages": "not a list"},
        {"@requestFormat": "noSuchRoute"},
        "not an object",
    ]})  # fmt: skip
    reply, applied, bad, unknown, junk = answer["predictions"]
    assert reply["choices"][0]["message"]["role"] == "assistant"  # not streamed: one answer each
    assert applied["prompt"].endswith("<start_of_turn>model\n")
    assert bad["error"]["param"] == "messages" and "noSuchRoute" in unknown["error"]["message"]
    assert "JSON object" in junk["error"]["message"]
    missing = await client.post("/predict", json={"instances": 3})
    assert missing.status == 400


@pytest.fixture(scope="module")
def small_batch_backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, ctx_size=512, parallel=1, n_batch=32)
    yield shared
    shared.close()


async def test_prompt_progress_as_each_batch_is_evaluated(aiohttp_client, small_batch_backend):
    client = await aiohttp_client(gemma_app(small_batch_backend))
    await wait_ready(client)
    prompt = "the quick brown fox jumps over the lazy dog " * 8
    body = {"prompt": prompt, "n_predict": 2, "stream": True, "return_progress": True, "cache_prompt": False}
    chunks = sse_json(await sse_data(await client.post("/completion", json=body)))
    progress = [chunk for chunk in chunks if "prompt_progress" in chunk]
    total = progress[0]["prompt_progress"]["total"]
    assert len(progress) == 1 + -(-total // 32)  # the start, then each batch of 32
    assert progress[0]["timings"]["prompt_n"] == 0 and progress[0]["timings"]["prompt_ms"] == 0.0
    processed = [p["prompt_progress"]["processed"] for p in progress]
    assert processed == sorted(processed) and processed[-1] == total
    chat = {"messages": BOOK, "max_tokens": 2, "stream": True, "return_progress": True}
    chat_chunks = sse_json(await sse_data(await client.post("/v1/chat/completions", json=chat)))
    assert any("prompt_progress" in chunk for chunk in chat_chunks)
    plain = sse_json(
        await sse_data(await client.post("/completion", json={**body, "return_progress": False}))
    )
    assert not any("prompt_progress" in chunk for chunk in plain)


async def test_post_sampling_probabilities(client):
    body = {"prompt": "Today was the day. Today I would finally become a", "n_probs": 10, "n_predict": 5,
            "temperature": 1.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1,
            "cache_prompt": False}  # fmt: skip
    raw = (await post(client, "/completion", body))["completion_probabilities"]
    after = (await post(client, "/completion", {**body, "post_sampling_probs": True}))[
        "completion_probabilities"
    ]
    assert len(after) == 5 and [row["id"] for row in after] == [
        row["id"] for row in raw
    ]  # same seed, same text
    for row in after:
        assert "logprob" not in row and 0.0 < row["prob"] <= 1.0
        probs = [alt["prob"] for alt in row["top_probs"]]
        assert all(0.0 < p <= 1.0 for p in probs) and probs == sorted(probs, reverse=True)
        if len(probs) < 10:  # fewer candidates survived the chain than asked for: they are all of it
            assert sum(probs) == pytest.approx(1.0)
    # The chain keeps fewer tokens than the model's own distribution holds, so what is left weighs more.
    assert after[0]["top_probs"][0]["prob"] >= math.exp(raw[0]["top_logprobs"][0]["logprob"])
    greedy = await post(client, "/completion", {**body, "temperature": 0, "post_sampling_probs": True})
    assert all(
        row["prob"] == 1.0 and len(row["top_probs"]) == 1 for row in greedy["completion_probabilities"]
    )
