"""Copy a GGUF into the output while computing its SHA-256 and CRC-32.

Two ways, the faster first:

- Kernel copy (`copy_span`): where the source is a span of a local file and the
  system can copy inside the kernel (Linux copy_file_range, as `cp` does), one
  thread has the kernel move the bytes while the calling thread reads the same
  span and digests it, so the two cores do the two jobs at once. SHA-256 is the
  slowest part (about 0.6 s per GiB with SHA-NI), more than the copy itself.
- Pipeline (`copy_with_digests`): elsewhere (another OS, a compressed ZIP
  member, a pair of filesystems the kernel will not copy between) each chunk
  read is handed to the digests and the write in parallel threads.

With digests already known (builder/source_cache.py) nothing is hashed and the
kernel copy is the whole job.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from zlib_ng import zlib_ng  # CRC-32 with PCLMUL: 5x faster than zlib's here

from llamapack.runtime.fileformat import ModelSource

from .progress import Progress

CHUNK_SIZE = 8 * 1024 * 1024
KERNEL_CHUNK_SIZE = 128 * 1024 * 1024  # between chunks, Ctrl-C and a failed check stop the copy
# copy_file_range refuses these pairs of files up front; a plain copy still works.
_KERNEL_REFUSALS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    crc32: int


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib_ng.crc32(data, self.value)


def copy_with_digests(
    source: io.RawIOBase,
    target: BinaryIO | None,
    size: int,
    progress: Progress,
    interrupt: Callable[[], None] | None = None,
) -> Digests:
    """Copy exactly `size` bytes from `source` to `target` (or only digest them when
    `target` is None); raise EOFError if the source is short. `interrupt` is called
    between chunks and may raise to stop early."""
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
                in_flight = [pool.submit(sha256.update, chunk), pool.submit(crc.update, chunk)]
                if target is not None:
                    in_flight.append(pool.submit(_write_all, target, chunk))
                copied += got
                progress.update(got)
                index += 1
        finally:
            _wait(in_flight)
    return Digests(size=copied, sha256=sha256.hexdigest(), crc32=crc.value)


def copy_span(
    span: ModelSource,
    size: int,
    target: BinaryIO,
    progress: Progress,
    interrupt: Callable[[], None] | None = None,
    known: Digests | None = None,
) -> Digests:
    """Copy `size` bytes of the file `span` points into to `target`'s position and
    return their digests (`known` ones are trusted and not computed again)."""
    with open(span.path, "rb", buffering=0) as source:
        kernel = _KernelCopy(source.fileno(), span.offset, target.fileno(), size)
        if not kernel.start():
            source.seek(span.offset)
            return copy_with_digests(source, target, size, progress, interrupt)
        if known is not None:
            progress.update(kernel.copied)
            kernel.run(progress, interrupt)
            kernel.check_complete()
            return known
        worker = threading.Thread(target=kernel.run, name="llamapack-kernel-copy", daemon=True)
        worker.start()

        def check() -> None:
            kernel.raise_failure()
            if interrupt is not None:
                interrupt()

        try:
            source.seek(span.offset)
            digests = copy_with_digests(source, None, size, progress, check)
        except BaseException:
            kernel.stop.set()
            raise
        finally:
            worker.join()
        kernel.raise_failure()
        kernel.check_complete()
        return digests


class _KernelCopy:
    """copy_file_range in chunks, from a fixed source offset to the target's position."""

    def __init__(self, source_fd: int, offset: int, target_fd: int, size: int) -> None:
        self.source_fd, self.offset, self.target_fd, self.size = source_fd, offset, target_fd, size
        self.copied = 0
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def start(self) -> bool:
        """Copy the first chunk; False (nothing copied) where the kernel cannot copy."""
        if not hasattr(os, "copy_file_range") or self.size == 0:
            return False
        try:
            self._step()
        except OSError as exc:
            if exc.errno in _KERNEL_REFUSALS:
                return False
            raise
        return True

    def run(self, progress: Progress | None = None, interrupt: Callable[[], None] | None = None) -> None:
        try:
            while self.copied < self.size and not self.stop.is_set():
                if interrupt is not None:
                    interrupt()
                step = self._step()
                if progress is not None:
                    progress.update(step)
                if step == 0:
                    return  # the source ended early: the caller reports it
        except BaseException as exc:
            if threading.current_thread() is threading.main_thread():
                raise
            self.failure = exc

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def check_complete(self) -> None:
        if self.copied != self.size:
            raise EOFError(f"the source ended after {self.copied} of {self.size} bytes")

    def _step(self) -> int:
        want = min(KERNEL_CHUNK_SIZE, self.size - self.copied)
        done = os.copy_file_range(self.source_fd, self.target_fd, want, self.offset + self.copied)
        self.copied += done
        return done


def _wait(futures: list[Future[object]]) -> None:
    for future in futures:
        future.result()


def _write_all(target: BinaryIO, data: memoryview) -> None:
    while data:
        written = target.write(data)
        data = data[written:] if written else data
