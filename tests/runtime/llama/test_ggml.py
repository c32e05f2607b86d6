"""runtime/llama/ggml.py: ggml's functions bound in ggml's own libraries, the
instances libllama loaded (a Windows DLL handle would not find them through
libllama, and a second copy of libggml would have its own backend registry)."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from llamapack.runtime.llama.ggml import _SIGNATURES, Ggml, ggml, ggml_libraries, text

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def _mapped_files() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line}


def _defining_file(function: Any) -> str:
    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                    ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]  # fmt: skip

    info = DlInfo()
    address = ctypes.cast(function, ctypes.c_void_p).value
    assert ctypes.CDLL(None).dladdr(ctypes.c_void_p(address), ctypes.byref(info))
    return os.fsdecode(info.fname)


def test_the_libraries_are_the_ones_libllama_loaded() -> None:
    mapped_before = _mapped_files()
    libraries = ggml_libraries()
    names = sorted(Path(library._name).name for library in libraries)
    assert names == ["libggml-base.so.0", "libggml.so.0"]
    for library in libraries:
        assert library._name in mapped_before, f"{library._name} was not loaded by libllama"
    assert _mapped_files() == mapped_before, "binding ggml loaded another library"


def test_every_function_comes_from_a_ggml_library_never_libllama() -> None:
    bound = ggml()
    for name in _SIGNATURES:
        origin = Path(_defining_file(getattr(bound, name))).name
        assert origin.startswith("libggml"), (name, origin)


def test_each_function_is_bound_where_it_is_exported() -> None:
    """As on Windows: a library yields only its own exports. The registry lives in
    ggml, the version in ggml-base."""
    base = [lib for lib in ggml_libraries() if Path(lib._name).name.startswith("libggml-base")]
    only_base = Ggml(base)
    assert text(only_base.ggml_version()) == text(ggml().ggml_version()) != ""
    with pytest.raises(AttributeError, match="ggml_backend_reg_by_name"):
        only_base.ggml_backend_reg_by_name()
