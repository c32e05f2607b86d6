"""/cors-proxy (--ui-mcp-proxy): off by default, and on, forwarding only what is named."""

from __future__ import annotations

from aiohttp import web

from tests.support.api import gemma_app

KEY = "proxy-test-key"


async def target_app(seen: list[dict[str, str]]) -> web.Application:
    async def capture(request: web.Request) -> web.Response:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        return web.json_response({"data": [1, 2], "body": (await request.text())})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/capture", capture)
    app.router.add_post("/empty", empty)
    return app


async def test_off_by_default(aiohttp_client):
    client = await aiohttp_client(gemma_app(None))
    for method in ("GET", "POST"):
        response = await client.request(method, "/cors-proxy?url=http://127.0.0.1:1/")
        assert response.status == 403 and (await response.json())["error"]["type"] == "feature_disabled"


async def test_forwards_only_the_named_headers(aiohttp_client, aiohttp_server):
    seen: list[dict[str, str]] = []
    target = await aiohttp_server(await target_app(seen))
    client = await aiohttp_client(gemma_app(None, mcp_proxy=True, api_key=KEY))
    url = f"/cors-proxy?url={target.make_url('/capture')}"
    assert (await client.get(url)).status == 401  # behind the API key like the rest of the API
    response = await client.post(url, data=b'{"q": 1}', headers={
        "Authorization": f"Bearer {KEY}", "Proxy-Authorization": "Basic secret", "Cookie": "session=secret",
        "x-llama-server-proxy-header-accept": "application/json",
        "x-llama-server-proxy-header-authorization": "Bearer explicit",
    })  # fmt: skip
    assert response.status == 200 and (await response.json())["body"] == '{"q": 1}'
    (headers,) = seen
    assert headers["accept"] == "application/json" and headers["authorization"] == "Bearer explicit"
    assert "proxy-authorization" not in headers and "cookie" not in headers and "x-api-key" not in headers
    empty = await client.post(f"/cors-proxy?url={target.make_url('/empty')}", headers={"x-api-key": KEY})
    assert empty.status == 204 and await empty.read() == b""


async def test_refuses_what_it_cannot_fetch(aiohttp_client):
    client = await aiohttp_client(gemma_app(None, mcp_proxy=True))
    for url, status in (("file:///etc/passwd", 400), ("http://user:pw@example.com/", 400), ("nope", 400),
                        ("http://127.0.0.1:1/", 502)):  # fmt: skip
        response = await client.get("/cors-proxy", params={"url": url})
        assert response.status == status, url
