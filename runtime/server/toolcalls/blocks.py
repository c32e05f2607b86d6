"""The tool-call blocks of each format, scanned from the marker that opens them.

Each format's scanner reads one block (see jsoncalls.BlockScan for what it
reports); `SYNTAXES` says which markers open a block in which format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from llamapack.runtime.server.toolcalls.formats import ToolFormat
from llamapack.runtime.server.toolcalls.jsoncalls import (
    HERMES_KEYS,
    LLAMA_3_KEYS,
    NEMO_KEYS,
    BlockScan,
    CallState,
    offered,
    scan_call_array,
    scan_call_object,
    take_call,
)
from llamapack.runtime.server.toolcalls.jsonscan import (
    decode_string,
    decode_string_prefix,
    scan_value,
    skip_whitespace,
    string_end,
)

PYTHON_TAG = "<|python_tag|>"
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
FUNCTIONARY_OPEN, FUNCTIONARY_CLOSE = "<function=", "</function>"
FIREFUNCTION_OPENS = (" functools[", "functools[")  # the template writes the space
DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
DEEPSEEK_SEP = "<｜tool▁sep｜>"

_NAME = re.compile(r"[A-Za-z0-9_.\-]*")
_CALL_ID = re.compile(r"[A-Za-z0-9]*")
_NEWLINE_OR_SEP = re.compile(r"[^\n<]*")
MISSING = -1  # _literal: the text goes on with something else


# ------------------------------------------------------------------ pieces


def _literal(text: str, i: int, literal: str) -> int | None:
    """Past `literal` at text[i]; None when the text ends inside it; MISSING when it is not there."""
    chunk = text[i : i + len(literal)]
    if chunk == literal:
        return i + len(literal)
    if i + len(chunk) == len(text) and literal.startswith(chunk):
        return None
    return MISSING


def _single(call: CallState, end: int | None, failed_at: int | None) -> BlockScan:
    return BlockScan(calls=[call] if call.name is not None else [], end=end, failed_at=failed_at)


def _then_literal(block: BlockScan, text: str, literal: str) -> BlockScan:
    """A complete block must still be followed by `literal` (a closing tag)."""
    if block.end is None:
        return block
    i = skip_whitespace(text, block.end)
    past = _literal(text, i, literal)
    if past is None:
        block.end = None
    elif past == MISSING:
        block.end, block.failed_at = None, i  # the call stands; what follows is text
    else:
        block.end = past
    return block


def _arguments_after(text: str, i: int, call: CallState) -> tuple[int | None, int | None]:
    """The JSON arguments of a call named by markup: (end, failed_at)."""
    i = skip_whitespace(text, i)
    if i >= len(text):
        return None, None
    scan = scan_value(text, i)
    call.args, call.args_closers, call.args_done = text[i : scan.reach], scan.closers, scan.complete
    if scan.failed:
        return None, scan.reach
    return scan.end, None


def _python_call(text: str, i: int, tools: frozenset[str]) -> BlockScan:
    """Raw code after <|python_tag|>: a call to the `python` tool with {"code": ...}."""
    name = next((tool for tool in ("python", "ipython") if tool in tools), None)
    if name is None:
        return BlockScan(failed_at=i)
    code = json.dumps(text[i:], ensure_ascii=False)[:-1]
    return BlockScan(calls=[CallState(name=name, args='{"code": ' + code, args_closers='"}')])


# ----------------------------------------------------------------- formats


def scan_hermes(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    i = skip_whitespace(text, start + len(marker))
    if i >= len(text):
        return BlockScan()
    if text[i] != "{":
        return BlockScan(failed_at=i)
    return _then_literal(_single(*scan_call_object(text, i, HERMES_KEYS, tools)), text, HERMES_CLOSE)


def scan_llama_3(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    if marker == PYTHON_TAG:
        i = skip_whitespace(text, start + len(marker))
        if i >= len(text):
            return BlockScan()
        if text[i] != "{":
            return _python_call(text, start + len(marker), tools)
        return _single(*scan_call_object(text, i, LLAMA_3_KEYS, tools))
    # A reply that opens with JSON: one call, or several separated by ";" (Llama 3.2 does).
    block = BlockScan()
    i = start
    while True:
        end = take_call(block, text, i, LLAMA_3_KEYS, tools)
        if end is None:
            return block
        j = skip_whitespace(text, end)
        if j < len(text) and text[j] in ";,":
            j = skip_whitespace(text, j + 1)
        if j >= len(text):
            return block  # another call may follow
        if text[j] != "{":
            block.end = end
            return block
        i = j


def scan_mistral_nemo(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    i = skip_whitespace(text, start + len(marker))
    if i >= len(text):
        return BlockScan()
    if text[i] == "{":  # a lone object instead of an array
        return _single(*scan_call_object(text, i, NEMO_KEYS, tools))
    if text[i] != "[":
        return BlockScan(failed_at=i)
    return scan_call_array(text, i, NEMO_KEYS, tools)


def scan_firefunction(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    return scan_call_array(text, start + len(marker) - 1, HERMES_KEYS, tools)


def scan_mistral(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    """[TOOL_CALLS]name[CALL_ID]id[ARGS]{...} (Mistral Small 3.2, Devstral, Magistral)."""
    i = start + len(marker)
    name_end = _NAME.match(text, i).end()  # type: ignore[union-attr]
    if name_end >= len(text):
        return BlockScan()
    call = CallState()
    args_at = _literal(text, name_end, MISTRAL_ARGS)
    if args_at == MISSING:
        id_at = _literal(text, name_end, MISTRAL_CALL_ID)
        if id_at is None:
            return BlockScan()
        if id_at == MISSING:
            return BlockScan(failed_at=name_end)
        id_end = _CALL_ID.match(text, id_at).end()  # type: ignore[union-attr]
        if id_end >= len(text):
            return BlockScan()
        call.id = text[id_at:id_end]
        args_at = _literal(text, id_end, MISTRAL_ARGS)
        if args_at == MISSING:
            return BlockScan(failed_at=id_end)
    if args_at is None:
        return BlockScan()
    if not offered(tools, text[i:name_end]):
        return BlockScan(failed_at=i)
    call.name = text[i:name_end]
    end, failed_at = _arguments_after(text, args_at, call)
    return BlockScan(calls=[call], end=end, failed_at=failed_at)


def scan_functionary(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    """<function=name>{...}</function>, or raw code after <|python_tag|> (Functionary v3.1)."""
    if marker == PYTHON_TAG:
        return scan_llama_3(text, start, marker, tools)
    i = start + len(marker)
    name_end = _NAME.match(text, i).end()  # type: ignore[union-attr]
    if name_end >= len(text):
        return BlockScan()
    if text[name_end] != ">":
        return BlockScan(failed_at=name_end)
    if not offered(tools, text[i:name_end]):
        return BlockScan(failed_at=i)
    call = CallState(name=text[i:name_end])
    end, failed_at = _arguments_after(text, name_end + 1, call)
    return _then_literal(BlockScan(calls=[call], end=end, failed_at=failed_at), text, FUNCTIONARY_CLOSE)


def scan_deepseek(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    """R1: <｜tool▁call▁begin｜>function<｜tool▁sep｜>name\\n```json\\n{...}\\n```<｜tool▁call▁end｜>;
    V3.1: <｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>; inside the calls markers."""
    block = BlockScan()
    i = start + len(marker)
    while True:
        i = skip_whitespace(text, i)
        begin = _literal(text, i, DEEPSEEK_CALL_BEGIN)
        end = _literal(text, i, DEEPSEEK_CALLS_END) if block.calls else MISSING
        if end is not None and end != MISSING:
            block.end = end
            return block
        if begin is None or end is None:
            return block
        if begin == MISSING:
            block.failed_at = i
            return block
        head_end = text.find(DEEPSEEK_SEP, begin)
        if head_end < 0:
            return block
        head = text[begin:head_end]
        name_start = head_end + len(DEEPSEEK_SEP)
        if head == "function":  # R1: the name follows, up to the newline
            name_end = _NEWLINE_OR_SEP.match(text, name_start).end()  # type: ignore[union-attr]
            if name_end >= len(text):
                return block
            name, args_start = text[name_start:name_end].strip(), name_end
        else:
            name, args_start = head.strip(), name_start
        if not offered(tools, name):
            block.failed_at = begin
            return block
        call = CallState(name=name)
        block.calls.append(call)
        j = skip_whitespace(text, args_start)
        fence = _literal(text, j, "```json")
        if fence is None:
            return block
        fenced = fence != MISSING
        args_end, failed_at = _arguments_after(text, fence if fenced else j, call)
        if args_end is None:
            block.failed_at = failed_at
            return block
        j = skip_whitespace(text, args_end)
        if fenced:
            closing = _literal(text, j, "```")
            if closing is None:
                return block
            if closing != MISSING:
                j = skip_whitespace(text, closing)
        past_call = _literal(text, j, DEEPSEEK_CALL_END)
        if past_call is None:
            return block
        if past_call == MISSING:
            block.failed_at = j
            return block
        i = past_call


def scan_generic(text: str, start: int, marker: str, tools: frozenset[str]) -> BlockScan:
    """llama.cpp's generic format: {"tool_call": {...}}, {"tool_calls": [...]} or {"response": ...}."""
    size = len(text)
    i = skip_whitespace(text, start + 1)
    if i >= size:
        return BlockScan()
    if text[i] != '"':
        return BlockScan(failed_at=i)
    key_end, reach, failed = string_end(text, i)
    if key_end is None:
        return BlockScan(failed_at=start if failed else None)
    key = decode_string(text, i, key_end)
    if key not in ("tool_call", "tool_calls", "response"):
        return BlockScan(failed_at=i)
    i = skip_whitespace(text, key_end)
    if i >= size:
        return BlockScan()
    if text[i] != ":":
        return BlockScan(failed_at=i)
    i = skip_whitespace(text, i + 1)
    if i >= size:
        return BlockScan()
    if key == "response":
        block = _generic_response(text, i)
    elif key == "tool_call":
        if text[i] != "{":
            return BlockScan(failed_at=i)
        block = _single(*scan_call_object(text, i, HERMES_KEYS, tools))
    else:
        if text[i] != "[":
            return BlockScan(failed_at=i)
        block = scan_call_array(text, i, NEMO_KEYS, tools)
    return _then_literal(block, text, "}")


