"""One request's run: the events its tokens produce, logprobs riding with their text, timings."""

from __future__ import annotations

from llamapack.runtime.engine.events import Event, Request, TokenLogprob
from llamapack.runtime.engine.run import Run
from llamapack.runtime.engine.sampling import SamplingParams
from llamapack.runtime.engine.slots import Slot


def make_run(stop: list[str], prompt: list[int] | None = None, reused: int = 0) -> tuple[Run, list[Event]]:
    events: list[Event] = []
    request = Request(
        prompt=prompt or [1, 2, 3],
        params=SamplingParams(),
        max_tokens=None,
        on_event=events.append,
        stop=stop,
    )
    return Run(request, Slot(0), reused, started=10.0), events


def logprob(token: int) -> TokenLogprob:
    return TokenLogprob(token, b"", -float(token))


def sent(events: list[Event]) -> list[tuple[str, list[int]]]:
    return [(event.text, [entry.token for entry in event.logprobs]) for event in events]


def test_a_new_run_describes_its_request_only():
    run, events = make_run([], prompt=[5, 6, 7, 8], reused=3)
    assert (run.next_prompt, run.generated, run.last_token, run.pending) == (3, 0, -1, [])
    assert (run.usage.prompt_tokens, run.usage.cached_tokens, run.usage.completion_tokens) == (4, 3, 0)
    assert run.prompting
    run.next_prompt = 4
    assert not run.prompting
    assert events == []


def test_logprobs_go_with_the_event_that_sends_their_text():
    run, events = make_run(["STOP"])
    assert run.accept(11, b"Hi ", logprob(11)) is None
    assert run.accept(12, b"ST", logprob(12)) is None  # held: may begin STOP
    assert run.accept(13, b"AY", logprob(13)) is None
    assert sent(events) == [("Hi ", [11]), ("STAY", [12, 13])]
    assert (run.generated, run.last_token) == (3, 13)


def test_a_stop_string_ends_the_text_and_drops_its_logprobs():
    run, events = make_run(["STOP"])
    run.accept(11, b"ok S", logprob(11))
    assert run.accept(12, b"TOP more", logprob(12)) == "STOP"
    assert sent(events) == [("ok ", [11])]
    assert run.pending == []
    assert run.flush() == "STOP"
    assert len(events) == 1


def test_a_split_utf8_character_waits_for_its_last_byte():
    run, events = make_run([])
    euro = "€".encode()
    run.accept(1, euro[:2], None)
    assert events == []
    run.accept(2, euro[2:] + b"!", None)
    assert sent(events) == [("€!", [])]


def test_flush_sends_held_text_and_an_unfinished_character():
    run, events = make_run(["STOP"])
    run.accept(1, b"end ST", None)
    run.accept(2, "€".encode()[:1], None)
    assert sent(events) == [("end ", [])]
    assert run.flush() is None
    assert sent(events) == [("end ", []), ("ST\ufffd", [])]


def test_prompt_time_ends_at_the_first_sample_and_generation_time_at_the_end():
    run, _ = make_run([])
    run.sampling(10.5)
    run.sampling(11.0)  # later samples do not move the end of the prompt's time
    assert run.first_token_at == 10.5
    assert run.usage.prompt_ms == 500.0
    run.accept(1, b"a", None)
    run.accept(2, b"b", None)
    usage = run.final_usage(12.0)
    assert (usage.completion_tokens, usage.predicted_ms) == (2, 1500.0)
    assert usage is run.usage
