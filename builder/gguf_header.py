"""Read a GGUF header: metadata and tensor table, never the tensor data.

`gguf.GGUFReader` decodes every vocabulary entry into numpy objects and took
25 s on the 253 MB Gemma file; this reader skips arrays it is not asked for
and reads the same header in well under a second. The `gguf` package still
supplies the constants (value types, quantisation block sizes, file types).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from llamapack.runtime.fileformat import GGUF_MAGIC

from .errors import SourceError

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

_SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
# Arrays longer than this (vocabularies, merges) are skipped, not decoded.
_MAX_DECODED_ARRAY = 1024
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int  # relative to the data section

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def n_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.type)]
        return self.n_elements // block * type_size


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[Tensor]
    data_offset: int
    file_size: int
    skipped_arrays: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

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
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    def __init__(self, buffer: memoryview | bytes, at: int = 0):
        self.buffer = buffer
        self.at = at

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.buffer, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.unpack("Q")
        raw = bytes(self.buffer[self.at : self.at + length])
        if len(raw) != length:
            raise struct.error("a string runs past the end of the data")
        self.at += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("Q")
        self.at += length

    def value(self, value_type: int, key: str, skipped: dict[str, int]) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type, count = self.unpack("IQ")
            if count > _MAX_DECODED_ARRAY:
                skipped[key] = count
                self.skip_array(item_type, count)
                return None
            return [self.value(item_type, key, skipped) for _ in range(count)]
        return self.unpack(_SCALARS[GGUFValueType(value_type)])

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type == GGUFValueType.STRING:
            # A vocabulary holds 100k-250k strings: a tight loop, not method calls.
            length_at, buffer, at = _U64.unpack_from, self.buffer, self.at
            for _ in range(count):
                at += 8 + length_at(buffer, at)[0]
            self.at = at
        elif item_type == GGUFValueType.ARRAY:
            for _ in range(count):
                self.skip_array(*self.unpack("IQ"))
        else:
            self.at += count * struct.calcsize(_SCALARS[GGUFValueType(item_type)])


class _NeedMore(Exception):
    """The buffer ends inside the header."""


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
    buffer = bytearray()
    want = min(size, 8 << 20)
    while True:
        chunk = stream.read(want - len(buffer))
        buffer += chunk
        try:
            return parse_header(bytes(buffer), size, label, complete=len(buffer) >= size)
        except _NeedMore:
            if not chunk or len(buffer) >= size:
                raise SourceError(f"{label}: the GGUF header is damaged (it runs past the end)") from None
            want = min(size, want * 2)


def parse_header(buffer: bytes | memoryview, size: int, label: str, complete: bool = True) -> GGUFHeader:
    """Parse a GGUF header from `buffer`, the first bytes of a `size`-byte file."""
    if size == 0:
        raise SourceError(f"{label} is empty")
    if bytes(buffer[:4]) != GGUF_MAGIC:
        raise SourceError(f"{label} is not a GGUF file (it does not start with 'GGUF')")
    cursor = _Cursor(buffer, 4)
    try:
        version, tensor_count, kv_count = cursor.unpack("IQQ")
        if version not in SUPPORTED_VERSIONS:
            raise SourceError(f"{label}: GGUF version {version} is not supported (only 2 and 3)")
        metadata: dict[str, Any] = {}
        skipped: dict[str, int] = {}
        for _ in range(kv_count):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.unpack("I"), key, skipped)
        tensors = []
        for _ in range(tensor_count):
            name = cursor.string()
            n_dims = cursor.unpack("I")
            shape = tuple(cursor.unpack("Q") for _ in range(n_dims))
            tensor_type, offset = cursor.unpack("IQ")
            tensors.append(Tensor(name, shape, tensor_type, offset))
        if cursor.at > len(buffer):
            raise struct.error("the header runs past the end of the data")
    except (struct.error, IndexError) as exc:
        if not complete:
            raise _NeedMore from None
        raise SourceError(f"{label}: the GGUF header is damaged ({exc})") from None
    except (ValueError, KeyError, OverflowError) as exc:
        raise SourceError(f"{label}: the GGUF header is damaged ({exc})") from None
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_offset = -(-cursor.at // alignment) * alignment
    header = GGUFHeader(version, metadata, tensors, data_offset, size, skipped)
    if header.data_end > size:
        missing = header.data_end - size
        raise SourceError(f"{label} is truncated: its tensors need {missing} more bytes")
    return header
