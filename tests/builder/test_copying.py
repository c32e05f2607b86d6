"""Copying the weights: the kernel copy, its fallback, and what a rebuild reuses."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llamapack.builder import copying, source_cache
from llamapack.builder.cli import cli
from llamapack.builder.copying import Digests, copy_span
from llamapack.builder.source_cache import CACHE_FILE
from llamapack.runtime.fileformat import ModelSource
from tests.support.fakes import write_gguf

OFFSET = 12_345


class Count:
    def __init__(self) -> None:
        self.total = 0

    def update(self, n: int) -> None:
        self.total += n


@pytest.fixture
def blob(tmp_path: Path) -> Blob:
    """A file whose span after OFFSET is the payload; a few chunks long."""
    payload = os.urandom(copying.CHUNK_SIZE * 2 + 4321)
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(OFFSET) + payload)
    return path, payload


def expected(payload: bytes) -> Digests:
    return Digests(len(payload), hashlib.sha256(payload).hexdigest(), zlib.crc32(payload))


Blob = tuple[Path, bytes]


def copy_into(tmp_path: Path, blob: Blob, known: Digests | None = None) -> tuple[Digests, bytes]:
    path, payload = blob
    out, progress = tmp_path / "out", Count()
    with out.open("wb", buffering=0) as target:
        target.write(b"head")  # the copy goes to the target's position
        digests = copy_span(ModelSource(path, OFFSET), len(payload), target, progress, known=known)
    assert progress.total == len(payload)
    data = out.read_bytes()
    assert data[:4] == b"head"
    return digests, data[4:]


def test_kernel_copy_digests_the_span(tmp_path, blob, monkeypatch):
    monkeypatch.setattr(copying, "KERNEL_CHUNK_SIZE", 1 << 20)  # many chunks
    digests, copied = copy_into(tmp_path, blob)
    assert copied == blob[1]
    assert digests == expected(blob[1])


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP])
def test_plain_copy_where_the_kernel_refuses(tmp_path, blob, monkeypatch, refusal):
    def refuse(*_args: object) -> int:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    digests, copied = copy_into(tmp_path, blob)
    assert copied == blob[1] and digests == expected(blob[1])


def test_plain_copy_on_systems_without_copy_file_range(tmp_path, blob, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    digests, copied = copy_into(tmp_path, blob)
    assert copied == blob[1] and digests == expected(blob[1])


def test_known_digests_are_not_computed_again(tmp_path, blob):
    sentinel = Digests(len(blob[1]), "ab" * 32, 7)
    digests, copied = copy_into(tmp_path, blob, known=sentinel)
    assert digests == sentinel and copied == blob[1]


def test_a_short_source_is_an_error(tmp_path, blob):
    path, payload = blob
    with (tmp_path / "out").open("wb", buffering=0) as target, pytest.raises(EOFError):
        copy_span(ModelSource(path, OFFSET), len(payload) + 1, target, Count())


# -- rebuilds reuse what an earlier build learned, as long as the file is unchanged


def build(source: Path, out: Path, stub: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["build", str(source), "-o", str(out), "--runtime", str(stub)])
    assert result.exit_code == 0, result.output
    manifest: dict[str, Any] = json.loads(zipfile.ZipFile(out).read("manifest.json"))
    return manifest


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))
    # Files here are a moment old; the rule against racy entries has its own test.
    monkeypatch.setattr(source_cache, "_RACY_NS", 0)
    return tmp_path / "cache" / CACHE_FILE


def plant(cache: Path, sha256: str) -> None:
    entries = json.loads(cache.read_text())
    (entry,) = entries.values()
    entry["sha256"] = sha256
    cache.write_text(json.dumps(entries))


def test_a_rebuild_takes_the_digests_from_the_cache(tmp_path, fake_stub, cache):
    source = write_gguf(tmp_path / "m.gguf")
    first = build(source, tmp_path / "a", fake_stub)
    assert first["model"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    plant(cache, "cd" * 32)  # only a cache hit can put this into the next manifest
    assert build(source, tmp_path / "b", fake_stub)["model"]["sha256"] == "cd" * 32


def test_a_changed_file_is_hashed_again_even_with_its_old_mtime(tmp_path, fake_stub, cache):
    source = write_gguf(tmp_path / "m.gguf")
    build(source, tmp_path / "a", fake_stub)
    plant(cache, "cd" * 32)
    before = source.stat()
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes, and the mtime put back: ctime still moves
    source.write_bytes(bytes(data))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert build(source, tmp_path / "b", fake_stub)["model"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_file_changed_just_now_is_not_cached(tmp_path, fake_stub, cache, monkeypatch):
    monkeypatch.setattr(source_cache, "_RACY_NS", 1_000_000_000)
    source = write_gguf(tmp_path / "m.gguf")
    build(source, tmp_path / "a", fake_stub)
    assert not cache.exists() or json.loads(cache.read_text()) == {}


def test_verify_ignores_the_cache(tmp_path, fake_stub, cache):
    source = write_gguf(tmp_path / "m.gguf")
    build(source, tmp_path / "a", fake_stub)
    plant(cache, "cd" * 32)
    out = tmp_path / "b"
    build(source, out, fake_stub)
    result = CliRunner().invoke(cli, ["verify", str(out)])
    assert result.exit_code == 1 and "MISMATCH" in result.output
