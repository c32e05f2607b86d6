"""Building one decode step: generating runs first, prompt chunks within the budget, logits where sampled."""

from __future__ import annotations

from llamapack.runtime.engine.batch import BatchToken, plan_batch
from llamapack.runtime.engine.events import Request
from llamapack.runtime.engine.run import Run
from llamapack.runtime.engine.sampling import SamplingParams
from llamapack.runtime.engine.slots import Slot


def make_run(seq_id: int, prompt: list[int], cached: list[int] | None = None, reused: int = 0) -> Run:
    slot = Slot(seq_id)
    slot.cached = list(cached or [])
    request = Request(prompt=prompt, params=SamplingParams(), max_tokens=None, on_event=lambda event: None)
    run = Run(request, slot, reused, 0.0)
    slot.run = run
    return run


def generating(seq_id: int, history: list[int], last_token: int) -> Run:
    run = make_run(seq_id, history, cached=history, reused=len(history))
    run.last_token = last_token
    return run


def test_generating_runs_come_before_prompt_chunks():
    prompting = make_run(0, [10, 11, 12])
    talking = generating(1, [1, 2], last_token=7)
    plan = plan_batch([prompting, talking], n_batch=16)
    assert plan.tokens == [
        BatchToken(7, 2, 1, True),
        BatchToken(10, 0, 0, False),
        BatchToken(11, 1, 0, False),
        BatchToken(12, 2, 0, True),  # the prompt's last token: its logits give the first token
    ]
    assert [(run.slot.seq_id, index) for run, index in plan.outputs] == [(1, 0), (0, 3)]
    assert talking.slot.cached == [1, 2, 7]
    assert prompting.slot.cached == [10, 11, 12]
    assert not prompting.prompting


def test_a_long_prompt_is_chunked_and_sampled_only_after_its_last_chunk():
    run = make_run(0, list(range(100, 110)))
    first = plan_batch([run], n_batch=4)
    assert first.tokens == [BatchToken(100 + i, i, 0, False) for i in range(4)]
    assert first.outputs == []
    assert run.next_prompt == 4
    plan_batch([run], n_batch=4)
    last = plan_batch([run], n_batch=4)
    assert last.tokens == [BatchToken(108, 8, 0, False), BatchToken(109, 9, 0, True)]
    assert last.outputs == [(run, 1)]
    assert run.slot.cached == list(range(100, 110))


def test_a_reused_prefix_is_not_evaluated_again():
    run = make_run(0, [1, 2, 3, 4, 5], cached=[1, 2, 3], reused=3)
    plan = plan_batch([run], n_batch=16)
    assert plan.tokens == [BatchToken(4, 3, 0, False), BatchToken(5, 4, 0, True)]


def test_prompt_chunks_share_what_generation_leaves_of_the_budget():
    talking = generating(0, [1], last_token=9)
    first = make_run(1, [20, 21, 22])
    second = make_run(2, [30, 31])
    plan = plan_batch([talking, first, second], n_batch=4)
    assert plan.tokens == [
        BatchToken(9, 1, 0, True),
        BatchToken(20, 0, 1, False),
        BatchToken(21, 1, 1, False),
        BatchToken(22, 2, 1, True),
    ]
    assert second.next_prompt == 0 and second.slot.cached == []
    assert [run.slot.seq_id for run, _ in plan.outputs] == [0, 1]


def test_no_runs_no_tokens():
    plan = plan_batch([], n_batch=8)
    assert (plan.tokens, plan.outputs) == ([], [])
