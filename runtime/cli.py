"""The built file's command line, llamafile-compatible where llamafile has the flag.

Default arguments stored in the file's `.args` come first; the user's own
arguments go where a `...` line stands (or after the defaults), so the user's
win wherever both set the same flag.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import sys
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

from llamapack.runtime import __version__, defaults
from llamapack.runtime.fileformat import (
    ChatTemplateChoice,
    FormatError,
    Layout,
    classify,
    merge_args,
    read_layout,
)
from llamapack.runtime.llama.gpu import CHOICES as GPU_CHOICES
from llamapack.runtime.llama.gpu import FilePayload

if TYPE_CHECKING:  # loaded only when a model is: --help and --version stay fast
    import asyncio
    from collections.abc import Callable

    from llamapack.runtime.backend import Backend, BackendOptions
    from llamapack.runtime.llama.rpc import Endpoint
    from llamapack.runtime.server.requests import Generation

# Slots when -np is not given; they share one context (llama-server's "auto").
DEFAULT_PARALLEL = 4
DEFAULT_PORT = 8080
DEFAULT_RPC_PORT = 50052  # llama.cpp's rpc-server default
PROG = Path(sys.argv[0]).name if getattr(sys, "frozen", False) else "llamapack-runtime"


class CliError(Exception):
    """A one-line error for the user; the process exits 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chat with the language model inside this file, in the browser, in the terminal or "
        "over an OpenAI-compatible API. With no arguments it starts the server and opens the chat page, "
        "or, where no browser can open, chats in the terminal.",
        epilog=(
            "examples:\n"
            f"  ./{PROG}                              chat in the browser\n"
            f"  ./{PROG} --server --nobrowser --port 9000   API only\n"
            f"  ./{PROG} --chat                        chat in this terminal\n"
            f"  ./{PROG} -p 'Once upon a time' -n 64   print a completion and exit\n"
            f"  ./{PROG} --info                        show what is inside"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_argument_group("mode")
    mode.add_argument("--server", action="store_true",
                      help="serve the API and chat page (default where a browser can open)")  # fmt: skip
    mode.add_argument("--nobrowser", action="store_true", help="do not open a browser tab")
    mode.add_argument("-p", "--prompt", metavar="TEXT", help="complete TEXT on stdout and exit")
    mode.add_argument(
        "--chat", action="store_true",
        help="chat in this terminal, /help for its commands (the default where no browser can open); "
        "with stdin piped, each line is one message and stdout gets one reply per line",
    )  # fmt: skip
    mode.add_argument("--info", action="store_true", help="print the file's manifest and exit")
    mode.add_argument("--version", action="store_true", help="print versions and exit")

    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind; several separated by commas (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--port", type=int, metavar="PORT",
        help=f"port (default: {DEFAULT_PORT}; {DEFAULT_RPC_PORT} with --rpc-server)",
    )  # fmt: skip
    server.add_argument(
        "-a", "--alias", metavar="NAME[,NAME...]",
        help="model id in the API (default: file name); several separated by commas",
    )  # fmt: skip
    server.add_argument("--tags", metavar="TAG[,TAG...]", help="tags listed with the model in /v1/models")
    server.add_argument(
        "-np", "--parallel", type=int, metavar="N",
        help="requests decoded together; as in llama-server, N given splits the context into N equal "
        "parts unless --kv-unified (default: 4, sharing the whole context)",
    )  # fmt: skip
    server.add_argument(
        "-kvu", "--kv-unified", action="store_true",
        help="with -np: every request may use the whole context, shared with the others",
    )  # fmt: skip
    server.add_argument(
        "--max-queue", type=int, default=64, metavar="N",
        help="requests that may wait for a slot; more get 503 (default: %(default)s)",
    )  # fmt: skip
    server.add_argument("--embedding", "--embeddings", action="store_true", help="also serve /v1/embeddings")
    server.add_argument(
        "--api-key", metavar="KEY",
        help="require KEY on every API route (Authorization: Bearer KEY, or x-api-key: KEY); "
        "the chat page, /health and /openapi.json stay open",
    )  # fmt: skip
    server.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable). Others get 403, against "
        "DNS rebinding: only the bound address, localhost, 127.0.0.1 and [::1] are answered, and, "
        "when bound to 0.0.0.0 or ::, this machine's host name and any IP address",
    )  # fmt: skip
    server.add_argument(
        "--cors-origin", "--cors-origins", metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example) call the API, or from any origin "
        "with '*' (llama-server's default); by default no other web origin may",
    )  # fmt: skip
    server.add_argument(
        "--max-body", type=int, default=10 * 1024 * 1024, metavar="BYTES",
        help="largest request body; larger ones get 413 (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--metrics", action="store_true",
        help="serve /metrics in Prometheus' format, behind --api-key like the rest of the API",
    )  # fmt: skip
    server.add_argument(
        "--slots", action=argparse.BooleanOptionalAction, default=True,
        help="serve /slots, each slot's state (default: on)",
    )  # fmt: skip
    server.add_argument(
        "--ui-mcp-proxy", action="store_true",
        help="serve /cors-proxy?url=..., which fetches any http(s) URL for API callers (llama-server's "
        "web UI uses it for MCP servers); off by default",
    )  # fmt: skip
    server.add_argument("--no-ui", "--no-webui", dest="ui", action="store_false",
                        help="serve the API only, no chat page")  # fmt: skip
    server.add_argument(
        "--ui-mode", choices=("chat", "completion"),
        help="the mode the page opens in: chat, or completion (a text the model continues, for base "
        "models) (default: as the file was built: completion when the model has no chat template)",
    )  # fmt: skip
    server.add_argument(
        "--sleep-idle-seconds", type=int, default=-1, metavar="S",
        help="free the model's memory after S idle seconds; the next request loads it again "
        "(default: -1, never)",
    )  # fmt: skip

    rpc = parser.add_argument_group(
        "split across machines (llama.cpp's RPC protocol: no authentication, no encryption; "
        "trusted networks only)"
    )
    rpc.add_argument(
        "--rpc", metavar="HOST:PORT[,HOST:PORT...]",
        help="offload the model's layers to these RPC workers (files run with --rpc-server, or "
        "llama.cpp's rpc-server), split by their free memory",
    )  # fmt: skip
    rpc.add_argument(
        "-ts", "--tensor-split", metavar="N0,N1,...",
        help="the share of the offloaded layers for each worker, in --rpc order (e.g. 3,1)",
    )  # fmt: skip
    rpc.add_argument(
        "--rpc-server", action="store_true",
        help=f"be a worker: lend this machine's CPU to other files over RPC, on --host (default "
        f"127.0.0.1) and --port (default {DEFAULT_RPC_PORT}), with -t threads; loads no model",
    )  # fmt: skip
    rpc.add_argument(
        "--mem", type=int, metavar="MiB",
        help="with --rpc-server: the memory this worker offers (default: all it has); a main "
        "process splits the layers by what its workers offer",
    )  # fmt: skip
    rpc.add_argument(
        "--allow-public-rpc", action="store_true",
        help="let --rpc-server listen on every address (0.0.0.0 or ::)",
    )  # fmt: skip

    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", metavar="GGUF", help="use this GGUF instead of the embedded one")
    model.add_argument(
        "-c", "--ctx-size", type=int, default=0, metavar="N",
        help=f"context size in tokens (default: the model's, at most {defaults.CONTEXT})",
    )  # fmt: skip
    model.add_argument("-t", "--threads", type=int, metavar="N", help="CPU threads (default: cores)")
    model.add_argument(
        "-b", "--batch-size", type=int, default=2048, metavar="N",
        help="most prompt tokens evaluated in one step (default: %(default)s)",
    )  # fmt: skip
    model.add_argument(
        "-ngl", "--n-gpu-layers", "--gpu-layers", type=int, metavar="N",
        help="layers to offload to the GPU or to --rpc workers (default: as many as fit in the GPU's "
        "free memory; all with --rpc); 0 keeps the model on the CPU",
    )  # fmt: skip
    model.add_argument(
        "--gpu", choices=GPU_CHOICES, default="auto",
        help="GPU backend: auto takes the first of CUDA, Metal, Vulkan that finds a GPU, else the CPU; "
        "a name insists on that one; none never loads one (default: %(default)s)",
    )  # fmt: skip
    model.add_argument(
        "--chat-template", metavar="NAME|JINJA",
        help="one of llama.cpp's built-in chat templates by name, or a Jinja template's text",
    )  # fmt: skip
    model.add_argument("--chat-template-file", metavar="FILE", help="a Jinja chat template to use")
    model.add_argument(
        "--chat-template-kwargs", metavar="JSON",
        help="extra variables for the chat template, under each request's own, e.g. "
        "'{\"enable_thinking\": false}'",
    )  # fmt: skip
    model.add_argument(
        "--jinja", action=argparse.BooleanOptionalAction, default=True,
        help="render Jinja chat templates (default: on); --no-jinja applies llama.cpp's built-in "
        "template that the GGUF's template resembles",
    )  # fmt: skip
    model.add_argument(
        "--reasoning-format", choices=("auto", "deepseek", "deepseek-legacy", "none"), default="auto",
        help="where a reasoning model's <think> text goes: reasoning_content (auto, deepseek) or "
        "left in content (none) (default: %(default)s)",
    )  # fmt: skip
    model.add_argument(
        "-rea", "--reasoning", choices=("on", "off", "auto"), default="auto",
        help="let a reasoning model think first (on), or not (off: the template's enable_thinking "
        "is false); auto: as the template decides (default: %(default)s)",
    )  # fmt: skip
    model.add_argument("--system-prompt", metavar="TEXT", help="system message for chats that bring none")
    model.add_argument("-v", "--verbose", action="store_true",
                       help="show llama.cpp's log, and each prompt in replies (__verbose)")  # fmt: skip

    sampling = parser.add_argument_group(
        "generation", "defaults for every request that does not set them, and for -p"
    )
    sampling.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                          help="tokens to generate; -1: until the model ends (default: -1)")  # fmt: skip
    sampling.add_argument("--temp", type=float, default=defaults.TEMPERATURE, metavar="T")
    sampling.add_argument("--top-k", type=int, default=defaults.TOP_K, metavar="K")
    sampling.add_argument("--top-p", type=float, default=defaults.TOP_P, metavar="P")
    sampling.add_argument("--min-p", type=float, default=defaults.MIN_P, metavar="P")
    sampling.add_argument("--repeat-penalty", type=float, default=defaults.REPEAT_PENALTY, metavar="R")
    sampling.add_argument("-s", "--seed", type=int, default=-1, metavar="N", help="-1: random")

    _add_tuning_flags(parser)
    return parser


