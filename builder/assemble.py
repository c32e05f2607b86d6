"""Write a built file: runtime stub + embedded GGUF + manifest + `.args`.

Everything is written to a temporary file in the output folder and renamed
into place only when complete, so an interrupted build leaves nothing behind
and never a half-written file under the output name.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from llamapack.runtime import __version__
from llamapack.runtime import fileformat as ff
from llamapack.runtime.fileformat import (
    ChatTemplateChoice,
    Defaults,
    EngineRecord,
    Manifest,
    ModelRecord,
    ModelSource,
    UiMode,
)

from .atomic import atomic_output
from .chat_template import TemplateFile, choose_chat_template, choose_ui_mode
from .copying import Digests, copy_span, copy_with_digests
from .errors import OutputError, RuntimeStubError, SourceError, UsageError
from .gguf_header import GGUFHeader
from .progress import progress_bar
from .source_cache import Fingerprint, Known, SourceCache
from .sources import Source, check_vocabulary, check_vocabulary_at
from .stub import StubInfo, cache_dir, llama_cpp_version, target_name
from .targets import WINDOWS_MAX_FILE, exe_suffix

if TYPE_CHECKING:
    from .cuda import Payload

_PLACEHOLDER_SHA256 = "0" * 64


@dataclass(frozen=True)
class BuildOptions:
    output: Path | None = None
    name: str | None = None
    chat_template: str | None = None
    chat_template_file: TemplateFile | None = None
    ctx_size: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    ui_mode: str | None = None  # --ui-mode: "chat" or "completion"; None: the rule decides
    extra_args: list[str] = field(default_factory=list)
    target: str = field(default_factory=target_name)


@dataclass(frozen=True)
class BuildResult:
    output: Path
    manifest: Manifest
    header: GGUFHeader
    size: int
    model_beside: Path | None = None  # the GGUF written next to a Windows .exe


def default_output(file_name: str, target: str) -> Path:
    return Path("dist") / (Path(file_name).stem + exe_suffix(target))


def resolve_output(output: Path | None, source: Source, target: str) -> Path:
    output = output or default_output(source.file_name, target)
    if output.is_dir():
        output = output / default_output(source.file_name, target).name
    in_place = source.in_place
    with contextlib.suppress(OSError):
        if in_place and output.exists() and output.samefile(in_place.path):
            raise OutputError(f"the output {output} is the input model; choose another -o")
    return output


def default_args(options: BuildOptions, name: str) -> list[str]:
    """The `.args` lines: stored defaults, then where the user's arguments go."""
    args = ["--alias", name]
    if options.ctx_size is not None:
        args += ["--ctx-size", str(options.ctx_size)]
    if options.temperature is not None:
        args += ["--temp", repr(options.temperature)]
    if options.system_prompt is not None:
        args += ["--system-prompt", options.system_prompt]
    args += options.extra_args
    check_runtime_args(args)
    return [*args, ff.USER_ARGS_MARKER]


def check_runtime_args(args: list[str]) -> None:
    """Refuse at build time what the built file would refuse at every launch."""
    from llamapack.runtime.cli import build_parser

    class Refused(Exception):
        pass

    def refuse(message: str) -> None:
        raise Refused(message)

    parser = build_parser()
    parser.error = refuse  # type: ignore[method-assign,assignment]
    try:
        parser.parse_args(args)
    except Refused as exc:
        raise UsageError(f"the built file would refuse these default arguments: {exc}") from None


def build(source: Source, options: BuildOptions, stub: StubInfo, gpu: Payload | None = None) -> BuildResult:
    """Write the file for a resolved source (see `sources.resolve`), with the GPU
    runtime `gpu` (see `gpu_payload`) when given."""
    chat_template = choose_chat_template(source.header, options.chat_template, options.chat_template_file)
    name = options.name or Path(source.file_name).stem
    args = default_args(options, name)
    output = resolve_output(options.output, source, options.target)
    stub_data = read_stub(stub.path)
    ui_mode = choose_ui_mode(source.header, chat_template, source.file_name, options.ui_mode)
    manifest = _manifest(name, source, chat_template, ui_mode, options)
    beside = model_beside(output, options.target, len(stub_data), source.size)
    return write_file(source, output, manifest, args, stub_data, stub.path, beside=beside, gpu=gpu)


def gpu_payload(gpu_runtime: str | None, target: str, log: Callable[[str], None]) -> Payload | None:
    """The GPU runtime --gpu-runtime adds (built and cached the first time)."""
    if gpu_runtime is None:
        return None
    if gpu_runtime != "cuda":
        raise UsageError(f"--gpu-runtime {gpu_runtime}: the only one is cuda")
    if target != "linux-x86_64":
        raise UsageError(
            f"--gpu-runtime cuda is for linux-x86_64 files, not {target} "
            "(the others use the Vulkan or Metal backend they carry)"
        )
    from . import cuda

    return cuda.payload(log)


