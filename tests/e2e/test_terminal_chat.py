"""End to end: `--chat` in the real built Gemma file, in a real terminal (a pty) and piped.

Gemma 3 270M is a base model: its replies are junk text, so the tests check the
chat's shape (a reply, the speed line, the prompt back, saved files), not words.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import pty
import re
import select
import subprocess
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"(^|\n)> $")  # the chat waits for a line
SPEED = re.compile(r"\[(\d+) tokens, [\d.]+ tok/s[^\]]*\]")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")  # colours, readline's bracketed paste
UNFINISHED = re.compile(r"(\r|\x1b(\[[0-9;?]*)?)$")  # may become \r\n or an escape with the next read


class Terminal:
    """A program on a pty of its own, its controlling terminal: \\x03 written here is a
    real Ctrl-C, sent by the terminal to its whole process group (the bootloader and
    the Python it starts)."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.close(slave)
        self.seen = ""  # everything so far, without escapes and with \r\n as \n
        self.position = 0  # where the next expect() starts looking
        # What the next read may complete: a \r before its \n, an escape sequence, a
        # UTF-8 character cut between reads. `seen` only ever grows at its end, so a
        # position in it stays where it was.
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the program has closed the terminal
            chunk = b""
        text = self._pending + self._decoder.decode(chunk, final=not chunk)
        unfinished = UNFINISHED.search(text) if chunk else None
        cut = unfinished.start() if unfinished else len(text)
        self._pending = text[cut:]
        self.seen += ESCAPES.sub("", text[:cut].replace("\r\n", "\n"))
        return bool(chunk)

    def expect(self, pattern: re.Pattern[str] | str, timeout: float = 60) -> re.Match[str]:
        """Wait until `pattern` appears after the previous match; fail with what was seen."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.seen, self.position)
            if found:
                self.position = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 1.0)) and self.process.poll() is not None):
                self._read(0.1)
                pytest.fail(f"no {regex.pattern!r} within {timeout} s; the terminal showed:\n{self.seen}")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")  # Enter, as a terminal sends it

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        os.close(self.master)


def terminal_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "NO_COLOR")}
    return {**env, "TERM": "xterm-256color", **changes}


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def start(*argv: str, env: dict[str, str] | None = None) -> Terminal:
        opened.append(Terminal(list(argv), env or terminal_env()))
        return opened[-1]

    yield start
    for terminal in opened:
        terminal.close()


def test_chat_in_a_terminal_replies_saves_and_exits(gemma_file: Path, tmp_path: Path, terminals):
    chat = terminals(str(gemma_file), "--chat", "-t", "2", "-n", "16", "--temp", "0")
    chat.expect("terminal chat (--chat)")
    chat.expect(PROMPT)
    chat.line("Hello, who are you?")
    chat.expect("Hello, who are you?\n")  # the terminal's echo
    reply = chat.expect(re.compile(r"(.*?)" + SPEED.pattern, re.S))
    assert reply.group(1).strip()  # streamed text, then the speed line
    assert 0 < int(reply.group(2)) <= 16
    chat.expect(PROMPT)

    chat.send("\x1b[A\r")  # Up, Enter: readline's history sends the message again
    chat.expect("Hello, who are you?\n")
    chat.expect(SPEED)
    chat.expect(PROMPT)
    chat.line("first line \\")  # continued on the next line
    chat.expect(re.compile(r"\n\.\.\. $"))
    chat.line("second line")
    chat.expect(SPEED)
    chat.expect(PROMPT)

    chat.send("half a line, then Ctrl-C")
    # As a person would: Ctrl-C once the line shows (typed ahead of readline, the text
    # would be flushed with the signal, unseen).
    chat.expect("half a line, then Ctrl-C")
    chat.send("\x03")  # clears the line: nothing is sent
    chat.expect(PROMPT)
    chat.line("/nonsense")
    chat.expect("unknown command /nonsense")
    chat.expect(PROMPT)

    saved = tmp_path / "chat.json"
    chat.line(f"/save {saved}")
    chat.expect(f"saved 6 messages to {saved}")
    chat.expect(PROMPT)
    messages = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [m["content"] for m in messages[::2]] == ["Hello, who are you?"] * 2 + ["first line \nsecond line"]
    assert messages[1]["content"].strip() and messages[1]["content"] in chat.seen  # what streamed

    chat.line("/exit")
    assert chat.wait() == 0
    assert "Traceback" not in chat.seen


def test_default_without_a_browser_and_ctrl_c_stops_a_reply(gemma_file: Path, tmp_path: Path, terminals):
    # No --chat: with a terminal and no display, the chat is what starts.
    chat = terminals(str(gemma_file), "-t", "2", "-n", "200", "--temp", "0")
    chat.expect("no browser here: terminal chat (--server for the API)")
    chat.expect(PROMPT)
    chat.line("Write a very long story about a dragon and a knight.")
    chat.expect("knight.\n")
    chat.expect(re.compile(r"\S"))  # the reply has begun streaming
    chat.send("\x03")
    chat.expect("[stopped]")
    chat.expect(PROMPT)
    assert chat.process.poll() is None
    assert not SPEED.search(chat.seen)  # it was stopped, not finished

    saved = tmp_path / "partial.json"
    chat.line(f"/save {saved}")
    chat.expect("saved 2 messages")
    chat.expect(PROMPT)
    messages = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"]  # the partial reply stays in the conversation

    chat.send("\x04")  # Ctrl-D at an empty prompt leaves
    assert chat.wait() == 0
    assert "Traceback" not in chat.seen


def test_piped_stdin_gives_one_reply_per_line(gemma_file: Path, tmp_path: Path):
    saved = tmp_path / "piped.json"
    result = subprocess.run(
        [str(gemma_file), "--chat", "-t", "2", "-n", "8", "--temp", "0"],
        input=f"Hi\n\nAnd then?\n/save {saved}\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    messages = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[::2]] == ["Hi", "And then?"]
    replies = [m["content"] for m in messages[1::2]]
    assert all(reply.strip() for reply in replies)
    # stdout is the two replies and nothing else: no prompt, no speed line, no colour
    assert result.stdout == "".join(reply + "\n" for reply in replies)
