"""Where a model comes from: a local GGUF, a Hugging Face repository or a ZIP archive.

Every source resolves to a `Source`: a way to open the GGUF's bytes as a
stream, its size and parsed header, and a provenance record for the manifest.
Nothing is copied here: Hub downloads land in huggingface_hub's own cache
(resumable, shared with other tools) and ZIP members are streamed straight
into the output by the builder.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llamapack.runtime.fileformat import (
    HubProvenance,
    LocalProvenance,
    ModelSource,
    Provenance,
    ZipProvenance,
    member_data_offset,
)

from .errors import SourceError, UsageError
from .gguf_header import GGUFHeader, read_header, read_header_from_stream

HF_PREFIX = "hf://"
_SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass
class Source:
    label: str  # how messages name it
    file_name: str  # the GGUF's file name, kept as the ZIP member name
    size: int
    header: GGUFHeader
    open: Callable[[], IO[bytes]]
    in_place: ModelSource | None  # where llama.cpp can read it without a copy
    provenance: Provenance | None = None


def resolve(spec: str, member: str | None = None, quant: str | None = None) -> Source:
    if spec.startswith(HF_PREFIX):
        return _from_hub(spec, quant)
    if quant:
        raise UsageError("--quant chooses among a Hugging Face repository's files (hf://OWNER/REPO)")
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"no such file: {path}")
    if path.is_dir():
        raise SourceError(f"{path} is a directory; give the path of a .gguf or .zip file")
    if path.suffix.lower() == ".zip" or (path.suffix.lower() != ".gguf" and zipfile.is_zipfile(path)):
        return _from_zip(path, member)
    if member:
        raise UsageError("--member chooses a file inside a .zip source")
    return _from_file(path, LocalProvenance(file=path.name))


def _from_file(path: Path, provenance: Provenance) -> Source:
    _refuse_split(path.name, None)
    header = read_header(path)
    _refuse_split(path.name, header)
    return Source(
        label=str(path),
        file_name=path.name,
        size=header.file_size,
        header=header,
        open=lambda: path.open("rb", buffering=0),
        in_place=ModelSource(path),
        provenance=provenance,
    )


def _refuse_split(name: str, header: GGUFHeader | None) -> None:
    count = int(header.metadata.get("split.count", 1) or 1) if header else 1
    match = _SPLIT_NAME.search(name)
    if match and int(match.group(2)) > 1 or count > 1:
        first = _SPLIT_NAME.sub(r"-00001-of-\2.gguf", name) if match else name
        merged = _SPLIT_NAME.sub(".gguf", name) if match else "merged.gguf"
        raise SourceError(
            f"{name} is one part of a split GGUF; merge the parts into one file first with "
            f"llama.cpp's `llama-gguf-split --merge {first} {merged}`, then build from {merged}"
        )


# ------------------------------------------------------------------ ZIP


def _from_zip(path: Path, member: str | None) -> Source:
    import zipfile_deflate64  # noqa: F401  (teaches zipfile Deflate64, as Windows Explorer writes it)

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path} is not a readable ZIP archive ({exc})") from None
    with archive:
        ggufs = [i for i in archive.infolist() if i.filename.lower().endswith(".gguf") and not i.is_dir()]
        info = _choose_member(path, ggufs, member)
    name = Path(info.filename).name
    _refuse_split(name, None)

    def open_member() -> IO[bytes]:
        return _ZipMemberReader(path, info)  # type: ignore[return-value]

    label = f"{path}:{info.filename}"
    try:
        with open_member() as stream:
            header = read_header_from_stream(stream, info.file_size, label)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
        raise SourceError(f"cannot read {label}: {exc}") from None
    _refuse_split(name, header)
    in_place = None
    if info.compress_type == zipfile.ZIP_STORED:
        in_place = ModelSource(path, _stored_data_offset(path, info))
    return Source(
        label=label,
        file_name=name,
        size=info.file_size,
        header=header,
        open=open_member,
        in_place=in_place,
        provenance=ZipProvenance(archive=path.name, member=info.filename),
    )


class _ZipMemberReader(io.RawIOBase):
    """A member's decompressed bytes as a stream that also closes its archive."""

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        self._archive = zipfile.ZipFile(path)
        self._stream = self._archive.open(info)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        self._archive.close()
        super().close()


def _choose_member(path: Path, ggufs: list[zipfile.ZipInfo], member: str | None) -> zipfile.ZipInfo:
    names = [i.filename for i in ggufs]
    if member is not None:
        for info in ggufs:
            if member in (info.filename, Path(info.filename).name):
                return info
        listed = ", ".join(names) or "none"
        raise SourceError(f"{path} has no GGUF member {member!r} (GGUF members: {listed})")
    if not ggufs:
        raise SourceError(f"{path} holds no .gguf file")
    if len(ggufs) > 1:
        raise UsageError(f"{path} holds several GGUF files; choose one with --member: {', '.join(names)}")
    return ggufs[0]


