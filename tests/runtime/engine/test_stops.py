"""The stop-string filter: what it sends, what it holds back, what it never sends."""

from __future__ import annotations

from llamapack.runtime.engine.stops import StopFilter


def feed_all(stops: StopFilter, pieces: list[str]) -> list[str]:
    return [stops.feed(piece) for piece in pieces]


def test_a_stop_string_split_over_pieces_is_never_partly_sent():
    stops = StopFilter(["</end>"])
    assert feed_all(stops, ["Hello <", "/en", "d> and more"]) == ["Hello ", "", ""]
    assert stops.met == "</end>"
    assert stops.flush() == ""


def test_text_before_a_stop_string_is_sent():
    stops = StopFilter(["STOP"])
    assert stops.feed("one two STOP three") == "one two "
    assert stops.met == "STOP"
    assert stops.held == ""


def test_a_possible_start_is_held_then_released_when_it_is_not_a_stop():
    stops = StopFilter(["STOP"])
    assert stops.feed("a ST") == "a "
    assert stops.held == "ST"
    assert stops.feed("AY") == "STAY"
    assert stops.held == ""
    assert stops.met is None


def test_only_the_part_that_can_still_begin_a_stop_is_held():
    stops = StopFilter(["STOP"])
    assert stops.feed("SST") == "S"
    assert stops.held == "ST"
    assert stops.feed("OP") == ""
    assert stops.met == "STOP"


def test_several_stop_strings():
    stops = StopFilter(["###", "User:"])
    assert feed_all(stops, ["a #", "# b Us", "er: x"]) == ["a ", "## b ", ""]
    assert stops.met == "User:"


def test_the_stop_string_that_starts_first_wins_whatever_the_list_order():
    stops = StopFilter(["b", "a"])
    assert stops.feed("xab") == "x"
    assert stops.met == "a"


def test_flush_sends_the_held_text():
    stops = StopFilter(["STOP"])
    assert stops.feed("the end ST") == "the end "
    assert stops.flush() == "ST"
    assert stops.met is None
    assert stops.held == ""


def test_flush_still_cuts_at_a_stop_completed_by_its_tail():
    stops = StopFilter(["STOP"])
    assert stops.feed("x ST") == "x "
    assert stops.flush("OP!") == ""
    assert stops.met == "STOP"


def test_nothing_passes_after_a_stop_string():
    stops = StopFilter(["."])
    assert stops.feed("Done. Extra") == "Done"
    assert stops.feed("more text") == ""
    assert stops.flush("tail") == ""
    assert stops.met == "."


def test_no_stop_strings_hold_nothing():
    stops = StopFilter([])
    assert feed_all(stops, ["ab", "<", "/"]) == ["ab", "<", "/"]
    assert stops.held == ""
    assert stops.flush() == ""
    assert stops.met is None
