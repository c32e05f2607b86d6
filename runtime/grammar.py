"""Structured output: turn response_format, json_schema and grammar fields into GBNF.

llama.cpp constrains sampling with a GBNF grammar; JSON schemas are converted
with the converter llama-cpp-python ships (a port of llama.cpp's own).
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from .params import BadRequest


def schema_grammar(schema: Any, param: str) -> str:
    if not isinstance(schema, dict):
        raise BadRequest(f"'{param}' must be a JSON schema object", param)
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises plain exceptions of many kinds
        raise BadRequest(f"'{param}' cannot be turned into a grammar: {exc}", param) from None


def response_format_grammar(body: dict[str, Any]) -> str | None:
    """OpenAI's response_format: text, json_object or json_schema."""
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("'response_format' must be an object", "response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = value.get("schema")  # llama-server accepts one here too
        return schema_grammar(schema, "response_format") if schema else JSON_GBNF
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest("'response_format.json_schema' must be an object", "response_format")
        schema = spec.get("schema")
        return schema_grammar(schema, "response_format") if schema is not None else JSON_GBNF
    raise BadRequest("'response_format.type' must be text, json_object or json_schema", "response_format")


def native_grammar(body: dict[str, Any]) -> str | None:
    """llama-server's /completion fields: grammar (GBNF) or json_schema."""
    grammar = body.get("grammar")
    if grammar is not None and grammar != "":
        if not isinstance(grammar, str):
            raise BadRequest("'grammar' must be a GBNF string", "grammar")
        return grammar
    schema = body.get("json_schema")
    if schema is not None:
        return schema_grammar(schema, "json_schema")
    return None
