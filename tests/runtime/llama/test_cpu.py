"""runtime/llama/cpu.py: which llama.cpp CPU variant runs, and the AMX safety rule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llamapack.runtime.llama import cpu
from llamapack.runtime.llama.cpu import (
    Candidate,
    CpuBackendError,
    choose,
    discover,
    use_extra_bufts,
    variant_name,
)

# Scores as ggml_backend_cpu_x86_score gives them: measured on an AMD EPYC (zen4, AVX-512
# without AMX) with the wheel of -DGGML_CPU_ALL_VARIANTS=ON; on a Sapphire Rapids CPU
# alderlake also runs (AVX-VNNI) and sapphirerapids adds the AMX bit (1 << 11).
SPR = {
    "x64": 1,
    "sse42": 5,
    "sandybridge": 21,
    "ivybridge": 23,
    "piledriver": 24,
    "haswell": 64,
    "alderlake": 128,
    "skylakex": 192,
    "cannonlake": 448,
    "cascadelake": 1216,
    "icelake": 1472,
    "cooperlake": 1728,
    "zen4": 1984,
    "sapphirerapids": 1984 + 2048,
}
AVX2_ONLY = {name: (score if score <= 64 else 0) for name, score in SPR.items()}


def candidates(scores: dict[str, int]) -> list[Candidate]:
    return [Candidate(name, Path(f"/x/libggml-cpu-{name}.so"), score) for name, score in scores.items()]


def names() -> tuple[str, str]:
    return ("ggml-cpu-", ".dll") if sys.platform == "win32" else ("libggml-cpu-", ".so")


def test_variant_names() -> None:
    prefix, suffix = names()
    assert variant_name(Path(f"{prefix}zen4{suffix}")) == "zen4"
    assert variant_name(Path(f"{prefix}sapphirerapids{suffix}")) == "sapphirerapids"
    assert variant_name(Path(f"{prefix}{suffix}")) is None
    assert variant_name(Path("libggml-cpu.so")) is None
    assert variant_name(Path("libggml-cpu.so.0")) is None
    assert variant_name(Path("libggml-base.so")) is None
    assert variant_name(Path(f"{prefix}haswell{suffix}.0")) is None


def test_discover_first_directory_wins(tmp_path: Path) -> None:
    prefix, suffix = names()
    lib, bin_ = tmp_path / "lib", tmp_path / "bin"
    lib.mkdir()
    bin_.mkdir()
    for directory, variant in [(lib, "haswell"), (bin_, "haswell"), (bin_, "zen4"), (bin_, "x64")]:
        (directory / f"{prefix}{variant}{suffix}").write_bytes(b"")
    (lib / "libggml-base.so").write_bytes(b"")
    (bin_ / f"{prefix}dir{suffix}").mkdir()  # not a file
    found = discover([lib, tmp_path / "missing", bin_])
    assert sorted(found) == ["haswell", "x64", "zen4"]
    assert found["haswell"].parent == lib
    assert found["zen4"].parent == bin_


def test_best_score_wins_without_amx() -> None:
    choice = choose(candidates(AVX2_ONLY), machine="x86_64")
    assert choice.candidate.variant == "haswell"
    assert choice.skipped == ()


def test_amx_variant_is_skipped_on_an_amx_cpu() -> None:
    choice = choose(candidates(SPR), machine="x86_64")
    assert choice.candidate.variant == "zen4"
    assert choice.skipped == ("sapphirerapids",)


def test_amx_bit_means_nothing_off_x86() -> None:
    arm = [Candidate("armv9.2_2", Path("/x/a.so"), 4096 - 1), Candidate("armv8.0_1", Path("/x/b.so"), 1)]
    assert choose(arm, machine="aarch64").candidate.variant == "armv9.2_2"


def test_only_amx_left_is_still_chosen() -> None:
    choice = choose([Candidate("sapphirerapids", Path("/x/s.so"), SPR["sapphirerapids"])], machine="x86_64")
    assert choice.candidate.variant == "sapphirerapids"


def test_forced_variant() -> None:
    assert choose(candidates(SPR), forced="haswell", machine="x86_64").candidate.variant == "haswell"
    forced = choose(candidates(SPR), forced="sapphirerapids", machine="x86_64")
    assert forced.candidate.variant == "sapphirerapids"
    with pytest.raises(CpuBackendError, match="lacks instructions"):
        choose(candidates(AVX2_ONLY), forced="zen4", machine="x86_64")
    with pytest.raises(CpuBackendError, match="no such CPU variant"):
        choose(candidates(SPR), forced="pentium", machine="x86_64")


def test_nothing_runs() -> None:
    with pytest.raises(CpuBackendError, match="no llama.cpp CPU backend runs"):
        choose(candidates({"haswell": 0, "zen4": 0}), machine="x86_64")
    with pytest.raises(CpuBackendError):
        choose([], machine="x86_64")


def test_safety_rule_on_loaded_buffer_types() -> None:
    assert use_extra_bufts(("CPU_REPACK",))
    assert use_extra_bufts(())
    assert not use_extra_bufts(("AMX", "CPU_REPACK"))
    assert use_extra_bufts(("AMX",), override="1")
    assert not use_extra_bufts(("CPU_REPACK",), override="0")
    assert not use_extra_bufts(("AMX",), override="yes")


def test_cpu_backend_in_this_environment() -> None:
    backend = cpu.cpu_backend()
    assert backend.variant
    assert backend is cpu.cpu_backend()
    if backend.variant == cpu.BUILTIN:
        assert backend.path is None
    else:
        assert backend.path is not None and variant_name(backend.path) == backend.variant
    override = os.environ.get(cpu.ENV_EXTRA_BUFTS)
    assert backend.use_extra_bufts == use_extra_bufts(backend.extra_buffer_types, override)
    assert backend.as_dict()["variant"] == backend.variant
