"""`/cors-proxy?url=...`: llama-server's proxy for its web UI's MCP clients (--ui-mcp-proxy).

Off by default (403, as llama-server): it fetches any http(s) URL the caller names, from
this machine. On, it stays behind --api-key like the rest of the API, forwards only the
headers the caller names explicitly (`x-llama-server-proxy-header-NAME: value`), never its
own Authorization, cookies or API key, and streams the answer back as it comes.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from yarl import URL

from llamapack.runtime.server.common import CONFIG, error_response
from llamapack.runtime.server.requests import BadRequest

HEADER_PREFIX = "x-llama-server-proxy-header-"
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)  # llama-server: 10 minutes
# Hop-by-hop and framing headers: aiohttp sets its own.
_NOT_COPIED = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/cors-proxy", proxy)
    app.router.add_post("/cors-proxy", proxy)


async def proxy(request: web.Request) -> web.StreamResponse:
    if not request.app[CONFIG].mcp_proxy:
        return error_response(403, "this feature is disabled (start the server with --ui-mcp-proxy)",
                              "feature_disabled")  # fmt: skip
    target = _target(request.query.get("url", ""))
    headers = {
        name[len(HEADER_PREFIX) :]: value
        for name, value in request.headers.items()
        if name.lower().startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX)
    }
    body = await request.read() if request.method == "POST" else None
    async with aiohttp.ClientSession(timeout=_TIMEOUT, auto_decompress=True) as session:
        try:
            async with session.request(
                request.method, target, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for name, value in upstream.headers.items():
                    if name.lower() not in _NOT_COPIED:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            return error_response(502, f"the proxied request failed: {reason}", "server_error")


def _target(url: str) -> URL:
    try:
        target = URL(url)
    except ValueError:
        raise BadRequest("'url' is not a URL", "url") from None
    if target.scheme not in ("http", "https"):
        raise BadRequest(f"unsupported URL scheme in target URL: {target.scheme or 'none'}", "url")
    if not target.host:
        raise BadRequest("invalid target URL: missing host", "url")
    if target.password is not None or target.user is not None:
        raise BadRequest("authentication in target URL is not supported", "url")
    return target