# llama-server's flags that tune what this file already decides for itself: taken
# (scripts written for llama-server keep working) and otherwise without effect.
_TUNING_FLAGS: tuple[tuple[tuple[str, ...], bool], ...] = (
    # (names, takes a value)
    (("-ub", "--ubatch-size"), True),
    (("-ctk", "--cache-type-k"), True),
    (("-ctv", "--cache-type-v"), True),
    (("-fa", "--flash-attn"), True),
    (("-cram", "--cache-ram"), True),
    (("-cb", "--cont-batching"), False),
    (("--swa-full",), False),
    (("--no-cache-idle-slots",), False),
    (("--offline",), False),
    (("--no-mmap",), False),
    (("--mlock",), False),
)


def _add_tuning_flags(parser: argparse.ArgumentParser) -> None:
    listed = ", ".join(names[0] for names, _ in _TUNING_FLAGS)
    group = parser.add_argument_group(
        "llama-server's tuning flags",
        f"{listed}: taken, so scripts written for llama-server keep working, and left without "
        "effect: this file chooses batch sizes, cache types and memory mapping itself",
    )
    for names, takes_value in _TUNING_FLAGS:
        if takes_value:
            group.add_argument(*names, metavar="X", dest=f"tuning_{names[-1][2:]}", help=argparse.SUPPRESS)
        else:
            group.add_argument(*names, action="store_true", dest=f"tuning_{names[-1][2:]}",
                               help=argparse.SUPPRESS)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    user_args = sys.argv[1:] if argv is None else argv
    try:
        return _main(user_args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _main(user_args: list[str]) -> int:
    layout = _own_layout()
    built_in = layout.args if layout else []
    args = build_parser().parse_args(merge_args(built_in, user_args))
    if args.version:
        print(version_text(layout))
        print(gpu_text(args.gpu, no_gpu=args.n_gpu_layers == 0, payload=gpu_payload(layout)))
        if args.rpc:
            print(_rpc_devices_text(_rpc_endpoints(args)))
        return 0
    if args.info:
        if layout is None:
            raise CliError("--info needs a built file; this runtime has no model inside")
        print(json.dumps(layout.manifest.to_json(), indent=2, sort_keys=True))
        return 0
    _check_ranges(args)
    if args.rpc_server:
        return _rpc_server(args)
    launch = _choose_chat(args)
    options = _backend_options(args, layout)
    if args.prompt is not None:
        return _complete(args, options)
    if args.chat:
        return _chat(args, options, layout, launch)
    return _serve(args, options, layout)


def _choose_chat(args: argparse.Namespace) -> str:
    """Sets args.chat where the terminal chat is the default; says why it runs."""
    if args.chat and (args.server or args.prompt is not None):
        raise CliError("--chat cannot be used with --server or -p")
    if args.chat:
        return "terminal chat (--chat)"
    if args.server or args.nobrowser or args.prompt is not None:
        return ""
    if sys.stdin.isatty() and sys.stdout.isatty() and not browser_available():
        args.chat = True
        return "no browser here: terminal chat (--server for the API)"
    return ""


def browser_available() -> bool:
    """Whether the default mode's browser tab can open. A Linux or BSD session with
    no display (ssh, a console) gets none; webbrowser would fall back to a text
    browser taking over this very terminal."""
    if sys.platform not in ("win32", "darwin") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def _own_layout() -> Layout | None:
    """The model and settings inside this file; None for a bare runtime stub.

    Checked before anything loads: a file cut short (an interrupted download)
    or whose sizes and offsets disagree with its manifest is refused here."""
    if not getattr(sys, "frozen", False):
        return None
    kind = classify(sys.executable)
    if kind == "stub":
        return None
    if kind == "incomplete":
        raise CliError(
            f"{sys.executable} is incomplete: it ends early (an interrupted download or copy?); "
            "download it again"
        )
    try:
        return read_layout(sys.executable)
    except FormatError as exc:
        raise CliError(f"{exc}; download or copy the file again") from None


def version_text(layout: Layout | None) -> str:
    """The engine in this file, then what the manifest says built it (they differ
    only in a file whose stub was swapped by hand)."""
    import llama_cpp

    from llamapack.runtime.llama.devices import llama_cpp_build

    lines = [
        f"llamapack {__version__} (llama-cpp-python {llama_cpp.__version__})",
        llama_cpp_build().summary(),
    ]
    if layout is not None:
        built = layout.manifest.engine
        record = f"file built by llamapack {built.llamapack}, llama-cpp-python {built.llama_cpp_python}"
        if built.llama_cpp is not None:  # absent in files built before it was recorded
            record += f", {built.llama_cpp.summary()}"
        record += f", for {built.target}"
        lines.append(record)
    return "\n".join(lines)


def _rpc_endpoints(args: argparse.Namespace) -> list[Endpoint]:
    from llamapack.runtime.llama.rpc import RpcError, parse_endpoints

    if not args.rpc:
        if args.tensor_split:
            raise CliError("--tensor-split needs --rpc")
        return []
    try:
        return parse_endpoints(args.rpc)
    except RpcError as exc:
        raise CliError(str(exc)) from None


def _tensor_split(args: argparse.Namespace) -> tuple[float, ...]:
    if not args.tensor_split:
        return ()
    try:
        shares = tuple(float(part) for part in args.tensor_split.split(","))
    except ValueError:
        raise CliError(f"--tensor-split {args.tensor_split}: not numbers separated by commas") from None
    if any(share < 0 for share in shares) or not any(shares):
        raise CliError("--tensor-split: shares must be 0 or more, and not all 0")
    return shares


def gpu_payload(layout: Layout | None) -> FilePayload | None:
    """The GPU runtime the file carries (`llamapack build --gpu-runtime`), if any."""
    if layout is None or layout.manifest.gpu_runtime is None:
        return None
    return FilePayload(layout.path, layout.manifest.gpu_runtime, _say)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def gpu_text(requested: str, no_gpu: bool = False, payload: FilePayload | None = None) -> str:
    """--version's GPU lines: each GPU the backend --gpu picks would use, or why none."""
    import functools

    from llamapack.runtime.llama import gpu
    from llamapack.runtime.llama.devices import OFFLOAD_TYPES, devices
    from llamapack.runtime.llama.model import init_backend

    if requested == "auto" and no_gpu:
        return "GPU: none (-ngl 0)"
    try:
        init_backend()
        choice = gpu.choose(requested, functools.partial(gpu.probe, payload=payload))
    except Exception as exc:  # --version says what it can: a GPU that fails is a line, not a crash
        return f"GPU: none ({exc})"
    found = [device for device in devices() if device.type in OFFLOAD_TYPES]
    if choice.backend is None or not found:
        return f"GPU: none ({choice.reason or 'no device'})"
    return "\n".join(
        f"GPU: {device.name} ({device.description}, {device.memory()}), {gpu.NAMES[choice.backend]}"
        for device in found
    )


def _rpc_devices_text(endpoints: list[Endpoint]) -> str:
    """--version with --rpc: the workers' devices, as a model load would see them."""
    from llamapack.runtime.llama import rpc
    from llamapack.runtime.llama.devices import devices
    from llamapack.runtime.llama.model import init_backend

    init_backend()
    try:
        names = set(rpc.add_workers(endpoints))
    except rpc.RpcError as exc:
        raise CliError(str(exc)) from None
    found = [device for device in devices() if device.name in names]
    return "\n".join(
        f"{device.name}: RPC worker {device.description}, {device.memory_total >> 20} MiB" for device in found
    )


def _rpc_server(args: argparse.Namespace) -> int:
    """A worker: ggml's RPC server on this machine's CPU until a signal ends it."""
    from llamapack.runtime.llama import rpc
    from llamapack.runtime.llama.model import init_backend

    hosts = _hosts(args.host)
    if len(hosts) > 1:
        raise CliError("--rpc-server listens on one address")
    endpoint = rpc.Endpoint(hosts[0], args.port or DEFAULT_RPC_PORT)
    if endpoint.host in ("0.0.0.0", "::") and not args.allow_public_rpc:
        raise CliError(
            f"--rpc-server will not listen on every address ({endpoint.host}): the RPC protocol has no "
            "authentication; name one address, or add --allow-public-rpc on a trusted network"
        )
    if endpoint.host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"{PROG}: warning: llama.cpp's RPC protocol has no authentication or encryption: anyone who can "
            f"reach {endpoint} can use this machine's memory and CPU; use it only on a trusted network",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    threads = args.threads or physical_cores()
    init_backend(args.verbose)
    _stop_on_terminate()
    print(f"{PROG}: RPC worker on {endpoint}, {threads} threads", file=sys.stderr, flush=True)
    try:
        rpc.serve(endpoint, threads, memory=None if args.mem is None else args.mem << 20)
    except rpc.RpcError as exc:
        raise CliError(str(exc)) from None
    return 0


def _stop_on_terminate() -> None:
    """SIGTERM ends a worker as Ctrl-C does (exit 0 from the KeyboardInterrupt handler
    would be 130): one line, status 0, so the bootloader cleans up."""

    def stop(number: int, _frame: object) -> None:
        print(f"{PROG}: stopped ({signal.Signals(number).name})", file=sys.stderr, flush=True)
        raise SystemExit(0)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stop)


