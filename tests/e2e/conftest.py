"""The real Gemma file, built once per session with the real runtime stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamapack.builder.stub import ensure_stub
from tests.support.built_file import Server, build_file


@pytest.fixture(scope="session")
def runtime_stub() -> Path:
    return ensure_stub().path


@pytest.fixture(scope="session")
def gemma_file(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path, runtime_stub: Path) -> Path:
    return build_file(gemma_gguf, tmp_path_factory.mktemp("dist") / "gemma", "--runtime", str(runtime_stub))


@pytest.fixture
def server(gemma_file: Path) -> Iterator[Server]:
    running = Server(gemma_file)
    yield running
    running.close()