def _generic_response(text: str, i: int) -> BlockScan:
    scan = scan_value(text, i)
    if text[i] != '"':  # llama.cpp's parser dumps a non-string response with an indent of 2
        if scan.end is None:
            return BlockScan(failed_at=scan.reach if scan.failed else None)
        value = json.loads(text[i : scan.end])
        return BlockScan(content=json.dumps(value, indent=2, ensure_ascii=False), content_done=True,
                         holds_content=True, end=scan.end)  # fmt: skip
    if scan.end is not None:
        return BlockScan(content=decode_string(text, i, scan.end), content_done=True, holds_content=True,
                         end=scan.end)  # fmt: skip
    block = BlockScan(content=decode_string_prefix(text, i, scan.reach), holds_content=True)
    if scan.failed:
        block.failed_at = scan.reach
    return block


Scanner = Callable[[str, int, str, frozenset[str]], BlockScan]


@dataclass(frozen=True)
class Syntax:
    """How one format's tool calls open, and the scanner that reads them."""

    markers: tuple[str, ...]  # open a block anywhere in the content
    opens_at_start: bool  # a block may also be the reply itself, opening with "{"
    scan: Scanner


SYNTAXES: dict[ToolFormat, Syntax] = {
    ToolFormat.HERMES: Syntax((HERMES_OPEN,), False, scan_hermes),
    ToolFormat.LLAMA_3: Syntax((PYTHON_TAG,), True, scan_llama_3),
    ToolFormat.MISTRAL_NEMO: Syntax((MISTRAL_CALLS,), False, scan_mistral_nemo),
    ToolFormat.MISTRAL: Syntax((MISTRAL_CALLS,), False, scan_mistral),
    ToolFormat.FUNCTIONARY_V3_1: Syntax((FUNCTIONARY_OPEN, PYTHON_TAG), False, scan_functionary),
    ToolFormat.FIREFUNCTION_V2: Syntax(FIREFUNCTION_OPENS, False, scan_firefunction),
    ToolFormat.DEEPSEEK_R1: Syntax((DEEPSEEK_CALLS_BEGIN,), False, scan_deepseek),
    ToolFormat.GENERIC: Syntax((), True, scan_generic),
}
