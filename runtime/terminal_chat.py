"""`--chat`: a conversation with the model in this terminal.

The engine runs in this process, with no HTTP server in between; each turn's
prompt comes from `Backend.chat_prompt`, the rendering /v1/chat/completions uses,
so the file's chosen chat template applies exactly as it does for the server.

With stdin a terminal there are prompts, line editing (the stdlib `readline`,
where it imports) and a speed line after each reply. With stdin piped, every
non-empty line (or backslash-continued block) is one user turn and stdout carries
the replies alone, one per turn, each ending with a newline.

Only the standard library is imported at the top: `cli.py` loads this module
once chat mode is chosen, and the engine's types only for the real replier.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from llamapack.runtime.backend import Backend, ChatPrompt
    from llamapack.runtime.server.requests import Generation

Message = dict[str, str]

PROMPT = "> "
MORE = "... "
HELP = """\
Type a message and press Enter; the reply streams in. Ctrl-C stops a reply (what
came so far stays in the conversation) or clears the line; Ctrl-D or /exit leaves.
A line ending in a backslash (\\) continues the message on the next line.

  /help          this text
  /clear         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt; /system alone removes it
  /save FILE     write the conversation to FILE as JSON: OpenAI's messages,
                 a list of {"role", "content"}
  /load FILE     continue the conversation saved in FILE
  /exit          leave (as does Ctrl-D)

A message that starts with a slash: write two (//etc/hosts sends /etc/hosts)."""
COMMANDS = ("help", "clear", "system", "save", "load", "exit")
ROLES = ("system", "user", "assistant")
# A Ctrl-C reaches this process twice when it runs under PyInstaller's onefile
# bootloader: once from the terminal and once forwarded by the bootloader, which
# the terminal signalled too. Both within this window are one keypress: the
# forwarded copy comes late when the engine's threads keep the cores busy.
SAME_KEYPRESS_S = 1.0


class ChatFileError(Exception):
    """A conversation file that cannot be read or written; the message is one line."""


class TurnError(Exception):
    """A turn the model could not answer (too long for the context, a template error)."""


@dataclass(frozen=True)
class Command:
    name: str
    argument: str


def parse(text: str) -> Command | str:
    """A /command, or the text of a user message ("//" sends a leading slash)."""
    if text.startswith("//"):
        return text[1:]
    if not text.startswith("/"):
        return text
    name, _, argument = text[1:].partition(" ")
    if "\n" in name:  # a multi-line message's first line ended at the name
        name, _, rest = name.partition("\n")
        argument = f"{rest} {argument}".strip() if rest or argument else ""
    return Command(name.lower(), argument.strip())


class Conversation:
    """The system prompt and the turns since, as the chat template gets them."""

    def __init__(self, system: str | None = None):
        self.system = system or None
        self.turns: list[Message] = []

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(turn) for turn in self.turns]

    def clear(self) -> None:
        self.turns = []

    def replace(self, messages: list[Message]) -> None:
        """A loaded conversation; the current system prompt stays unless it brings one."""
        if messages and messages[0]["role"] == "system":
            self.system = messages[0]["content"] or None
            messages = messages[1:]
        self.turns = [dict(message) for message in messages]


