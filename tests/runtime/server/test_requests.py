"""/openapi.json's request schemas and the server's checks of request bodies cannot drift apart.

Both come from the Structs in runtime/server/requests.py. These tests hold the
served schemas against the running server's answers, no model needed: the
model never loads, so a body that passes the checks gets 503 and one that
fails them gets 400. For every numeric and length bound in a schema, a body
at the bound passes and one a step past it gets 400 naming the field; every
property is read (a value of the wrong type gets 400 naming it); every optional
property takes null. A JSON Schema validator confirms each body is on the side
of the schema the test means it to be.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from llamapack.runtime.server.app import ServerConfig, create_app
from llamapack.runtime.server.openapi import document
from llamapack.runtime.server.requests import BODIES, MAX_EMBEDDING_INPUTS, EmbeddingsRequest, parse

DOCUMENT = document()
SCHEMAS = DOCUMENT["components"]["schemas"]
# The smallest body each accepts; top_logprobs needs logprobs, a rule across
# fields, which a schema does not hold.
SMALLEST: dict[str, dict[str, Any]] = {
    "ChatCompletionRequest": {"messages": [{"role": "user", "content": "hi"}], "logprobs": True},
    "TextCompletionRequest": {"prompt": "hi"},
    "LlamaCompletionRequest": {"prompt": "hi"},
    "EmbeddingsRequest": {"input": "hi"},
    "TokenizeRequest": {"content": "hi"},
    "DetokenizeRequest": {},
}


def _routes() -> dict[str, str]:
    """One route for each body, from the document."""
    routes: dict[str, str] = {}
    for path, item in DOCUMENT["paths"].items():
        if "post" in item:
            content = item["post"].get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            # Not the translated APIs (Anthropic's, Responses'), checked in their tests, nor
            # /cors-proxy, whose body is whatever the proxied server takes.
            if "$ref" in schema:
                routes.setdefault(schema["$ref"].rsplit("/", 1)[1], path)
    return routes


ROUTES = _routes()
PROPERTIES = [(name, prop) for name in ROUTES for prop in SCHEMAS[name]["properties"]]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _valid(name: str, body: dict[str, Any]) -> bool:
    root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": SCHEMAS}}
    return bool(Draft202012Validator(root).is_valid(body))


def _example(schema: dict[str, Any]) -> Any:
    """The simplest value a schema accepts."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        return _example(schema["anyOf"][0])
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema["type"]
    if kind == "object":
        return {name: _example(schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "array" and "prefixItems" in schema:  # a tuple
        return [_example(item) for item in schema["prefixItems"]]
    if kind == "array":
        return [_example(schema["items"])] * schema.get("minItems", 0)
    return {"string": "a", "boolean": False, "null": None}.get(kind, schema.get("minimum", 0))


def _edges(schema: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """(value, whether the schema takes it) at and a step past each bound in `schema`, nested too."""
    schema = _resolve(schema)
    for member in schema.get("anyOf", []):
        yield from _edges(member)
    kind = schema.get("type")
    if kind in ("integer", "number"):
        for key, way in (("minimum", -1), ("maximum", 1)):
            if key in schema:
                yield schema[key], True
                yield _step(kind, schema[key], way), False
                if kind == "integer" and float(schema[key]) == schema[key]:
                    yield float(schema[key]), True  # 20.0 is an integer to JSON Schema
    elif kind == "array" and "prefixItems" in schema:
        example = _example(schema)
        for position, member in enumerate(schema["prefixItems"]):
            for value, inside in _edges(member):
                yield [*example[:position], value, *example[position + 1 :]], inside
    elif kind == "array":
        item = _example(schema["items"])
        if "minItems" in schema:
            yield [item] * schema["minItems"], True
            yield [item] * (schema["minItems"] - 1), False
        if "maxItems" in schema:
            yield [item] * schema["maxItems"], True
            yield [item] * (schema["maxItems"] + 1), False
        for value, inside in _edges(schema["items"]):
            yield [item] * (schema.get("minItems", 1) - 1) + [value], inside
    elif kind == "object":
        for name, prop in schema.get("properties", {}).items():
            for value, inside in _edges(prop):
                yield {**_example(schema), name: value}, inside


def _step(kind: str, value: float, way: int) -> float:
    """The next integer, or the next float, beyond `value` in direction `way`."""
    return value + way if kind == "integer" else math.nextafter(value, way * math.inf)


@pytest.fixture
async def client(aiohttp_client):
    def no_model() -> Any:
        raise RuntimeError("no model in these tests")

    return await aiohttp_client(create_app(ServerConfig(load_backend=no_model, model_alias="test")))


async def _answer(client: Any, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})
    error = (await response.json()).get("error", {})
    return response.status, error


def test_every_body_is_declared_once():
    assert set(ROUTES) == {kind.__name__ for kind in BODIES} == set(SMALLEST)
    for name in ROUTES:
        assert _valid(name, SMALLEST[name]), name


def test_the_schemas_are_json_schema():
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(schema)  # what OpenAPI 3.1 takes


def test_the_embeddings_cap_is_in_the_schema():
    batch = _resolve(SCHEMAS["EmbeddingsRequest"]["properties"]["input"])["anyOf"][2]
    assert batch["maxItems"] == MAX_EMBEDDING_INPUTS
    # A list of token ids is one input, however long: the cap counts inputs.
    long = parse({"input": list(range(MAX_EMBEDDING_INPUTS + 1))}, EmbeddingsRequest)
    assert len(long.input.value) == 1


@pytest.mark.parametrize(("name", "prop"), PROPERTIES, ids=[f"{n}.{p}" for n, p in PROPERTIES])
async def test_bounds_in_the_schema_are_the_ones_enforced(client, name, prop):
    edges = list(_edges(SCHEMAS[name]["properties"][prop]))
    for value, inside in edges:
        body = {**SMALLEST[name], prop: value}
        assert _valid(name, body) == inside, (body, "the test's own reading of the schema is wrong")
        status, error = await _answer(client, ROUTES[name], body)
        if inside:
            assert status == 503, (body, status, error)  # past the checks, to the model
        else:
            assert status == 400 and error["param"] == prop, (body, status, error)
            assert error["message"].startswith(f"'{prop}"), error


@pytest.mark.parametrize(("name", "prop"), PROPERTIES, ids=[f"{n}.{p}" for n, p in PROPERTIES])
async def test_every_property_is_checked_and_optional_ones_take_null(client, name, prop):
    path, smallest = ROUTES[name], SMALLEST[name]
    probes = [{"probe": 1}, "probe", 0.5, True, [{"probe": 1}]]
    wrong = next((p for p in probes if not _valid(name, {**smallest, prop: p})), None)
    assert wrong is not None, f"{name}.{prop} takes anything"
    status, error = await _answer(client, path, {**smallest, prop: wrong})
    assert status == 400 and error["param"] == prop, (prop, wrong, status, error)
    if prop not in SCHEMAS[name].get("required", []):
        assert _valid(name, {**smallest, prop: None})
        status, error = await _answer(client, path, {**smallest, prop: None})
        assert status == 503, (prop, status, error)
