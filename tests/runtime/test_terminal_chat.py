"""runtime/terminal_chat.py: commands, conversation files, the loop's turns, when the
chat is the default, and real replies from the Gemma backend."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import webbrowser
from collections.abc import Callable
from pathlib import Path

import pytest

from llamapack.runtime import cli
from llamapack.runtime import terminal_chat as tc

# ------------------------------------------------------------------ commands


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("hello there", "hello there"),
        ("/help", tc.Command("help", "")),
        ("/SAVE   chat.json ", tc.Command("save", "chat.json")),
        ("/system Be brief.\nAnd kind.", tc.Command("system", "Be brief.\nAnd kind.")),
        ("/system\nBe brief.", tc.Command("system", "Be brief.")),
        ("//etc/hosts is a file", "/etc/hosts is a file"),
        ("/etc/hosts", tc.Command("etc/hosts", "")),  # unknown: the user is told about //
    ],
)
def test_parse(line, parsed):
    assert tc.parse(line) == parsed


# ------------------------------------------------------------------ files


def test_save_and_load_round_trip(tmp_path):
    messages = [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "Hi 👋\nsecond line"},
        {"role": "assistant", "content": ""},
    ]
    path = tmp_path / "chat.json"
    path.write_text("an older file, replaced whole")
    tc.save_messages(path, messages)
    assert json.loads(path.read_text(encoding="utf-8")) == messages
    assert tc.load_messages(path) == messages
    assert os.listdir(tmp_path) == ["chat.json"]  # no temporary file left beside it


def test_save_where_it_cannot_is_one_line(tmp_path):
    with pytest.raises(tc.ChatFileError, match=r"^cannot save to .*: No such file or directory$"):
        tc.save_messages(tmp_path / "missing" / "chat.json", [])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file or directory"),
        (b"\xff\xfe junk", "not UTF-8 text"),
        (b"{not json", "not JSON"),
        (b'{"role": "user", "content": "hi"}', "expected a list of messages"),
        (b'["hi"]', "message 1 is not an object"),
        (b'[{"role": "tool", "content": "x"}]', "message 1's role must be system, user or assistant"),
        (b'[{"role": "user", "content": [{"type": "image_url"}]}]', "message 1's content is not text"),
        (b'[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "only the first"),
    ],
)
def test_bad_files_are_refused_in_one_line(tmp_path, content, problem):
    path = tmp_path / "chat.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(tc.ChatFileError, match=problem) as raised:
        tc.load_messages(path)
    assert "\n" not in str(raised.value)


# ------------------------------------------------------------------ the loop


class Scripted:
    """Stands in for the engine in the loop's tests: replies `reply N` in two pieces,
    and records the conversation each turn sent."""

    def __init__(self, *, interrupt_after: int | None = None, error: str | None = None):
        self.seen: list[list[dict[str, str]]] = []
        self.interrupt_after = interrupt_after
        self.error = error

    def __call__(self, messages, on_text: Callable[[str], None]) -> tc.Reply:
        self.seen.append(messages)
        if self.error:
            raise tc.TurnError(self.error)
        pieces = ["reply ", str(len(self.seen))]
        if self.interrupt_after is not None:
            for piece in pieces[: self.interrupt_after]:
                on_text(piece)
            return tc.Reply("".join(pieces[: self.interrupt_after]), stopped=True)
        for piece in pieces:
            on_text(piece)
        return tc.Reply("".join(pieces), tokens=2, per_second=12.34)


def chat(replier: tc.Replier, typed: str, *, interactive: bool = False, system: str | None = None):
    out, err = io.StringIO(), io.StringIO()
    session = tc.TerminalChat(
        replier, system=system, stdin=io.StringIO(typed), stdout=out, stderr=err, interactive=interactive
    )
    status = session.run()
    return session, status, out.getvalue(), err.getvalue()


def test_piped_lines_are_turns_and_stdout_holds_only_replies():
    replier = Scripted()
    session, status, out, err = chat(replier, "Hi\n\n   \nfirst line\\\nsecond line\nlast, with no newline")
    assert status == 0
    assert out == "reply 1\nreply 2\nreply 3\n"
    assert err == ""  # no prompt, no speed line
    assert replier.seen[1][-1] == {"role": "user", "content": "first line\nsecond line"}
    assert [m["role"] for m in session.conversation.messages()] == ["user", "assistant"] * 3


def test_interactive_prompts_and_speed_line_are_on_stderr():
    _, status, out, err = chat(Scripted(), "Hi\n", interactive=True)
    assert status == 0
    assert out == "reply 1\n\n"  # the reply, then the newline that Ctrl-D leaves
    assert err.splitlines()[1:] == ["> [2 tokens, 12.3 tok/s]", "> "]


def test_commands(tmp_path):
    saved = tmp_path / "chat.json"
    replier = Scripted()
    typed = f"/system Be brief.\nHi\n/save {saved}\n/clear\nAgain\n/frobnicate\n/exit\nnever read\n"
    session, status, out, err = chat(replier, typed)
    assert status == 0 and out == "reply 1\nreply 2\n"
    assert json.loads(saved.read_text(encoding="utf-8")) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "reply 1"},
    ]
    # /clear forgot the turns, not the system prompt
    assert replier.seen[1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Again"},
    ]
    assert "unknown command /frobnicate; /help lists them" in err
    assert len(replier.seen) == 2  # nothing after /exit


def test_load_continues_a_conversation_and_a_bad_file_changes_nothing(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(
        json.dumps([{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes"}])
    )
    bad.write_text("[{")
    replier = Scripted()
    session, _, _, err = chat(replier, f"/load {good}\n/load {bad}\n/load\nNow\n", system="Sys")
    assert replier.seen[0] == [
        {"role": "system", "content": "Sys"},  # the file brought none: the current one stays
        {"role": "user", "content": "Earlier"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "Now"},
    ]
    lines = err.splitlines()
    assert lines[0] == f"loaded 2 messages from {good}"
    assert lines[1].startswith(f"cannot read {bad}: not JSON")
    assert lines[2] == "/load needs a file name: /load FILE"
    assert "Traceback" not in err


def test_a_stopped_reply_is_kept_unless_nothing_came():
    session, _, out, err = chat(Scripted(interrupt_after=1), "One\n", interactive=True)
    assert session.conversation.turns[-1] == {"role": "assistant", "content": "reply "}
    assert "[stopped]" in err and "tok/s" not in err
    session, _, _, _ = chat(Scripted(interrupt_after=0), "One\n")
    assert session.conversation.turns == []  # a user turn with no reply would break alternation


def test_a_turn_the_model_cannot_answer_is_one_line_and_forgotten():
    session, status, out, err = chat(
        Scripted(error="the prompt is 9000 tokens, and the context holds 4096"), "Hi\n"
    )
    assert status == 0 and out == ""
    assert err == "error: the prompt is 9000 tokens, and the context holds 4096\n"
    assert session.conversation.turns == []


def test_help_lists_every_command():
    _, _, _, err = chat(Scripted(), "/help\n")
    for name in tc.COMMANDS:
        assert f"/{name}" in err
    assert "backslash" in err


# ------------------------------------------------------------------ when it is the default


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def terminal(monkeypatch) -> Callable[..., str]:
    """cli._choose_chat's answer for a command line, with stdin and stdout terminals or not."""

    def choose(*argv: str, tty: bool = True) -> str:
        monkeypatch.setattr(sys, "stdin", Stream(tty))
        monkeypatch.setattr(sys, "stdout", Stream(tty))
        args = cli.build_parser().parse_args(list(argv))
        launch = cli._choose_chat(args)
        assert args.chat == bool(launch)
        return launch

    return choose


