"""Vertex AI's prediction protocol, as llama-server serves it when AIP_MODE=PREDICTION:
`POST /predict` (or AIP_PREDICT_ROUTE) with `{"instances": [...]}`, each instance a
request body for the route its `@requestFormat` names ("chatCompletions" for
/v1/chat/completions, or the path itself), answered together as `{"predictions": [...]}`.

Each instance runs through that route's own handler, so it is checked and answered
exactly as a direct request would be; a failed instance's prediction is its error.
https://cloud.google.com/vertex-ai/docs/predictions/custom-container-requirements
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llamapack.runtime.server.common import BODY_OVERRIDE, error_response, json_body
from llamapack.runtime.server.requests import BadRequest

MAX_INSTANCES = 128  # llama-server's


@dataclass(frozen=True)
class VertexSettings:
    predict_route: str = "/predict"
    health_route: str | None = None
    port: int | None = None

    @classmethod
    def from_environment(cls) -> VertexSettings | None:
        """None unless AIP_MODE=PREDICTION, the variable Vertex AI sets."""
        if os.environ.get("AIP_MODE") != "PREDICTION":
            return None
        port = os.environ.get("AIP_HTTP_PORT")
        return cls(
            predict_route=_route(os.environ.get("AIP_PREDICT_ROUTE")) or "/predict",
            health_route=_route(os.environ.get("AIP_HEALTH_ROUTE")),
            port=int(port) if port and port.isdigit() else None,
        )


def _route(value: str | None) -> str | None:
    if not value:
        return None
    return value if value.startswith("/") else "/" + value


def request_format(path: str) -> str:
    """A route's camelCase alias: /v1/chat/completions -> chatCompletions."""
    path = path.removeprefix("/v1").lstrip("/")
    return re.sub(r"[/_-]+(.)", lambda m: m.group(1).upper(), path)


def add_vertex_routes(app: web.Application, settings: VertexSettings) -> None:
    """Call after every other route is added: the aliases are made from them."""
    targets: dict[str, str] = {}
    for resource in app.router.resources():
        path = resource.canonical
        if "POST" in {route.method for route in resource} and "{" not in path:
            targets.setdefault(request_format(path), path)
            targets.setdefault(path, path)
    if settings.health_route:
        from llamapack.runtime.server.app import health

        app.router.add_get(settings.health_route, health)

    async def predict(request: web.Request) -> web.Response:
        # Cloned before the body is read: aiohttp clones only unread requests.
        template = request.clone()
        body = await json_body(request)
        instances = body.get("instances")
        if not isinstance(instances, list):
            raise BadRequest("request body must include an array field named instances", "instances")
        if len(instances) > MAX_INSTANCES:
            raise BadRequest(f"instances array exceeds maximum size of {MAX_INSTANCES}", "instances")
        predictions = await asyncio.gather(*(_one(template, targets, item) for item in instances))
        return web.json_response({"predictions": predictions})

    app.router.add_post(settings.predict_route, predict)


async def _one(template: web.BaseRequest, targets: dict[str, str], instance: Any) -> Any:
    from llamapack.runtime.server.app import errors_middleware

    if not isinstance(instance, dict):
        return _error("each instance must be a JSON object")
    kind = instance.get("@requestFormat")
    if not isinstance(kind, str):
        return _error("each instance must include a string @requestFormat")
    path = targets.get(kind)
    if path is None:
        return _error(f"no handler registered for @requestFormat: {kind}")
    payload = {key: value for key, value in instance.items() if key != "@requestFormat"}
    payload["stream"] = False  # one JSON answer per instance: the protocol has no streams
    sub = template.clone(method="POST", rel_url=path)
    sub[BODY_OVERRIDE] = payload
    match = await template.app.router.resolve(sub)  # type: ignore[attr-defined]
    response = await errors_middleware(sub, match.handler)  # type: ignore[arg-type]
    assert isinstance(response, web.Response) and response.text is not None
    return json.loads(response.text)


def _error(message: str) -> dict[str, Any]:
    response = error_response(400, message, "invalid_request_error")
    assert response.text is not None
    return dict(json.loads(response.text))
