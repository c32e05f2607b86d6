"""llama-server's native routes over plain HTTP: /completion, /tokenize, /detokenize, /props."""

from __future__ import annotations

import json

from tests.support.api import GEMMA_MANIFEST, sse_data

PROMPT = "The three primary colours are"


async def test_completion(client):
    response = await client.post("/completion", json={
        "prompt": PROMPT, "n_predict": 8, "temperature": 0, "ignore_eos": True,
    })  # fmt: skip
    assert response.status == 200
    body = await response.json()
    assert body["content"] and body["stop"] is True
    assert body["tokens_predicted"] == 8 and body["tokens_evaluated"] > 3
    assert body["stop_type"] == "limit" and body["stopping_word"] == ""
    timings = body["timings"]
    assert timings["predicted_n"] == 8
    assert timings["prompt_n"] + timings["cache_n"] == body["tokens_evaluated"]
    assert body["generation_settings"]["n_predict"] == 8


async def test_completion_streaming_matches_the_whole_answer(client):
    request = {"prompt": PROMPT, "n_predict": 8, "temperature": 0, "ignore_eos": True}
    whole = await (await client.post("/completion", json=request)).json()
    response = await client.post("/completion", json={**request, "stream": True})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(e) for e in await sse_data(response)]
    assert all(e["stop"] is False for e in events[:-1])
    assert events[-1]["stop"] is True and "timings" in events[-1]
    assert events[-1]["tokens_predicted"] == 8
    assert "".join(e["content"] for e in events) == whole["content"]


async def test_completion_stop_word(client):
    request = {"prompt": PROMPT, "n_predict": 16, "temperature": 0, "ignore_eos": True}
    full = (await (await client.post("/completion", json=request)).json())["content"]
    word = full.split()[2]
    body = await (await client.post("/completion", json={**request, "stop": [word]})).json()
    assert body["stop_type"] == "word" and body["stopping_word"] == word
    assert body["content"] == full[: full.index(word)]


async def test_completion_with_a_gbnf_grammar(client):
    grammar = 'root ::= ("yes" | "no") "."'
    body = await (await client.post("/completion", json={
        "prompt": "Is the sea wet? Answer:", "n_predict": 8, "grammar": grammar,
    })).json()  # fmt: skip
    assert body["content"] in ("yes.", "no.")
    assert body["stop_type"] == "eos"


async def test_completion_with_a_json_schema(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = await (await client.post("/completion", json={
        "prompt": "A number as JSON:", "n_predict": 24, "json_schema": schema, "temperature": 0,
    })).json()  # fmt: skip
    assert isinstance(json.loads(body["content"])["n"], int)


async def test_bad_grammar_is_400(client):
    response = await client.post("/completion", json={"prompt": "x", "grammar": "root ::= ("})
    assert response.status == 400
    assert "grammar" in (await response.json())["error"]["message"]


async def test_n_probs(client):
    body = await (await client.post("/completion", json={
        "prompt": PROMPT, "n_predict": 3, "n_probs": 2, "temperature": 0, "ignore_eos": True,
    })).json()  # fmt: skip
    probs = body["completion_probabilities"]
    assert len(probs) == 3
    assert all(len(p["top_logprobs"]) == 2 and p["logprob"] <= 0 for p in probs)
    assert "".join(p["token"] for p in probs) == body["content"]


async def test_tokenize_and_detokenize(client, backend):
    text = "Hello, world! Ünïcode 🌊"
    tokens = (await (await client.post("/tokenize", json={"content": text})).json())["tokens"]
    assert tokens == backend.model.tokenize(text, add_special=False)
    with_bos = await (await client.post("/tokenize", json={"content": text, "add_special": True})).json()
    assert len(with_bos["tokens"]) == len(tokens) + 1
    back = await (await client.post("/detokenize", json={"tokens": tokens})).json()
    assert back["content"] == text
    pieces = await (await client.post("/tokenize", json={"content": text, "with_pieces": True})).json()
    assert [p["id"] for p in pieces["tokens"]] == tokens
    assert "".join(p["piece"] for p in pieces["tokens"] if isinstance(p["piece"], str))


async def test_detokenize_rejects_unknown_tokens(client):
    response = await client.post("/detokenize", json={"tokens": [-1]})
    assert response.status == 400 and (await response.json())["error"]["param"] == "tokens"


async def test_props_like_llama_server(client):
    body = await (await client.get("/props")).json()
    assert body["model_alias"] == "gemma-test" and body["total_slots"] == 4
    assert body["n_ctx"] == 4096 and body["chat_template"] == "gemma"
    assert body["default_generation_settings"]["n_ctx"] == 4096
    assert body["default_generation_settings"]["params"]["temperature"] == 0.8
    assert "llama-cpp-python" in body["build_info"]
    assert body["manifest"] == GEMMA_MANIFEST.to_json()