def no_browser() -> webbrowser.BaseBrowser:
    raise webbrowser.Error("could not locate runnable browser")


def test_no_display_means_the_terminal_chat(monkeypatch, terminal):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert terminal() == "no browser here: terminal chat (--server for the API)"
    # what was asked for wins, and a pipe is never a terminal to chat in
    assert terminal("--server") == terminal("--nobrowser") == terminal("-p", "x") == ""
    assert terminal(tty=False) == ""
    assert terminal("--chat", tty=False) == "terminal chat (--chat)"


def test_a_display_without_a_browser_means_the_terminal_chat(monkeypatch, terminal):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(webbrowser, "get", no_browser)
    assert terminal().startswith("no browser here")
    monkeypatch.setattr(webbrowser, "get", lambda: webbrowser.GenericBrowser("true"))
    assert terminal() == ""  # a browser: the chat page, as before


def test_chat_takes_the_whole_context_and_refuses_other_modes(tmp_path, terminal):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    args = cli.build_parser().parse_args(["-m", str(gguf), "--chat", "-np", "3", "--embedding"])
    options = cli._backend_options(args, None)
    assert options.parallel == 1 and not options.embedding
    with pytest.raises(cli.CliError, match="--chat cannot be used with --server or -p"):
        terminal("--chat", "--server")


