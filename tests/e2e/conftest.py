"""The real Gemma file, built once per session with the real runtime stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder.cli import cli
from llamapack.builder.stub import ensure_stub
from tests.support.built_file import Server


@pytest.fixture(scope="session")
def runtime_stub() -> Path:
    return ensure_stub().path


@pytest.fixture(scope="session")
def gemma_file(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path, runtime_stub: Path) -> Path:
    out = tmp_path_factory.mktemp("dist") / "gemma"
    result = CliRunner().invoke(
        cli, ["build", str(gemma_gguf), "-o", str(out), "--runtime", str(runtime_stub)]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def server(gemma_file: Path) -> Iterator[Server]:
    running = Server(gemma_file)
    yield running
    running.close()
