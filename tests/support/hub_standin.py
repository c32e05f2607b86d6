"""A small stand-in for the Hugging Face Hub's HTTP API, served on 127.0.0.1.

The real `huggingface_hub` client is pointed at it through HF_ENDPOINT. It
answers what the client asks when it downloads and lists files: the
`resolve` URLs (HEAD for metadata, GET with Range for resumable downloads)
and the model info and tree listings of the `api/models` routes. Gated repos
answer 401 without the right Bearer token, as the Hub does.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class Repo:
    files: dict[str, Path]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    token: str | None = None  # gated: this token is required


@dataclass
class HubStandin:
    repos: dict[str, Repo]
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # headers lowercased
    fail_after_bytes: int | None = None  # break the first GET after this many bytes
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HubStandin:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/api/models/{owner}/{name}", self._info)
        app.router.add_route("*", "/api/models/{owner}/{name}/revision/{revision}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}", self._tree)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}/{path:.*}", self._tree)
        app.router.add_route("*", "/{owner}/{name}/resolve/{revision}/{path:.+}", self._resolve)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def _repo(self, request: web.Request) -> Repo:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append((request.method, request.path_qs, headers))
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            )
        revision = request.match_info.get("revision", "main")
        if revision not in ("main", repo.commit):
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}
            )
        if repo.token and request.headers.get("Authorization") != f"Bearer {repo.token}":
            raise web.HTTPUnauthorized(
                headers={"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"}
            )
        return repo

    async def _info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        siblings = [{"rfilename": name} for name in sorted(repo.files)]
        body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "siblings": siblings,
                "private": False, "gated": bool(repo.token), "tags": ["gguf"]}  # fmt: skip
        return web.json_response(body)

    async def _tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        entries = []
        for name, path in sorted(repo.files.items()):
            size = path.stat().st_size
            oid = hashlib.sha1(name.encode()).hexdigest()
            entries.append({"type": "file", "path": name, "size": size, "oid": oid,
                            "lfs": {"oid": _sha256(path), "size": size, "pointerSize": 130}})  # fmt: skip
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        path = repo.files.get(request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}
            )
        size = path.stat().st_size
        headers = {
            "X-Repo-Commit": repo.commit,
            "ETag": f'"{_sha256(path)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start = 0
        if range_header := request.headers.get("Range"):
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        headers["Content-Length"] = str(size - start)
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        limit = self.fail_after_bytes
        self.fail_after_bytes = None
        with path.open("rb") as file:
            file.seek(start)
            sent = 0
            while chunk := file.read(1 << 20):
                if limit is not None and sent + len(chunk) > limit:
                    await response.write(chunk[: limit - sent])
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                await response.write(chunk)
                sent += len(chunk)
        await response.write_eof()
        return response


_hashes: dict[Path, str] = {}


def _sha256(path: Path) -> str:
    if path not in _hashes:
        _hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _hashes[path]
