"""Progress bars that stay out of the way, following huggingface_hub's rules.

Bars show only on a terminal, and never when LLAMAPACK_DISABLE_PROGRESS_BARS
(or HF_HUB_DISABLE_PROGRESS_BARS) is set to a true value or `--quiet` is given.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from tqdm import tqdm

_TRUE = {"1", "true", "yes", "on"}
_quiet = False


class Progress(Protocol):
    def update(self, n: int) -> object: ...


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def bars_enabled() -> bool:
    if _quiet:
        return False
    for name in ("LLAMAPACK_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return False
    return sys.stderr.isatty()


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Progress]:
    with tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not bars_enabled(),
        file=sys.stderr,
        leave=False,
    ) as bar:
        yield bar
