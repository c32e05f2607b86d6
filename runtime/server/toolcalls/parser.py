"""Reading a model's reply into content, reasoning and tool calls, whole or as it streams.

One reader serves both: `parse` feeds it the whole text at once. It places text only
once nothing that may follow can change where it belongs: text that may be the start
of a tool-call marker or of the reasoning's end tag is held back (like a stop string),
and so is a block that opens like a tool call until it names one of the request's
tools. Every decision depends on the text read so far and never on how it was cut
into pieces, so the deltas streamed add up to the reply parsed whole.

A call's first delta carries its id and name, with the first of its arguments
(llama-server holds the name back until then too); the arguments are the JSON text
the model wrote. Reasoning is split out only at the start of the reply (as llama.cpp's
parsers do), stripped of surrounding whitespace; a reasoning block the reply never
closes is all reasoning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llamapack.runtime.server.toolcalls.blocks import SYNTAXES
from llamapack.runtime.server.toolcalls.formats import ReasoningTags, ToolFormat
from llamapack.runtime.server.toolcalls.jsoncalls import BlockScan
from llamapack.runtime.server.toolcalls.jsonscan import skip_whitespace
from llamapack.runtime.server.toolcalls.reply import (
    Delta,
    IdFactory,
    ParsedReply,
    ReasoningFormat,
    ToolCall,
    ToolCallDelta,
    mistral_id,
    random_id,
)

_MISTRAL_FORMATS = (ToolFormat.MISTRAL, ToolFormat.MISTRAL_NEMO)


def held_back(text: str, start: int, markers: Iterable[str]) -> int:
    """How many characters at the end of text[start:] may begin one of `markers`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text) - start), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


@dataclass
class _SentCall:
    id: str
    name: str
    arguments: str = ""
    announced: bool = False


