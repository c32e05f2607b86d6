"""The `llamapack` command. It parses, calls the library and maps errors to messages."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llamapack.runtime import __version__
from llamapack.runtime.fileformat import FORMAT_VERSION, HubProvenance, Manifest, Provenance, ZipProvenance

from . import progress
from .errors import LlamapackError, UsageError
from .mounts import on_noexec_mount
from .targets import TARGETS

if TYPE_CHECKING:
    from .chat_template import TemplateFile

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


def _template_file(path: Path | None) -> TemplateFile | None:
    from .chat_template import TemplateFile

    if path is None:
        return None
    try:
        return TemplateFile(path.name, path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"--chat-template-file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--chat-template-file {path}: {exc.strerror}") from None


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path),
    help="Output file (default: dist/<model name>). An existing folder gets the file inside.",
)  # fmt: skip
@click.option("--name", help="Model name shown in the chat page and the API (default: file stem).")
@click.option("--member", metavar="NAME", help="The GGUF to use when a .zip source holds several.")
@click.option("--quant", metavar="Q", help="With hf://OWNER/REPO: pick the GGUF of this quantization.")
@click.option(
    "--chat-template", metavar="NAME",
    help="llama.cpp built-in chat template to use instead of the GGUF's own (e.g. chatml, gemma).",
)  # fmt: skip
@click.option(
    "--chat-template-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
    help="A Jinja chat template to put in the file instead of the GGUF's own.",
)  # fmt: skip
@click.option("--ctx-size", type=click.IntRange(min=0), help="Default context size of the file.")
@click.option("--temp", type=click.FloatRange(min=0), help="Default sampling temperature.")
@click.option("--system-prompt", metavar="TEXT", help="Default system message for chats.")
@click.option(
    "--ui-mode", type=click.Choice(["chat", "completion"]),
    help="The mode the page opens in (default: completion when the model has no chat template and "
    "no name saying instruct or chat, else chat).",
)  # fmt: skip
@click.option(
    "--args", "raw_args", metavar='"ARGS"',
    help="More default arguments for the file, as a shell would split them.",
)  # fmt: skip
@click.option(
    "--target", type=click.Choice(list(TARGETS)), default=None,
    help="System the file is for (default: this one). Needs that system's runtime stub.",
)  # fmt: skip
@click.option(
    "--gpu-runtime", type=click.Choice(["cuda"]), default=None,
    help="Add NVIDIA's CUDA runtime to the file (linux-x86_64; 483 MB more; built once, about an hour). "
    "Every file already has Vulkan, which also runs NVIDIA GPUs.",
)  # fmt: skip
@_runtime_option
@_quiet_option
@_domain_errors
def build(
    source: str,
    output: Path | None,
    name: str | None,
    member: str | None,
    quant: str | None,
    chat_template: str | None,
    chat_template_file: Path | None,
    ctx_size: int | None,
    temp: float | None,
    system_prompt: str | None,
    ui_mode: str | None,
    raw_args: str | None,
    target: str | None,
    gpu_runtime: str | None,
    runtime: Path | None,
) -> None:
    """Build one executable from the GGUF model SOURCE.

    SOURCE is a .gguf file, a .zip holding one (Deflate64 too, as Windows
    Explorer writes large archives), or a Hugging Face file:
    hf://OWNER/REPO/FILE.gguf[@REVISION], or hf://OWNER/REPO with --quant.
    The file runs the model with no install: it memory-maps the weights from
    itself and serves a chat page and an OpenAI-compatible API.

    \b
    Examples:
      llamapack build gemma-3-270m-q4_k_m.gguf
      llamapack build model.gguf -o ~/bin/assistant --name Assistant --ctx-size 4096
      llamapack build hf://ggml-org/gemma-3-270m-GGUF --quant Q4_K_M
      llamapack build models.zip --member phi-3-mini-q4.gguf
      llamapack build model.gguf --chat-template-file qwen3.jinja
      llamapack build model.gguf --gpu-runtime cuda
    """
    import shlex

    from .assemble import BuildOptions, gpu_payload
    from .assemble import build as build_file
    from .sources import resolve
    from .stub import target_name
    from .targets import stub_for

    started = time.perf_counter()
    target = target or target_name()
    resolved = resolve(source, member, quant)  # fail fast, before a possible stub build
    if runtime is None and target == target_name() and not _stub_cached():
        _echo("Building the runtime stub once (PyInstaller, about a minute)...")
    gpu = gpu_payload(gpu_runtime, target, _echo)
    stub = stub_for(target, runtime)
    try:
        extra_args = shlex.split(raw_args) if raw_args else []
    except ValueError as exc:
        raise UsageError(f"--args cannot be split: {exc}") from None
    options = BuildOptions(
        output=output,
        name=name,
        chat_template=chat_template,
        chat_template_file=_template_file(chat_template_file),
        ctx_size=ctx_size,
        temperature=temp,
        system_prompt=system_prompt,
        ui_mode=ui_mode,
        extra_args=extra_args,
        target=target,
    )
    result = build_file(resolved, options, stub, gpu)
    elapsed = time.perf_counter() - started
    _echo(f"Built {result.output} ({_size(result.size)}, {target}) in {elapsed:.1f} s")
    if result.model_beside is not None:
        _echo(
            f"  note:          Windows does not start programs of 4 GiB or more, so the model is in "
            f"{result.model_beside.name} beside it; keep the two files together"
        )
    _echo(describe(result.manifest, result.header))
    _echo(f"  run it:        {_run_hint(result.output)}")
    if on_noexec_mount(result.output):
        _echo(f"  warning:       {result.output.parent} is mounted noexec: copy the file elsewhere to run it")


def describe(manifest: Manifest, header: Any = None) -> str:
    """The human summary shared by `build` and `inspect`."""
    from .memory import estimate_memory

    model = manifest.model
    template = manifest.chat_template
    lines = [
        f"  model:         {model.name or model.file}: {model.architecture}, "
        f"{_count(model.parameters)} parameters, {model.quantization}, "
        f"trained context {model.context_length}",
        f"  chat template: {template.name} ({template.reason or 'no reason recorded'})",
    ]
    if manifest.ui_mode is not None:  # absent in older files: decided at run time
        lines.append(f"  page opens in: {manifest.ui_mode.mode} mode ({manifest.ui_mode.reason})")
    if header is not None:
        estimate = estimate_memory(header, manifest.defaults.ctx_size if manifest.defaults else None)
        lines.append(
            f"  memory:        about {_size(estimate.total)} to run at context {estimate.context} "
            f"({_size(estimate.weights)} weights, {_size(estimate.kv_cache)} KV cache)"
        )
    return "\n".join(lines)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
@_domain_errors
def inspect(file: Path, as_json: bool) -> None:
    """Show what a built FILE holds: manifest, model, engine versions, offsets.

    \b
    Examples:
      llamapack inspect dist/model
      llamapack inspect dist/model --json | jq .manifest.model.sha256
    """
    from .provenance import inspect_file

    report = inspect_file(file)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
        return
    layout = report.layout
    manifest = layout.manifest
    engine = manifest.engine
    click.echo(f"{file}: llamapack file format {FORMAT_VERSION}, {_size(layout.file_size)}")
    click.echo(describe(manifest))
    click.echo(f"  weights:       {manifest.model.file}, {_size(layout.model_size)} at "
               f"offset {layout.model_offset} (sha256 {manifest.model.sha256})")  # fmt: skip
    if manifest.source is not None:
        click.echo(f"  source:        {_source_text(manifest.source)}")
    llama_cpp = engine.llama_cpp  # absent in older files
    llama_cpp_text = f", {llama_cpp.summary()}" if llama_cpp else ""
    click.echo(f"  engine:        llamapack {engine.llamapack}, llama-cpp-python "
               f"{engine.llama_cpp_python}{llama_cpp_text}, {engine.target}")  # fmt: skip
    if manifest.gpu_runtime is not None:
        libraries = manifest.gpu_runtime.libraries
        names = ", ".join(library.file for library in libraries)
        unpacked = _size(sum(library.size for library in libraries))
        click.echo(f"  gpu runtime:   {manifest.gpu_runtime.backend} ({names}; {unpacked} unpacked)")
    click.echo(f"  defaults:      {' '.join(layout.args)}")
    click.echo(f"  upgrade:       {report.upgrade}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path))
@_quiet_option
@_domain_errors
def verify(file: Path) -> None:
    """Re-hash the weights inside FILE (and a GPU runtime's libraries) and
    compare them with its manifest.

    Exits with status 1 when the weights differ from what was built.

    \b
    Example:
      llamapack verify dist/model && echo intact
    """
    from .provenance import verify_file

    digest = verify_file(file)
    _echo(f"OK: {file} holds the weights it was built with (sha256 {digest})")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path),
    help="Where to write the GGUF (default: its original name, in the current folder).",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@_quiet_option
@_domain_errors
def unpack(file: Path, output: Path | None, force: bool) -> None:
    """Write the GGUF inside FILE back out, byte for byte.

    \b
    Examples:
      llamapack unpack dist/model
      llamapack unpack dist/model -o model.gguf
    """
    from .provenance import unpack_file

    written = unpack_file(file, output, force)
    _echo(f"Wrote {written} (checked against the manifest's sha256)")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path),
    help="Write the upgraded file here and leave FILE untouched (default: replace FILE).",
)  # fmt: skip
@_runtime_option
@_quiet_option
@_domain_errors
def upgrade(file: Path, output: Path | None, runtime: Path | None) -> None:
    """Rebuild FILE around this llamapack's runtime, keeping its model and settings.

    The weights stay byte for byte, and so do the default arguments and the
    manifest's description of the model; the engine (llamapack, llama.cpp)
    is replaced (a CUDA runtime added with --gpu-runtime too). Refused when
    the new engine cannot load the model.

    \b
    Examples:
      llamapack upgrade dist/model
      llamapack upgrade old-model -o new-model
    """
    from .provenance import open_layout
    from .targets import stub_for
    from .upgrade import upgrade as upgrade_file

    started = time.perf_counter()
    before = open_layout(file).manifest.engine
    stub = stub_for(before.target, runtime)
    result = upgrade_file(file, output, stub, _echo)
    after = result.manifest.engine
    _echo(
        f"Upgraded {result.output} in {time.perf_counter() - started:.1f} s: "
        f"llamapack {before.llamapack} -> {after.llamapack}, "
        f"llama-cpp-python {before.llama_cpp_python} -> {after.llama_cpp_python}"
    )


def _source_text(source: Provenance) -> str:
    if isinstance(source, HubProvenance):
        return f"hf://{source.repo}/{source.file}@{source.commit or source.revision}"
    if isinstance(source, ZipProvenance):
        return f"{source.archive} (member {source.member})"
    return source.file


@cli.group(context_settings=CONTEXT_SETTINGS)
def runtime() -> None:
    """Manage the runtime stub that built files start from."""


@runtime.command("build", context_settings=CONTEXT_SETTINGS)
@click.option("--force", is_flag=True, help="Rebuild even when a cached stub exists.")
@click.option(
    "--target", type=click.Choice(list(TARGETS)), default=None,
    help="Build the stub for another system on this one (windows-x86_64: Wine and mingw-w64; "
    "linux-aarch64: QEMU and a cross compiler). Default: this system.",
)  # fmt: skip
@_quiet_option
@_domain_errors
def runtime_build(force: bool, target: str | None) -> None:
    """Build (or reuse) the runtime stub for this machine (or --target) and print its path.

    \b
    Examples:
      llamapack runtime build --force
      llamapack runtime build --target windows-x86_64
    """
    from .stub import ensure_stub, target_name

    if target is None or target == target_name():
        info = ensure_stub(rebuild=force)
    else:
        from .cross import build_cross_stub

        info = build_cross_stub(target, force=force, log=_echo)
    _echo(("Built" if info.built else "Cached") + f" runtime stub {info.key}")
    click.echo(str(info.path))


@runtime.command("cuda", context_settings=CONTEXT_SETTINGS)
@_quiet_option
@_domain_errors
def runtime_cuda() -> None:
    """Build (or reuse) the CUDA runtime that `build --gpu-runtime cuda` adds to a
    file, and print its folder: ggml-cuda for sm_80, sm_89 and sm_90 compiled with
    NVIDIA's CUDA 13 compiler from PyPI (about an hour on 2 cores, once; an
    interrupted build resumes), with the CUDA runtime and cuBLAS, xz-packed.

    \b
    Example:
      llamapack runtime cuda
    """
    from .cuda import ensure_cuda

    click.echo(str(ensure_cuda(_echo)))


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