def _check_ranges(args: argparse.Namespace) -> None:
    if args.max_queue < 0:
        raise CliError("--max-queue must be 0 or more")
    for name in ("parallel", "threads", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name} must be at least 1")
    if args.ctx_size < 0:
        raise CliError("--ctx-size must be 0 (the model's) or more")
    if args.port is not None and not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    if args.mem is not None and (args.mem < 1 or not args.rpc_server):
        raise CliError("--mem takes the MiB a --rpc-server worker offers (at least 1)")
    if args.rpc_server and (args.rpc or args.prompt is not None or args.chat or args.server):
        raise CliError("--rpc-server is a worker on its own: not with --rpc, --server, --chat or -p")
    if args.max_body < 1:
        raise CliError("--max-body must be at least 1")
    if args.sleep_idle_seconds == 0 or args.sleep_idle_seconds < -1:
        raise CliError("--sleep-idle-seconds must be -1 (never) or at least 1")


def _backend_options(args: argparse.Namespace, layout: Layout | None) -> BackendOptions:
    from llamapack.runtime.backend import BackendOptions
    from llamapack.runtime.llama.chat_template import user_template_choice
    from llamapack.runtime.llama.model import ModelSource

    if args.model:
        source = ModelSource(Path(args.model))
        if not source.path.is_file():
            raise CliError(f"no such model file: {args.model}")
        template = ChatTemplateChoice("gguf", "gguf")  # chatml when the GGUF has none
    elif layout is not None:
        source = ModelSource(layout.model_path, layout.model_offset)
        template = layout.manifest.chat_template
    else:
        raise CliError("no model: pass -m FILE.gguf (this runtime has none inside)")
    if args.chat_template and args.chat_template_file:
        raise CliError("--chat-template and --chat-template-file cannot be used together")
    if args.chat_template:
        template = user_template_choice(args.chat_template, "chosen with --chat-template")
    if args.chat_template_file:
        template = _template_file(args.chat_template_file)
    return BackendOptions(
        source=source,
        chat_template=template,
        ctx_size=args.ctx_size,
        parallel=1 if args.prompt is not None or args.chat else (args.parallel or DEFAULT_PARALLEL),
        kv_unified=args.parallel is None or args.kv_unified,
        jinja=args.jinja,
        n_batch=args.batch_size,
        template_kwargs=_template_kwargs(args.chat_template_kwargs, args.reasoning),
        threads=args.threads or physical_cores(),
        n_gpu_layers=args.n_gpu_layers,
        gpu=args.gpu,
        gpu_payload=gpu_payload(layout) if args.model is None else None,
        rpc=tuple(_rpc_endpoints(args)),
        tensor_split=_tensor_split(args),
        verbose=args.verbose,
        max_queue=args.max_queue,
        embedding=args.embedding and args.prompt is None and not args.chat,
        n_predict=args.n_predict,
    )


