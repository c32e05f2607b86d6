"""Builds that go wrong half-way: nothing is left behind and the input is untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.support.fakes import add_tiny_vocabulary, write_gguf


def sparse_gguf(path: Path, size: int) -> Path:
    """A valid GGUF whose one big tensor is a sparse hole: large to copy, free on disk."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("sparse")
    add_tiny_vocabulary(writer)
    elements = size // 4
    writer.add_tensor_info("token_embd.weight", (elements // 1024, 1024), np.dtype(np.float32), elements * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header_end = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(-(-header_end // 32) * 32 + elements * 4)
    return path


def llamapack(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "llamapack"), *args]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_ctrl_c_mid_build_leaves_nothing(tmp_path, fake_stub):
    source = sparse_gguf(tmp_path / "big.gguf", 3 << 30)
    before = (source.stat().st_size, source.stat().st_mtime_ns)
    out_dir = tmp_path / "out"
    env = {**os.environ, "LLAMAPACK_DISABLE_PROGRESS_BARS": "1"}
    process = subprocess.Popen(
        llamapack("build", str(source), "-o", str(out_dir / "model"), "--runtime", str(fake_stub)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(name.endswith(".partial") for name in leftovers(out_dir)):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the copy
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.strip() == "Error: interrupted; nothing was written"
    assert leftovers(out_dir) == []
    assert (source.stat().st_size, source.stat().st_mtime_ns) == before


def test_disk_full_leaves_nothing(tmp_path, fake_stub):
    """A real full filesystem: a 1 MiB tmpfs (needs root, as CI has)."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        source = write_gguf(tmp_path / "m.gguf", tensor_elements=1 << 20)  # 4 MiB
        result = subprocess.run(
            llamapack("build", str(source), "-o", str(small / "model"), "--runtime", str(fake_stub)),
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.strip() == f"Error: no space left on the device while writing {small / 'model'}"
        assert leftovers(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_read_only_output_folder_is_one_line_and_leaves_nothing(tmp_path, fake_stub):
    """A read-only file system (root ignores folder permissions, not a read-only mount)."""
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(frozen)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        source = write_gguf(tmp_path / "m.gguf")
        result = subprocess.run(
            llamapack("build", str(source), "-o", str(frozen / "model"), "--runtime", str(fake_stub)),
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.strip() == f"Error: cannot write to {frozen}: Read-only file system"
        assert leftovers(frozen) == []
    finally:
        subprocess.run(["umount", str(frozen)], check=True)
