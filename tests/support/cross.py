"""Tests that need another system's tools (Wine, QEMU, mingw-w64): skipped where the
tools are missing, except under `make cross-check` (LLAMAPACK_REQUIRE_CROSS=1), where a
missing tool is a failure, so CI never passes by skipping them."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def cross_required() -> bool:
    return os.environ.get("LLAMAPACK_REQUIRE_CROSS") == "1"


def unavailable(reason: str) -> NoReturn:
    if cross_required():
        pytest.fail(f"LLAMAPACK_REQUIRE_CROSS=1, but {reason}")
    pytest.skip(reason)
