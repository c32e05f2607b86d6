"""Local security of the in-process server: API key, Host check, CORS, static files, headers."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.api import gemma_app, gemma_backend, wait_ready

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, parallel=2, ctx_size=1024)
    yield shared
    shared.close()


async def ready_client(aiohttp_client, backend, **overrides):
    client = await aiohttp_client(gemma_app(backend, **overrides))
    await wait_ready(client)
    return client


async def raw_request(port: int, request_line: str, headers: str = "") -> tuple[int, bytes]:
    """A request exactly as written (clients normalise `..` away before sending)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


# ------------------------------------------------------------------ API key


async def test_api_key_guards_every_api_route(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend, api_key="s3cret")
    guarded = [("GET", "/v1/models"), ("GET", "/models"), ("GET", "/props"), ("POST", CHAT),
               ("POST", "/chat/completions"), ("POST", "/v1/completions"), ("POST", "/completion"),
               ("POST", "/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
               ("POST", "/v1/embeddings"), ("POST", "/embeddings"), ("GET", "/v1/nothing")]  # fmt: skip
    for method, path in guarded:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"},
                        {"Authorization": "Basic czNjcmV0"}, {"Authorization": "Bearer s3cret-and-more"},
                        {"x-api-key": "sécret"}):  # fmt: skip
            response = await client.request(method, path, json={}, headers=headers)
            assert response.status == 401, (method, path, headers)
            error = (await response.json())["error"]
            assert error["type"] == "authentication_error" and error["code"] == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
    for headers in (
        {"Authorization": "Bearer s3cret"},
        {"authorization": "bearer s3cret"},
        {"x-api-key": "s3cret"},
    ):
        response = await client.post("/tokenize", json={"content": "hi"}, headers=headers)
        assert response.status == 200, headers


async def test_page_health_and_openapi_stay_open_with_a_key(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend, api_key="s3cret")
    for path in ("/", "/static/app.js", "/health", "/v1/health", "/openapi.json"):
        assert (await client.get(path)).status == 200, path


# --------------------------------------------------------------- Host check


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "localhost.evil.example:{port}",
                                  "localhost:1", "192.168.1.20:{port}", "[::1", "a:b:c", ""])  # fmt: skip
async def test_foreign_host_names_are_refused(aiohttp_client, backend, host):
    client = await ready_client(aiohttp_client, backend)
    response = await client.get("/v1/models", headers={"Host": host.format(port=client.port)})
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["type"] == "permission_error" and "--allow-host" in error["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}",
                                  "localhost", "localhost.:{port}"])  # fmt: skip
async def test_loopback_host_names_are_answered(aiohttp_client, backend, host):
    client = await ready_client(aiohttp_client, backend)
    response = await client.get("/v1/models", headers={"Host": host.format(port=client.port)})
    assert response.status == 200


async def test_allow_host_adds_a_name(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend, allow_hosts=("model.lan",))
    assert (await client.get("/v1/models", headers={"Host": f"model.lan:{client.port}"})).status == 200
    assert (await client.get("/v1/models", headers={"Host": "other.lan"})).status == 403


async def test_a_wildcard_bind_accepts_addresses_and_the_machine_name(aiohttp_client, backend):
    import socket

    client = await ready_client(aiohttp_client, backend, bind_host="0.0.0.0")
    for host in ("192.168.1.20", f"10.0.0.7:{client.port}", socket.gethostname()):
        assert (await client.get("/v1/models", headers={"Host": host})).status == 200, host
    assert (await client.get("/v1/models", headers={"Host": "evil.example"})).status == 403


# --------------------------------------------------------------------- CORS


async def test_foreign_origins_get_no_cors(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend)
    foreign = {"Origin": "https://evil.example"}
    preflight = await client.options(CHAT, headers={**foreign, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    post = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 1}, headers=foreign)
    assert post.status == 403 and "Access-Control-Allow-Origin" not in post.headers
    get = await client.get("/v1/models", headers=foreign)
    assert "Access-Control-Allow-Origin" not in get.headers
    null = await client.post("/tokenize", json={"content": "x"}, headers={"Origin": "null"})
    assert null.status == 403
    # The page's own origin is not foreign.
    own = {"Origin": f"http://127.0.0.1:{client.port}"}
    response = await client.post("/tokenize", json={"content": "x"}, headers=own)
    assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers


async def test_cors_origin_allows_exactly_one(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend, cors_origin="https://app.example", api_key="k")
    allowed = {"Origin": "https://app.example"}
    preflight = await client.options(CHAT, headers={
        **allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })  # fmt: skip
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    response = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "stream": True},
                                 headers={**allowed, "Authorization": "Bearer k"})  # fmt: skip
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    await response.read()
    other = await client.options(CHAT, headers={"Origin": "https://app.example.evil",
                                                "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert other.status == 403


async def test_cors_origin_star_allows_any_as_llama_server(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend, cors_origin="*")
    for origin in ("https://web.mydomain.fr", "http://localhost:3000"):
        asking = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        preflight = await client.options(CHAT, headers=asking)
        assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == origin


# ------------------------------------------------------------- static files


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/%2E%2E/%2E%2E/runtime/server.py",
    "/static/..%2fserver.py", "/static/..%5cserver.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/static/....//server.py", "/static/%00", "/static/app.js%00.txt", "/static/link-out",
    "/static/inside/../../secret.txt",
])  # fmt: skip
async def test_static_files_cannot_escape_the_ui_folder(aiohttp_server, backend, tmp_path, path):
    ui = tmp_path / "ui"
    (ui / "inside").mkdir(parents=True)
    (ui / "index.html").write_text("<textarea></textarea>")
    (ui / "app.js").write_text("export {};")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "server.py").write_text("TOP SECRET")
    (ui / "link-out").symlink_to(tmp_path / "secret.txt")
    server = await aiohttp_server(gemma_app(backend, ui_dir=ui))
    status, data = await raw_request(server.port, f"GET {path}")
    assert status in (400, 403, 404), (path, data[:200])
    assert b"TOP SECRET" not in data and b"root:" not in data
    status, data = await raw_request(server.port, "GET /static/app.js")
    assert status == 200 and data.endswith(b"export {};")


async def test_page_and_static_files_carry_security_headers(aiohttp_client, backend):
    client = await ready_client(aiohttp_client, backend)
    for path in ("/", "/static/app.js", "/static/style.css"):
        response = await client.get(path)
        assert response.status == 200, path
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert (
            headers["X-Frame-Options"] == "DENY"
            and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        )
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert "camera=()" in headers["Permissions-Policy"]
        assert headers["Cache-Control"] == "no-cache"
    assert (await client.get("/static/app.js")).headers["Content-Type"].startswith("text/javascript")
    assert (await client.get("/static/style.css")).headers["Content-Type"].startswith("text/css")
    assert (await client.get("/static/icon.svg")).headers["Content-Type"].startswith("image/svg+xml")
    api = await client.get("/v1/models")
    assert api.headers["X-Content-Type-Options"] == "nosniff"
