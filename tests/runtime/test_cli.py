"""The runtime's command line: llama-server's flags and what they turn into."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamapack.runtime import cli


def options(tmp_path: Path, *argv: str):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    args = cli.build_parser().parse_args(["-m", str(gguf), *argv])
    return cli._backend_options(args, None), args


def test_llama_server_tuning_flags_are_taken(tmp_path):
    opts, _ = options(tmp_path, "-b", "512", "-ub", "256", "-ctk", "q8_0", "-fa", "on", "-cb", "--kv-unified",
                      "--cache-ram", "0", "--swa-full", "--offline", "--no-cache-idle-slots")  # fmt: skip
    assert opts.parallel == 4 and opts.kv_unified


def test_explicit_parallel_splits_the_context_unless_unified(tmp_path):
    assert options(tmp_path)[0].kv_unified  # the default: 4 slots sharing the context
    split, _ = options(tmp_path, "-np", "2")
    assert split.parallel == 2 and not split.kv_unified
    shared, _ = options(tmp_path, "-np", "2", "-kvu")
    assert shared.parallel == 2 and shared.kv_unified


def test_templates_from_the_command_line(tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    opts, _ = options(tmp_path, "--chat-template-file", str(template), "--no-jinja")
    assert opts.chat_template.source == "jinja" and opts.chat_template.text == template.read_text()
    assert opts.chat_template.name == "chat.jinja" and not opts.jinja
    assert options(tmp_path)[0].chat_template.source == "gguf"  # -m: the GGUF's own


def test_reasoning_and_template_kwargs(tmp_path):
    assert options(tmp_path, "--reasoning", "off")[0].template_kwargs == {"enable_thinking": False}
    opts, _ = options(tmp_path, "-rea", "on", "--chat-template-kwargs", '{"enable_thinking": false, "x": 1}')
    assert opts.template_kwargs == {"enable_thinking": False, "x": 1}  # the explicit kwargs win
    assert options(tmp_path)[0].template_kwargs == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chat-template-file", "/no/such/file.jinja"], "cannot read --chat-template-file"),
        (["--chat-template-kwargs", "[1]"], "--chat-template-kwargs must be a JSON object"),
        (["--chat-template", "chatml", "--chat-template-file", "x"], "cannot be used together"),
    ],
)
def test_bad_template_flags_are_one_line(tmp_path, argv, message):
    with pytest.raises(cli.CliError, match=message):
        options(tmp_path, *argv)


def test_hosts_aliases_and_defaults():
    assert cli._hosts("127.0.0.1, [::1],127.0.0.1") == ["127.0.0.1", "::1"]
    with pytest.raises(cli.CliError):
        cli._hosts(" , ")
    assert cli._names("tiny,fim, tiny") == ("tiny", "fim")
    args = cli.build_parser().parse_args(["--temp", "0.2", "--seed", "5", "-n", "7"])
    assert cli._request_defaults(args)["temperature"] == 0.2 and cli._request_defaults(args)["seed"] == 5


def test_sleep_seconds_are_checked(tmp_path):
    args = cli.build_parser().parse_args(["--sleep-idle-seconds", "0"])
    with pytest.raises(cli.CliError, match="sleep-idle-seconds"):
        cli._check_ranges(args)
