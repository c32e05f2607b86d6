"""Whether a folder can hold programs that run: a `noexec` mount cannot."""

from __future__ import annotations

import os
from pathlib import Path


def on_noexec_mount(path: Path) -> bool:
    """True when `path` lies on a file system mounted noexec (Linux' /tmp often is), where
    running it fails with "Permission denied" whatever its mode. False where unknown."""
    flag = getattr(os, "ST_NOEXEC", 0)  # absent on Windows and some systems
    if not flag:
        return False
    try:
        return bool(os.statvfs(path).f_flag & flag)
    except OSError:
        return False
