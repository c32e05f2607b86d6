"""The noexec check behind `llamapack build`'s warning."""

from __future__ import annotations

import os

from llamapack.builder.mounts import on_noexec_mount


def test_noexec_is_read_from_the_mount_flags(tmp_path, monkeypatch):
    assert on_noexec_mount(tmp_path / "missing" / "file") is False  # unknown: no warning

    class Flags:
        f_flag = getattr(os, "ST_NOEXEC", 8)

    monkeypatch.setattr(os, "ST_NOEXEC", Flags.f_flag, raising=False)
    monkeypatch.setattr(os, "statvfs", lambda path: Flags)
    assert on_noexec_mount(tmp_path) is True
    Flags.f_flag = 0
    assert on_noexec_mount(tmp_path) is False
