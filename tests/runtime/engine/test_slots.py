"""Slot choice and prompt-cache reuse, on token lists and a fake KV memory: no model."""

from __future__ import annotations

from llamapack.runtime.engine.events import Request
from llamapack.runtime.engine.run import Run
from llamapack.runtime.engine.sampling import SamplingParams
from llamapack.runtime.engine.slots import Slot, common_prefix, evict_idle, pick_slot, reuse_prefix


class FakeMemory:
    """Records what the prompt cache asks of the KV cache; refuses partial removal on demand."""

    def __init__(self, pos_min: int = 0, removable: bool = True) -> None:
        self.pos_min = pos_min
        self.removable = removable
        self.calls: list[tuple[str, int, int]] = []

    def seq_pos_min(self, seq_id: int) -> int:
        return self.pos_min

    def seq_remove(self, seq_id: int, start: int) -> bool:
        self.calls.append(("remove", seq_id, start))
        return self.removable

    def seq_clear(self, seq_id: int) -> None:
        self.calls.append(("clear", seq_id, -1))


def slot(seq_id: int, cached: list[int] | None = None, last_used: float = 0.0) -> Slot:
    made = Slot(seq_id)
    made.cached = list(cached or [])
    made.last_used = last_used
    return made


def busy(made: Slot) -> Slot:
    request = Request(prompt=[1], params=SamplingParams(), max_tokens=None, on_event=lambda event: None)
    made.run = Run(request, made, 0, 0.0)
    return made


# ------------------------------------------------------------ common_prefix


def test_common_prefix_counts_leading_equal_tokens():
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3, 4], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 9, 4], [1, 2, 3, 4]) == 2
    assert common_prefix([5], [1]) == 0
    assert common_prefix([], [1, 2]) == 0


# ------------------------------------------------------------ pick_slot


def test_longest_shared_prefix_wins():
    prompt = list(range(40))
    short = slot(0, list(range(10)) + [99] * 5)
    longest = slot(1, list(range(30)) + [99])
    other = slot(2, [7, 7, 7])
    chosen, shared = pick_slot([short, longest, other], prompt, cache_prompt=True)
    assert (chosen.seq_id, shared) == (1, 30)


def test_an_empty_slot_is_preferred_to_destroying_most_of_a_long_cache():
    # 20 shared tokens are similar enough (over 10% of 40), but they are less
    # than half of a 100-token cache: an empty slot keeps that cache whole.
    conversation = slot(0, list(range(20)) + [500 + i for i in range(80)])
    empty = slot(1)
    chosen, shared = pick_slot([conversation, empty], list(range(40)), cache_prompt=True)
    assert (chosen.seq_id, shared) == (1, 0)


def test_half_of_the_cache_shared_is_reused_over_an_empty_slot():
    conversation = slot(0, list(range(20)) + [500 + i for i in range(20)])
    chosen, shared = pick_slot([slot(1), conversation], list(range(40)), cache_prompt=True)
    assert (chosen.seq_id, shared) == (0, 20)


def test_a_small_share_is_reused_when_no_slot_is_empty():
    conversation = slot(0, list(range(20)) + [500 + i for i in range(80)], last_used=5.0)
    older = slot(1, [900, 901], last_used=1.0)
    chosen, shared = pick_slot([conversation, older], list(range(40)), cache_prompt=True)
    assert (chosen.seq_id, shared) == (0, 20)


def test_whole_prompt_in_a_long_cache_is_reused_over_an_empty_slot():
    # A regenerated reply: the prompt is the cache's beginning, all but its last token.
    conversation = slot(0, list(range(100)))
    prompt = list(range(29)) + [12345]
    chosen, shared = pick_slot([slot(1), conversation], prompt, cache_prompt=True)
    assert (chosen.seq_id, shared) == (0, 29)


def test_similarity_must_exceed_a_tenth_of_the_prompt():
    prompt = list(range(50))
    at_threshold = slot(0, list(range(5)) + [999], last_used=9.0)
    lru = slot(1, [777], last_used=1.0)
    chosen, shared = pick_slot([at_threshold, lru], prompt, cache_prompt=True)
    assert (chosen.seq_id, shared) == (1, 0)  # 5 is not more than 10% of 50

    above = slot(0, list(range(6)) + [999], last_used=9.0)
    chosen, shared = pick_slot([above, slot(1, [777], last_used=1.0)], prompt, cache_prompt=True)
    assert (chosen.seq_id, shared) == (0, 6)


