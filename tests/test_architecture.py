"""The package's shape: runtime/ never imports builder/, and the type checker sees
the package as Python does (a wrong call across the two halves fails `make lint`)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path, root: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                package = path.relative_to(root).parent.parts
                base = ".".join(("llamapack", *package[: len(package) - node.level + 1]))
                modules.append(f"{base}.{node.module}" if node.module else base)
            else:
                modules.append(node.module or "")
    return modules


def builder_imports_in_runtime(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root)}: {module}"
        for path in sorted((root / "runtime").rglob("*.py"))
        for module in _imported_modules(path, root)
        if module.split(".")[:2] == ["llamapack", "builder"] or module.split(".")[0] == "builder"
    ]


def test_runtime_never_imports_builder() -> None:
    """The built file carries runtime/ alone: a builder import would fail there."""
    assert builder_imports_in_runtime(ROOT) == []


def test_runtime_never_imports_what_the_stub_leaves_out() -> None:
    """numpy and the rest of the stub's exclusions are not in the built file: an
    import of one would work in tests here and fail in every built file."""
    from llamapack.builder.stub import _EXCLUDES

    left_out = {name for name in _EXCLUDES if "." not in name}
    assert "numpy" in left_out
    assert [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "runtime").rglob("*.py"))
        for module in _imported_modules(path, ROOT)
        if module.split(".")[0] in left_out
    ] == []


def test_the_import_check_sees_every_form_of_builder_import(tmp_path: Path) -> None:
    engine = tmp_path / "runtime" / "engine"
    engine.mkdir(parents=True)
    (engine / "bad.py").write_text(
        "from llamapack.builder import cli\nimport llamapack.builder.stub\nfrom ...builder import sources\n"
    )
    assert builder_imports_in_runtime(tmp_path) == [
        "runtime/engine/bad.py: llamapack.builder",
        "runtime/engine/bad.py: llamapack.builder.stub",
        "runtime/engine/bad.py: llamapack.builder",  # from ...builder import sources
    ]


def test_every_package_folder_is_installed() -> None:
    """`pip install .` installs the packages pyproject.toml lists: a new sub-package
    missing from the list would work in the editable install and fail installed."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(("llamapack", *init.parent.relative_to(ROOT).parts))
        for part in settings["package-dir"].values()
        for init in (ROOT / part).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = settings["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert sorted(on_disk) == sorted(listed)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_wrong_call_from_builder_into_runtime_fails_the_type_check(tmp_path: Path) -> None:
    """With the runtime unresolved, every builder→runtime import would be `Any` and
    this call would pass. `make typecheck` is what `make lint` runs."""
    copy = tmp_path / "checkout"
    for part in ("builder", "runtime", "templates", "tests", "bench", "docs", "compat"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "work"))
    for name in ("pyproject.toml", "Makefile"):
        shutil.copy2(ROOT / name, copy / name)
    cache = tmp_path / "mypy-cache"
    if (ROOT / ".mypy_cache").is_dir():  # a warm start: mypy re-checks what differs by hash
        shutil.copytree(ROOT / ".mypy_cache", cache)
    (copy / "builder" / "scratch_wrong_call.py").write_text(
        "from llamapack.runtime import fileformat\n\nfileformat.no_such_function()\n"
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "typecheck", f"BIN={Path(sys.executable).parent}"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MYPY_CACHE_DIR": str(cache)},
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "scratch_wrong_call.py:3: error" in output, output
    assert 'has no attribute "no_such_function"' in output, output
