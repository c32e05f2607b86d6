"""Write a built file: runtime stub + embedded GGUF + manifest + `.args`.

Everything is written to a temporary file in the output folder and renamed
into place only when complete, so an interrupted build leaves nothing behind
and never a half-written file under the output name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from llamapack.runtime import __version__
from llamapack.runtime import fileformat as ff

from .chat_template import choose_chat_template
from .copying import copy_with_digests
from .errors import OutputError, RuntimeStubError, SourceError
from .gguf_header import GGUFHeader, read_header
from .progress import progress_bar
from .stub import StubInfo, llama_cpp_version, target_name

_PLACEHOLDER_SHA256 = "0" * 64


@dataclass(frozen=True)
class BuildOptions:
    source: Path
    output: Path | None = None
    name: str | None = None
    chat_template: str | None = None
    default_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuildResult:
    output: Path
    manifest: dict[str, Any]
    header: GGUFHeader
    size: int


def check_source(source: Path) -> GGUFHeader:
    if not source.exists():
        raise SourceError(f"no such file: {source}")
    if source.is_dir():
        raise SourceError(f"{source} is a directory; give the path of a .gguf file")
    if source.stat().st_size == 0:
        raise SourceError(f"{source} is empty")
    return read_header(source)


def default_output(source: Path) -> Path:
    suffix = ".exe" if sys.platform == "win32" else ""
    return Path("dist") / (source.stem + suffix)


def resolve_output(options: BuildOptions) -> Path:
    output = options.output or default_output(options.source)
    if output.is_dir():
        output = output / default_output(options.source).name
    with contextlib.suppress(OSError):
        if output.exists() and output.samefile(options.source):
            raise OutputError(f"the output {output} is the input model; choose another -o")
    return output


def build(options: BuildOptions, stub: StubInfo) -> BuildResult:
    source = options.source
    header = check_source(source)
    chat_template = choose_chat_template(header, options.chat_template)
    output = resolve_output(options)
    stub_data = _read_stub(stub.path)
    name = options.name or source.stem
    manifest = _manifest(name, source, header, chat_template, stub_data)
    args = ["--alias", name, *options.default_args, ff.USER_ARGS_MARKER]
    args_bytes = ff.encode_args(args)
    stub_layout = _split_stub(stub_data, stub.path)
    model_name = source.name
    model_member = ff.place_model(stub_layout, model_name, header.file_size)
    # The manifest holds the model's hash, known only after the copy; a
    # placeholder of the same length fixes every offset before writing starts.
    placeholder = _with_model(manifest, _PLACEHOLDER_SHA256, model_member.data_at)
    plan = ff.plan_file(
        stub_layout, model_member, len(ff.encode_manifest(placeholder)), len(args_bytes)
    )
    head, tail = stub_layout.relocated(plan.shift)
    with _atomic_output(output) as target, source.open("rb", buffering=0) as model:
        target.write(head)
        target.write(bytes(plan.model.header_at - stub_layout.insert_at))
        target.write(plan.model.local_header())
        with progress_bar(header.file_size, f"Copying {model_name}") as bar:
            try:
                digests = copy_with_digests(model, target, header.file_size, bar)
            except EOFError:
                raise SourceError(f"{source} changed size while it was being copied") from None
        plan.model.crc = digests.crc32
        manifest = _with_model(manifest, digests.sha256, plan.model.data_at)
        manifest_bytes = ff.encode_manifest(manifest)
        assert len(manifest_bytes) == plan.manifest.size, "manifest length must not change"
        for member, data in ((plan.manifest, manifest_bytes), (plan.args, args_bytes)):
            member.crc = _crc32(data)
            target.write(member.local_header())
            target.write(data)
        target.write(bytes(plan.tail_at - plan.args.end))
        target.write(tail)
        target.write(ff.central_directory(plan))
        # The model's CRC is known only after the copy: patch its header.
        target.seek(plan.model.header_at)
        target.write(plan.model.local_header())
    return BuildResult(output, manifest, header, output.stat().st_size)


def _split_stub(data: bytes, path: Path) -> ff.Stub:
    try:
        return ff.read_stub(data)
    except ff.StubError as exc:
        raise RuntimeStubError(f"{path}: {exc}") from None


def _read_stub(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuntimeStubError(f"cannot read the runtime stub {path}: {exc.strerror}") from None


def _manifest(
    name: str, source: Path, header: GGUFHeader, chat_template: dict[str, Any], stub: bytes
) -> dict[str, Any]:
    return {
        "format": ff.FORMAT_VERSION,
        "name": name,
        "runtime": {
            "llamapack": __version__,
            "llama_cpp_python": llama_cpp_version(),
            "target": target_name(),
            "stub_sha256": hashlib.sha256(stub).hexdigest(),
        },
        "model": {
            "file": source.name,
            "size": header.file_size,
            "name": header.metadata.get("general.name"),
            "architecture": header.architecture,
            "parameters": header.parameter_count,
            "quantization": header.quantization,
            "context_length": header.context_length,
        },
        "chat_template": chat_template,
    }


def _with_model(manifest: dict[str, Any], sha256: str, offset: int) -> dict[str, Any]:
    model = {**manifest["model"], "sha256": sha256, "offset": offset}
    return {**manifest, "model": model}


def _crc32(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


@contextlib.contextmanager
def _atomic_output(output: Path) -> Iterator[BinaryIO]:
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{output.name}.", suffix=".partial")
    except OSError as exc:
        raise OutputError(f"cannot write to {folder}: {exc.strerror}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as file:
            yield file  # type: ignore[misc]
            file.flush()
            os.fsync(file.fileno())
        mode = 0o777 & ~_umask()
        os.chmod(temp, mode)
        os.replace(temp, output)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"no space left on the device while writing {output}") from None
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