def test_least_recently_used_slot_when_nothing_is_similar_and_none_is_empty():
    slots = [slot(0, [10], last_used=3.0), slot(1, [20], last_used=1.0), slot(2, [30], last_used=2.0)]
    chosen, shared = pick_slot(slots, [1, 2, 3], cache_prompt=True)
    assert (chosen.seq_id, shared) == (1, 0)


def test_first_empty_slot_when_nothing_is_similar():
    slots = [slot(0, [10], last_used=0.0), slot(1), slot(2)]
    chosen, shared = pick_slot(slots, [1, 2, 3], cache_prompt=True)
    assert (chosen.seq_id, shared) == (1, 0)


def test_without_cache_prompt_a_matching_cache_is_not_reused():
    prompt = list(range(20))
    match = slot(0, list(range(20)), last_used=1.0)
    chosen, shared = pick_slot([match, slot(1)], prompt, cache_prompt=False)
    assert (chosen.seq_id, shared) == (1, 0)
    # No empty slot: the least recently used one, still from scratch.
    other = slot(1, [5], last_used=2.0)
    chosen, shared = pick_slot([match, other], prompt, cache_prompt=False)
    assert (chosen.seq_id, shared) == (0, 0)


# ------------------------------------------------------------ reuse_prefix


def test_reuse_keeps_the_shared_prefix_and_drops_the_rest():
    memory = FakeMemory()
    cache = slot(3, [1, 2, 3, 4, 5, 6])
    assert reuse_prefix(cache, memory, shared=4, prompt_length=10, n_swa=0) == 4
    assert cache.cached == [1, 2, 3, 4]
    assert memory.calls == [("remove", 3, 4)]


def test_reuse_always_leaves_the_last_prompt_token_to_evaluate():
    memory = FakeMemory()
    cache = slot(0, [1, 2, 3, 4, 5])
    assert reuse_prefix(cache, memory, shared=5, prompt_length=5, n_swa=0) == 4
    assert cache.cached == [1, 2, 3, 4]
    assert memory.calls == [("remove", 0, 4)]


def test_nothing_shared_clears_the_slot():
    memory = FakeMemory()
    cache = slot(2, [1, 2, 3])
    assert reuse_prefix(cache, memory, shared=0, prompt_length=8, n_swa=0) == 0
    assert cache.cached == []
    assert memory.calls == [("clear", 2, -1)]


def test_a_refused_partial_removal_clears_the_slot():
    memory = FakeMemory(removable=False)
    cache = slot(1, [1, 2, 3, 4])
    assert reuse_prefix(cache, memory, shared=3, prompt_length=8, n_swa=0) == 0
    assert cache.cached == []
    assert memory.calls == [("remove", 1, 3), ("clear", 1, -1)]


def test_sliding_window_reuse_needs_the_window_before_the_kept_prefix():
    # keep 10 with a window of 4: positions from 6 on must still be cached.
    kept = FakeMemory(pos_min=6)
    cache = slot(0, list(range(12)))
    assert reuse_prefix(cache, kept, shared=10, prompt_length=20, n_swa=4) == 10
    assert kept.calls == [("remove", 0, 10)]

    # Cells up to position 6 were already dropped by the window: start over,
    # without removing anything first.
    lost = FakeMemory(pos_min=7)
    cache = slot(0, list(range(12)))
    assert reuse_prefix(cache, lost, shared=10, prompt_length=20, n_swa=4) == 0
    assert cache.cached == []
    assert lost.calls == [("clear", 0, -1)]


def test_sliding_window_ignored_without_one():
    memory = FakeMemory(pos_min=9)
    cache = slot(0, list(range(12)))
    assert reuse_prefix(cache, memory, shared=10, prompt_length=20, n_swa=0) == 10


# ------------------------------------------------------------ evict_idle


def test_evict_idle_clears_only_idle_caches():
    memory = FakeMemory()
    idle = slot(0, [1, 2])
    running = busy(slot(1, [3, 4]))
    empty = slot(2)
    assert evict_idle([idle, running, empty], memory) is True
    assert (idle.cached, running.cached, empty.cached) == ([], [3, 4], [])
    assert memory.calls == [("clear", 0, -1)]
    assert evict_idle([idle, running, empty], memory) is False
    assert memory.calls == [("clear", 0, -1)]
