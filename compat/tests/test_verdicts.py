from __future__ import annotations

from compat.junit import Outcome, Status
from compat.verdicts import (
    NOT_APPLICABLE,
    Row,
    Verdict,
    cause,
    causes,
    compare,
    flag_counts,
    own_causes,
    summarize,
    unknown_flags,
)

REFUSED = (
    "RuntimeError: Server process died with return code 2: gemma: error: "
    "unrecognized arguments: --offline --batch-size 32 --no-slots -ctk q8_0"
)


def outcome(test_id: str, status: Status, message: str = "") -> Outcome:
    return Outcome(test_id, status, message, 0.1)


def side(*outcomes: Outcome) -> dict[str, Outcome]:
    return {o.test_id: o for o in outcomes}


def verdicts(rows: list[Row]) -> dict[str, Verdict]:
    return {row.test_id: row.verdict for row in rows}


def test_each_pair_of_outcomes_has_its_verdict() -> None:
    peer = side(
        outcome("a::both", "passed"),
        outcome("a::peer", "passed"),
        outcome("a::ours", "failed", "x"),
        outcome("b::neither", "failed", "y"),
        outcome("b::suite_skip", "skipped", "fails on linux"),
        outcome("b::peer_only_ran", "passed"),
    )
    ours = side(
        outcome("a::both", "passed"),
        outcome("a::peer", "failed", REFUSED),
        outcome("a::ours", "passed"),
        outcome("b::neither", "failed", "z"),
        outcome("b::suite_skip", "failed", "ran anyway"),
        outcome("b::ours_only_ran", "passed"),
    )
    assert verdicts(compare(peer, ours)) == {
        "a::both": Verdict.BOTH,
        "a::peer": Verdict.PEER_ONLY,
        "a::ours": Verdict.OURS_ONLY,
        "b::neither": Verdict.NEITHER,
        "b::suite_skip": Verdict.SKIPPED,
        "b::peer_only_ran": Verdict.ONE_SIDE,
        "b::ours_only_ran": Verdict.ONE_SIDE,
    }


def test_not_applicable_on_either_side_is_never_counted_as_passed() -> None:
    reason = NOT_APPLICABLE + "needs model bert"
    peer = side(outcome("e::one", "skipped", reason), outcome("e::two", "passed"))
    ours = side(outcome("e::one", "skipped", reason), outcome("e::two", "skipped", reason))
    rows = compare(peer, ours)
    assert verdicts(rows) == {"e::one": Verdict.NOT_APPLICABLE, "e::two": Verdict.NOT_APPLICABLE}
    assert [row.reason for row in rows] == ["needs model bert", "needs model bert"]
    summary = summarize(rows)
    assert (summary.peer_passed, summary.ours_passed_of_peer, summary.not_applicable) == (0, 0, 2)
    assert summary.share == 0.0


def test_the_share_is_of_what_llama_server_passed() -> None:
    peer = side(*(outcome(f"t::{i}", "passed") for i in range(4)), outcome("t::x", "failed", "f"))
    ours = side(
        outcome("t::0", "passed"),
        outcome("t::1", "passed"),
        outcome("t::2", "passed"),
        outcome("t::3", "failed", REFUSED),
        outcome("t::x", "passed"),
    )
    summary = summarize(compare(peer, ours))
    assert (summary.peer_passed, summary.ours_passed_of_peer, summary.ours_only) == (4, 3, 1)
    assert summary.share == 0.75


def test_refused_flags_are_read_from_argparse_without_their_values() -> None:
    assert unknown_flags(REFUSED) == ["--offline", "--batch-size", "--no-slots", "-ctk"]
    assert cause(REFUSED) == "refused flags at start-up: --offline --batch-size --no-slots -ctk"
    assert unknown_flags("AssertionError: assert 404 == 200") == []
    assert cause("AssertionError: assert 404 == 200") == "AssertionError: assert 404 == 200"


def test_causes_and_flags_count_only_the_tests_llama_server_passed() -> None:
    other = "RuntimeError: ...: unrecognized arguments: --no-slots"
    peer = side(
        outcome("f::1", "passed"),
        outcome("f::2", "passed"),
        outcome("f::3", "passed"),
        outcome("f::4", "failed", "peer failed"),
    )
    ours = side(
        outcome("f::1", "failed", REFUSED),
        outcome("f::2", "failed", other),
        outcome("f::3", "failed", "AssertionError: assert 'x' == 'y'"),
        outcome("f::4", "failed", REFUSED),
    )
    rows = compare(peer, ours)
    assert causes(rows).most_common() == [
        ("refused flags at start-up: --offline --batch-size --no-slots -ctk", 1),
        ("refused flags at start-up: --no-slots", 1),
        ("AssertionError: assert 'x' == 'y'", 1),
    ]
    assert flag_counts(rows) == {"--no-slots": 2, "--offline": 1, "--batch-size": 1, "-ctk": 1}


def test_own_causes_are_ours_where_both_failed_differently() -> None:
    peer = side(
        outcome("n::1", "failed", "assert 41 == 69"),
        outcome("n::2", "failed", "assert 41 == 69"),
        outcome("n::3", "failed", "assert 2 == 1"),
        outcome("n::4", "passed"),
    )
    ours = side(
        outcome("n::1", "failed", "KeyError: 'system_fingerprint'"),
        outcome("n::2", "failed", "KeyError: 'system_fingerprint'"),
        outcome("n::3", "failed", "assert 2 == 1"),
        outcome("n::4", "failed", "KeyError: 'x'"),
    )
    assert own_causes(compare(peer, ours)) == {"KeyError: 'system_fingerprint'": 2}
