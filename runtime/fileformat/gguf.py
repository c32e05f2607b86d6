"""A GGUF header: metadata and tensor table, never the tensor data.

One parser for both sides: the builder checks and describes a source model with
it (builder/gguf_header.py adds the names of quantisation types), the runtime
sizes each layer with it to decide how many fit on a GPU (runtime/llama/offload.py).
Only the standard library: the runtime carries neither numpy nor `gguf`.

`gguf.GGUFReader` decodes every vocabulary entry into numpy objects and took
25 s on the 253 MB Gemma file; this reader skips arrays it is not asked for
and reads the same header in well under a second.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import IO, Any

from llamapack.runtime.fileformat.magic import GGUF_MAGIC

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# enum gguf_type (ggml/include/gguf.h)
STRING = 8
ARRAY = 9
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# Arrays longer than this (vocabularies, merges) are skipped, not decoded.
_MAX_DECODED_ARRAY = 1024
_U64 = struct.Struct("<Q")


class GGUFError(Exception):
    """Not a GGUF header, or a damaged one; the text names the file."""


class NeedMore(GGUFError):
    """The buffer ends inside the header (read more and parse again)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int  # enum ggml_type
    offset: int  # relative to the data section

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class Header:
    version: int
    metadata: dict[str, Any]
    tensors: list[Tensor]
    data_offset: int  # from the start of the GGUF
    skipped_arrays: dict[str, int] = field(default_factory=dict)  # key -> length, not decoded

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str) -> Any:
        """`{arch}.key`, as llama.cpp looks it up ("attention.head_count_kv")."""
        return self.metadata.get(f"{self.architecture}.{key}")


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

    def value(self, value_type: int, key: str, skipped: dict[str, int]) -> Any:
        if value_type == STRING:
            return self.string()
        if value_type == ARRAY:
            item_type, count = self.unpack("IQ")
            if count > _MAX_DECODED_ARRAY:
                skipped[key] = count
                self.skip_array(item_type, count)
                return None
            return [self.value(item_type, key, skipped) for _ in range(count)]
        return self.unpack(_SCALARS[value_type])

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type == STRING:
            # A vocabulary holds 100k-250k strings: a tight loop, not method calls.
            length_at, buffer, at = _U64.unpack_from, self.buffer, self.at
            for _ in range(count):
                at += 8 + length_at(buffer, at)[0]
            self.at = at
        elif item_type == ARRAY:
            for _ in range(count):
                self.skip_array(*self.unpack("IQ"))
        else:
            self.at += count * struct.calcsize(_SCALARS[item_type])


def parse_header(buffer: bytes | memoryview, size: int, label: str, complete: bool = True) -> Header:
    """Parse a GGUF header from `buffer`, the first bytes of a `size`-byte GGUF.
    With `complete` False the buffer may end early: NeedMore says to read on."""
    if size == 0:
        raise GGUFError(f"{label} is empty")
    if bytes(buffer[:4]) != GGUF_MAGIC:
        if len(buffer) < 4 and not complete:
            raise NeedMore(label)
        raise GGUFError(f"{label} is not a GGUF file (it does not start with 'GGUF')")
    cursor = _Cursor(buffer, 4)
    try:
        version, tensor_count, kv_count = cursor.unpack("IQQ")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{label}: GGUF version {version} is not supported (only 2 and 3)")
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
            raise NeedMore(label) from None
        raise GGUFError(f"{label}: the GGUF header is damaged ({exc})") from None
    except (ValueError, KeyError, OverflowError) as exc:
        raise GGUFError(f"{label}: the GGUF header is damaged ({exc})") from None
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0:
        raise GGUFError(f"{label}: the GGUF header is damaged (alignment {alignment})")
    data_offset = -(-cursor.at // alignment) * alignment
    return Header(version, metadata, tensors, data_offset, skipped)


def read_header_from_stream(stream: IO[bytes], size: int, label: str) -> Header:
    """Parse the header from the start of a stream (a file positioned at the GGUF,
    a compressed ZIP member), reading only as much as the header needs."""
    buffer = bytearray()
    want = min(size, 8 << 20)
    while True:
        chunk = stream.read(want - len(buffer))
        buffer += chunk
        try:
            return parse_header(bytes(buffer), size, label, complete=len(buffer) >= size)
        except NeedMore:
            if not chunk or len(buffer) >= size:
                raise GGUFError(f"{label}: the GGUF header is damaged (it runs past the end)") from None
            want = min(size, want * 2)
