"""llama.cpp's source as vendored in the pinned llama-cpp-python sdist: its chat
templates (models/templates) and its server's test suite (tools/server/tests).

Downloaded from PyPI once and unpacked into the user cache, so tests, the
compatibility run (compat/) and the benchmarks read one copy; a machine that
cannot fetch it fails the tests that need it rather than skipping them.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import platformdirs
from filelock import FileLock


def _cache() -> Path:
    override = os.environ.get("LLAMAPACK_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("llamapack"))


@functools.cache
def llama_cpp_source() -> Path:
    """The unpacked llama.cpp tree (vendor/llama.cpp of the sdist)."""
    version = metadata.version("llama-cpp-python")
    root = _cache() / "sources"
    unpacked = root / f"llama_cpp_python-{version}"
    tree = unpacked / "vendor" / "llama.cpp"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):  # parallel test workers, or a test beside a compat run
        if not (tree / "models" / "templates").is_dir():
            with tempfile.TemporaryDirectory(dir=root) as scratch:
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                     f"llama-cpp-python=={version}", "--dest", scratch],
                    check=True,
                )  # fmt: skip
                (sdist,) = Path(scratch).glob("llama_cpp_python-*.tar.gz")
                with tarfile.open(sdist) as archive:
                    archive.extractall(scratch, filter="data")
                os.replace(Path(scratch) / unpacked.name, unpacked)
    return tree


def llama_cpp_templates() -> dict[str, str]:
    """Every Jinja chat template llama.cpp tests against, by name."""
    folder = llama_cpp_source() / "models" / "templates"
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.jinja"))}
