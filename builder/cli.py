"""The `llamapack` command. It parses, calls the library and maps errors to messages."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from llamapack.runtime import __version__

from . import progress
from .errors import LlamapackError, UsageError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _domain_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages and exit codes, never tracebacks."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
        except LlamapackError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing was written") from None

    return wrapper


def _quiet_option(command: Callable[..., Any]) -> Callable[..., Any]:
    def set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        progress.set_quiet(value)
        return value

    return click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
        help="No progress bars or summary; errors still go to stderr.",
    )(command)  # fmt: skip


def _runtime_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--runtime",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Use this runtime stub instead of the cached one.",
    )(command)


def _echo(message: str) -> None:
    if not progress.is_quiet():
        click.echo(message, err=True)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="llamapack")
def cli() -> None:
    """Turn a GGUF language model into one self-contained executable.

    \b
    Examples:
      llamapack build model.gguf            writes dist/model
      ./dist/model                          chat in the browser
      ./dist/model --server --nobrowser     OpenAI-compatible API on :8080
    """


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path),
    help="Output file (default: dist/<model name>). An existing folder gets the file inside.",
)  # fmt: skip
@click.option("--name", help="Model name shown in the chat page and the API (default: file stem).")
@click.option(
    "--chat-template", metavar="NAME",
    help="llama.cpp built-in chat template to use instead of the GGUF's own (e.g. chatml, gemma).",
)  # fmt: skip
@_runtime_option
@_quiet_option
@_domain_errors
def build(
    source: Path,
    output: Path | None,
    name: str | None,
    chat_template: str | None,
    runtime: Path | None,
) -> None:
    """Build one executable from the GGUF model SOURCE.

    The file runs the model with no install: it memory-maps the weights from
    itself and serves a chat page and an OpenAI-compatible API.

    \b
    Examples:
      llamapack build gemma-3-270m-q4_k_m.gguf
      llamapack build model.gguf -o ~/bin/assistant --name Assistant
      llamapack build model.gguf --chat-template chatml
    """
    from .assemble import BuildOptions, check_source
    from .assemble import build as build_file
    from .stub import ensure_stub

    started = time.perf_counter()
    check_source(source)  # fail fast, before a possible stub build
    if runtime is None and not _stub_cached():
        _echo("Building the runtime stub once (PyInstaller, about a minute)...")
    stub = ensure_stub(runtime)
    options = BuildOptions(source=source, output=output, name=name, chat_template=chat_template)
    result = build_file(options, stub)
    elapsed = time.perf_counter() - started
    model = result.manifest["model"]
    template = result.manifest["chat_template"]
    _echo(
        f"Built {result.output} ({_size(result.size)}) in {elapsed:.1f} s\n"
        f"  model:         {model['name'] or model['file']}: {model['architecture']}, "
        f"{_count(model['parameters'])} parameters, {model['quantization']}, "
        f"trained context {model['context_length']}\n"
        f"  chat template: {template['name']} ({template['reason']})\n"
        f"  run it:        {_run_hint(result.output)}"
    )


@cli.group(context_settings=CONTEXT_SETTINGS)
def runtime() -> None:
    """Manage the runtime stub that built files start from."""


@runtime.command("build", context_settings=CONTEXT_SETTINGS)
@click.option("--force", is_flag=True, help="Rebuild even when a cached stub exists.")
@_quiet_option
@_domain_errors
def runtime_build(force: bool) -> None:
    """Build (or reuse) the runtime stub for this machine and print its path.

    \b
    Example:
      llamapack runtime build --force
    """
    from .stub import ensure_stub

    info = ensure_stub(rebuild=force)
    _echo(("Built" if info.built else "Cached") + f" runtime stub {info.key}")
    click.echo(str(info.path))


def _stub_cached() -> bool:
    from .stub import cached_stub_path

    return cached_stub_path().is_file()


def _size(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n < 1024**3 else f"{n / 1024**3:.2f} GiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _run_hint(path: Path) -> str:
    return str(path) if path.is_absolute() or path.parent != Path(".") else f"./{path}"


def main() -> None:
    cli(prog_name="llamapack")