def model_beside(output: Path, target: str, stub_size: int, model_size: int) -> Path | None:
    """Where the GGUF goes when it cannot go inside (a Windows file of 4 GiB or more)."""
    if target.startswith("windows") and stub_size + model_size + (1 << 20) > WINDOWS_MAX_FILE:
        return output.with_suffix(".gguf")
    return None


def write_file(
    source: Source,
    output: Path,
    manifest: Manifest,
    args: list[str],
    stub_data: bytes,
    stub_path: Path,
    expected_sha256: str | None = None,
    beside: Path | None = None,
    check_model: bool = True,
    gpu: Payload | None = None,
) -> BuildResult:
    """Lay out stub, model, manifest and `.args`; the stub's hash and the model's
    sha256 and offset (and file beside, with `beside`) are filled into the manifest
    here. With `expected_sha256`, a copy whose hash differs is discarded instead of
    kept. With `beside`, the model is written to that path and the executable holds
    only the manifest and `.args`. With `gpu`, the GPU runtime's members follow the
    model and the manifest lists them.

    llama.cpp's vocabulary check of the source runs alongside the copy (it takes
    about as long as copying a GiB); the copy stops as soon as it fails, and
    nothing is kept under the output name unless it passed. What an earlier build
    learned about the same unchanged file (its digests, that it loads) is reused,
    except when `expected_sha256` asks for the weights to be checked."""
    args_bytes = _encode_args(args)
    stub_layout = _split_stub(stub_data, stub_path)
    manifest = replace(manifest, engine=replace(manifest.engine, stub_sha256=_sha256(stub_data)))
    if gpu is not None and beside is not None:
        raise UsageError("--gpu-runtime: this file keeps its model beside it, and no GPU runtime fits either")
    manifest = replace(manifest, gpu_runtime=gpu.record if gpu else None)
    fingerprint = _fingerprint(source)
    known, record = _known_about(fingerprint, trust=expected_sha256 is None)
    loads = check_model and llama_cpp_version() not in known.loads_with
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamapack-vocab") as pool:
        vocabulary = pool.submit(check_vocabulary if loads else lambda _: None, source)
        copy = _ModelCopy(source, fingerprint, known.digests, vocabulary, expected_sha256)
        if beside is not None:
            result = _write_with_model_beside(copy, output, manifest, args_bytes, stub_layout, beside)
        else:
            result = _write(copy, output, manifest, args_bytes, stub_layout, gpu)
    record(copy.digests, loads_checked=check_model)
    return result


@dataclass
class _ModelCopy:
    """Copies the source's GGUF into an open output and checks what was copied."""

    source: Source
    fingerprint: Fingerprint | None  # the source's, taken before the copy
    known: Digests | None
    vocabulary: Future[None]
    expected_sha256: str | None
    digests: Digests | None = None

    def into(self, target: BinaryIO) -> Digests:
        source = self.source
        with progress_bar(source.size, f"Copying {source.file_name}") as bar:
            try:
                if source.in_place is not None:
                    self.digests = copy_span(
                        source.in_place, source.size, target, bar, self._vocabulary_failed, self.known
                    )
                else:
                    with _open_source(source) as model:
                        interrupt = self._vocabulary_failed
                        self.digests = copy_with_digests(model, target, source.size, bar, interrupt)
            except EOFError:
                raise SourceError(f"{source.label} changed size while it was being copied") from None
            except zipfile.BadZipFile as exc:
                raise SourceError(f"{source.label} is damaged: {exc}") from None
        return self.digests

    def check(self, copied_model: ModelSource) -> None:
        """Before the output is kept: llama.cpp loads the model, and the weights are
        the ones expected and did not change while they were copied."""
        self.vocabulary.result()
        assert self.digests is not None
        label = self.source.label
        if self.fingerprint is not None and _fingerprint(self.source) != self.fingerprint:
            raise SourceError(f"{label} changed while it was being copied")
        if self.expected_sha256 is not None and self.digests.sha256 != self.expected_sha256:
            raise SourceError(
                f"the weights read from {label} do not match its manifest's sha256; "
                "run `llamapack verify` on it"
            )
        if self.source.in_place is None:  # compressed source: check the copy before keeping it
            check_vocabulary_at(copied_model, label)

    def _vocabulary_failed(self) -> None:
        if self.vocabulary.done():
            self.vocabulary.result()  # raises the check's SourceError


def _fingerprint(source: Source) -> Fingerprint | None:
    if source.in_place is None:
        return None
    try:
        return Fingerprint.of(source.in_place, source.size)
    except OSError as exc:
        raise SourceError(f"cannot read {source.label}: {exc.strerror or exc}") from None


def _known_about(fingerprint: Fingerprint | None, trust: bool) -> tuple[Known, Callable[..., None]]:
    """What the source cache knows about the file, and how to record what this build learns."""
    if fingerprint is None:
        return Known(), lambda *_, **__: None
    cache = SourceCache(cache_dir())
    seen_at = time.time_ns()
    known = cache.lookup(fingerprint) if trust else Known()

    def record(digests: Digests | None, loads_checked: bool) -> None:
        if loads_checked:
            cache.record(fingerprint, seen_at, digests, llama_cpp_version())

    return known, record


