"""A llama.cpp model memory-mapped straight out of a file, and its vocabulary.

The GGUF is never copied: the file is opened with the C library's `fopen`,
positioned at the embedded GGUF, and handed to llama.cpp's
`llama_model_load_from_file_ptr`, which maps the tensors at their absolute
offsets. Two processes running one file therefore share the page cache.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import functools
import os
import re
import sys
import threading
from pathlib import Path

import llama_cpp.llama_cpp as llama

from llamapack.runtime.fileformat import ModelSource, StubError
from llamapack.runtime.fileformat.executables import pe_imports
from llamapack.runtime.llama.cpu import cpu_backend

# llama.cpp says where each layer goes only in its (debug) log, as it decides.
_LAYER_PLACED = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_LOG_ERROR = 4
_LOG_CONT = 5
_LOAD_MODE_NONE = 0  # enum llama_load_mode
_LOAD_MODE_MMAP = 1


class ModelLoadError(Exception):
    """llama.cpp could not load the model."""


class _LlamaLog:
    """Keep llama.cpp's first error for our one-line messages; print its log with `verbose`."""

    def __init__(self) -> None:
        self.verbose = False
        self.first_error = ""  # llama.cpp says why a load failed only in its log
        self.layer_devices: dict[int, str] = {}  # layer -> device, as the last load placed them
        self._last_level = 0
        self._callback = llama.llama_log_callback(self._log)
        llama.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _log(self, level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level != _LOG_CONT:
            self._last_level = level
        message = text.decode("utf-8", errors="replace")
        placed = _LAYER_PLACED.search(message)
        if placed:
            self.layer_devices[int(placed.group(1))] = placed.group(2)
        if self._last_level >= _LOG_ERROR and message.strip() and not self.first_error:
            self.first_error = message.strip()
        if self.verbose:
            sys.stderr.write(message)


_log: _LlamaLog | None = None
_backend_lock = threading.Lock()


def init_backend(verbose: bool = False) -> None:
    global _log
    with _backend_lock:
        if _log is None:
            _log = _LlamaLog()
            _log.verbose = verbose  # so --verbose shows which CPU variant ggml loads
            llama.llama_backend_init()
            cpu_backend()  # register llama.cpp's best safe CPU variant before any load (runtime/llama/cpu.py)
        _log.verbose = verbose


class _CFile:
    """A C `FILE*` positioned at an offset, as llama.cpp's loader wants it.

    It must come from the C runtime llama.cpp itself links: the system libc on
    Linux and macOS; on Windows the CRT llama.dll imports (the Universal CRT for
    an MSVC build, msvcrt.dll for a mingw one): a `FILE*` from another CRT cannot
    be shared, and llama.cpp then hangs reading it."""

    def __init__(self, source: ModelSource):
        crt = _c_runtime()
        self._crt = crt
        self.pointer = crt.open(source.path)
        if not self.pointer:
            errno = ctypes.get_errno()
            raise ModelLoadError(f"cannot open {source.path}: {os.strerror(errno)}")
        if crt.seek(self.pointer, source.offset, os.SEEK_SET) != 0:
            self.close()
            raise ModelLoadError(f"cannot seek to the model at offset {source.offset}")

    def close(self) -> None:
        if self.pointer:
            self._crt.close(self.pointer)
            self.pointer = None


class _CRuntime:
    def __init__(self) -> None:
        if sys.platform == "win32":
            library = ctypes.CDLL(windows_c_runtime(_llama_dll()), use_errno=True)
            opener, seeker = library._wfopen, library._fseeki64
            opener.argtypes = [ctypes.c_wchar_p, ctypes.c_wchar_p]
        else:
            library = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            opener, seeker = library.fopen, library.fseeko
            opener.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        opener.restype = ctypes.c_void_p
        seeker.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        seeker.restype = ctypes.c_int
        library.fclose.argtypes = [ctypes.c_void_p]
        library.fclose.restype = ctypes.c_int
        self._open, self.seek, self.close = opener, seeker, library.fclose

    def open(self, path: Path) -> int | None:
        if sys.platform == "win32":
            return self._open(str(path), "rb")  # type: ignore[no-any-return]
        return self._open(os.fsencode(path), b"rb")  # type: ignore[no-any-return]


def windows_c_runtime(dll: Path) -> str:
    """The C runtime a Windows DLL links, read from its import table."""
    try:
        imports = {name.lower() for name in pe_imports(dll.read_bytes())}
    except (OSError, StubError) as exc:
        raise ModelLoadError(f"cannot read {dll.name}'s imports: {exc}") from None
    if "ucrtbase.dll" in imports or any(name.startswith("api-ms-win-crt-") for name in imports):
        return "ucrtbase"
    if "msvcrt.dll" in imports:
        return "msvcrt"
    raise ModelLoadError(f"{dll.name} links no C runtime this loader knows: {', '.join(sorted(imports))}")


def _llama_dll() -> Path:
    return Path(llama._lib._name)


_crt: _CRuntime | None = None


def _c_runtime() -> _CRuntime:
    global _crt
    if _crt is None:
        _crt = _CRuntime()
    return _crt


class Model:
    """A loaded model: weights mapped from the file, plus tokenizer helpers."""

    def __init__(
        self,
        source: ModelSource,
        n_gpu_layers: int = 0,
        vocab_only: bool = False,
        tensor_split: tuple[float, ...] = (),
        cpu_only: bool = False,
    ):
        params = llama.llama_model_default_params()
        # Map the weights in place (zero copy). A vocab-only load reads no
        # tensors, so it needs no aligned mapping: a STORED member of someone's
        # ZIP is rarely aligned.
        params.load_mode = _LOAD_MODE_NONE if vocab_only else _LOAD_MODE_MMAP
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        params.use_extra_bufts = cpu_backend().use_extra_bufts  # False keeps ggml's AMX kernels off
        if tensor_split:
            shares = (ctypes.c_float * llama.llama_max_devices())(*tensor_split[: llama.llama_max_devices()])
            params.tensor_split = shares  # read during the load only
        no_devices = (ctypes.c_void_p * 1)()  # an empty NULL-terminated list: the CPU alone
        if cpu_only:
            params.devices = ctypes.cast(no_devices, ctypes.c_void_p)
        self._file = _CFile(source)
        if _log is not None:
            _log.first_error = ""
            _log.layer_devices = {}
        pointer = llama.llama_model_load_from_file_ptr(self._file.pointer, params)
        if not pointer:
            self._file.close()
            reason = _log.first_error if _log is not None else "see --verbose"
            raise ModelLoadError(f"llama.cpp cannot load the model in {source.path}: {reason}")
        self.pointer = pointer
        self.layers_by_device = _count_layers(_log.layer_devices if _log is not None else {})
        self.vocab = llama.llama_model_get_vocab(pointer)
        self.n_ctx_train = int(llama.llama_model_n_ctx_train(pointer))
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        if self.pointer:
            llama.llama_model_free(self.pointer)
            self.pointer = None
        self._file.close()

    # -- metadata

    def meta(self, key: str) -> str | None:
        size = 512
        while True:
            buffer = ctypes.create_string_buffer(size)
            length = llama.llama_model_meta_val_str(self.pointer, key.encode(), buffer, size)
            if length < 0:
                return None
            if length < size:
                return buffer.value.decode("utf-8", errors="replace")
            size = length + 1

    def chat_template(self) -> str | None:
        template = llama.llama_model_chat_template(self.pointer, None)
        return template.decode("utf-8", errors="replace") if template else None

    def description(self) -> str:
        buffer = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self.pointer, buffer, 256)
        return buffer.value.decode("utf-8", errors="replace")

    # -- tokens

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        capacity = len(data) + 8
        while True:
            tokens = (llama.llama_token * capacity)()
            count = llama.llama_tokenize(
                self.vocab, data, len(data), tokens, capacity, add_special, parse_special
            )
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            buffer = ctypes.create_string_buffer(64)
            length = llama.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
            if length < 0:
                buffer = ctypes.create_string_buffer(-length)
                length = llama.llama_token_to_piece(self.vocab, token, buffer, -length, 0, False)
            cached = self._pieces[token] = buffer.raw[:length]
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        text = llama.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    @functools.cached_property
    def end_of_generation_tokens(self) -> tuple[int, ...]:
        """Every token that ends generation (EOS, EOT, ...): a vocabulary scan, once."""
        return tuple(token for token in range(self.n_vocab) if llama.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos_text(self) -> str:
        token = llama.llama_vocab_bos(self.vocab)
        return self.token_text(token) if token >= 0 else ""  # -1: the vocabulary has none

    @property
    def eos_text(self) -> str:
        token = llama.llama_vocab_eos(self.vocab)
        return self.token_text(token) if token >= 0 else ""


def _count_layers(placed: dict[int, str]) -> dict[str, int]:
    """{device: layers}, in the order the devices first get a layer (the output layer counts)."""
    counts: dict[str, int] = {}
    for layer in sorted(placed):
        counts[placed[layer]] = counts.get(placed[layer], 0) + 1
    return counts


class TextDecoder:
    """Turns a stream of token bytes into text without splitting UTF-8 characters."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
