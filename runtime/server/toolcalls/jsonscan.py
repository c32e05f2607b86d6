"""Scanning JSON that may still be arriving: how far a value goes, and whether it is done.

The reply parser reads tool calls as the model writes them, so it must tell a value
that is cut short (wait for more) from one that cannot be JSON (give up). A scan
always starts again from the value's first character: calls are short, and the runs
inside strings, which make up most of them, are skipped by one regular expression.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_NUMBER_CHARS = re.compile(r"[-+0-9.eE]*")
_NUMBER_START = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]*)?)?")
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_HIGH_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\Z")


def skip_whitespace(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]  # matches the empty string


@dataclass(frozen=True)
class Scan:
    """One JSON value scanned from its first character."""

    end: int | None  # just past the value, once it is complete
    reach: int  # the text up to here is a clean prefix of JSON (never inside an escape)
    failed: bool  # the character at `reach` cannot continue the value
    closers: str = ""  # appended at `reach`, closes the open string and containers

    @property
    def complete(self) -> bool:
        return self.end is not None


def _partial(reach: int, stack: list[str], in_string: bool = False) -> Scan:
    return Scan(None, reach, False, ('"' if in_string else "") + "".join(reversed(stack)))


def _failed(at: int, stack: list[str], in_string: bool = False) -> Scan:
    return Scan(None, at, True, ('"' if in_string else "") + "".join(reversed(stack)))


def string_end(text: str, pos: int) -> tuple[int | None, int, bool]:
    """For the string opening at text[pos] (a quote): (end, reach, failed)."""
    i = pos + 1
    size = len(text)
    while True:
        i = _STRING_RUN.match(text, i).end()  # type: ignore[union-attr]
        if i >= size:
            return None, size, False
        char = text[i]
        if char == '"':
            return i + 1, i + 1, False
        if char != "\\":
            return None, i, True  # a raw control character: strict JSON, as llama.cpp's parser
        if i + 1 >= size:
            return None, i, False
        escaped = text[i + 1]
        if escaped in '"\\/bfnrt':
            i += 2
        elif escaped == "u":
            digits = text[i + 2 : i + 6]
            if not all(digit in _HEX for digit in digits):
                return None, i, True
            if len(digits) < 4:
                return None, i, False
            i += 6
        else:
            return None, i, True


def scan_value(text: str, pos: int) -> Scan:
    """Scan the JSON value whose first character is text[pos]."""
    stack: list[str] = []  # the closers of open containers, innermost last
    expect = "value"  # value | key | colon | after
    just_opened = False
    i = pos
    size = len(text)
    while True:
        if stack:
            i = skip_whitespace(text, i)
        if i >= size:
            return _partial(i, stack)
        char = text[i]
        if expect == "after":
            if char == ",":
                expect = "key" if stack[-1] == "}" else "value"
                i += 1
                continue
            if char != stack[-1]:
                return _failed(i, stack)
            stack.pop()
            i += 1
            if not stack:
                return Scan(i, i, False)
            continue
        if expect == "colon":
            if char != ":":
                return _failed(i, stack)
            expect = "value"
            i += 1
            continue
        opened, just_opened = just_opened, False
        if expect == "key":
            if char == "}" and opened:
                i = i + 1
                stack.pop()
                if not stack:
                    return Scan(i, i, False)
                expect = "after"
                continue
            if char != '"':
                return _failed(i, stack)
            end, reach, failed = string_end(text, i)
            if end is None:
                return Scan(None, reach, failed, '"' + "".join(reversed(stack)))
            i, expect = end, "colon"
            continue
        # a value
        if char in "{[":
            stack.append("}" if char == "{" else "]")
            expect = "key" if char == "{" else "value"
            just_opened = True
            i += 1
            continue
        if char == "]" and opened and stack and stack[-1] == "]":
            stack.pop()
            i += 1
        elif char == '"':
            end, reach, failed = string_end(text, i)
            if end is None:
                return Scan(None, reach, failed, '"' + "".join(reversed(stack)))
            i = end
        elif char in _LITERALS:
            word = _LITERALS[char]
            chunk = text[i : i + len(word)]
            if chunk != word:
                if i + len(chunk) == size and word.startswith(chunk):
                    return _partial(size, stack)
                return _failed(i, stack)
            i += len(word)
        elif char == "-" or char.isdigit():
            stop = _NUMBER_CHARS.match(text, i).end()  # type: ignore[union-attr]
            if stop == size:  # more digits may follow
                if _NUMBER_START.fullmatch(text, i, stop):
                    return _partial(size, stack)
                return _failed(i, stack)
            if not _NUMBER.fullmatch(text, i, stop):
                return _failed(i, stack)
            i = stop
        else:
            return _failed(i, stack)
        if not stack:
            return Scan(i, i, False)
        expect = "after"


def decode_string(text: str, pos: int, end: int) -> str:
    """The complete JSON string text[pos:end]."""
    value = json.loads(text[pos:end])
    assert isinstance(value, str)
    return value


def decode_string_prefix(text: str, pos: int, reach: int) -> str:
    """What the string opening at text[pos] holds up to `reach` (a clean point), less a
    trailing high surrogate whose low half has not arrived."""
    raw = text[pos + 1 : reach]
    if _HIGH_SURROGATE_ESCAPE.search(raw):
        raw = raw[:-6]
    value = json.loads('"' + raw + '"')
    assert isinstance(value, str)
    return value
