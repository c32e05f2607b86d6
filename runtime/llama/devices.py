"""Which compute devices llama.cpp runs on here, and which llama.cpp build it is.

One job: describe the engine a user gets, for the launch line, `--version` and
`GET /props`. Users of a file that quietly runs on the CPU when they asked for a
GPU, or on a slow CPU variant, cannot tell why it is slow; this says it.

Everything is read from ggml itself (llama-cpp-python binds neither `ggml_version`
nor the device registry), through the runtime's one ggml loader (ggml.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field

from llamapack.runtime.fileformat import LlamaCppBuild
from llamapack.runtime.llama.cpu import CpuBackend
from llamapack.runtime.llama.ggml import ggml as ggml_api
from llamapack.runtime.llama.ggml import text
from llamapack.runtime.llama.gpu import GpuChoice

GIB = 1 << 30
# enum ggml_backend_dev_type (ggml-backend.h), in order
DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL", "META")
# Devices llama.cpp offloads layers to (llama_model_load: GPU, else an integrated GPU).
OFFLOAD_TYPES = ("GPU", "IGPU")
# ggml's CPU feature names, best first, and how people call them.
_INSTRUCTION_SETS = (
    ("AMX_INT8", "AMX"),
    ("AVX512", "AVX-512"),
    ("AVX2", "AVX2"),
    ("AVX", "AVX"),
    ("SSE42", "SSE4.2"),
    ("SSE3", "SSE3"),
    ("SVE", "SVE"),
    ("DOTPROD", "NEON dotprod"),
    ("NEON", "NEON"),
)


@dataclass(frozen=True)
class Device:
    """One ggml backend device: name ("CPU", "CUDA0"), what it is, its type, its memory."""

    name: str
    description: str
    type: str  # one of DEVICE_TYPES
    memory_total: int = 0  # bytes; 0 when ggml does not say
    memory_free: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "memory_total": self.memory_total,
            "memory_free": self.memory_free,
        }

    def memory(self) -> str:
        """ "7.6 of 8.0 GiB free" """
        if not self.memory_total:
            return "memory unknown"
        return f"{self.memory_free / GIB:.1f} of {self.memory_total / GIB:.1f} GiB free"


@dataclass(frozen=True)
class EngineReport:
    """What runs a loaded model: the devices, the CPU variant, threads and GPU layers.

    gpu_layers_requested: -ngl as given. gpu_layers: what llama.cpp offloads, which is
    none without a GPU device, and at most the model's layers plus its output layer.
    """

    build: LlamaCppBuild
    cpu: CpuBackend
    devices: tuple[Device, ...]
    threads: int
    gpu_layers_requested: int = 0
    model_layers: int = 0
    warnings: tuple[str, ...] = field(default=())
    layers_by_device: dict[str, int] = field(default_factory=dict)  # as llama.cpp placed them
    gpu: GpuChoice = GpuChoice("none", reason="not asked for")

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.type in OFFLOAD_TYPES)

    @property
    def gpu_layers(self) -> int:
        if not self.gpus or self.gpu_layers_requested <= 0:
            return 0
        if self.model_layers:
            return min(self.gpu_layers_requested, self.model_layers + 1)
        return self.gpu_layers_requested

    def cpu_summary(self) -> str:
        """ "CPU zen4 (AVX-512)", "CPU builtin (AVX2)"."""
        details = [instruction_set(self.cpu.features)] if instruction_set(self.cpu.features) else []
        if not self.cpu.use_extra_bufts:
            details.append("extra buffer types off")
        return f"CPU {self.cpu.variant}" + (f" ({', '.join(details)})" if details else "")

    def line(self) -> str:
        """The launch line: the GPUs that get layers, then the CPU, threads and build."""
        parts = []
        offloaded = {name: count for name, count in self.layers_by_device.items() if name != "CPU"}
        described = {d.name: d for d in self.devices}
        if offloaded:
            parts += [
                f"{name} ({_described(described.get(name))}): {count} of {self.model_layers + 1} layers"
                for name, count in offloaded.items()
            ]
        elif self.gpus:
            layers = f"{self.gpu_layers} layers" if self.gpu_layers else "no layers"
            parts += [f"{d.name} ({_described(d)}): {layers}" for d in self.gpus]
        cpu = self.cpu_summary()
        if self.cpu.description:
            cpu += f" on {self.cpu.description}"
        parts.append(cpu)
        parts.append(f"{self.threads} threads")
        parts.append(self.build.summary())
        if not self.gpus and self.gpu.reason:
            parts.append(f"no GPU ({self.gpu.reason})")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "summary": self.line(),
            "devices": [d.as_dict() for d in self.devices],
            "cpu": {**self.cpu.as_dict(), "summary": self.cpu_summary()},
            "threads": self.threads,
            "gpu_layers_requested": self.gpu_layers_requested,
            "gpu_layers": self.gpu_layers,
            "layers_by_device": dict(self.layers_by_device),
            "gpu": self.gpu.as_dict(),
            "llama_cpp": self.build.to_json(),
            "warnings": list(self.warnings),
        }


def _described(device: Device | None) -> str:
    if device is None:
        return "?"
    if device.name.startswith("RPC") or not device.memory_total:
        return device.description
    return f"{device.description}, {device.memory()}"


def instruction_set(features: tuple[str, ...]) -> str:
    """The widest vector instructions the loaded CPU code uses, in common spelling."""
    names = {feature.partition("=")[0] for feature in features}
    for ggml_name, label in _INSTRUCTION_SETS:
        if ggml_name in names:
            return label
    return ""


def offload_warnings(gpu_layers_requested: int, devices: tuple[Device, ...]) -> tuple[str, ...]:
    """A requested GPU offload that cannot happen is said aloud, never skipped silently."""
    if gpu_layers_requested > 0 and not any(d.type in OFFLOAD_TYPES for d in devices):
        found = ", ".join(d.name for d in devices) or "none"
        return (
            f"-ngl {gpu_layers_requested} asks for GPU offload, but this engine has no GPU backend "
            f"(devices: {found}); every layer runs on the CPU",
        )
    return ()


# -- ggml through ctypes


def llama_cpp_build() -> LlamaCppBuild:
    """ggml's version and commit, as compiled into the loaded libraries."""
    try:
        ggml = ggml_api()
    except (AttributeError, OSError):  # a ggml older than these exports
        return LlamaCppBuild("unknown", "unknown")
    return LlamaCppBuild(text(ggml.ggml_version()) or "unknown", text(ggml.ggml_commit()) or "unknown")