def _write(
    copy: _ModelCopy,
    output: Path,
    manifest: Manifest,
    args_bytes: bytes,
    stub_layout: ff.Stub,
    gpu: Payload | None = None,
) -> BuildResult:
    source = copy.source
    entries = gpu.entries if gpu else ()
    model_member = ff.place_model(stub_layout, source.file_name, source.size, ff.payload_size(entries))
    # The manifest holds the model's hash, known only after the copy; a
    # placeholder of the same length fixes every offset before writing starts.
    placeholder = manifest.with_model_placed(_PLACEHOLDER_SHA256, model_member.data_at)
    plan = ff.plan_file(stub_layout, model_member, len(placeholder.encode()), len(args_bytes), entries)

    def check_copy(temp: Path) -> None:
        copy.check(ModelSource(temp, model_member.data_at))

    with atomic_output(output, check_copy) as target:
        plan.write_head(target)
        digests = copy.into(target)
        if gpu is not None:
            _write_gpu_payload(plan, target, gpu)
        manifest = manifest.with_model_placed(digests.sha256, model_member.data_at)
        plan.write_tail(target, manifest.encode(), args_bytes, model_crc=digests.crc32)
    return BuildResult(output, manifest, source.header, output.stat().st_size)


def _write_gpu_payload(plan: ff.Plan, target: BinaryIO, gpu: Payload) -> None:
    with contextlib.ExitStack() as stack:
        try:
            sources = [stack.enter_context(path.open("rb")) for path in gpu.files]
        except OSError as exc:
            raise RuntimeStubError(f"cannot read the cached GPU runtime: {exc}") from None
        try:
            plan.write_payload(target, sources)
        except ValueError as exc:
            raise RuntimeStubError(f"the cached GPU runtime changed: {exc}") from None


def _write_with_model_beside(
    copy: _ModelCopy,
    output: Path,
    manifest: Manifest,
    args_bytes: bytes,
    stub_layout: ff.Stub,
    beside: Path,
) -> BuildResult:
    with atomic_output(beside, lambda temp: copy.check(ModelSource(temp)), executable=False) as target:
        digests = copy.into(target)
    manifest = manifest.with_model_placed(digests.sha256, 0, external=beside.name)
    manifest_bytes = manifest.encode()
    plan = ff.plan_file(stub_layout, None, len(manifest_bytes), len(args_bytes))
    with atomic_output(output) as exe:
        plan.write_head(exe)
        plan.write_tail(exe, manifest_bytes, args_bytes)
    return BuildResult(output, manifest, copy.source.header, output.stat().st_size, model_beside=beside)


def _encode_args(args: list[str]) -> bytes:
    try:
        return ff.encode_args(args)
    except ValueError as exc:
        raise UsageError(f"{exc}: .args holds one argument per line") from None


def engine_info(target: str | None = None) -> EngineRecord:
    """The engine this llamapack puts into files (the stub's hash is added when writing).

    The llama.cpp build (ggml's version and the llama.cpp commit) is read from the
    libraries installed here, which are the ones a stub built here carries; a file for
    another system gets a stub built elsewhere, so it records none rather than a guess."""
    target = target or target_name()
    llama_cpp = None
    if target == target_name():
        from llamapack.runtime.llama.devices import llama_cpp_build

        llama_cpp = llama_cpp_build()
    return EngineRecord(
        llamapack=__version__, llama_cpp_python=llama_cpp_version(), target=target, llama_cpp=llama_cpp
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _open_source(source: Source) -> Iterator[Any]:
    try:
        stream = source.open()
    except OSError as exc:
        raise SourceError(f"cannot read {source.label}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def _split_stub(data: bytes, path: Path) -> ff.Stub:
    try:
        return ff.read_stub(data)
    except ff.StubError as exc:
        raise RuntimeStubError(f"{path}: {exc}") from None


def read_stub(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuntimeStubError(f"cannot read the runtime stub {path}: {exc.strerror}") from None


def _manifest(
    name: str,
    source: Source,
    chat_template: ChatTemplateChoice,
    ui_mode: UiMode,
    options: BuildOptions,
) -> Manifest:
    """Everything but the model's sha256 and offset, which the copy fills in."""
    header = source.header
    general_name = header.metadata.get("general.name")
    return Manifest(
        name=name,
        engine=engine_info(options.target),
        source=source.provenance,
        model=ModelRecord(
            file=source.file_name,
            size=source.size,
            sha256=_PLACEHOLDER_SHA256,
            offset=0,
            name=None if general_name is None else str(general_name),
            architecture=header.architecture,
            parameters=header.parameter_count,
            quantization=header.quantization,
            context_length=header.context_length,
        ),
        chat_template=chat_template,
        defaults=Defaults(
            ctx_size=options.ctx_size,
            temperature=options.temperature,
            system_prompt=options.system_prompt,
            args=tuple(options.extra_args),
        ),
        ui_mode=ui_mode,
    )
