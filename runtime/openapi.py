"""The OpenAPI 3 document served at /openapi.json, written by hand.

It describes every route and the request bodies the handlers accept, with the
ranges `params.py` checks; tests/test_openapi.py fails when a route is added
without an entry here, and fuzzes the server from this document. Bodies allow
more fields than are listed: clients send extra ones, which are ignored.
"""

from __future__ import annotations

import copy
from typing import Any

from . import __version__

INT32 = 2**31 - 1

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "integer"},
            },
        }
    },
}


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": ["number", "null"], "minimum": low, "maximum": high}


def _integer(low: int, high: int) -> dict[str, Any]:
    return {"type": ["integer", "null"], "minimum": low, "maximum": high}


_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
_PROMPT = {
    "oneOf": [
        {"type": "string"},
        _TOKENS,
        {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}},
    ]
}
# params.read_generation: the fields every generating route shares.
_SAMPLING: dict[str, Any] = {
    "temperature": _number(0, 100),
    "top_k": _number(0, 1_000_000),
    "top_p": _number(0, 1),
    "min_p": _number(0, 1),
    "repeat_penalty": _number(0, 100),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "repeat_last_n": _integer(-1, 1 << 16),
    "seed": _integer(-(2**63), 2**64 - 1),
    "stop": _STOP,
    "ignore_eos": {"type": ["boolean", "null"]},
    "cache_prompt": {"type": ["boolean", "null"]},
    "stream": {"type": "boolean"},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
}
_RESPONSE_FORMAT = {
    "type": ["object", "null"],
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object", "properties": {"schema": {"type": "object"}}},
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "developer", "tool"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        },
    },
}
_CHAT = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "max_tokens": _integer(0, INT32),
        "max_completion_tokens": _integer(0, INT32),
        "n": _integer(1, 1),
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": _integer(0, 20),
        "response_format": _RESPONSE_FORMAT,
        **_SAMPLING,
    },
}
_COMPLETIONS = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "model": {"type": "string"},
        "prompt": _PROMPT,
        "max_tokens": _integer(0, INT32),
        "n": _integer(1, 1),
        "echo": {"const": False},
        "logprobs": _integer(0, 20),
        "response_format": _RESPONSE_FORMAT,
        **_SAMPLING,
    },
}
_COMPLETION = {  # llama-server's /completion
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": _PROMPT,
        "content": _PROMPT,
        "n_predict": _integer(-1, INT32),
        "n_probs": _integer(0, 20),
        "grammar": {"type": ["string", "null"]},
        "json_schema": {"type": ["object", "null"]},
        **_SAMPLING,
    },
}
_EMBEDDINGS = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": {"type": "string"},
        "input": {
            "oneOf": [
                {"type": "string"},
                _TOKENS,
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2048,
                    "items": {"oneOf": [{"type": "string"}, _TOKENS]},
                },
            ]
        },
        "encoding_format": {"enum": ["float", "base64", None]},
    },
}
_TOKENIZE = {
    "type": "object",
    "required": ["content"],
    "properties": {
        "content": {"type": "string"},
        "add_special": {"type": "boolean"},
        "with_pieces": {"type": "boolean"},
    },
}
_DETOKENIZE = {
    "type": "object",
    "properties": {"tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
}


def _get(summary: str, content_type: str = "application/json", *, public: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
    }
    if public:
        operation["security"] = []
    return {"get": operation}


def _post(summary: str, schema: dict[str, Any], streams: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {}}
    if streams:
        content["text/event-stream"] = {}
    errors = {"application/json": {"schema": _ERROR}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "OK", "content": content},
                "400": {"description": "a field is missing, of the wrong type or out of range",
                        "content": errors},
                "401": {"description": "--api-key is set and the request lacks it", "content": errors},
                "413": {"description": "the body is over --max-body", "content": errors},
                "503": {"description": "loading, or every slot and the queue are full", "content": errors},
            },
        }
    }  # fmt: skip


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/": _get("the chat page", "text/html", public=True),
        "/static/{filename}": {
            "get": {
                "summary": "the chat page's files",
                "security": [],
                "parameters": [
                    {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "OK"}, "404": {"description": "no such file"}},
            }
        },
        "/health": _get("200 when the model is loaded, 503 while loading or after a failure", public=True),
        "/v1/health": _get("as /health", public=True),
        "/openapi.json": _get("this document", public=True),
        "/props": _get("the model, its context and the default generation settings"),
        "/metrics": _get("counters and gauges in Prometheus' text format", "text/plain"),
        "/slots": _get("each slot: idle or processing, its prompt, cached and generated tokens"),
        "/v1/completions": _post("OpenAI's legacy text completion", _COMPLETIONS),
        "/completion": _post("llama-server's native completion", _COMPLETION),
        "/completions": _post("as /completion", _COMPLETION),
        "/tokenize": _post("text to token ids", _TOKENIZE, streams=False),
        "/detokenize": _post("token ids to text", _DETOKENIZE, streams=False),
    }
    for prefix in ("/v1", ""):
        paths[f"{prefix}/models"] = _get("the one model served")
        paths[f"{prefix}/chat/completions"] = _post("OpenAI's chat completion", _CHAT)
        paths[f"{prefix}/embeddings"] = _post(
            "OpenAI's embeddings (with --embedding)", _EMBEDDINGS, streams=False
        )
    return paths


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "llamapack", "version": __version__},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "header": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        }
    },
    # Only enforced with --api-key; operations marked `security: []` are always open.
    "security": [{"bearer": []}, {"header": []}, {}],
    "paths": _paths(),
}


def document(model_alias: str = "model") -> dict[str, Any]:
    """A fresh copy, with the model's id filled in."""
    result = copy.deepcopy(_DOCUMENT)
    result["info"]["description"] = f"The API of the llamapack file serving {model_alias}."
    return result
