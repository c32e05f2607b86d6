"""llama.cpp's CPU backend: which build of it runs, chosen for the CPU at hand.

The engine is compiled with `-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON`: the
CPU backend exists as one shared library per instruction set (`libggml-cpu-x64.so`,
`-sse42`, `-haswell`, `-skylakex`, `-icelake`, `-zen4`, `-alderlake`,
`-sapphirerapids`, ...) and none is linked in. llama-cpp-python 0.3.36 installs them
into `site-packages/bin/` and never loads them (llama.cpp then fails with "no backends
are loaded"); a built file carries them in `llama_cpp/lib` (builder/stub.py). So
before any model is loaded, `cpu_backend()` scores every variant as ggml's own
`ggml_backend_load_best` does (each library's `ggml_backend_score()` checks cpuid and
returns 0 when the CPU lacks an instruction it was built for, otherwise a bitmask of
its features) and registers the best one with `ggml_backend_load`, with one safety rule.

Safety rule (AMX). ggml's AMX kernels (`ggml_backend_amx_mul_mat`) crash at the first
decode of Gemma 3 Q4_K_M on Sapphire Rapids class CPUs. They are reached only through
the AMX "extra buffer type" that a variant built with AMX (sapphirerapids, or a
`-march=native` build on such a CPU) offers. Two safe options: skip that variant and
take the best one without AMX (on those CPUs: zen4 = AVX-512 VBMI/VNNI/BF16, which
keeps the CPU_REPACK buffer type), or load it with `use_extra_bufts=False`, which also
turns off CPU_REPACK: the same AVX-512 code without weight repacking. We skip it:
the crashing kernels are then not even in the process, and repacking stays on.
Measured (bench/CPU.md; AMD EPYC Zen 4, Gemma 3 270M Q4_K_M, 2 threads, 128 tokens):
zen4 with repacking 73.9 tok/s, without 74.5, i.e. the same within noise (only 13 MiB
of that model is repacked), so the safer option costs nothing; on bigger models
repacking is llama.cpp's default for a reason. ggml's own `ggml_backend_load_all` /
`ggml_backend_load_best` simply take the highest score, which on an AMX CPU is
sapphirerapids (its score has the AMX bit on top of zen4's): hence our own loop. If
a variant with AMX is loaded anyway (forced with LLAMAPACK_CPU, a native build),
`use_extra_bufts` is reported False, so the AMX buffer type is never used; Model turns
it off in the model params.

`LLAMAPACK_CPU=<variant>` forces a variant (for benchmarks and workarounds); one the
CPU cannot run is an error, not a crash. `LLAMAPACK_CPU_EXTRA_BUFTS=0` turns the extra
buffer types off, `=1` on even with AMX (to check a newer ggml; at your own risk).
A build without GGML_BACKEND_DL (the CPU backend linked in) has nothing to register:
the variant is then reported as "builtin".
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from llamapack.runtime.llama.ggml import Ggml
from llamapack.runtime.llama.ggml import ggml as ggml_api

BUILTIN = "builtin"
ENV_FORCE = "LLAMAPACK_CPU"
ENV_EXTRA_BUFTS = "LLAMAPACK_CPU_EXTRA_BUFTS"  # "0" or "1" overrides the safety rule's answer
# ggml_backend_cpu_x86_score (ggml-cpu/arch/x86/cpu-feats.cpp) adds 1 << 11 when the
# variant was built with AMX-INT8 and the CPU has it: the bit marks the variants whose
# extra buffer type is AMX.
X86_AMX_SCORE_BIT = 1 << 11
AMX_BUFFER_TYPE = "AMX"  # ggml_backend_amx_buffer_type_get_name
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


class CpuBackendError(RuntimeError):
    """No CPU backend of llama.cpp can run on this machine."""


@dataclass(frozen=True)
class Candidate:
    """One CPU variant library and its score on this CPU (0: cannot run here)."""

    variant: str
    path: Path
    score: int

    def has_amx(self, machine: str | None = None) -> bool:
        machine = (machine or platform.machine()).lower()
        return machine in _X86 and bool(self.score & X86_AMX_SCORE_BIT)


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    skipped: tuple[str, ...]  # variants passed over by the safety rule


@dataclass(frozen=True)
class CpuBackend:
    """The CPU backend llama.cpp runs on in this process.

    variant: the library's variant ("zen4", "haswell", ...), or "builtin" for a build
        with the CPU backend linked in.
    path: the variant library loaded; None for "builtin".
    description: the CPU as ggml names it ("AMD EPYC", "Intel(R) Xeon(R) ...").
    features: what the loaded code uses ("AVX2", "AVX512", "REPACK", ...).
    extra_buffer_types: its weight layouts besides plain CPU memory ("CPU_REPACK", "AMX").
    use_extra_bufts: the value for llama_model_params.use_extra_bufts (False when the
        loaded backend offers the AMX buffer type: see the safety rule above).
    skipped: variants this CPU could run that the safety rule passed over.
    """

    variant: str
    path: Path | None = None
    description: str = ""
    features: tuple[str, ...] = ()
    extra_buffer_types: tuple[str, ...] = ()
    use_extra_bufts: bool = True
    skipped: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """One phrase for logs and /props, e.g. "zen4" or "sapphirerapids (AMX off)"."""
        return self.variant if self.use_extra_bufts else f"{self.variant} (extra buffer types off)"

    def as_dict(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "path": str(self.path) if self.path else None,
            "description": self.description,
            "features": list(self.features),
            "extra_buffer_types": list(self.extra_buffer_types),
            "use_extra_bufts": self.use_extra_bufts,
            "skipped": list(self.skipped),
        }


# -- discovery and choice (pure: tested on fake names in tests/runtime/llama/test_cpu.py)


def _library_affixes() -> tuple[str, str]:
    # ggml_backend_load_best's file names: [lib]ggml-cpu-<variant>.(so|dll), .so on macOS too
    return ("ggml-cpu-", ".dll") if sys.platform == "win32" else ("libggml-cpu-", ".so")


def variant_name(path: Path) -> str | None:
    """'zen4' for libggml-cpu-zen4.so; None for any other file."""
    prefix, suffix = _library_affixes()
    name = path.name
    if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix + suffix):
        return None
    return name[len(prefix) : -len(suffix)]


def discover(directories: Iterable[Path]) -> dict[str, Path]:
    """Variant name -> library, the first directory that has a variant winning."""
    found: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            name = variant_name(path)
            if name is not None and name not in found and path.is_file():
                found[name] = path
    return found


def choose(candidates: Sequence[Candidate], forced: str | None = None, machine: str | None = None) -> Choice:
    """The variant to load: the forced one, else the best score without AMX."""
    runnable = [c for c in candidates if c.score > 0]
    if forced:
        for candidate in candidates:
            if candidate.variant == forced:
                if candidate.score <= 0:
                    raise CpuBackendError(f"{ENV_FORCE}={forced}: this CPU lacks instructions it needs")
                return Choice(candidate, skipped=())
        names = ", ".join(sorted(c.variant for c in candidates)) or "none"
        raise CpuBackendError(f"{ENV_FORCE}={forced}: no such CPU variant (found: {names})")
    if not runnable:
        names = ", ".join(sorted(c.variant for c in candidates)) or "none"
        raise CpuBackendError(f"no llama.cpp CPU backend runs on this CPU (found: {names})")
    safe = [c for c in runnable if not c.has_amx(machine)]
    skipped = tuple(c.variant for c in runnable if c.has_amx(machine))
    if not safe:  # not seen on x86 (an AMX CPU also runs x64), kept for completeness
        return Choice(max(runnable, key=lambda c: c.score), skipped=())
    return Choice(max(safe, key=lambda c: c.score), skipped=skipped)


def use_extra_bufts(extra_buffer_types: Iterable[str], override: str | None = None) -> bool:
    """The safety rule on a loaded backend: never hand llama.cpp the AMX buffer type,
    unless LLAMAPACK_CPU_EXTRA_BUFTS=1 says it was proven safe (=0 turns them all off)."""
    if override in ("0", "1"):
        return override == "1"
    return AMX_BUFFER_TYPE not in extra_buffer_types


def search_directories() -> list[Path]:
    """Where the variant libraries lie: llama_cpp/lib (a built file: sys._MEIPASS/llama_cpp/lib,
    see builder/stub.py), then site-packages/bin (where llama-cpp-python installs them)."""
    package = Path(llama_cpp.__file__).parent
    return [package / "lib", package.parent / "bin"]


# -- ggml through ctypes


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


_FeaturesFn = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)
_ExtraBuftsFn = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)
_ScoreFn = ctypes.CFUNCTYPE(ctypes.c_int)


def _score(path: Path) -> int:
    """The variant's own cpuid check, as ggml_backend_load_best calls it."""
    try:
        library = ctypes.CDLL(str(path))
    except OSError:
        return 0
    try:
        address = ctypes.cast(library.ggml_backend_score, ctypes.c_void_p).value
        return int(_ScoreFn(address)()) if address else 0
    except AttributeError:
        return 0
    finally:
        _dlclose(library)


