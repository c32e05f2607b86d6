"""What one decode step evaluates: a token for every generating run, then prompt chunks.

Generating runs go first, one token each, so a long prompt that arrives does
not stall the replies already streaming; prompt chunks fill what is left of
`n_batch`, so a long prompt takes several steps. Logits are asked for only
where a token will be sampled: a generated token, or a prompt's last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from llamapack.runtime.engine.run import Run


class BatchToken(NamedTuple):
    token: int
    pos: int
    seq_id: int
    logits: bool


@dataclass
class BatchPlan:
    tokens: list[BatchToken]
    outputs: list[tuple[Run, int]]  # a run to sample, and the index of its logits in `tokens`


def plan_batch(runs: Sequence[Run], n_batch: int) -> BatchPlan:
    """The next batch for these runs, at most `n_batch` tokens of prompt and generation together.

    Each run moves past the prompt tokens it puts in, and its slot counts every
    token put in as cached: llama.cpp has the cells once the batch is decoded,
    and a failed decode ends the run and clears its cache.
    """
    tokens: list[BatchToken] = []
    outputs: list[tuple[Run, int]] = []
    prompting = [run for run in runs if run.prompting]
    for run in runs:
        if not run.prompting:
            slot = run.slot
            tokens.append(BatchToken(run.last_token, slot.n_past, slot.seq_id, True))
            slot.cached.append(run.last_token)
            outputs.append((run, len(tokens) - 1))
    budget = n_batch - len(tokens)
    for run in prompting:
        if budget <= 0:
            break
        slot = run.slot
        chunk = run.request.prompt[run.next_prompt : run.next_prompt + budget]
        run.next_prompt += len(chunk)
        budget -= len(chunk)
        last = len(chunk) - 1 if not run.prompting else -1
        for i, token in enumerate(chunk):
            tokens.append(BatchToken(token, slot.n_past, slot.seq_id, i == last))
            slot.cached.append(token)
        if last >= 0:
            outputs.append((run, len(tokens) - 1))
    return BatchPlan(tokens, outputs)
