"""What earlier builds learned about a source file, so that a rebuild is a plain copy.

Rebuilding one model with other options (a context size, a system prompt, a newer
runtime) is the common case, and hashing a GiB costs more than copying it. Like
git's index, an entry is trusted while the file's stat fingerprint (device, inode,
size, mtime, ctime) is unchanged; a file changed less than a second before it was
hashed is not recorded, since a coarse timestamp could hide a second change.
`llamapack verify` never uses this: it always reads every byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamapack.runtime.fileformat import ModelSource

from .copying import Digests

CACHE_FILE = "sources.json"
MAX_ENTRIES = 200
_RACY_NS = 1_000_000_000


@dataclass(frozen=True)
class Fingerprint:
    key: str
    stat: tuple[int, int, int]  # size, mtime_ns, ctime_ns

    @classmethod
    def of(cls, span: ModelSource, size: int) -> Fingerprint:
        info = os.stat(span.path)
        return cls(
            key=f"{info.st_dev}:{info.st_ino}:{span.offset}:{size}",
            stat=(info.st_size, info.st_mtime_ns, info.st_ctime_ns),
        )


@dataclass(frozen=True)
class Known:
    digests: Digests | None = None
    loads_with: tuple[str, ...] = ()  # llama-cpp-python versions that loaded its vocabulary


class SourceCache:
    def __init__(self, folder: Path) -> None:
        self.path = folder / CACHE_FILE

    def lookup(self, fingerprint: Fingerprint) -> Known:
        entry = self._read().get(fingerprint.key)
        if not entry or tuple(entry.get("stat", ())) != fingerprint.stat:
            return Known()
        digests = None
        if "sha256" in entry:
            digests = Digests(size=int(entry["size"]), sha256=entry["sha256"], crc32=int(entry["crc32"]))
        return Known(digests, tuple(entry.get("loads_with", ())))

    def record(
        self, fingerprint: Fingerprint, seen_at_ns: int, digests: Digests | None, loads_with: str
    ) -> None:
        """Remember what was learned from the file as it was at `seen_at_ns`
        (taken before reading it). Best effort: a cache that cannot be written
        only costs the next build its speed."""
        if max(fingerprint.stat[1:]) >= seen_at_ns - _RACY_NS:
            return
        entries = self._read()
        entry: dict[str, Any] = {"stat": list(fingerprint.stat), "seen_at_ns": seen_at_ns}
        old = entries.get(fingerprint.key, {})
        if old.get("stat") == entry["stat"]:
            entry.update(old)
        if digests is not None:
            entry.update(size=digests.size, sha256=digests.sha256, crc32=digests.crc32)
        entry["loads_with"] = sorted({*entry.get("loads_with", ()), loads_with})
        entry["seen_at_ns"] = seen_at_ns
        entries[fingerprint.key] = entry
        newest = sorted(entries.items(), key=lambda item: item[1].get("seen_at_ns", 0))[-MAX_ENTRIES:]
        self._write(dict(newest))

    def _read(self) -> dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{CACHE_FILE}.", suffix=".partial")
            try:
                with os.fdopen(fd, "w") as file:
                    json.dump(entries, file)
                os.replace(temp, self.path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
