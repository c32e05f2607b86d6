"""builder/cross/: where cross stubs are cached, how `build --target` finds them, and
the parts of the Windows recipe that need neither Wine nor a compiler (the real build
is tests/cross/test_windows.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder.cli import cli
from llamapack.builder.cross import cached_cross_stub, cross_stub_path, windows
from llamapack.builder.errors import RuntimeStubError
from tests.support.fakes import pe_stub

VARIANT_LIST = """\
if (GGML_CPU_ALL_VARIANTS)
    if (GGML_SYSTEM_ARCH STREQUAL "x86")
        ggml_add_cpu_backend_variant(x64)
        ggml_add_cpu_backend_variant(sse42              SSE42)
        ggml_add_cpu_backend_variant(sandybridge        SSE42 AVX)
        ggml_add_cpu_backend_variant(haswell            SSE42 AVX F16C FMA AVX2 BMI2)
        ggml_add_cpu_backend_variant(skylakex           SSE42 AVX F16C FMA AVX2 BMI2 AVX512)
        ggml_add_cpu_backend_variant(icelake            SSE42 AVX F16C FMA AVX2 BMI2 AVX512 AVX512_VNNI)
        if (NOT MSVC)
            ggml_add_cpu_backend_variant(zen4           SSE42 AVX F16C FMA AVX2 BMI2 AVX512 AVX512_VBMI)
        endif()
        ggml_add_cpu_backend_variant(alderlake          SSE42 AVX F16C FMA AVX2 BMI2 AVX_VNNI)
        if (NOT MSVC)
            ggml_add_cpu_backend_variant(sapphirerapids SSE42 AVX F16C FMA AVX2 BMI2 AVX512 AMX_TILE AMX_INT8)
        endif()
    elseif (GGML_SYSTEM_ARCH STREQUAL "ARM")
            ggml_add_cpu_backend_variant(armv8.2_1    DOTPROD)
    endif()
endif()
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_only_the_chosen_cpu_variants_are_built(tmp_path: Path) -> None:
    cmakelists = tmp_path / "CMakeLists.txt"
    cmakelists.write_text(VARIANT_LIST)
    windows._keep_variants(cmakelists)
    active = {
        line.split("(")[1].split()[0].rstrip(")")
        for line in cmakelists.read_text().splitlines()
        if line.strip().startswith("ggml_add_cpu_backend_variant(")
    }
    assert active == set(windows.VARIANTS)
    assert "# ggml_add_cpu_backend_variant(sapphirerapids" in cmakelists.read_text()


def test_a_llama_cpp_without_a_chosen_variant_is_a_clear_error(tmp_path: Path) -> None:
    cmakelists = tmp_path / "CMakeLists.txt"
    cmakelists.write_text(VARIANT_LIST.replace("zen4", "zen5"))
    with pytest.raises(RuntimeStubError, match="no CPU variant zen4"):
        windows._keep_variants(cmakelists)


def test_paths_reach_windows_programs_through_drive_z() -> None:
    assert windows.windows_path(Path("/tmp/a b/é.py")) == "Z:\\tmp\\a b\\é.py"


def test_missing_tools_name_the_packages_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeStubError, match="wine wine64") as error:
        windows.check_tools()
    assert "g++-mingw-w64-x86-64-posix" in str(error.value)


def test_cross_stubs_are_cached_per_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path))
    path = cross_stub_path("windows-x86_64")
    assert path.name == "llamapack-runtime.exe"
    assert path.parent.parent == tmp_path / "runtimes"
    assert "-windows-x86_64-" in path.parent.name
    assert cached_cross_stub("windows-x86_64") is None
    assert cached_cross_stub("macos-arm64") is None


def test_build_target_uses_the_stub_built_here(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMAPACK_RUNTIME_URL", "http://127.0.0.1:9/none")  # never asked
    stub = cross_stub_path("windows-x86_64")
    stub.parent.mkdir(parents=True)
    stub.write_bytes(pe_stub())
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "m.exe"), "--target", "windows-x86_64")
    assert code == 0, output
    assert (tmp_path / "m.exe").read_bytes().startswith(stub.read_bytes())
    # and `runtime build --target` reports it cached, without Wine or a compiler
    code, output = run("runtime", "build", "--target", "windows-x86_64")
    assert code == 0, output
    assert output.strip().splitlines()[-1] == str(stub)


def test_runtime_build_refuses_a_target_it_cannot_build_here() -> None:
    code, output = run("runtime", "build", "--target", "macos-arm64")
    assert code == 2
    assert "cannot build the runtime for 'macos-arm64' here" in output
