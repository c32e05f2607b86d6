"""One side's results, read back from the junit XML pytest wrote."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "skipped"]

# compat.plugin records each test's pytest node id under this property: junit's
# classname/name pair cannot be turned back into a node id (dots in the path and
# in parameter ids look alike).
NODE_ID_PROPERTY = "nodeid"

_RANK: dict[Status, int] = {"passed": 0, "skipped": 1, "failed": 2}


@dataclass(frozen=True)
class Outcome:
    test_id: str  # pytest node id, e.g. "unit/test_basic.py::test_health"
    status: Status  # an error in set-up or teardown counts as failed
    message: str  # first line of the failure or of the skip reason; "" when passed
    seconds: float

    @property
    def file(self) -> str:
        return self.test_id.split("::", 1)[0]


@dataclass(frozen=True)
class SuiteRun:
    """When one side's pytest run started (UTC, to the minute) and how long it took."""

    started: str
    seconds: float


def read_suite_run(path: Path) -> SuiteRun:
    suite = ElementTree.parse(path).getroot().find("testsuite")
    if suite is None:
        raise ValueError(f"{path}: no testsuite element")
    started = datetime.fromisoformat(suite.get("timestamp") or "").astimezone(timezone.utc)
    return SuiteRun(started.strftime("%Y-%m-%d %H:%M UTC"), float(suite.get("time") or 0.0))


def read_junit(path: Path) -> dict[str, Outcome]:
    """Every test case in `path` by node id. pytest writes a test twice when it
    failed and then also errored in teardown: the worse of the two is kept."""
    outcomes: dict[str, Outcome] = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome = _outcome(case)
        previous = outcomes.get(outcome.test_id)
        if previous is None or _RANK[outcome.status] > _RANK[previous.status]:
            outcomes[outcome.test_id] = outcome
    return outcomes


def _outcome(case: ElementTree.Element) -> Outcome:
    seconds = float(case.get("time") or 0.0)
    test_id = _node_id(case)
    for tag in ("failure", "error"):
        element = case.find(tag)
        if element is not None:
            return Outcome(test_id, "failed", _first_line(element), seconds)
    element = case.find("skipped")
    if element is not None:
        return Outcome(test_id, "skipped", _first_line(element), seconds)
    return Outcome(test_id, "passed", "", seconds)


def _node_id(case: ElementTree.Element) -> str:
    for prop in case.iter("property"):
        if prop.get("name") == NODE_ID_PROPERTY and prop.get("value"):
            return prop.get("value") or ""
    # Written without the plugin: rebuild it the way junitxml built classname.
    classname, name = case.get("classname") or "", case.get("name") or ""
    return f"{classname.replace('.', '/')}.py::{name}"


def _first_line(element: ElementTree.Element) -> str:
    """The message attribute (pytest puts the exception line there), else the body."""
    text = element.get("message") or element.text or ""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
