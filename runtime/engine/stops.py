"""Stop strings: generated text reaches the client without them or anything after them.

Text arrives a token at a time, so a stop string may come split over several
pieces. The end of the text that could still begin one is held back until
later pieces show whether it does; everything before it goes out at once, so
streaming is delayed by at most a stop string's length.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopFilter:
    """One request's generated text, fed as decoded; gives back what is safe to send."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = list(stops)
        self._held = ""
        self.met: str | None = None  # the stop string found; nothing passes after it

    @property
    def held(self) -> str:
        """Text kept back because it may be the start of a stop string."""
        return self._held

    def feed(self, text: str) -> str:
        """Add newly generated text; return the part that can be sent now."""
        return self._release(text, final=False)

    def flush(self, text: str = "") -> str:
        """Generation has ended: return the rest (and `text`), still cut at a stop string."""
        return self._release(text, final=True)

    def _release(self, text: str, final: bool) -> str:
        if self.met is not None:
            return ""
        text = self._held + text
        # The stop string that starts first ends the text (as llama-server does):
        # nothing of a later one, or of the text between, may be sent.
        found = [(at, stop) for stop in self._stops if (at := text.find(stop)) >= 0]
        if found:
            at, self.met = min(found, key=lambda hit: hit[0])
            self._held = ""
            return text[:at]
        keep = 0 if final else _held_back(text, self._stops)
        ready = text[: len(text) - keep]
        self._held = text[len(ready) :]
        return ready


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could begin a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest
