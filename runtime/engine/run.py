"""One request's progress in its slot, from admission to its final event.

The engine thread builds a Run whole and then publishes it with one
assignment (`slot.run = Run(...)`); other threads reading the slot see either
no run or a complete one, never fields left over from the previous request.
"""

from __future__ import annotations

import dataclasses
import time

from llamapack.runtime.engine.events import Event, PromptProgress, Request, TokenLogprob, Usage
from llamapack.runtime.engine.slots import Slot
from llamapack.runtime.engine.stops import StopFilter
from llamapack.runtime.llama.model import TextDecoder


class Run:
    def __init__(self, request: Request, slot: Slot, reused: int, started: float) -> None:
        self.request = request
        self.slot = slot
        self.next_prompt = reused  # the first prompt token not yet put in a batch
        self.last_token = -1  # sampled, to be evaluated in the next batch
        self.generated = 0
        self.decoder = TextDecoder()
        self.stops = StopFilter(request.stop)
        self.pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not sent yet
        self.usage = Usage(prompt_tokens=len(request.prompt), cached_tokens=reused)
        self.started = started
        self.first_token_at = 0.0

    def report_progress(self, now: float) -> None:
        if self.request.return_progress:
            progress = PromptProgress(
                total=len(self.request.prompt),
                cache=self.usage.cached_tokens,
                processed=self.next_prompt,
                time_ms=(now - self.started) * 1000.0,
            )
            self.request.on_event(Event(progress=progress))

    @property
    def prompting(self) -> bool:
        return self.next_prompt < len(self.request.prompt)

    def sampling(self, now: float) -> None:
        """About to sample: the first time, the prompt's time ends and generation's begins."""
        if not self.first_token_at:
            self.first_token_at = now
            self.usage.prompt_ms = (now - self.started) * 1000.0

    def accept(self, token: int, piece: bytes, logprob: TokenLogprob | None) -> str | None:
        """A token was generated: send what text can be sent; return the stop string met, if any."""
        if logprob is not None:
            self.pending.append(logprob)
        self.generated += 1
        self.last_token = token
        return self._send(self.stops.feed(self.decoder.feed(piece)))

    def flush(self) -> str | None:
        """Generation ends: send the text held back; return the stop string met, if any."""
        return self._send(self.stops.flush(self.decoder.flush()))

    def _send(self, text: str) -> str | None:
        if text:
            self.request.on_event(Event(text=text, logprobs=self.pending, usage=self._usage_so_far()))
            self.pending = []
        if self.stops.met is not None:
            # Tokens of the stop string and after it: their text is never sent.
            self.pending = []
        return self.stops.met

    def _usage_so_far(self) -> Usage:
        """For timings with each piece (llama-server's timings_per_token)."""
        now = time.perf_counter()
        predicted_ms = (now - self.first_token_at) * 1000.0 if self.first_token_at else 0.0
        return dataclasses.replace(self.usage, completion_tokens=self.generated, predicted_ms=predicted_ms)

    def final_usage(self, now: float) -> Usage:
        self.usage.completion_tokens = self.generated
        if self.first_token_at:
            self.usage.predicted_ms = (now - self.first_token_at) * 1000.0
        return self.usage
