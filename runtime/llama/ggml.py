"""ggml's C API through ctypes, for what llama-cpp-python does not bind: the backend
and device registry, the CPU variants' features, ggml's version.

One loader for the whole runtime, binding each function in ggml's own libraries
(ggml and ggml-base) as libllama loaded them: the very instances libllama uses,
never a second copy with its own backend registry (in a built file libggml.so
and libggml.so.0 are two files, not a symlink, and a backend registered in the
wrong one is one llama.cpp never sees). Looking the functions up through
libllama's handle would find them on Linux and macOS only: a Windows DLL handle
exposes that DLL's own exports and nothing it imports.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_api
from llama_cpp._ctypes_extensions import load_shared_library

from llamapack.runtime.fileformat.executables import pe_imports

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
    "ggml_backend_register": ([ctypes.c_void_p], None),
    "ggml_backend_dev_by_type": ([ctypes.c_int], ctypes.c_void_p),
    "ggml_set_abort_callback": ([ctypes.c_void_p], ctypes.c_void_p),
    "ggml_type_size": ([ctypes.c_int], ctypes.c_size_t),
    "ggml_blck_size": ([ctypes.c_int], ctypes.c_int64),
}


class Ggml:
    """ggml's functions, each bound in the library that exports it."""

    def __init__(self, libraries: list[ctypes.CDLL]) -> None:
        self._functions: dict[str, Any] = {}
        for name, (argtypes, restype) in _SIGNATURES.items():
            for library in libraries:
                try:
                    function = getattr(library, name)
                except AttributeError:
                    continue
                function.argtypes = argtypes
                function.restype = restype
                self._functions[name] = function
                break

    def __getattr__(self, name: str) -> Any:
        # A function this ggml lacks fails where it is called for, not at load,
        # so an older ggml still serves what it has.
        try:
            return self._functions[name]
        except KeyError:
            raise AttributeError(f"ggml has no function {name!r}") from None


@functools.cache
def ggml() -> Ggml:
    return Ggml(ggml_libraries())


def ggml_libraries() -> list[ctypes.CDLL]:
    """ggml and ggml-base as libllama loaded them."""
    llama_lib = getattr(llama_cpp_api, "_lib", None)
    if llama_lib is None:  # a llama-cpp-python without _lib: load them from llama_cpp/lib
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        return [load_shared_library(name, lib_dir) for name in ("ggml", "ggml-base")]
    if sys.platform == "win32":
        return _loaded_windows_modules(_ggml_dll_names(Path(llama_lib._name)))
    return _loaded_posix_libraries(ctypes.CDLL(llama_lib._name, handle=llama_lib._handle))


def _ggml_dll_names(llama_dll: Path) -> list[str]:
    """The ggml DLLs llama.dll imports, as its import table names them (ggml.dll with
    MSVC, libggml.dll with mingw)."""
    return [name for name in pe_imports(llama_dll.read_bytes()) if "ggml" in name.lower()]


def _loaded_windows_modules(names: list[str]) -> list[ctypes.CDLL]:
    """Modules llama.dll brought in, by name: GetModuleHandle never loads anything."""
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.GetModuleHandleW.argtypes = [ctypes.c_wchar_p]
    kernel32.GetModuleHandleW.restype = ctypes.c_void_p
    found = []
    for name in names:
        handle = kernel32.GetModuleHandleW(name)
        if handle:
            found.append(ctypes.CDLL(name, handle=handle))
    return found


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


# One function from each of ggml's libraries, as libllama resolves it.
_PROBES = ("ggml_backend_reg_by_name", "ggml_version")


def _loaded_posix_libraries(llama_lib: ctypes.CDLL) -> list[ctypes.CDLL]:
    """The files that define ggml's functions for libllama (dladdr names them);
    opening a file already loaded returns the loaded instance."""
    dladdr = ctypes.CDLL(None).dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    paths: list[str] = []
    for probe in _PROBES:
        address = ctypes.cast(getattr(llama_lib, probe), ctypes.c_void_p).value
        info = _DlInfo()
        if address and dladdr(address, ctypes.byref(info)) and info.dli_fname:
            path = os.fsdecode(info.dli_fname)
            if path not in paths:
                paths.append(path)
    return [ctypes.CDLL(path) for path in paths]


def text(value: bytes | None) -> str:
    """A C string from ggml, as text."""
    return (value or b"").decode(errors="replace").strip()
