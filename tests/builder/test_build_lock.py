"""Two llamapacks building the same runtime at once: the second waits, then uses the
first one's stub instead of building over it."""

from __future__ import annotations

import threading
from pathlib import Path

import filelock
import pytest

from llamapack.builder import cross
from llamapack.builder.stub import cache_dir


def test_a_second_build_waits_for_the_first_and_reuses_its_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path))
    target = "windows-x86_64"
    stub = cross.cross_stub_path(target)
    builds: list[Path] = []
    monkeypatch.setattr(cross, "_module", lambda _: pytest.fail("the waiting build ran a build of its own"))

    first = filelock.FileLock(cache_dir() / "locks" / f"runtime-{target}.lock")
    (cache_dir() / "locks").mkdir(parents=True)
    first.acquire()
    said: list[str] = []
    waiting = threading.Event()

    def log(message: str) -> None:
        said.append(message)
        waiting.set()

    second = threading.Thread(target=lambda: builds.append(cross.build_cross_stub(target, log=log).path))
    second.start()
    assert waiting.wait(30), "the second build did not say that it waits"
    assert second.is_alive(), "the second build went on while the first held the lock"
    stub.parent.mkdir(parents=True)
    stub.write_bytes(b"MZ the first build's stub")
    first.release()
    second.join(30)
    assert builds == [stub]
    assert "waiting for another llamapack" in said[0]
    assert stub.read_bytes() == b"MZ the first build's stub"
