"""Slots and the prompt cache: which slot a request gets and how much of its cache it keeps.

A slot is one sequence id of the shared llama.cpp context. Its KV cells outlive
its request, so the next request that starts with the same tokens (a chat's
next turn, a regenerated reply) evaluates only what is new. The choice works on
token lists; the KV cache itself is behind `KvMemory`, so the rules here run
without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # run.py imports this module for Slot
    from llamapack.runtime.engine.run import Run

# A free slot is reused for its cache only when the shared prefix is at least
# this share of the new prompt; otherwise the least recently used slot is
# taken, so one unrelated request does not evict a conversation (llama-server's
# default `slot_prompt_similarity`).
SIMILARITY = 0.1


class KvMemory(Protocol):
    """The KV cache operations the prompt cache needs, one sequence at a time."""

    def seq_pos_min(self, seq_id: int) -> int:
        """The lowest position the sequence still holds, -1 if none."""
        ...

    def seq_remove(self, seq_id: int, start: int) -> bool:
        """Drop the sequence's cells from position `start` on; False if the cache cannot."""
        ...

    def seq_clear(self, seq_id: int) -> None:
        """Drop all of the sequence's cells."""
        ...


class Slot:
    """One sequence of the context: its cached tokens, and the request it serves if any."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # the tokens whose KV cells this sequence holds
        self.last_used = 0.0
        # Other threads read this (`Engine.slot_states`): the engine thread sets it
        # only to a complete Run or to None, so a reader never sees a half-made one.
        self.run: Run | None = None

    @property
    def n_past(self) -> int:
        return len(self.cached)

    def forget(self, memory: KvMemory) -> None:
        """Drop the whole cache of this slot."""
        memory.seq_clear(self.seq_id)
        self.cached = []


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    # One slice comparison runs in C; most prompts share all of the shorter list.
    if n and a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pick_slot(free: Sequence[Slot], prompt: Sequence[int], cache_prompt: bool) -> tuple[Slot, int]:
    """The free slot whose cache shares most with the prompt, else the least useful one.

    Returns the slot and how many leading prompt tokens its cache shares (0
    when the cache is not to be reused).
    """
    empty = [slot for slot in free if not slot.cached]
    if cache_prompt:
        best: Slot | None = None
        shared = 0
        for slot in free:
            length = common_prefix(slot.cached, prompt)
            if length > shared:
                best, shared = slot, length
        similar = best is not None and shared > SIMILARITY * len(prompt)
        # Reusing a small part of a long cache would destroy the rest of it,
        # unless that part is the whole prompt (a regenerated reply).
        whole_prompt = shared >= len(prompt) - 1
        if best is not None and similar and (not empty or whole_prompt or shared >= len(best.cached) // 2):
            return best, shared
    return (empty or [min(free, key=lambda slot: slot.last_used)])[0], 0


def reuse_prefix(slot: Slot, memory: KvMemory, shared: int, prompt_length: int, n_swa: int) -> int:
    """Drop the slot's cache after `shared` tokens; return how many are kept."""
    # The last prompt token is always evaluated: its logits give the first token.
    keep = min(shared, prompt_length - 1)
    # With a sliding window (n_swa > 0) the tokens after `keep` attend to the
    # window before it: those cells must still be there, checked before removing.
    pos_min = memory.seq_pos_min(slot.seq_id)
    window_kept = not n_swa or 0 <= pos_min <= max(0, keep - n_swa)
    if keep > 0 and window_kept and memory.seq_remove(slot.seq_id, keep):
        del slot.cached[keep:]
        return keep
    slot.forget(memory)
    return 0


def evict_idle(slots: Sequence[Slot], memory: KvMemory) -> bool:
    """Free the cells that idle slots keep for their prompt cache; False if there were none."""
    evicted = False
    for slot in slots:
        if slot.run is None and slot.cached:
            slot.forget(memory)
            evicted = True
    return evicted