def devices() -> tuple[Device, ...]:
    """Every device registered with ggml. Call after the backends are loaded
    (model.init_backend): before that the list is empty."""
    ggml = ggml_api()
    found = []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        kind = ggml.ggml_backend_dev_type(device)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                name=text(ggml.ggml_backend_dev_name(device)),
                description=text(ggml.ggml_backend_dev_description(device)),
                type=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else f"type {kind}",
                memory_total=int(total.value),
                memory_free=int(free.value),
            )
        )
    return tuple(found)


def engine_report(
    cpu: CpuBackend,
    threads: int,
    gpu_layers_requested: int,
    model_layers: int,
    layers_by_device: dict[str, int] | None = None,
    gpu: GpuChoice | None = None,
    warnings: Sequence[str] = (),
) -> EngineReport:
    """Describe the engine of a loaded model (devices are read now)."""
    found = devices()
    return EngineReport(
        build=llama_cpp_build(),
        cpu=cpu,
        devices=found,
        threads=threads,
        gpu_layers_requested=gpu_layers_requested,
        model_layers=model_layers,
        warnings=(*offload_warnings(gpu_layers_requested, found), *warnings),
        layers_by_device=dict(layers_by_device or {}),
        gpu=gpu or GpuChoice("none", reason="not asked for"),
    )
