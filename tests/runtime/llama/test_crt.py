"""Which C runtime a Windows llama.dll links, read from its import table: the FILE*
handed to llama.cpp must come from that CRT (from another one, the load hangs)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from llamapack.runtime.fileformat import StubError
from llamapack.runtime.fileformat.executables import pe_imports
from llamapack.runtime.llama.ggml import _ggml_dll_names
from llamapack.runtime.llama.model import ModelLoadError, windows_c_runtime
from tests.support.cross import unavailable
from tests.support.fakes import pe_dll

MINGW = shutil.which("x86_64-w64-mingw32-gcc")


def test_the_import_table_of_a_real_windows_program() -> None:
    """setuptools ships launchers built with MSVC and a static CRT."""
    spec = importlib.util.find_spec("setuptools")
    assert spec is not None and spec.origin is not None
    launcher = Path(spec.origin).parent / "cli-64.exe"
    assert pe_imports(launcher.read_bytes()) == ("KERNEL32.dll",)


def test_imports_are_read_in_order_from_a_section_mapped_elsewhere() -> None:
    names = ["KERNEL32.dll", "ggml.dll", "api-ms-win-crt-stdio-l1-1-0.dll"]
    assert pe_imports(pe_dll(names)) == tuple(names)


def test_ggml_is_bound_in_the_dlls_llama_dll_imports(tmp_path: Path) -> None:
    """MSVC names them ggml.dll, mingw libggml.dll: the import table says which."""
    dll = tmp_path / "libllama.dll"
    dll.write_bytes(pe_dll(["libggml-base.dll", "libggml.dll", "KERNEL32.dll", "msvcrt.dll"]))
    assert _ggml_dll_names(dll) == ["libggml-base.dll", "libggml.dll"]
    dll.write_bytes(pe_dll(["ggml.dll", "ggml-base.dll", "api-ms-win-crt-stdio-l1-1-0.dll"]))
    assert _ggml_dll_names(dll) == ["ggml.dll", "ggml-base.dll"]


@pytest.mark.parametrize(
    ("imports", "crt"),
    [
        (["KERNEL32.dll", "ggml.dll", "api-ms-win-crt-stdio-l1-1-0.dll", "VCRUNTIME140.dll"], "ucrtbase"),
        (["ucrtbase.dll", "KERNEL32.dll"], "ucrtbase"),
        (["KERNEL32.dll", "msvcrt.dll", "ggml-base.dll"], "msvcrt"),
        (["KERNEL32.DLL", "MSVCRT.DLL"], "msvcrt"),
    ],
)
def test_the_c_runtime_is_the_one_imported(tmp_path: Path, imports: list[str], crt: str) -> None:
    dll = tmp_path / "llama.dll"
    dll.write_bytes(pe_dll(imports))
    assert windows_c_runtime(dll) == crt


def test_a_dll_without_a_known_c_runtime_is_one_clear_error(tmp_path: Path) -> None:
    dll = tmp_path / "llama.dll"
    dll.write_bytes(pe_dll(["KERNEL32.dll"]))
    with pytest.raises(ModelLoadError, match="links no C runtime this loader knows: kernel32.dll"):
        windows_c_runtime(dll)
    dll.write_bytes(pe_dll(["msvcrt.dll"])[:0x300])
    with pytest.raises(ModelLoadError, match="cannot read llama.dll's imports"):
        windows_c_runtime(dll)
    with pytest.raises(StubError):
        pe_imports(b"MZ" + bytes(100))


def test_a_dll_built_by_mingw_links_msvcrt(tmp_path: Path) -> None:
    """Debian's mingw-w64 links msvcrt.dll (what the Windows engine built here uses)."""
    if MINGW is None:
        unavailable("needs Debian's mingw-w64 (g++-mingw-w64-x86-64-posix)")
    source = tmp_path / "reader.c"
    source.write_text(
        "#include <stdio.h>\nsize_t read_some(FILE *f, char *b) { return fread(b, 1, 8, f); }\n"
    )
    dll = tmp_path / "llama.dll"
    subprocess.run([MINGW, "-shared", "-o", str(dll), str(source)], check=True)
    assert "msvcrt.dll" in pe_imports(dll.read_bytes())
    assert windows_c_runtime(dll) == "msvcrt"