# ------------------------------------------------------------------ the real model


def test_the_generation_flags_are_those_of_p():
    args = cli.build_parser().parse_args(["--temp", "0.3", "--top-k", "5", "-n", "9", "-s", "4"])
    generation = cli._generation(args)
    assert generation.max_tokens == 9
    assert (generation.sampling.temperature, generation.sampling.top_k, generation.sampling.seed) == (
        0.3,
        5,
        4,
    )


async def test_the_prompt_is_the_servers(client, backend):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a book?"}]
    applied = await (await client.post("/apply-template", json={"messages": messages})).json()
    replier = tc.EngineReplier(backend, lambda: cli._generation(cli.build_parser().parse_args([])))
    assert replier.prompt(messages).text == applied["prompt"]
    assert applied["prompt"].endswith("<start_of_turn>model\n")


def test_real_replies_one_per_line(backend):
    args = cli.build_parser().parse_args(["-n", "6", "--temp", "0"])
    replier = tc.EngineReplier(backend, lambda: cli._generation(args))
    session, status, out, err = chat(replier, "Hi\nAnd then?\n", interactive=True)
    assert status == 0
    replies = [m["content"] for m in session.conversation.turns[1::2]]
    assert len(replies) == 2 and all(reply.strip() for reply in replies)
    assert out == "".join(reply + "\n" for reply in replies) + "\n"
    speeds = [line for line in err.splitlines() if "tok/s" in line]
    assert len(speeds) == 2 and all(re.fullmatch(r"> \[[1-6] tokens, [\d.]+ tok/s.*\]", s) for s in speeds)


def test_a_conversation_too_long_for_the_context_is_one_line(gemma_gguf):
    from tests.support.api import gemma_backend

    small = gemma_backend(gemma_gguf, ctx_size=256, parallel=1)
    try:
        args = cli.build_parser().parse_args(["-n", "4", "--temp", "0"])
        replier = tc.EngineReplier(small, lambda: cli._generation(args))
        session, status, out, err = chat(replier, "word " * 400 + "\nHi\n")
    finally:
        small.close()
    assert status == 0
    assert err.startswith("error: the prompt is ") and "context holds 256: /clear starts afresh" in err
    assert [m["content"] for m in session.conversation.turns[::2]] == ["Hi"]  # the long one was dropped
    assert out == session.conversation.turns[1]["content"] + "\n"


def test_module_is_light():
    # cli.py imports it once chat mode is chosen; it must not drag the engine in.
    import subprocess

    code = "import sys, llamapack.runtime.terminal_chat; print('llama_cpp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_readline_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "readline", None)  # as on Windows: the import fails
    tc._enable_line_editing()


def test_save_path_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    chat(Scripted(), "Hi\n/save ~/c.json\n")
    assert Path(tmp_path / "c.json").is_file()


def test_a_second_copy_of_ctrl_c_raised_while_the_first_is_pending_is_one_interrupt(monkeypatch):
    """The bootloader forwards a Ctrl-C the child got from the terminal too. input()
    checks signals again before raising the first copy's KeyboardInterrupt, so the
    second copy's handler runs with it pending, and its first C call fails with
    SystemError (seen on CI: a traceback instead of a fresh prompt). It must raise
    the KeyboardInterrupt instead; a copy arriving later, within the window, is ignored."""
    catcher = tc._one_interrupt_per_keypress()
    catcher.window = tc.SAME_KEYPRESS_S
    clock = iter([100.0, 100.2])
    monkeypatch.setattr(tc.time, "monotonic", lambda: next(clock))
    with pytest.raises(KeyboardInterrupt):
        catcher.handler(2, None)
    catcher.handler(2, None)  # a copy 0.2 s later: the same keypress, no second interrupt
    assert catcher.last == 100.0

    def pending(*_args: object) -> float:
        raise SystemError("<built-in function monotonic> returned a result with an exception set")

    monkeypatch.setattr(tc.time, "monotonic", pending)
    with pytest.raises(KeyboardInterrupt) as raised:
        catcher.handler(2, None)
    assert raised.value.__suppress_context__
