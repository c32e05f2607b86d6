"""Who may talk to the server: the Host check, CORS and the API key.

The server runs on people's laptops, where any web page they open can make
their browser send requests to 127.0.0.1. Three middlewares, in this order:

- **Host** (DNS rebinding): a page on evil.example whose name is made to
  resolve to 127.0.0.1 sends `Host: evil.example`; only the bound address,
  loopback names and `--allow-host` names are answered. Bound to a wildcard
  (0.0.0.0, ::), the machine's own host name and any IP literal are accepted
  too: an IP literal cannot be rebound, and LAN clients reach it by address.
- **CORS**: a foreign web origin gets no Access-Control-Allow-Origin, its
  preflight is refused (403), and it may not make the server work (a POST
  with a foreign Origin is refused), unless it is the one `--cors-origin`.
- **API key**: with `--api-key`, every route but the page, its files, the
  health probe and the OpenAPI document wants `Authorization: Bearer KEY` or
  `x-api-key: KEY`, compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llamapack.runtime.server.common import ServerConfig, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Open without the API key (llama-server leaves /health open too).
PUBLIC_PATHS = ("/", "/health", "/v1/health", "/favicon.ico", "/openapi.json")
_CORS_ORIGIN = web.RequestKey("cors_origin", str)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_names(config: ServerConfig) -> frozenset[str]:
    """The names a Host header may carry for this server."""
    names = {*LOOPBACK_NAMES, config.bind_host.lower(), *(h.lower() for h in config.allow_hosts)}
    if config.bind_host in WILDCARD_HOSTS:
        own = socket.gethostname().lower()
        names |= {own, f"{own}.local"}
    return frozenset(names)


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` -> (name, port); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    elif ":" in value:
        return None  # an IPv6 address must be in brackets
    else:
        name, port = value, ""
    if port and not port.isdigit():
        return None
    return name.rstrip("."), int(port) if port else None


def _host_ok(request: web.Request, names: frozenset[str], wildcard: bool) -> bool:
    if "Host" not in request.headers:
        return True  # browsers always send one: a request without it is not a web page's
    parsed = split_host(request.headers["Host"])
    if parsed is None:
        return False
    name, port = parsed
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if port is not None and sockname and port != sockname[1]:
        return False
    return name in names or (wildcard and _is_ip(name))


def _same_origin(origin: str, request: web.Request) -> bool:
    scheme, sep, rest = origin.lower().partition("://")
    return bool(sep) and scheme in ("http", "https") and rest == request.host.lower()


def _key_ok(request: web.Request, key: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("x-api-key", "")

    # Bytes: compare_digest refuses str with non-ASCII characters.
    def raw(text: str) -> bytes:
        return text.strip().encode("utf-8", "surrogatepass")

    return hmac.compare_digest(raw(token), raw(key))


def middlewares(config: ServerConfig) -> list[Any]:
    names = host_names(config)
    wildcard = config.bind_host in WILDCARD_HOSTS
    allowed_origin = config.cors_origin.rstrip("/").lower() if config.cors_origin else None

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _host_ok(request, names, wildcard):
            return error_response(
                403, "this server does not answer for that Host name; start it with --allow-host NAME",
                "permission_error",
            )  # fmt: skip
        return await handler(request)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or _same_origin(origin, request):
            return await handler(request)
        # "*": any origin, llama-server's default, for a server meant to be called from any page.
        allowed = allowed_origin is not None and allowed_origin in ("*", origin.rstrip("/").lower())
        if not allowed and (request.method == "OPTIONS" or request.method not in ("GET", "HEAD")):
            return error_response(
                403, f"requests from the web origin {origin} are not allowed; see --cors-origin",
                "permission_error",
            )  # fmt: skip
        if allowed:
            request[_CORS_ORIGIN] = origin
            if request.method == "OPTIONS":  # the preflight, answered before the key is asked
                return web.Response(status=204, headers={
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-API-Key",
                    "Access-Control-Max-Age": "600",
                })  # fmt: skip
        return await handler(request)

    @web.middleware
    async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = config.api_key
        public = request.path in PUBLIC_PATHS or request.path.startswith("/static/")
        if key and not public and not _key_ok(request, key):
            response = error_response(401, "invalid or missing API key", "authentication_error")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return [host_check, cors, api_key]


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers must go out before a stream's first byte."""
    origin = request.get(_CORS_ORIGIN)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
