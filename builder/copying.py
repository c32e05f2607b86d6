"""Copy a file while computing its SHA-256 and CRC-32, in one pass.

The digests and the write run in parallel threads on each chunk while the next
chunk is read (hashlib, zlib and file writes all release the GIL), so a build
costs about as much as `cp` rather than copy + hash + CRC in sequence.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from .progress import Progress

CHUNK_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    crc32: int


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib.crc32(data, self.value)


def copy_with_digests(
    source: io.RawIOBase,
    target: BinaryIO,
    size: int,
    progress: Progress,
    interrupt: Callable[[], None] | None = None,
) -> Digests:
    """Copy exactly `size` bytes from `source` to `target`; raise EOFError if short.
    `interrupt` is called between chunks and may raise to stop the copy early."""
    sha256, crc = hashlib.sha256(), _Crc32()
    buffers = [bytearray(CHUNK_SIZE), bytearray(CHUNK_SIZE)]
    copied = 0
    in_flight: list[Future[object]] = []
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="llamapack-copy") as pool:
        try:
            index = 0
            while copied < size:
                buffer = buffers[index % 2]
                want = min(CHUNK_SIZE, size - copied)
                got = source.readinto(memoryview(buffer)[:want])
                if not got:
                    raise EOFError(f"the source ended after {copied} of {size} bytes")
                _wait(in_flight)
                if interrupt is not None:
                    interrupt()
                chunk = memoryview(buffer)[:got]
                in_flight = [
                    pool.submit(sha256.update, chunk),
                    pool.submit(crc.update, chunk),
                    pool.submit(_write_all, target, chunk),
                ]
                copied += got
                progress.update(got)
                index += 1
        finally:
            _wait(in_flight)
    return Digests(size=copied, sha256=sha256.hexdigest(), crc32=crc.value)


def _wait(futures: list[Future[object]]) -> None:
    for future in futures:
        future.result()


def _write_all(target: BinaryIO, data: memoryview) -> None:
    while data:
        written = target.write(data)
        data = data[written:] if written else data
