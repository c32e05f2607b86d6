"""Every CPU variant this machine can run decodes for real, and the rest are refused
with one line: the code paths of older and other x86-64 CPUs, exercised here."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from llamapack.runtime.llama.cpu import ENV_FORCE, discover, search_directories

VARIANTS = sorted(discover(search_directories()))
X86 = platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def must_run(variant: str) -> bool:
    """Variants any CPU like the CI machine's runs: a refusal of these is a bug."""
    flags = cpu_flags()
    return variant in ("x64", "sse42") or (variant == "haswell" and {"avx2", "fma"} <= flags)


@pytest.mark.skipif(not VARIANTS, reason="llama.cpp built without CPU variants (no GGML_BACKEND_DL)")
@pytest.mark.parametrize("variant", VARIANTS)
def test_forced_variant_decodes_or_is_refused(variant, gemma_gguf):
    env = {**os.environ, ENV_FORCE: variant}
    command = [sys.executable, "-m", "llamapack.runtime", "-m", str(gemma_gguf), "--chat-template", "gemma",
               "-p", "The capital of France is", "-n", "6", "--temp", "0", "-t", "2",
               "-c", "512"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    crashed = f"{variant}: killed by signal {-result.returncode}: {result.stderr[-2000:]}"
    assert result.returncode >= 0, crashed
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert f"engine: CPU {variant} " in result.stderr
        assert result.stdout.strip(), "no text generated"
    else:
        assert result.returncode == 1 and "lacks instructions" in result.stderr, result.stderr
        assert not (X86 and must_run(variant)), f"{variant} refused on a CPU that has what it needs"
