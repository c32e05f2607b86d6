"""Builds that go wrong half-way: nothing is left behind and the input is untouched."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


def frozen_mid_copy(process: subprocess.Popen[str], out_dir: Path) -> None:
    """Wait until the build has copied more than the stub and a first chunk, then
    freeze it (SIGSTOP): whatever the test does next happens mid-copy, however fast
    this machine copies. The caller sends its signal or changes the source, then
    SIGCONT."""
    deadline = time.monotonic() + 60
    while not any(name.endswith(".partial") and (out_dir / name).stat().st_size > 64 << 20
                  for name in leftovers(out_dir)):  # fmt: skip
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGSTOP)
    assert process.poll() is None, "the build finished before it could be stopped mid-copy"


def test_ctrl_c_mid_build_leaves_nothing(tmp_path, fake_stub):
    source = sparse_gguf(tmp_path / "big.gguf", 3 << 30)
    before = (source.stat().st_size, source.stat().st_mtime_ns)
    out_dir = tmp_path / "out"
    env = {**os.environ, "LLAMAPACK_DISABLE_PROGRESS_BARS": "1"}
    # As from a terminal: a suite started in the background (`cmd &` in a script) hands
    # its children SIGINT ignored, and Python then keeps it ignored.
    process = subprocess.Popen(
        llamapack("build", str(source), "-o", str(out_dir / "model"), "--runtime", str(fake_stub)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    frozen_mid_copy(process, out_dir)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.strip() == "Error: interrupted; nothing was written"
    assert leftovers(out_dir) == []
    assert (source.stat().st_size, source.stat().st_mtime_ns) == before


@pytest.mark.parametrize(
    ("vanish", "message"),
    [
        (lambda source: os.truncate(source, 1 << 20), "{source} changed size while it was being copied"),
        (lambda source: source.unlink(), "cannot read {source}: No such file or directory"),
    ],
    ids=["truncated", "deleted"],
)
def test_a_source_that_vanishes_mid_copy_is_one_line_and_leaves_nothing(tmp_path, fake_stub, vanish, message):
    """A source on a drive that goes away, or that another program rewrites, while
    the weights are copied: the copy is discarded, never shipped half-read."""
    source = sparse_gguf(tmp_path / "big.gguf", 3 << 30)
    out_dir = tmp_path / "out"
    env = {**os.environ, "LLAMAPACK_DISABLE_PROGRESS_BARS": "1"}
    process = subprocess.Popen(
        llamapack("build", str(source), "-o", str(out_dir / "model"), "--runtime", str(fake_stub)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    frozen_mid_copy(process, out_dir)
    vanish(source)
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.strip() == "Error: " + message.format(source=source)
    assert leftovers(out_dir) == []


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real small file system mounted at `folder` (needs root, as CI has)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def build_into(source: Path, out: Path, stub: Path) -> subprocess.CompletedProcess[str]:
    command = llamapack("build", str(source), "-o", str(out), "--runtime", str(stub))
    return subprocess.run(command, capture_output=True, text=True)


def test_disk_full_leaves_nothing(tmp_path, fake_stub):
    """A real full file system: a 1 MiB tmpfs."""
    source = write_gguf(tmp_path / "m.gguf", tensor_elements=1 << 20)  # 4 MiB
    with tmpfs(tmp_path / "small", "size=1m") as small:
        result = build_into(source, small / "model", fake_stub)
        assert result.returncode == 1
        assert result.stderr.strip() == f"Error: no space left on the device while writing {small / 'model'}"
        assert leftovers(small) == []


def test_a_read_only_output_folder_is_one_line_and_leaves_nothing(tmp_path, fake_stub):
    """A read-only file system (root ignores folder permissions, not a read-only mount)."""
    source = write_gguf(tmp_path / "m.gguf")
    with tmpfs(tmp_path / "frozen", "size=1m,ro") as frozen:
        result = build_into(source, frozen / "model", fake_stub)
        assert result.returncode == 1
        assert result.stderr.strip() == f"Error: cannot write to {frozen}: Read-only file system"
        assert leftovers(frozen) == []
