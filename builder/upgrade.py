"""Put a newer runtime into an existing built file, keeping its model and settings.

llamafile users hit "unknown model architecture" when a file's engine is older
than its model family; an upgrade is a copy job (no PyInstaller run when the
stub is cached) that keeps the weights byte for byte, the `.args` and every
manifest field describing the model, and swaps the engine around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from llamapack.runtime.fileformat import ModelSource

from .assemble import BuildResult, engine_info, gpu_payload, read_stub, write_file
from .errors import OutputError
from .gguf_header import read_header_from_stream
from .provenance import open_layout
from .sources import Source
from .stub import StubInfo


def upgrade(file: Path, output: Path | None, stub: StubInfo, log: Callable[[str], None]) -> BuildResult:
    """`file` with `stub`'s engine; a GPU runtime it carries (--gpu-runtime) is
    replaced by this llamapack's, which matches the new engine."""
    layout = open_layout(file)
    destination = output or file
    if destination.is_dir():
        raise OutputError(f"{destination} is a directory; give the upgraded file's path")

    def open_model() -> object:
        raw = layout.model_path.open("rb", buffering=0)
        raw.seek(layout.model_offset)
        return raw

    with layout.model_path.open("rb") as raw:
        raw.seek(layout.model_offset)
        header = read_header_from_stream(raw, layout.model_size, f"{file}:{layout.model_name}")
    source = Source(
        label=str(file),
        file_name=layout.model_name,
        size=layout.model_size,
        header=header,
        open=open_model,  # type: ignore[arg-type]
        in_place=ModelSource(layout.model_path, layout.model_offset),
        provenance=layout.manifest.source,
    )
    # write_file checks that the new engine knows this model (a vocab-only load),
    # and fills in the stub's hash and the model's place anew.
    target = layout.manifest.engine.target
    manifest = replace(layout.manifest, engine=engine_info(target))
    carried = layout.manifest.gpu_runtime
    gpu = gpu_payload(carried.backend, target, log) if carried is not None else None
    return write_file(
        source,
        destination,
        manifest,
        layout.args,
        read_stub(stub.path),
        stub.path,
        expected_sha256=layout.manifest.model.sha256,
        beside=destination.with_suffix(".gguf") if layout.external else None,
        gpu=gpu,
    )
