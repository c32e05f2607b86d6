from __future__ import annotations

from pathlib import Path

import pytest

from compat.peer_suite import selection, suite_of


def test_selection_runs_what_tests_sh_runs_by_default() -> None:
    assert selection(None, "not slow") == ["-m", "not slow", "unit"]
    assert selection(None, "") == ["unit"]


def test_only_takes_a_file_a_node_id_or_a_k_expression() -> None:
    assert selection("test_tokenize.py", "") == ["unit/test_tokenize.py"]
    assert selection("unit/test_basic.py::test_health", "") == ["unit/test_basic.py::test_health"]
    assert selection("test_basic.py::test_health", "not slow") == [
        "-m",
        "not slow",
        "unit/test_basic.py::test_health",
    ]
    assert selection("chat and stream", "") == ["-k", "chat and stream", "unit"]


def test_the_suite_is_found_in_the_tree_the_server_was_built_in(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    (tree / "tools" / "server" / "tests" / "unit").mkdir(parents=True)
    (tree / "build" / "bin").mkdir(parents=True)
    (tree / "build" / "bin" / "llama-server").touch()
    link = tmp_path / "llama-server"
    link.symlink_to(tree / "build" / "bin" / "llama-server")
    assert suite_of(link) == tree / "tools" / "server" / "tests"
    with pytest.raises(SystemExit, match="no server test suite"):
        suite_of(tmp_path / "llama-server-elsewhere")
