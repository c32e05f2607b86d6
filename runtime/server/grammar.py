"""Structured output: turn response_format, json_schema and grammar fields into GBNF.

llama.cpp constrains sampling with a GBNF grammar; JSON schemas are converted
with the converter llama-cpp-python ships (a port of llama.cpp's own).
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from llamapack.runtime.server.requests import BadRequest, GenerationRequest, ResponseFormat


def schema_grammar(schema: dict[str, Any], param: str) -> str:
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises plain exceptions of many kinds
        raise BadRequest(f"'{param}' cannot be turned into a grammar: {exc}", param) from None


def response_format_grammar(response_format: ResponseFormat | None) -> str | None:
    """OpenAI's response_format: text, json_object or json_schema."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        schema = response_format.schema  # llama-server accepts one here too
        return schema_grammar(schema, "response_format") if schema else JSON_GBNF
    spec = response_format.json_schema
    if spec is None:
        raise BadRequest("'response_format.json_schema' must be an object", "response_format")
    return schema_grammar(spec.schema, "response_format") if spec.schema is not None else JSON_GBNF


def native_grammar(grammar: str | None, json_schema: dict[str, Any] | None) -> str | None:
    """llama-server's /completion fields: grammar (GBNF) or json_schema."""
    if grammar:
        return grammar
    if json_schema is not None:
        return schema_grammar(json_schema, "json_schema")
    return None


def request_grammar(request: GenerationRequest) -> str | None:
    """The grammar a request asks for: OpenAI's response_format where the route has
    it and it is not plain text, else llama-server's grammar or json_schema fields."""
    response_format = getattr(request, "response_format", None)
    if response_format is not None and response_format.type != "text":
        return response_format_grammar(response_format)
    return native_grammar(request.grammar, request.json_schema)
