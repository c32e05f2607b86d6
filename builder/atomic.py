"""Write a file so that it appears complete or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError


@contextlib.contextmanager
def atomic_output(
    output: Path, check: Callable[[Path], None] | None = None, executable: bool = True
) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `output`; rename it into place on success.

    `check` may inspect the finished temporary file and raise to discard it.
    On any error or interruption the temporary file is removed and `output`,
    if it existed, is left as it was.
    """
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{output.name}.", suffix=".partial")
    except OSError as exc:
        raise OutputError(f"cannot write to {folder}: {exc.strerror}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as file:
            # No fsync: like cp, the data reaches the disk in the background; the
            # rename still guarantees a reader never sees a half-written file.
            yield file
        if check is not None:
            check(temp)
        os.chmod(temp, (0o777 if executable else 0o666) & ~_umask())
        os.replace(temp, output)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"no space left on the device while writing {output}") from None
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
