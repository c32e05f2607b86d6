"""A source model's GGUF header, as the builder describes it.

The parsing is the file format's own (runtime/fileformat/gguf.py, shared with the
runtime); this adds what only the builder needs: quantisation names and sizes from
the `gguf` package, and a check that the file holds every tensor it lists.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from llamapack.runtime.fileformat import gguf
from llamapack.runtime.fileformat.gguf import Tensor

from .errors import SourceError

__all__ = ["GGUFHeader", "Tensor", "parse_header", "read_header", "read_header_from_stream", "tensor_bytes"]


def tensor_bytes(tensor: Tensor) -> int:
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(tensor.type)]
    return tensor.n_elements // block * type_size


@dataclass
class GGUFHeader(gguf.Header):
    file_size: int = 0

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if file_type is not None:
            try:
                name = LlamaFileType(int(file_type)).name
                return name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                pass
        # No file type recorded: name the type holding the most weights.
        weights: dict[int, int] = {}
        for tensor in self.tensors:
            weights[tensor.type] = weights.get(tensor.type, 0) + tensor.n_elements
        if not weights:
            return "unknown"
        return GGMLQuantizationType(max(weights, key=weights.__getitem__)).name

    @property
    def data_end(self) -> int:
        return self.data_offset + max((t.offset + tensor_bytes(t) for t in self.tensors), default=0)


def read_header(path: Path) -> GGUFHeader:
    """Parse and check the header of the GGUF file at `path`, raising SourceError."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            if size < 4:
                return parse_header(b"", size, str(path))
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return parse_header(view, size, str(path))
                finally:
                    view.release()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_header_from_stream(stream: IO[bytes], size: int, label: str) -> GGUFHeader:
    """Parse the header from the start of a stream (a compressed ZIP member, say),
    reading only as much as the header needs."""
    try:
        return _checked(gguf.read_header_from_stream(stream, size, label), size, label)
    except gguf.GGUFError as exc:
        raise SourceError(str(exc)) from None


def parse_header(buffer: bytes | memoryview, size: int, label: str) -> GGUFHeader:
    """Parse a GGUF header from `buffer`, the first bytes of a `size`-byte file."""
    try:
        return _checked(gguf.parse_header(buffer, size, label), size, label)
    except gguf.GGUFError as exc:
        raise SourceError(str(exc)) from None


def _checked(parsed: gguf.Header, size: int, label: str) -> GGUFHeader:
    header = GGUFHeader(
        parsed.version, parsed.metadata, parsed.tensors, parsed.data_offset, parsed.skipped_arrays, size
    )
    try:
        data_end = header.data_end
    except (ValueError, KeyError) as exc:  # a tensor type the gguf package does not know
        raise SourceError(f"{label}: the GGUF header is damaged ({exc})") from None
    if data_end > size:
        missing = data_end - size
        raise SourceError(f"{label} is truncated: its tensors need {missing} more bytes")
    return header