def _template_file(name: str) -> ChatTemplateChoice:
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise CliError(f"cannot read --chat-template-file {name}: {reason}") from None
    return ChatTemplateChoice("jinja", Path(name).name, "chosen with --chat-template-file", text=text)


def _template_kwargs(value: str | None, reasoning: str) -> dict[str, object]:
    """--chat-template-kwargs, with --reasoning on/off as `enable_thinking` (llama-server's)."""
    thinking: dict[str, object] = {} if reasoning == "auto" else {"enable_thinking": reasoning == "on"}
    if not value:
        return thinking
    problem = "--chat-template-kwargs must be a JSON object, e.g. '{\"enable_thinking\": false}'"
    try:
        kwargs = json.loads(value)
    except ValueError:
        raise CliError(problem) from None
    if not isinstance(kwargs, dict):
        raise CliError(problem)
    return {**thinking, **kwargs}


def physical_cores() -> int:
    """Cores, not hardware threads: llama.cpp decodes slower on SMT siblings."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cpus = sorted(allowed) if allowed else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def _load(options: BackendOptions) -> Backend:
    from llamapack.runtime.backend import Backend
    from llamapack.runtime.llama.chat_template import ChatTemplateError
    from llamapack.runtime.llama.model import ModelLoadError

    try:
        return Backend(options)
    except (ModelLoadError, ChatTemplateError, RuntimeError) as exc:
        raise CliError(str(exc)) from None


def _generation(args: argparse.Namespace) -> Generation:
    """What -p and each --chat turn ask of the engine: the generation flags."""
    from llamapack.runtime.engine.sampling import SamplingParams
    from llamapack.runtime.server.requests import Generation

    return Generation(
        sampling=SamplingParams(
            temperature=args.temp,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repeat_penalty=args.repeat_penalty,
            seed=None if args.seed < 0 else args.seed,
        ),
        max_tokens=None if args.n_predict < 0 else args.n_predict,
        stop=[],
        ignore_eos=False,
    )


def _complete(args: argparse.Namespace, options: BackendOptions) -> int:
    from llamapack.runtime.engine.events import RequestError

    backend = _load(options)
    announce_engine(backend)
    try:
        generation = _generation(args)

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        try:
            event = backend.complete_blocking(backend.text_prompt(args.prompt), generation, write)
        except RequestError as exc:
            raise CliError(str(exc)) from None
        sys.stdout.write("\n")
        if event.error:
            raise CliError(event.error)
        return 0
    finally:
        backend.close()


def _chat(args: argparse.Namespace, options: BackendOptions, layout: Layout | None, launch: str) -> int:
    print(f"{PROG}: {launch}, loading {_default_alias(options, layout)}", file=sys.stderr, flush=True)
    backend = _load(options)
    announce_engine(backend)
    try:
        from llamapack.runtime import terminal_chat

        return terminal_chat.run(backend, lambda: _generation(args), system_prompt=args.system_prompt)
    finally:
        backend.close()


def _serve(args: argparse.Namespace, options: BackendOptions, layout: Layout | None) -> int:
    import asyncio

    # The model loads (in C, without the GIL) while the HTTP side is imported and set up.
    load_backend = _load_in_background(options)

    from aiohttp import web

    from llamapack.runtime.server.app import ServerConfig, create_app
    from llamapack.runtime.server.guard import is_loopback
    from llamapack.runtime.server.vertex import VertexSettings

    vertex = VertexSettings.from_environment()
    # Vertex AI chooses the port.
    port = vertex.port if vertex and vertex.port else (args.port or DEFAULT_PORT)
    hosts = _hosts(args.host)
    sockets = [_bind(host, port) for host in hosts]
    exposed = [host for host in hosts if not is_loopback(host)]
    if not args.api_key and exposed:
        print(
            f"{PROG}: WARNING: listening on {exposed[0]} without --api-key: anyone who can reach this "
            "machine can use the model; pass --api-key KEY or bind 127.0.0.1",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    host_for_url = "127.0.0.1" if hosts[0] in ("0.0.0.0", "::") else hosts[0]
    if ":" in host_for_url:
        host_for_url = f"[{host_for_url}]"
    url = f"http://{host_for_url}:{sockets[0].getsockname()[1]}/"
    aliases = _names(args.alias) or (_default_alias(options, layout),)
    # llama-server's rule: the id is the first alias in sorted order.
    name = sorted(aliases)[0]

    def on_ready() -> None:
        where = f"chat at {url} (API at {url}v1)" if args.ui else f"API at {url}v1"
        print(f"{PROG}: ready: {where}", file=sys.stderr, flush=True)
        if not args.nobrowser and args.ui:
            webbrowser.open(url)

    # SIGTERM and SIGINT end the server alike: in-flight streams close and the
    # process exits 0, so PyInstaller's bootloader removes its temporary folder.
    loop = asyncio.new_event_loop()
    stop = _stop_on_signals(loop)
    load_errors: list[str] = []

    def on_load_error(message: str) -> None:
        # Stop serving: a server that can never answer is worse than an exit.
        load_errors.append(message)
        stop()

    wildcard = next((host for host in hosts if host in ("0.0.0.0", "::")), hosts[0])
    config = ServerConfig(
        load_backend=load_backend,
        model_alias=name,
        model_aliases=tuple(sorted(aliases)),
        model_tags=_names(args.tags),
        model_path=_model_path(options, layout),
        manifest=layout.manifest if layout else None,
        on_ready=on_ready,
        on_load_error=on_load_error,
        api_key=args.api_key,
        max_body=args.max_body,
        bind_host=wildcard,
        allow_hosts=(*args.allow_host, *(host for host in hosts if host != wildcard)),
        cors_origin=args.cors_origin,
        metrics=args.metrics,
        slots=args.slots,
        ui=args.ui,
        ui_mode=args.ui_mode,
        chat_template=options.chat_template,
        request_defaults=_request_defaults(args),
        reasoning_format=args.reasoning_format,
        system_prompt=args.system_prompt,
        vertex=vertex,
        mcp_proxy=args.ui_mcp_proxy,
        sleep_idle_seconds=args.sleep_idle_seconds,
        verbose=args.verbose,
    )
    print(f"{PROG}: loading {name}, serving on {url}", file=sys.stderr, flush=True)
    # handler_cancellation: a client that hangs up on a non-streamed request
    # cancels its handler, which cancels the generation and frees the slot.
    web.run_app(
        create_app(config),
        sock=sockets,
        print=None,
        handle_signals=False,
        shutdown_timeout=5,
        loop=loop,
        handler_cancellation=True,
    )
    if load_errors:
        raise CliError(f"could not load the model: {load_errors[0]}")
    return 0


def _load_in_background(options: BackendOptions) -> Callable[[], Backend]:
    """Start loading the backend now, in a thread; the returned call hands it over
    (announced, or raising what the load raised) the first time, and loads anew after
    that (the server frees the model when it sleeps and loads it again on wake)."""
    import concurrent.futures
    import threading

    first: concurrent.futures.Future[Backend] = concurrent.futures.Future()

    def load() -> None:
        try:
            from llamapack.runtime.backend import Backend

            first.set_result(Backend(options))
        except BaseException as exc:
            first.set_exception(exc)

    threading.Thread(target=load, name="llamapack-load", daemon=True).start()
    handed_over = False

    def load_backend() -> Backend:
        nonlocal handed_over
        if not handed_over:
            handed_over = True
            return announce_engine(first.result())
        from llamapack.runtime.backend import Backend

        return announce_engine(Backend(options))

    return load_backend


def _stop_on_signals(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """The first SIGTERM or SIGINT shuts the server down gracefully; a second one
    during that shutdown (`pkill` hits both the bootloader, which forwards its
    signal, and this process) ends it at once with one line and 128 + the signal,
    instead of a second exception inside aiohttp's clean-up.

    Windows has no loop signal handlers: Ctrl-C (SIGINT) and Ctrl-Break (SIGBREAK,
    which would otherwise end the process with status 3 and no word) get Python
    handlers that hand over to the loop; the proactor loop wakes on them. Closing the
    console ends this process at once, as Windows does by default, and the
    bootloader (which outlives it for that) removes the unpacked runtime.

    Returns what stops the server as the first signal would, for the server's own
    reasons (a model that failed to load)."""
    from aiohttp.web_runner import GracefulExit

    stopping = False

    def on_signal(number: int) -> None:
        nonlocal stopping
        if stopping:
            name = signal.Signals(number).name
            print(f"{PROG}: stopped at once ({name} during shutdown)", file=sys.stderr, flush=True)
            os._exit(128 + number)
        stopping = True
        raise GracefulExit()

    if sys.platform == "win32":
        for number in (signal.SIGINT, signal.SIGBREAK):
            signal.signal(number, lambda number, _frame: loop.call_soon_threadsafe(on_signal, number))
    else:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, on_signal, number)

    def stop() -> None:
        loop.call_soon_threadsafe(on_signal, signal.SIGINT)

    return stop


def announce_engine(backend: Backend) -> Backend:
    """Say once, at launch, what runs the model (runtime/llama/devices.py), and aloud
    when it is not what was asked for (-ngl without a GPU)."""
    report = backend.engine_report
    print(f"{PROG}: engine: {report.line()}", file=sys.stderr, flush=True)
    for warning in report.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    return backend


def _hosts(value: str) -> list[str]:
    hosts = [host.strip().strip("[]") for host in value.split(",") if host.strip()]
    if not hosts:
        raise CliError("--host needs an address")
    return list(dict.fromkeys(hosts))


def _names(value: str | None) -> tuple[str, ...]:
    """--alias and --tags: comma-separated, each once."""
    if not value:
        return ()
    return tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))


def _request_defaults(args: argparse.Namespace) -> dict[str, object]:
    """The generation flags, as the request fields they stand in for."""
    return {
        "temperature": args.temp,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty,
        "seed": args.seed,
    }


def _model_path(options: BackendOptions, layout: Layout | None) -> str:
    if layout is not None and not layout.external:
        return f"{layout.path}/{layout.model_name}"  # a member of the file's ZIP
    return str(options.source.path)


def _default_alias(options: BackendOptions, layout: Layout | None) -> str:
    if layout is not None:
        return layout.manifest.name or layout.path.stem
    return Path(options.source.path).stem


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port") from None
    return sock


if __name__ == "__main__":
    raise SystemExit(main())