class ReplyParser:
    """Fed the reply piece by piece, returns what each piece adds; `finish` places the rest."""

    def __init__(
        self,
        format: ToolFormat,
        reasoning_format: ReasoningFormat | str = ReasoningFormat.AUTO,
        *,
        tools: Iterable[str] = (),
        reasoning: ReasoningTags | None = None,
        reasoning_opened: str = "",
        new_id: IdFactory | None = None,
    ) -> None:
        """`tools`: the names the model may call (none: calls are not read);
        `reasoning`: the template's reasoning tags (None: reasoning is not split out);
        `reasoning_opened`: the reasoning start the prompt ends with (see opened_reasoning)."""
        self._tools = frozenset(tools)
        self._syntax = SYNTAXES.get(format) if self._tools else None
        self._new_id = new_id or (mistral_id if format in _MISTRAL_FORMATS else random_id)
        self._tags = reasoning if ReasoningFormat(reasoning_format).extracts else None
        self._thinking = "start" if self._tags is not None else "done"  # start | inside | done
        self._head = ""  # reasoning stage: text not placed yet
        self._thought = ""  # the reasoning read so far, as written
        self._thought_sent = ""
        self._text = ""  # what follows the reasoning
        self._pos = 0  # self._text[:pos] is placed
        self._mode = "start"  # start | content | block | after
        self._drop_space = False  # whitespace after the reasoning is not content
        self._block_start = 0
        self._block_marker = ""
        self._block_base = 0  # the index of the block's first call
        self._block_content_sent = 0
        self._calls: list[_SentCall] = []
        self._content: list[str] = []
        self._out: list[Delta] = []
        self._finished = False
        if self._tags is not None:
            self._head = reasoning_opened
        else:
            self._text = reasoning_opened  # llama.cpp: the opened tag is content when reasoning is not split

    # ------------------------------------------------------------- interface

    def feed(self, piece: str) -> list[Delta]:
        if self._finished:
            raise RuntimeError("the reply is finished")
        self._step(piece, final=False)
        return self._take()

    def finish(self) -> list[Delta]:
        if not self._finished:
            self._step("", final=True)
            self._finished = True
        return self._take()

    @property
    def reply(self) -> ParsedReply:
        """Everything placed so far (all of it, once finished)."""
        return ParsedReply(
            content="".join(self._content),
            reasoning_content=self._thought_sent,
            tool_calls=[ToolCall(call.id, call.name, call.arguments) for call in self._calls],
        )

    # ------------------------------------------------------------- output

    def _take(self) -> list[Delta]:
        merged: list[Delta] = []
        for delta in self._out:
            last = merged[-1] if merged else None
            if last is not None and delta.content and last.content and last.tool_call is None:
                merged[-1] = Delta(content=last.content + delta.content)
            elif last is not None and delta.reasoning_content and last.reasoning_content:
                merged[-1] = Delta(reasoning_content=last.reasoning_content + delta.reasoning_content)
            else:
                merged.append(delta)
        self._out = []
        return merged

    def _emit_content(self, text: str) -> None:
        if text:
            self._content.append(text)
            self._out.append(Delta(content=text))

    def _emit_thought(self) -> None:
        # Stripped: trailing whitespace waits until more reasoning follows it.
        thought = self._thought.strip()
        new = thought[len(self._thought_sent) :]
        if new:
            assert thought.startswith(self._thought_sent)
            self._thought_sent = thought
            self._out.append(Delta(reasoning_content=new))

    # ------------------------------------------------------------- reasoning

    def _step(self, piece: str, final: bool) -> None:
        self._text += self._think(piece, final)
        self._advance(final)

    def _think(self, piece: str, final: bool) -> str:
        """Place what belongs to the reasoning; return the text that follows it."""
        if self._thinking == "done":
            return piece
        tags = self._tags
        assert tags is not None
        self._head += piece
        if self._thinking == "start":
            body = self._head.lstrip()
            if body.startswith(tags.start):
                self._head = body[len(tags.start) :]
                self._thinking = "inside"
            elif tags.start.startswith(body) and not final:
                return ""
            else:
                self._thinking = "done"
                rest, self._head = self._head, ""
                return rest
        at = self._head.find(tags.end)
        if at >= 0:
            self._thought += self._head[:at]
            rest, self._head = self._head[at + len(tags.end) :], ""
            self._thinking = "done"
            self._drop_space = True
            self._emit_thought()
            return rest
        keep = 0 if final else held_back(self._head, 0, (tags.end,))
        self._thought += self._head[: len(self._head) - keep]
        self._head = self._head[len(self._head) - keep :]
        self._emit_thought()
        return ""

    # ------------------------------------------------------------- content and calls

    def _advance(self, final: bool) -> None:
        text = self._text
        while True:
            if self._mode == "start":
                i = skip_whitespace(text, self._pos)
                if i >= len(text):
                    if final:
                        if not self._drop_space:
                            self._emit_content(text[self._pos :])
                        self._pos = len(text)
                    return
                if self._drop_space:
                    self._pos = i
                if self._syntax is not None and self._syntax.opens_at_start and text[i] == "{":
                    self._open_block(i, "")
                else:
                    self._mode = "content"
            elif self._mode == "content":
                if not self._place_content(final):
                    return
            elif self._mode == "block":
                if not self._read_block(final):
                    return
            else:  # after a block: whitespace is not content
                i = skip_whitespace(text, self._pos)
                if i >= len(text):
                    if final:
                        self._pos = len(text)
                    return
                self._pos = i
                self._mode = "content"

    def _place_content(self, final: bool) -> bool:
        """Place content up to the next marker (True: a block opens there)."""
        text, pos = self._text, self._pos
        markers = self._syntax.markers if self._syntax is not None else ()
        found, marker = -1, ""
        for candidate in markers:
            at = text.find(candidate, pos)
            if at >= 0 and (found < 0 or at < found):
                found, marker = at, candidate
        if found >= 0:
            self._emit_content(text[pos:found])
            self._pos = found
            self._open_block(found, marker)
            return True
        keep = 0 if final else held_back(text, pos, markers)
        self._emit_content(text[pos : len(text) - keep])
        self._pos = len(text) - keep
        return False

    def _open_block(self, start: int, marker: str) -> None:
        self._mode = "block"
        self._block_start = start
        self._block_marker = marker
        self._block_base = len(self._calls)
        self._block_content_sent = 0

    def _read_block(self, final: bool) -> bool:
        """Read the open block (True: it is over, reading goes on after it)."""
        assert self._syntax is not None
        text = self._text
        scan = self._syntax.scan(text, self._block_start, self._block_marker, self._tools)
        if not scan.committed:
            if scan.open and not final:
                return False
            # Not a tool call after all: its marker is text, and what follows is read again.
            if self._block_marker:
                self._pos = self._block_start + len(self._block_marker)
                self._emit_content(text[self._block_start : self._pos])
            self._mode = "content"
            return True
        self._send(scan, ended=final or not scan.open)
        if scan.end is not None:
            self._pos, self._mode = scan.end, "after"
        elif scan.failed_at is not None:
            self._pos, self._mode = scan.failed_at, "content"
        elif final:
            self._pos, self._mode = len(text), "after"
        else:
            return False
        return True

    def _send(self, scan: BlockScan, ended: bool) -> None:
        if scan.holds_content:
            new = scan.content[self._block_content_sent :]
            self._block_content_sent = len(scan.content)
            self._emit_content(new)
        for k, call in enumerate(scan.calls):
            index = self._block_base + k
            finished = ended or k < len(scan.calls) - 1
            if index == len(self._calls):
                if call.name is None or (call.wants_id and not finished):
                    return  # the call's first delta waits for its name and id
                self._calls.append(_SentCall(call.id or self._new_id(), call.name))
            sent = self._calls[index]
            arguments = call.arguments(finished)
            assert arguments.startswith(sent.arguments), "arguments only grow"
            new = arguments[len(sent.arguments) :]
            if not sent.announced:
                if not new and not finished:
                    return
                self._out.append(Delta(tool_call=ToolCallDelta(index, sent.id, sent.name, new)))
                sent.announced = True
            elif new:
                self._out.append(Delta(tool_call=ToolCallDelta(index, None, None, new)))
            sent.arguments = arguments


def parse(
    text: str,
    format: ToolFormat,
    reasoning_format: ReasoningFormat | str = ReasoningFormat.AUTO,
    *,
    tools: Iterable[str] = (),
    reasoning: ReasoningTags | None = None,
    reasoning_opened: str = "",
    new_id: IdFactory | None = None,
) -> ParsedReply:
    """A whole reply, read as ReplyParser reads it streamed."""
    parser = ReplyParser(
        format, reasoning_format, tools=tools, reasoning=reasoning, reasoning_opened=reasoning_opened,
        new_id=new_id,
    )  # fmt: skip
    parser.feed(text)
    parser.finish()
    return parser.reply
