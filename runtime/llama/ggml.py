"""ggml's C API through ctypes, for what llama-cpp-python does not bind: the backend
and device registry, the CPU variants' features, ggml's version.

One loader for the whole runtime. Symbols are looked up through libllama's handle,
so they come from the libggml that libllama is linked with: loading libggml by
path instead can load a second copy with its own backend registry (in a built
file libggml.so and libggml.so.0 are two files, not a symlink), and a backend
registered there is one llama.cpp never sees ("no backends are loaded").
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_api
from llama_cpp._ctypes_extensions import load_shared_library

_SIZE_P = ctypes.POINTER(ctypes.c_size_t)
# name: (argument types, return type), as in ggml.h and ggml-backend.h
_SIGNATURES: dict[str, tuple[list[type], type | None]] = {
    "ggml_version": ([], ctypes.c_char_p),
    "ggml_commit": ([], ctypes.c_char_p),
    "ggml_backend_load": ([ctypes.c_char_p], ctypes.c_void_p),
    "ggml_backend_reg_by_name": ([ctypes.c_char_p], ctypes.c_void_p),
    "ggml_backend_reg_get_proc_address": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
    "ggml_backend_reg_dev_count": ([ctypes.c_void_p], ctypes.c_size_t),
    "ggml_backend_reg_dev_get": ([ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p),
    "ggml_backend_dev_count": ([], ctypes.c_size_t),
    "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
    "ggml_backend_dev_name": ([ctypes.c_void_p], ctypes.c_char_p),
    "ggml_backend_dev_description": ([ctypes.c_void_p], ctypes.c_char_p),
    "ggml_backend_dev_type": ([ctypes.c_void_p], ctypes.c_int),
    "ggml_backend_dev_memory": ([ctypes.c_void_p, _SIZE_P, _SIZE_P], None),
    "ggml_backend_buft_name": ([ctypes.c_void_p], ctypes.c_char_p),
}


@functools.cache
def ggml() -> ctypes.CDLL:
    """ggml's API as libllama sees it. A function this ggml lacks raises
    AttributeError when it is called for, not here, so an older ggml still serves
    what it has."""
    llama_lib = getattr(llama_cpp_api, "_lib", None)
    if llama_lib is not None:
        lib = ctypes.CDLL(getattr(llama_lib, "_name", None), handle=llama_lib._handle)
    else:  # a llama-cpp-python without _lib: libggml from llama_cpp/lib
        lib = load_shared_library("ggml", Path(llama_cpp.__file__).parent / "lib")
    for name, (argtypes, restype) in _SIGNATURES.items():
        try:
            function = getattr(lib, name)
        except AttributeError:
            continue
        function.argtypes = argtypes
        function.restype = restype
    return lib


def text(value: bytes | None) -> str:
    """A C string from ggml, as text."""
    return (value or b"").decode(errors="replace").strip()
