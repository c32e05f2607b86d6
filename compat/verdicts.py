"""What one test's two outcomes mean side by side, and why ours failed."""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from compat.junit import Outcome

# compat.plugin starts every skip it causes with this: those tests need something
# this machine cannot have (another model, the internet). They count on neither side.
NOT_APPLICABLE = "not applicable here: "

PEER = "llama-server"
OURS = "llamapack"


class Verdict(enum.Enum):
    BOTH = "passed on both"
    PEER_ONLY = f"passed on {PEER} only"
    OURS_ONLY = f"passed on {OURS} only"
    NEITHER = "passed on neither"
    NOT_APPLICABLE = "not applicable"
    SKIPPED = "skipped by the suite"
    ONE_SIDE = "ran on one side only"


@dataclass(frozen=True)
class Row:
    test_id: str
    verdict: Verdict
    peer: Outcome | None
    ours: Outcome | None

    @property
    def file(self) -> str:
        return self.test_id.split("::", 1)[0]

    @property
    def reason(self) -> str:
        """Why a test did not count: the skip reason (ours first, then the peer's)."""
        for outcome in (self.ours, self.peer):
            if outcome is not None and outcome.status == "skipped":
                return outcome.message.removeprefix(NOT_APPLICABLE)
        return ""


def compare(peer: Mapping[str, Outcome], ours: Mapping[str, Outcome]) -> list[Row]:
    """One row per test that either side ran, in the suite's order (the peer's first)."""
    ids = list(peer) + [test_id for test_id in ours if test_id not in peer]
    return [_row(test_id, peer.get(test_id), ours.get(test_id)) for test_id in ids]


def _row(test_id: str, peer: Outcome | None, ours: Outcome | None) -> Row:
    outcomes = [outcome for outcome in (peer, ours) if outcome is not None]
    if any(o.status == "skipped" and o.message.startswith(NOT_APPLICABLE) for o in outcomes):
        return Row(test_id, Verdict.NOT_APPLICABLE, peer, ours)
    if any(o.status == "skipped" for o in outcomes):
        return Row(test_id, Verdict.SKIPPED, peer, ours)
    if peer is None or ours is None:
        return Row(test_id, Verdict.ONE_SIDE, peer, ours)
    verdict = {
        (True, True): Verdict.BOTH,
        (True, False): Verdict.PEER_ONLY,
        (False, True): Verdict.OURS_ONLY,
        (False, False): Verdict.NEITHER,
    }[(peer.status == "passed", ours.status == "passed")]
    return Row(test_id, verdict, peer, ours)


@dataclass(frozen=True)
class Summary:
    peer_passed: int
    ours_passed_of_peer: int
    ours_only: int
    neither: int
    not_applicable: int
    skipped: int
    one_side: int

    @property
    def share(self) -> float:
        """Of the tests llama-server passes, the share ours passes too (the issue's measure)."""
        return self.ours_passed_of_peer / self.peer_passed if self.peer_passed else 0.0


def summarize(rows: Iterable[Row]) -> Summary:
    counts = Counter(row.verdict for row in rows)
    return Summary(
        peer_passed=counts[Verdict.BOTH] + counts[Verdict.PEER_ONLY],
        ours_passed_of_peer=counts[Verdict.BOTH],
        ours_only=counts[Verdict.OURS_ONLY],
        neither=counts[Verdict.NEITHER],
        not_applicable=counts[Verdict.NOT_APPLICABLE],
        skipped=counts[Verdict.SKIPPED],
        one_side=counts[Verdict.ONE_SIDE],
    )


# argparse's refusal, as the server's last line reaches the failure message.
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)$")
_FLAG = re.compile(r"^--?[A-Za-z]")


def unknown_flags(message: str) -> list[str]:
    """The flags (without their values) a server refused at start-up, from a failure line."""
    match = _UNRECOGNIZED.search(message)
    if match is None:
        return []
    return [token for token in match["args"].split() if _FLAG.match(token)]


def cause(message: str) -> str:
    """A failure line reduced to its cause, so that tests failing alike group together."""
    flags = unknown_flags(message)
    if flags:
        return "refused flags at start-up: " + " ".join(flags)
    return message[:200]


def causes(rows: Iterable[Row]) -> Counter[str]:
    """Why ours failed the tests only llama-server passed, most common first."""
    return Counter(cause(row.ours.message) for row in rows if row.verdict is Verdict.PEER_ONLY and row.ours)


def own_causes(rows: Iterable[Row]) -> Counter[str]:
    """Why ours failed tests that llama-server failed too, where it failed otherwise: a test
    written for the suite's model hides a gap of ours (a missing field, a refused flag)."""
    return Counter(
        cause(row.ours.message)
        for row in rows
        if row.verdict is Verdict.NEITHER and row.ours and row.peer and row.ours.message != row.peer.message
    )


def flag_counts(rows: Iterable[Row]) -> Counter[str]:
    """For each flag ours refused, the number of tests (that llama-server passed) it stopped."""
    counter: Counter[str] = Counter()
    for row in rows:
        if row.verdict is Verdict.PEER_ONLY and row.ours is not None:
            counter.update(set(unknown_flags(row.ours.message)))
    return counter