def save_messages(path: Path, messages: list[Message]) -> None:
    """Written whole or not at all: a temporary file beside it, then renamed over it."""
    text = json.dumps(messages, ensure_ascii=False, indent=2) + "\n"
    directory = path.parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ChatFileError(f"cannot save to {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ChatFileError(f"cannot save to {path}: {exc.strerror or exc}") from None


def load_messages(path: Path) -> list[Message]:
    """A file /save wrote, or any list of OpenAI messages with text content."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChatFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ChatFileError(f"cannot read {path}: it is not UTF-8 text") from None
    except ValueError as exc:
        raise ChatFileError(f"cannot read {path}: not JSON ({exc})") from None

    def bad(why: str) -> ChatFileError:
        return ChatFileError(f"cannot read {path}: {why}")

    if not isinstance(data, list):
        raise bad('expected a list of messages, each {"role", "content"}')
    messages: list[Message] = []
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise bad(f"message {number} is not an object")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise bad(f"message {number}'s role must be system, user or assistant")
        if role == "system" and number != 1:
            raise bad("only the first message may be the system prompt")
        if not isinstance(content, str):
            raise bad(f"message {number}'s content is not text")
        messages.append({"role": role, "content": content})
    return messages


@dataclass(frozen=True)
class Reply:
    text: str
    stopped: bool = False  # by Ctrl-C
    tokens: int = 0
    per_second: float = 0.0
    cut: bool = False  # ended by the length limit (-n or the context)


class Replier(Protocol):
    def __call__(self, messages: list[Message], on_text: Callable[[str], None]) -> Reply: ...


class EngineReplier:
    """The model's reply to a conversation: the server's prompt, the engine in-process."""

    def __init__(self, backend: Backend, new_generation: Callable[[], Generation]):
        self.backend = backend
        # A fresh Generation each turn: the engine keeps per-request state in it.
        self.new_generation = new_generation

    def prompt(self, messages: list[Message]) -> ChatPrompt:
        from llamapack.runtime.server.requests import BadRequest

        try:
            return self.backend.chat_prompt(messages)
        except BadRequest as exc:
            raise TurnError(str(exc)) from None

    def __call__(self, messages: list[Message], on_text: Callable[[str], None]) -> Reply:
        from llamapack.runtime.engine.events import EngineStopped, PromptTooLong, QueueFullError, RequestError

        prompt = self.prompt(messages)
        pieces: list[str] = []

        def take(text: str) -> None:
            pieces.append(text)
            on_text(text)

        try:
            event = self.backend.complete_blocking(prompt.tokens, self.new_generation(), take)
        except KeyboardInterrupt:  # complete_blocking cancels the request on its way out
            return Reply("".join(pieces), stopped=True)
        except PromptTooLong as exc:
            raise TurnError(f"{exc}: /clear starts afresh (-c sets a larger context)") from None
        except (RequestError, QueueFullError, EngineStopped) as exc:
            raise TurnError(str(exc) or type(exc).__name__) from None
        if event.error:
            raise TurnError(event.error)
        rate = event.usage.timings()["predicted_per_second"]
        return Reply("".join(pieces), tokens=event.usage.completion_tokens, per_second=rate,
                     cut=event.finish_reason == "length")  # fmt: skip


class TerminalChat:
    def __init__(
        self,
        reply: Replier,
        *,
        system: str | None = None,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        interactive: bool | None = None,
    ):
        self.reply = reply
        self.conversation = Conversation(system)
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = _isatty(self.stdin) if interactive is None else interactive
        self.dim = self.interactive and _colour(self.stderr)

    # ------------------------------------------------------------------ input

    def _read_line(self, prompt: str) -> str:
        """One line without its newline; EOFError at the end of input."""
        if not self.interactive:
            line = self.stdin.readline()
            if not line:
                raise EOFError
            return line.rstrip("\r\n")
        if self.stdin is sys.stdin and _isatty(sys.stdout) and self.stdout is sys.stdout:
            return input(prompt)  # readline, once imported, edits the line and keeps history
        self.stderr.write(prompt)
        self.stderr.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def _entries(self) -> Iterator[str]:
        """Each message or command typed, until the end of input."""
        lines: list[str] = []
        while True:
            try:
                line = self._read_line(MORE if lines else PROMPT)
            except KeyboardInterrupt:
                if not self.interactive:
                    raise
                # Abandons the whole message being typed, continued lines included.
                self.stdout.write("\n")
                self.stdout.flush()
                lines = []
                continue
            except EOFError:  # input that ends mid-message still sends it
                if "\n".join(lines).strip():
                    yield "\n".join(lines).strip()
                if self.interactive:
                    self.stdout.write("\n")
                    self.stdout.flush()
                return
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            lines.append(line)
            text = "\n".join(lines)
            lines = []
            if text.strip():
                yield text.strip()

    # ------------------------------------------------------------------ output

    def _note(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def _quiet(self, text: str) -> None:
        """A line for people at the terminal: the speed, a stopped reply."""
        if not self.interactive:
            return
        self._note(f"\x1b[2m{text}\x1b[0m" if self.dim else text)

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        with _one_interrupt_per_keypress():
            if self.interactive:
                _enable_line_editing()
                self._note("Type a message; /help for commands, Ctrl-D or /exit to leave.")
            for entry in self._entries():
                parsed = parse(entry)
                if isinstance(parsed, Command):
                    if not self.command(parsed):
                        return 0
                else:
                    self.turn(parsed)
        return 0

    def turn(self, text: str) -> None:
        self.conversation.turns.append({"role": "user", "content": text})
        try:
            reply = self.reply(self.conversation.messages(), self._write)
        except TurnError as exc:
            self.conversation.turns.pop()  # unanswered: as if it was never sent
            self._note(f"error: {exc}")
            return
        except KeyboardInterrupt:  # before the engine had the request: nothing to keep
            self.conversation.turns.pop()
            self._write("\n")
            self._quiet("[stopped]")
            return
        self._write("\n")
        if reply.text or not reply.stopped:
            self.conversation.turns.append({"role": "assistant", "content": reply.text})
        else:  # stopped before the first token: a user turn with no answer would dangle
            self.conversation.turns.pop()
        if reply.stopped:
            self._quiet("[stopped]")
        else:
            limit = ", length limit reached" if reply.cut else ""
            self._quiet(f"[{reply.tokens} tokens, {reply.per_second:.1f} tok/s{limit}]")

    def command(self, command: Command) -> bool:
        """Carry out one command; False to leave."""
        name, argument = command.name, command.argument
        if name == "exit":
            return False
        if name == "help":
            self._note(HELP)
        elif name == "clear":
            self.conversation.clear()
            kept = " (the system prompt stays)" if self.conversation.system else ""
            self._note(f"conversation cleared{kept}")
        elif name == "system":
            self.conversation.system = argument or None
            self._note("system prompt set" if argument else "system prompt removed")
        elif name in ("save", "load"):
            if not argument:
                self._note(f"/{name} needs a file name: /{name} FILE")
                return True
            path = Path(argument).expanduser()
            try:
                if name == "save":
                    messages = self.conversation.messages()
                    save_messages(path, messages)
                    self._note(f"saved {len(messages)} messages to {path}")
                else:
                    messages = load_messages(path)
                    self.conversation.replace(messages)
                    self._note(f"loaded {len(messages)} messages from {path}")
            except ChatFileError as exc:
                self._note(str(exc))
        else:
            self._note(f"unknown command /{name}; /help lists them (// starts a message with a slash)")
        return True


def run(
    backend: Backend, new_generation: Callable[[], Generation], *, system_prompt: str | None = None
) -> int:
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        _tolerate_encoding(stream)
    return TerminalChat(EngineReplier(backend, new_generation), system=system_prompt).run()


# ---------------------------------------------------------------------- terminal


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _colour(stream: TextIO) -> bool:
    # Windows' console shows escape codes as text unless asked not to: left plain.
    return (
        _isatty(stream)
        and sys.platform != "win32"
        and "NO_COLOR" not in os.environ
        and os.environ.get("TERM") != "dumb"
    )


def _enable_line_editing() -> None:
    """Arrow keys and history through readline where it exists; Windows' console
    edits lines and keeps history itself."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401


def _tolerate_encoding(stream: TextIO) -> None:
    """A reply with characters the terminal's encoding lacks prints with stand-ins
    rather than ending the chat with an exception."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="replace")


class _one_interrupt_per_keypress:
    """Ctrl-C raises KeyboardInterrupt once, however many copies of the signal come."""

    def __init__(self) -> None:
        # Only the bootloader doubles the signal; run from source, every Ctrl-C counts.
        self.window = SAME_KEYPRESS_S if getattr(sys, "frozen", False) and os.name == "posix" else 0.0
        self.last = -SAME_KEYPRESS_S
        self.previous: object = None

    def handler(self, _number: int, _frame: FrameType | None) -> None:
        try:
            now = time.monotonic()
        except SystemError:
            # input() checks signals once more before it raises the first copy's
            # KeyboardInterrupt: this copy's handler then runs with that exception
            # pending, and any C call in it fails so. It is the same keypress.
            raise KeyboardInterrupt from None
        if now - self.last < self.window:
            return
        self.last = now
        raise KeyboardInterrupt

    def __enter__(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, self.handler)
        except ValueError:  # not the main thread: leave signals as they are
            self.previous = None

    def __exit__(self, *_exc: object) -> None:
        if self.previous is None:
            return
        if self.window:
            # The chat is over and the process ends: a forwarded copy of the last
            # Ctrl-C arriving now must not turn a clean exit into status 130.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGINT, self.previous)  # type: ignore[arg-type]
