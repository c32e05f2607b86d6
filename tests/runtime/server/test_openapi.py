"""/openapi.json describes every route, and a fuzz run over it finds no 5xx and no crash.

The fuzzer (schemathesis, on Hypothesis) sends bodies that follow the document
and bodies that break it, to a real server on 127.0.0.1 over HTTP. The server
caps generation at 8 tokens a request (-n), so a fuzzed max_tokens of 2**31
ends quickly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from llamapack.runtime.server.openapi import document
from tests.support.api import gemma_app, gemma_backend

T = TypeVar("T")
MAX_EXAMPLES = 4  # per operation: with 20 operations, about 80 requests
schema = schemathesis.openapi.from_dict(document())
cases_run: dict[str, Any] = {"count": 0, "statuses": {}}


def test_every_route_is_in_the_document() -> None:
    app = gemma_app(None)  # routes only: nothing loads until the app starts
    documented = document()["paths"]
    for resource in app.router.resources():
        path = resource.canonical
        if path == "/static":
            path = "/static/{filename}"
        assert path in documented, f"{path} is served but not in runtime/server/openapi.py"
        methods = {route.method.lower() for route in resource if route.method not in ("HEAD", "*")}
        if path != "/static/{filename}":
            assert methods <= set(documented[path]), (path, methods)
    served = {r.canonical for r in app.router.resources()} | {"/static/{filename}"}
    assert set(documented) <= served, set(documented) - served


async def test_the_document_is_served(aiohttp_client: Any) -> None:
    client = await aiohttp_client(gemma_app(None, api_key="k"))
    response = await client.get("/openapi.json")  # open, like the page
    assert response.status == 200
    body = await response.json()
    assert body["openapi"].startswith("3.") and "/v1/chat/completions" in body["paths"]


class ThreadServer:
    """The app on 127.0.0.1 in its own event loop thread, for a synchronous client."""

    def __init__(self, app: web.Application):
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self._call(self._start())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    def close(self) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def fuzz_backend(gemma_gguf):
    # llama.cpp rounds a context up to 256 tokens; the cap keeps a fuzzed max_tokens
    # of 2**31 from generating the whole context on every case.
    backend = gemma_backend(gemma_gguf, ctx_size=256, parallel=2, threads=2, embedding=True, max_tokens_cap=8)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def base_url(fuzz_backend) -> Iterator[str]:
    import time
    import urllib.request

    server = ThreadServer(gemma_app(fuzz_backend, max_body=64 * 1024))
    url = f"http://127.0.0.1:{server.port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    yield url
    server.close()
    print(f"\nfuzz: {cases_run['count']} cases, statuses {dict(sorted(cases_run['statuses'].items()))}")
    assert fuzz_backend.engine.failure is None


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_finds_no_server_error(case, base_url):
    import sys
    import time

    t0 = time.monotonic()
    response = case.call(base_url=base_url, timeout=60)
    took = time.monotonic() - t0
    if took > 1:
        print(
            f"SLOW {took:.1f}s {case.method} {case.path} {str(case.body)[:300]}", file=sys.stderr, flush=True
        )
    cases_run["count"] += 1
    statuses = cases_run["statuses"]
    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    case.validate_response(response, checks=[not_a_server_error])
