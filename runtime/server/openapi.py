"""The OpenAPI 3.1 document served at /openapi.json.

The routes and responses are listed here; each request body's schema is
generated from its Struct in `requests.py`, the declaration the handler checks
bodies against. tests/runtime/server/test_openapi.py fails when a route is added without an
entry here, and fuzzes the server from this document. Bodies allow more fields
than are listed: clients send extra ones, which are ignored.

Built on the first request for it, not at launch.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from msgspec import Struct

from llamapack.runtime import __version__
from llamapack.runtime.server import requests

_REF = "#/components/schemas/{name}"

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


def _get(summary: str, content_type: str = "application/json", *, public: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
    }
    if public:
        operation["security"] = []
    return {"get": operation}


def _post(summary: str, body: type[Struct] | str, streams: bool = True) -> dict[str, Any]:
    """A POST route; `body` is its request's Struct, or for a translated API (Anthropic's,
    OpenAI Responses') the name of the vendor's documented request, checked on translation."""
    if isinstance(body, str):
        schema: dict[str, Any] = {"type": "object", "description": body}
    else:
        schema = {"$ref": _REF.format(name=body.__name__)}
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
        "/cors-proxy": {
            **_get("fetch the `url` query parameter's URL (with --ui-mcp-proxy; 403 without)", "*/*"),
            "post": {
                "summary": "as GET, with the body forwarded",
                "requestBody": {"content": {"*/*": {}}},
                "responses": {"200": {"description": "the proxied answer"}, "403": {"description": "off"}},
            },
        },
        "/v1/completions": _post("OpenAI's legacy text completion", requests.TextCompletionRequest),
        "/completion": _post("llama-server's native completion", requests.LlamaCompletionRequest),
        "/completions": _post("as /completion", requests.LlamaCompletionRequest),
        "/apply-template": _post(
            "a chat request's prompt, not generated from", requests.ChatCompletionRequest, streams=False
        ),
        "/tokenize": _post("text to token ids", requests.TokenizeRequest, streams=False),
        "/detokenize": _post("token ids to text", requests.DetokenizeRequest, streams=False),
    }
    anthropic = "Anthropic's Messages API request (docs.anthropic.com/en/api/messages)"
    paths["/v1/messages"] = _post("Anthropic's Messages API", anthropic)
    paths["/v1/messages/count_tokens"] = _post("how many tokens a Messages request's prompt is", anthropic,
                                               streams=False)  # fmt: skip
    for prefix in ("/v1", ""):
        responses = "OpenAI's Responses API request (platform.openai.com/docs/api-reference/responses)"
        paths[f"{prefix}/responses"] = _post("OpenAI's Responses API", responses)
        paths[f"{prefix}/responses/input_tokens"] = _post(
            "how many tokens a Responses request's prompt is", responses, streams=False
        )
        paths[f"{prefix}/models"] = _get("the one model served")
        paths[f"{prefix}/chat/completions"] = _post(
            "OpenAI's chat completion", requests.ChatCompletionRequest
        )
        paths[f"{prefix}/chat/completions/input_tokens"] = _post(
            "how many tokens a chat request's prompt is", requests.ChatCompletionRequest, streams=False
        )
        paths[f"{prefix}/embeddings"] = _post(
            "OpenAI's embeddings (with --embedding)", requests.EmbeddingsRequest, streams=False
        )
    return paths


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "llamapack", "version": __version__},
        "components": {
            "schemas": requests.body_schemas(_REF),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "header": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        # Only enforced with --api-key; operations marked `security: []` are always open.
        "security": [{"bearer": []}, {"header": []}, {}],
        "paths": _paths(),
    }


def document(model_alias: str = "model") -> dict[str, Any]:
    """A fresh copy, with the model's id filled in."""
    result = copy.deepcopy(_document())
    result["info"]["description"] = f"The API of the llamapack file serving {model_alias}."
    return result
