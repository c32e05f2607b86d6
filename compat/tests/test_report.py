from __future__ import annotations

from compat.junit import Outcome, Status, SuiteRun
from compat.report import RunInfo, cell, duration, render
from compat.verdicts import NOT_APPLICABLE, compare

INFO = RunInfo(
    date="2025-01-02",
    command="make compat",
    llama_cpp="llama.cpp b1",
    model="`gemma.gguf`",
    selection="the unit tests",
    timeout_s=300,
    machine="test machine",
    runs={
        "llama-server": SuiteRun("2025-01-02 10:00", 120.0),
        "llamapack": SuiteRun("2025-01-02 10:02", 180.0),
    },
)
REFUSED = "RuntimeError: died: gemma: error: unrecognized arguments: --no-slots"


def outcome(test_id: str, status: Status, message: str = "") -> Outcome:
    return Outcome(test_id, status, message, 0.1)


def report(peer: list[Outcome], ours: list[Outcome]) -> str:
    return render(compare({o.test_id: o for o in peer}, {o.test_id: o for o in ours}), INFO)


PEER = [
    outcome("unit/test_a.py::test_1", "passed"),
    outcome("unit/test_a.py::test_2", "passed"),
    outcome("unit/test_a.py::test_3", "failed", "AssertionError: wrong | story"),
    outcome("unit/test_b.py::test_4", "skipped", NOT_APPLICABLE + "needs model bert"),
    outcome("unit/test_b.py::test_5", "skipped", "fails on linux"),
]
OURS = [
    outcome("unit/test_a.py::test_1", "passed"),
    outcome("unit/test_a.py::test_2", "failed", REFUSED),
    outcome("unit/test_a.py::test_3", "failed", "AssertionError: other"),
    outcome("unit/test_b.py::test_4", "skipped", NOT_APPLICABLE + "needs model bert"),
    outcome("unit/test_b.py::test_5", "skipped", "fails on linux"),
]


def test_summary_gives_the_share_against_the_target() -> None:
    text = report(PEER, OURS)
    summary = text.split("<!-- summary -->")[1].split("<!-- /summary -->")[0]
    assert "| llama-server passed | 2 | |" in summary
    assert "| llamapack passed, of those | 1 (50.0%) | >= 95% (not met) |" in summary
    assert "| not applicable here (never counted as passed) | 1 | |" in summary
    assert "| skipped by the suite itself | 1 | |" in summary
    assert "ran on one side only" not in summary
    assert (
        "Runs: llama-server started 2025-01-02 10:00, took 2.0 min; "
        "llamapack started 2025-01-02 10:02, took 3.0 min;" in text
    )
    assert "Measured with `make compat` on 2025-01-02" in text


def test_the_target_is_met_at_95_percent() -> None:
    peer = [outcome(f"unit/t.py::t{i}", "passed") for i in range(20)]
    ours = [*peer[:19], outcome("unit/t.py::t19", "failed", REFUSED)]
    assert "| 19 (95.0%) | >= 95% (met) |" in report(peer, ours)


def test_per_file_table_counts_each_verdict() -> None:
    text = report(PEER, OURS)
    assert "| `unit/test_a.py` | 3 | 0 | 0 | 2 | 1 | 1 | 1 | 0 | 1 |" in text
    assert "| `unit/test_b.py` | 2 | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| **all** | 5 | 1 | 1 | 2 | 1 | 1 | 1 | 0 | 1 |" in text


def test_lists_say_why_each_test_did_not_pass_or_count() -> None:
    text = report(PEER, OURS)
    peer_only = text.split("## Passed on llama-server only")[1].split("## Passed on neither")[0]
    assert "| refused flags at start-up: --no-slots | 1 |" in peer_only
    assert "| `--no-slots` | 1 |" in peer_only
    assert f"| `unit/test_a.py::test_2` | {REFUSED} |" in peer_only
    neither = text.split("## Passed on neither")[1].split("## Not applicable here")[0]
    assert "| `unit/test_a.py::test_3` | AssertionError: wrong \\| story | AssertionError: other |" in neither
    assert "llamapack's failures that differ from llama-server's, by cause:" in neither
    assert "| AssertionError: other | 1 |" in neither
    not_applicable = text.split("## Not applicable here")[1].split("## Skipped by the suite itself")[0]
    assert "| `unit/test_b.py::test_4` | needs model bert |" in not_applicable
    assert "| `unit/test_b.py::test_5` | fails on linux |" in text.split("## Skipped by the suite itself")[1]
    assert "## Passed on llamapack only" not in text


def test_cells_stay_on_one_line() -> None:
    assert cell("a |\n b") == "a \\| b"
    assert cell("") == "-"


def test_durations_read_in_seconds_then_minutes() -> None:
    assert (duration(45.4), duration(119.0), duration(150.0)) == ("45 s", "119 s", "2.5 min")


def test_the_slowest_tests_on_ours_are_listed_with_the_peers_time() -> None:
    peer = [Outcome("unit/t.py::fast", "passed", "", 2.0), Outcome("unit/t.py::slow", "passed", "", 3.0)]
    ours = [
        Outcome("unit/t.py::fast", "passed", "", 1.0),
        Outcome("unit/t.py::slow", "failed", "Failed: Timeout >300.0s", 300.5),
    ]
    slowest = report(peer, ours).split("## Slowest on llamapack")[1]
    slow = slowest.index("`unit/t.py::slow` | 300.5 s | 3.0 s | passed on llama-server only |")
    assert slow < slowest.index("`unit/t.py::fast` | 1.0 s | 2.0 s | passed on both |")
