from __future__ import annotations

from pathlib import Path

from compat.junit import SuiteRun, read_junit, read_suite_run

# As pytest 8 writes it under compat.plugin (node ids as properties), with a test that
# failed and then errored in teardown written twice.
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites>
<testsuite name="pytest" time="2235.3" timestamp="2026-12-02T19:57:25.123456+01:00">
<testcase classname="unit.test_basic" name="test_health" time="1.5">
  <properties><property name="nodeid" value="unit/test_basic.py::test_health" /></properties>
</testcase>
<testcase classname="unit.test_basic" name="test_props[a.b/c]" time="0.25">
  <properties><property name="nodeid" value="unit/test_basic.py::test_props[a.b/c]" /></properties>
  <failure message="AssertionError: assert 404 == 200&#10; +  where 404 = status">E   long text</failure>
</testcase>
<testcase classname="unit.test_basic" name="test_teardown" time="0.1">
  <properties><property name="nodeid" value="unit/test_basic.py::test_teardown" /></properties>
</testcase>
<testcase classname="unit.test_basic" name="test_teardown" time="0.1">
  <properties><property name="nodeid" value="unit/test_basic.py::test_teardown" /></properties>
  <error message="failed on teardown with &quot;OSError: boom&quot;">trace</error>
</testcase>
<testcase classname="unit.test_embedding" name="test_embedding" time="0.0">
  <properties><property name="nodeid" value="unit/test_embedding.py::test_embedding" /></properties>
  <skipped type="pytest.skip" message="not applicable here: needs model bert">skip text</skipped>
</testcase>
<testcase classname="unit.test_infill" name="test_body_only" time="0.0">
  <failure>
first body line
second</failure>
</testcase>
</testsuite></testsuites>
"""


def test_reads_each_test_by_node_id(tmp_path: Path) -> None:
    path = tmp_path / "side.xml"
    path.write_text(JUNIT)
    outcomes = read_junit(path)
    assert list(outcomes) == [
        "unit/test_basic.py::test_health",
        "unit/test_basic.py::test_props[a.b/c]",
        "unit/test_basic.py::test_teardown",
        "unit/test_embedding.py::test_embedding",
        "unit/test_infill.py::test_body_only",
    ]
    health = outcomes["unit/test_basic.py::test_health"]
    assert (health.status, health.message, health.seconds, health.file) == (
        "passed",
        "",
        1.5,
        "unit/test_basic.py",
    )
    props = outcomes["unit/test_basic.py::test_props[a.b/c]"]
    assert (props.status, props.message) == ("failed", "AssertionError: assert 404 == 200")
    skipped = outcomes["unit/test_embedding.py::test_embedding"]
    assert (skipped.status, skipped.message) == ("skipped", "not applicable here: needs model bert")


def test_a_teardown_error_after_a_pass_counts_as_failed(tmp_path: Path) -> None:
    path = tmp_path / "side.xml"
    path.write_text(JUNIT)
    outcome = read_junit(path)["unit/test_basic.py::test_teardown"]
    assert (outcome.status, outcome.message) == ("failed", 'failed on teardown with "OSError: boom"')


def test_without_the_plugin_the_node_id_is_rebuilt_and_the_body_read(tmp_path: Path) -> None:
    path = tmp_path / "side.xml"
    path.write_text(JUNIT)
    outcome = read_junit(path)["unit/test_infill.py::test_body_only"]
    assert (outcome.status, outcome.message) == ("failed", "first body line")


def test_the_run_says_when_it_started_and_how_long_it_took(tmp_path: Path) -> None:
    path = tmp_path / "side.xml"
    path.write_text(JUNIT)
    assert read_suite_run(path) == SuiteRun("2026-12-02 18:57 UTC", 2235.3)