def _dlclose(library: ctypes.CDLL) -> None:
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        close(library._handle)


def _describe(ggml: Ggml, reg: int) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The CPU's name, the backend's features and its extra buffer types."""
    description = ""
    extra: list[str] = []
    if ggml.ggml_backend_reg_dev_count(reg) > 0:
        device = ggml.ggml_backend_reg_dev_get(reg, 0)
        description = (ggml.ggml_backend_dev_description(device) or b"").decode(errors="replace").strip()
        address = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if address:
            bufts = _ExtraBuftsFn(address)(device)
            index = 0
            while bufts and bufts[index]:
                extra.append(ggml.ggml_backend_buft_name(bufts[index]).decode(errors="replace"))
                index += 1
    features: list[str] = []
    address = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
    if address:
        table = _FeaturesFn(address)(reg)
        index = 0
        while table and table[index].name:
            name = table[index].name.decode(errors="replace")
            value = (table[index].value or b"").decode(errors="replace")
            features.append(name if value == "1" else f"{name}={value}")
            index += 1
    return description, tuple(features), tuple(extra)


def _register() -> CpuBackend:
    override = os.environ.get(ENV_EXTRA_BUFTS)
    ggml = ggml_api()
    reg = ggml.ggml_backend_reg_by_name(b"CPU")
    if reg:  # linked in (no GGML_BACKEND_DL), or registered before us
        description, features, extra = _describe(ggml, reg)
        return CpuBackend(BUILTIN, None, description, features, extra, use_extra_bufts(extra, override))
    found = discover(search_directories())
    candidates = [Candidate(name, path, _score(path)) for name, path in found.items()]
    if not candidates:
        where = ", ".join(str(d) for d in search_directories())
        raise CpuBackendError(f"no llama.cpp CPU backend library (libggml-cpu-*) in {where}")
    choice = choose(candidates, os.environ.get(ENV_FORCE) or None)
    reg = ggml.ggml_backend_load(os.fsencode(choice.candidate.path))
    if not reg:
        raise CpuBackendError(f"llama.cpp cannot load its CPU backend {choice.candidate.path}")
    description, features, extra = _describe(ggml, reg)
    return CpuBackend(
        choice.candidate.variant,
        choice.candidate.path,
        description,
        features,
        extra,
        use_extra_bufts(extra, override),
        choice.skipped,
    )


_backend: CpuBackend | None = None
_lock = threading.Lock()


def cpu_backend() -> CpuBackend:
    """Register llama.cpp's CPU backend once per process and say which one runs.

    Call it before loading a model (model.init_backend does); later calls return the
    same answer. Raises CpuBackendError when no variant can run on this CPU.
    """
    global _backend
    with _lock:
        if _backend is None:
            _backend = _register()
        return _backend