def _stored_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    try:
        with path.open("rb") as raw:
            return member_data_offset(raw, info.header_offset)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}:{info.filename}: {exc}") from None


# ------------------------------------------------------------------ Hub


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None]:
    """hf://OWNER/REPO[/PATH/FILE.gguf][@REVISION] -> (repo_id, filename, revision)."""
    rest = spec.removeprefix(HF_PREFIX)
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not revision:
            raise UsageError(f"{spec}: nothing after '@' (expected a branch, tag or commit)")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2:
        raise UsageError(f"{spec}: expected hf://OWNER/REPO/FILE.gguf or hf://OWNER/REPO --quant Q")
    repo_id = "/".join(parts[:2])
    filename = "/".join(parts[2:]) or None
    return repo_id, filename, revision


def _from_hub(spec: str, quant: str | None) -> Source:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, filename, revision = parse_hub_spec(spec)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        if filename is None:
            filename = _choose_by_quant(repo_id, revision, quant, endpoint)
        elif quant:
            raise UsageError("give either a file in the hf:// path or --quant, not both")
        if not filename.lower().endswith(".gguf"):
            raise SourceError(f"{spec}: {filename} is not a .gguf file")
        _refuse_split(filename, None)
        local = Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint))
    except GatedRepoError:
        raise SourceError(
            f"{repo_id} is gated: accept its terms on the Hub, then set HF_TOKEN to a token with access"
        ) from None
    except RepositoryNotFoundError:
        raise SourceError(f"no repository {repo_id} on the Hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise SourceError(f"{repo_id} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise SourceError(f"{repo_id} has no file {filename}") from None
    except LocalEntryNotFoundError as exc:
        raise SourceError(f"cannot reach the Hub to download {repo_id}/{filename}: {exc}") from None
    except HfHubHTTPError as exc:
        raise SourceError(f"the Hub refused {repo_id}/{filename}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise SourceError(f"downloading {repo_id}/{filename} failed: {exc}") from None
    commit = _commit_of(local)
    provenance = HubProvenance(repo=repo_id, file=filename, revision=revision or "main", commit=commit)
    source = _from_file(local, provenance)
    source.label = f"hf://{repo_id}/{filename}"
    source.file_name = Path(filename).name
    return source


def _commit_of(downloaded: Path) -> str | None:
    """huggingface_hub's cache keeps files under snapshots/<commit>/."""
    parts = downloaded.parts
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1]
    return None


def quant_of(filename: str) -> str | None:
    stem = _SPLIT_NAME.sub("", Path(filename).name)
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    match = re.search(r"(?:^|[-_.])((?:IQ|Q|TQ)\d[A-Z0-9_]*|BF16|F16|F32)$", stem, re.IGNORECASE)
    return match.group(1).upper() if match else None


def _choose_by_quant(repo_id: str, revision: str | None, quant: str | None, endpoint: str | None) -> str:
    from huggingface_hub import HfApi

    files = HfApi(endpoint=endpoint).list_repo_files(repo_id, revision=revision)
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    available = sorted({q for f in ggufs if (q := quant_of(f))})
    if not ggufs:
        raise SourceError(f"{repo_id} holds no .gguf file")
    if quant is None:
        if len(ggufs) == 1:
            return ggufs[0]
        raise UsageError(
            f"{repo_id} holds several GGUF files; choose a quantization with --quant "
            f"({', '.join(available) or 'none recognised'}) or name the file: hf://{repo_id}/FILE.gguf"
        )
    wanted = quant.upper()
    matches = [f for f in ggufs if quant_of(f) == wanted]
    firsts = [f for f in matches if not _SPLIT_NAME.search(f) or "-00001-of-" in f]
    if not matches:
        raise SourceError(
            f"{repo_id} has no {wanted} GGUF; available: {', '.join(available) or 'none recognised'}"
        )
    if len(firsts) > 1:
        raise UsageError(f"{repo_id} has several {wanted} GGUFs; name one: {', '.join(firsts)}")
    return firsts[0]


def check_vocabulary(source: Source) -> None:
    """llama.cpp must load the model's vocabulary (and know its architecture)."""
    if source.in_place is None:
        return  # a compressed ZIP member: checked on the built file before it is kept
    check_vocabulary_at(source.in_place, source.label)


def check_vocabulary_at(where: ModelSource, label: str) -> None:
    from llamapack.runtime.llama.model import Model, ModelLoadError, init_backend

    init_backend()
    try:
        Model(where, vocab_only=True).close()
    except ModelLoadError as exc:
        reason = str(exc).rsplit("error loading model: ", 1)[-1]
        raise SourceError(f"llama.cpp cannot load {label}: {reason}") from None
