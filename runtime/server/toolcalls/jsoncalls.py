"""Tool calls written as JSON objects, and what a block scan reports.

A scan reads a block as far as the text goes and says what it found: the calls so
far (a call has a name once its name is complete and names one of the request's
tools), whether the block is complete, or where it stops making sense. Scans are
pure functions of the text, so a block read in pieces reads as it does whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llamapack.runtime.server.toolcalls.jsonscan import decode_string, scan_value, skip_whitespace, string_end


@dataclass
class CallState:
    """One call as far as it has been read."""

    name: str | None = None  # complete, and one of the request's tools
    id: str | None = None  # the model's own, when it writes one
    args: str = ""  # the arguments' JSON text so far
    args_closers: str = ""  # closes `args` if the call ends early
    args_done: bool = False
    wants_id: bool = False  # an id may still follow: the call's first delta waits for it

    def arguments(self, finished: bool) -> str:
        """The argument text a client may be sent: held-back trailing whitespace while
        the call goes on; closed and complete once it has ended."""
        if self.args_done:
            return self.args
        if not finished:
            return self.args.rstrip()
        return self.args.rstrip() + self.args_closers if self.args else "{}"


@dataclass
class BlockScan:
    calls: list[CallState] = field(default_factory=list)
    end: int | None = None  # just past the block, once it is complete
    failed_at: int | None = None  # the block cannot go on from here
    content: str = ""  # reply text a block carries (the generic format's "response")
    content_done: bool = False
    holds_content: bool = False  # the block is a generic "response"

    @property
    def committed(self) -> bool:
        """Past the point where the block is certainly a tool call (or a response)."""
        return self.holds_content or bool(self.calls and self.calls[0].name is not None)

    @property
    def open(self) -> bool:
        return self.end is None and self.failed_at is None


@dataclass(frozen=True)
class CallKeys:
    """Where a JSON call object keeps its parts."""

    name: str = "name"
    arguments: tuple[str, ...] = ("arguments",)
    id: str | None = None


HERMES_KEYS = CallKeys()
LLAMA_3_KEYS = CallKeys(arguments=("parameters", "arguments"))
NEMO_KEYS = CallKeys(id="id")


def offered(tools: frozenset[str], name: str) -> bool:
    return name in tools


def scan_call_object(
    text: str, pos: int, keys: CallKeys, tools: frozenset[str]
) -> tuple[CallState, int | None, int | None]:
    """The JSON call object opening at text[pos]: (call, end, failed_at)."""
    call = CallState(wants_id=keys.id is not None)
    size = len(text)

    def finish(end: int) -> tuple[CallState, int | None, int | None]:
        if call.name is None:
            return call, None, pos  # an object, but not a call
        call.wants_id = False
        if not call.args_done and not call.args:
            call.args, call.args_done = "{}", True
        return call, end, None

    i = skip_whitespace(text, pos + 1)
    if i >= size:
        return call, None, None
    if text[i] == "}":
        return finish(i + 1)
    while True:
        if text[i] != '"':
            return call, None, i
        key_end, reach, failed = string_end(text, i)
        if key_end is None:
            return call, None, reach if failed else None
        key = decode_string(text, i, key_end)
        i = skip_whitespace(text, key_end)
        if i >= size:
            return call, None, None
        if text[i] != ":":
            return call, None, i
        i = skip_whitespace(text, i + 1)
        if i >= size:
            return call, None, None
        scan = scan_value(text, i)
        if key in keys.arguments and not call.args:
            if text[i] == '"':  # arguments written as a JSON string of JSON
                if scan.end is not None:
                    call.args, call.args_done = decode_string(text, i, scan.end), True
            else:
                call.args, call.args_closers, call.args_done = (
                    text[i : scan.reach],
                    scan.closers,
                    scan.complete,
                )
        if scan.end is None:
            return call, None, scan.reach if scan.failed else None
        if key == keys.name:
            name = json.loads(text[i : scan.end])
            if not isinstance(name, str) or not offered(tools, name):
                return call, None, i
            call.name = name
        elif key == keys.id:
            value = json.loads(text[i : scan.end])
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                call.id = str(value)
        i = skip_whitespace(text, scan.end)
        if i >= size:
            return call, None, None
        if text[i] == "}":
            return finish(i + 1)
        if text[i] != ",":
            return call, None, i
        i = skip_whitespace(text, i + 1)
        if i >= size:
            return call, None, None


def take_call(block: BlockScan, text: str, i: int, keys: CallKeys, tools: frozenset[str]) -> int | None:
    """The call object opening at text[i], added to `block`: where it ends, or None when
    the block ends with it (the text stops inside it, or it failed: `failed_at` is set)."""
    call, end, failed_at = scan_call_object(text, i, keys, tools)
    if call.name is not None:
        block.calls.append(call)
    if failed_at is not None:
        block.failed_at = failed_at if call.name is not None else i
        return None
    return end


def scan_call_array(text: str, pos: int, keys: CallKeys, tools: frozenset[str]) -> BlockScan:
    """A JSON array of call objects opening at text[pos]."""
    block = BlockScan()
    size = len(text)
    i = skip_whitespace(text, pos + 1)
    while True:
        if i >= size:
            return block
        if text[i] != "{":
            block.failed_at = i
            return block
        end = take_call(block, text, i, keys, tools)
        if end is None:
            return block
        i = skip_whitespace(text, end)
        if i >= size:
            return block
        if text[i] == "]":
            block.end = i + 1
            return block
        if text[i] != ",":
            block.failed_at = i
            return block
        i = skip_whitespace(text, i + 1)
