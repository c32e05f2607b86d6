"""The manifest (manifest.json inside every built file) as typed, frozen records.

The builder writes a `Manifest`; the runtime, `inspect`, `verify`, `unpack` and
`upgrade` read one. Nothing else handles the JSON, so a field is named in one
place and a reader cannot disagree with the writer about its type.

The JSON is kept exactly as llamapack has always written it (`encode` sorts the
keys), because files are compared byte for byte: two builds of the same inputs
must be identical, and an upgrade back to the first engine gives back the first
file. So `to_json` leaves out what older files left out (an optional field is
None when its key is absent), and `from_json(x).to_json() == x` holds for
every manifest any llamapack has written. Files written before `source` and
`defaults` (the first builds), before the llama.cpp build was recorded, or
before `ui_mode` (the page's opening mode) still read; keys this llamapack
does not know are ignored, as a later llamapack may add some without changing
the format version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

FORMAT_VERSION = 1

JSONObject = dict[str, Any]
_T = TypeVar("_T")


class FormatError(Exception):
    """The file is not a llamapack file, or is damaged."""


class _Fields:
    """One JSON object being read; messages name each field by its path ("model.sha256")."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise FormatError(f"manifest.json's {where} is not a JSON object")
        self._data: dict[str, object] = value
        self._where = where

    def _name(self, key: str) -> str:
        return key if self._where == "top level" else f"{self._where}.{key}"

    def _wrong(self, key: str, expected: str) -> FormatError:
        return FormatError(f"manifest.json's {self._name(key)} is not {expected}")

    def _get(self, key: str, expected: str, check: Callable[[object], bool], optional: bool) -> object:
        if key not in self._data:
            if optional:
                return None
            raise FormatError(f"manifest.json has no {self._name(key)}")
        value = self._data[key]
        if value is None and optional:
            return None
        if not check(value):
            raise self._wrong(key, expected)
        return value

    def has(self, key: str) -> bool:
        return key in self._data

    def text(self, key: str) -> str:
        return str(self._get(key, "a string", _is_str, optional=False))

    def optional_text(self, key: str) -> str | None:
        """A string, or None when the key is absent or null."""
        value = self._get(key, "a string", _is_str, optional=True)
        return None if value is None else str(value)

    def nullable_text(self, key: str) -> str | None:
        """A key that is always written, but may be null."""
        self._require(key)
        return self.optional_text(key)

    def integer(self, key: str) -> int:
        value = self._get(key, "an integer", _is_int, optional=False)
        assert isinstance(value, int)
        return value

    def optional_integer(self, key: str) -> int | None:
        value = self._get(key, "an integer", _is_int, optional=True)
        assert value is None or isinstance(value, int)
        return value

    def nullable_integer(self, key: str) -> int | None:
        self._require(key)
        return self.optional_integer(key)

    def optional_number(self, key: str) -> float | None:
        # Kept as read (an int stays an int) so the JSON written back is the same.
        value = self._get(key, "a number", _is_number, optional=True)
        assert value is None or isinstance(value, (int, float))
        return value

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key, "a list of strings", _is_text_list, optional=True)
        assert value is None or isinstance(value, list)
        return tuple(str(item) for item in value or ())

    def record(self, key: str, parse: Callable[[object], _T]) -> _T:
        self._require(key)
        return parse(self._data[key])

    def optional_record(self, key: str, parse: Callable[[object], _T]) -> _T | None:
        return parse(self._data[key]) if key in self._data else None

    def _require(self, key: str) -> None:
        if key not in self._data:
            raise FormatError(f"manifest.json has no {self._name(key)}")


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _without_none(**fields: object) -> JSONObject:
    return {key: value for key, value in fields.items() if value is not None}


# ------------------------------------------------------------ the model


@dataclass(frozen=True)
class ModelRecord:
    """The GGUF a file carries, as its header described it when the file was built."""

    file: str  # the GGUF's file name, which is also its ZIP member's name
    size: int
    sha256: str
    offset: int  # where its bytes start in the built file; 0 when beside it
    name: str | None  # general.name, when the GGUF has one
    architecture: str
    parameters: int
    quantization: str
    context_length: int | None  # the trained context, when the GGUF says
    # The GGUF's file name beside the executable, for a Windows file that would
    # reach 4 GiB; None (no key) when the model is inside.
    external: str | None = None

    def to_json(self) -> JSONObject:
        fields: JSONObject = {
            "file": self.file,
            "size": self.size,
            "name": self.name,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "sha256": self.sha256,
            "offset": self.offset,
        }
        return fields | _without_none(external=self.external)

    @classmethod
    def from_json(cls, value: object) -> ModelRecord:
        fields = _Fields(value, "model")
        return cls(
            file=fields.text("file"),
            size=fields.integer("size"),
            sha256=fields.text("sha256"),
            offset=fields.integer("offset"),
            name=fields.nullable_text("name"),
            architecture=fields.text("architecture"),
            parameters=fields.integer("parameters"),
            quantization=fields.text("quantization"),
            context_length=fields.nullable_integer("context_length"),
            external=fields.optional_text("external"),
        )


# ------------------------------------------------------------ the engine


@dataclass(frozen=True)
class LlamaCppBuild:
    """A llama.cpp build: ggml's version and the llama.cpp commit it was built from
    ("0c1e570", "-dirty" when llama-cpp-python patched its tree)."""

    version: str
    commit: str

    def summary(self) -> str:
        return f"llama.cpp {self.commit} (ggml {self.version})"

    def to_json(self) -> JSONObject:
        return {"version": self.version, "commit": self.commit}

    @classmethod
    def from_json(cls, value: object) -> LlamaCppBuild:
        fields = _Fields(value, "runtime.llama_cpp")
        return cls(version=fields.text("version"), commit=fields.text("commit"))


@dataclass(frozen=True)
class EngineRecord:
    """What runs the model: the versions inside the stub, the system it is for,
    and the stub's hash. Stored under "runtime", the name files have always used."""

    llamapack: str
    llama_cpp_python: str
    target: str  # "linux-x86_64", "windows-x86_64", ...
    # None for files built before it was recorded, and for files built for another
    # system, whose stub was built elsewhere: the builder records no guess.
    llama_cpp: LlamaCppBuild | None = None
    stub_sha256: str | None = None  # filled in when the file is written

    def to_json(self) -> JSONObject:
        fields: JSONObject = {
            "llamapack": self.llamapack,
            "llama_cpp_python": self.llama_cpp_python,
            "target": self.target,
        }
        if self.llama_cpp is not None:
            fields["llama_cpp"] = self.llama_cpp.to_json()
        return fields | _without_none(stub_sha256=self.stub_sha256)

    @classmethod
    def from_json(cls, value: object) -> EngineRecord:
        fields = _Fields(value, "runtime")
        return cls(
            llamapack=fields.text("llamapack"),
            llama_cpp_python=fields.text("llama_cpp_python"),
            target=fields.text("target"),
            llama_cpp=fields.optional_record("llama_cpp", LlamaCppBuild.from_json),
            stub_sha256=fields.optional_text("stub_sha256"),
        )


# ------------------------------------------------------------ where the model came from


@dataclass(frozen=True)
class LocalProvenance:
    """A .gguf file given by path; only its name is kept, not where it lay."""

    file: str

    def to_json(self) -> JSONObject:
        return {"type": "local", "file": self.file}


@dataclass(frozen=True)
class ZipProvenance:
    """A GGUF inside a .zip archive."""

    archive: str  # the archive's file name
    member: str  # the member's path inside it

    def to_json(self) -> JSONObject:
        return {"type": "zip", "archive": self.archive, "member": self.member}


@dataclass(frozen=True)
class HubProvenance:
    """A file from a Hugging Face repository."""

    repo: str  # "owner/name"
    file: str  # the path inside the repository
    revision: str  # as asked for ("main" when none was)
    commit: str | None  # the commit it resolved to, when huggingface_hub's cache says

    def to_json(self) -> JSONObject:
        return {"type": "huggingface", "repo": self.repo, "file": self.file,
                "revision": self.revision, "commit": self.commit}  # fmt: skip


Provenance = LocalProvenance | ZipProvenance | HubProvenance


def provenance_from_json(value: object) -> Provenance:
    fields = _Fields(value, "source")
    kind = fields.text("type")
    if kind == "local":
        return LocalProvenance(file=fields.text("file"))
    if kind == "zip":
        return ZipProvenance(archive=fields.text("archive"), member=fields.text("member"))
    if kind == "huggingface":
        return HubProvenance(
            repo=fields.text("repo"),
            file=fields.text("file"),
            revision=fields.text("revision"),
            commit=fields.nullable_text("commit"),
        )
    raise FormatError(f"manifest.json's source.type {kind!r} is not local, zip or huggingface")


# ------------------------------------------------------------ settings


TemplateSource = Literal["gguf", "builtin", "jinja"]


@dataclass(frozen=True)
class ChatTemplateChoice:
    """Which chat template turns messages into a prompt, and why it was chosen: the
    GGUF's own, one of llama.cpp's built-in ones by name, or a Jinja template given
    at build time, whose text the manifest carries. Files from before "jinja" read
    unchanged; an older llamapack refuses a "jinja" file in one line."""

    source: TemplateSource
    name: str  # "gguf" for the GGUF's own; the built-in's name; where a Jinja text came from
    reason: str | None = None  # every built file says why; a `-m` run has no reason
    text: str | None = None  # the Jinja source: for "jinja" only

    def __post_init__(self) -> None:
        if (self.source == "jinja") != (self.text is not None):
            raise ValueError("a chat template's text goes with source 'jinja', and only with it")

    def to_json(self) -> JSONObject:
        return {"source": self.source, "name": self.name} | _without_none(reason=self.reason, text=self.text)

    @classmethod
    def from_json(cls, value: object) -> ChatTemplateChoice:
        fields = _Fields(value, "chat_template")
        source = fields.text("source")
        if source == "gguf":
            return cls("gguf", fields.text("name"), fields.optional_text("reason"))
        if source == "builtin":
            return cls("builtin", fields.text("name"), fields.optional_text("reason"))
        if source == "jinja":
            return cls("jinja", fields.text("name"), fields.optional_text("reason"), fields.text("text"))
        raise FormatError(f"manifest.json's chat_template.source {source!r} is not gguf, builtin or jinja")


@dataclass(frozen=True)
class Defaults:
    """The build options a file starts with (they are in .args too; these say what was asked)."""

    ctx_size: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    args: tuple[str, ...] = ()  # the extra arguments given with --args

    def to_json(self) -> JSONObject:
        # Only what was set: an option left out reads the same as never offered.
        return _without_none(
            ctx_size=self.ctx_size,
            temperature=self.temperature,
            system_prompt=self.system_prompt,
            args=list(self.args) if self.args else None,
        )

    @classmethod
    def from_json(cls, value: object) -> Defaults:
        fields = _Fields(value, "defaults")
        return cls(
            ctx_size=fields.optional_integer("ctx_size"),
            temperature=fields.optional_number("temperature"),
            system_prompt=fields.optional_text("system_prompt"),
            args=fields.text_list("args"),
        )


UiModeName = Literal["chat", "completion"]
UI_MODES: tuple[UiModeName, ...] = ("chat", "completion")


@dataclass(frozen=True)
class UiMode:
    """The mode the page opens in: "chat" for a model made to chat, "completion"
    (a text editor the model continues) for a base model, and why. Files built
    before it was recorded have none: the server decides from the chat template."""

    mode: UiModeName
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in UI_MODES:
            raise ValueError(f"a page mode is chat or completion, not {self.mode!r}")

    def to_json(self) -> JSONObject:
        return {"mode": self.mode} | _without_none(reason=self.reason)

    @classmethod
    def from_json(cls, value: object) -> UiMode:
        fields = _Fields(value, "ui_mode")
        mode = fields.text("mode")
        if mode == "chat":
            return cls("chat", fields.optional_text("reason"))
        if mode == "completion":
            return cls("completion", fields.optional_text("reason"))
        raise FormatError(f"manifest.json's ui_mode.mode {mode!r} is not chat or completion")


# ------------------------------------------------------------ a GPU runtime carried in the file


@dataclass(frozen=True)
class GpuLibrary:
    """One library of a GPU runtime: an xz-compressed ZIP member of the file."""

    file: str  # its name once unpacked ("libcublas.so.13")
    member: str  # the ZIP member holding it, xz-compressed ("gpu/cuda/libcublas.so.13.xz")
    sha256: str  # of the unpacked library
    size: int  # unpacked
    packed_size: int  # the member's size

    def to_json(self) -> JSONObject:
        return {"file": self.file, "member": self.member, "sha256": self.sha256,
                "size": self.size, "packed_size": self.packed_size}  # fmt: skip

    @classmethod
    def from_json(cls, value: object) -> GpuLibrary:
        fields = _Fields(value, "gpu_runtime.libraries[]")
        return cls(
            file=fields.text("file"),
            member=fields.text("member"),
            sha256=fields.text("sha256"),
            size=fields.integer("size"),
            packed_size=fields.integer("packed_size"),
        )


@dataclass(frozen=True)
class GpuRuntime:
    """A GPU backend too big for every file (CUDA: ggml-cuda with the CUDA runtime
    and cuBLAS), added to this one by `llamapack build --gpu-runtime`."""

    backend: str  # "cuda"
    libraries: tuple[GpuLibrary, ...]  # in load order: each needs only those before it; ggml's last

    def to_json(self) -> JSONObject:
        return {"backend": self.backend, "libraries": [library.to_json() for library in self.libraries]}

    @classmethod
    def from_json(cls, value: object) -> GpuRuntime:
        fields = _Fields(value, "gpu_runtime")
        libraries = fields.record("libraries", _object_list("gpu_runtime.libraries"))
        return cls(
            backend=fields.text("backend"), libraries=tuple(GpuLibrary.from_json(item) for item in libraries)
        )


def _object_list(where: str) -> Callable[[object], list[object]]:
    def parse(value: object) -> list[object]:
        if not isinstance(value, list) or not value:
            raise FormatError(f"manifest.json's {where} is not a non-empty list")
        return value

    return parse


# ------------------------------------------------------------ the manifest


@dataclass(frozen=True)
class Manifest:
    """Everything a built file says about itself."""

    name: str  # the model's name in the chat page and the API
    engine: EngineRecord
    model: ModelRecord
    chat_template: ChatTemplateChoice
    source: Provenance | None = None  # None in files built before it was recorded
    defaults: Defaults | None = None  # likewise
    ui_mode: UiMode | None = None  # None in files built before it was recorded
    gpu_runtime: GpuRuntime | None = None  # None unless built with --gpu-runtime

    def to_json(self) -> JSONObject:
        fields: JSONObject = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "runtime": self.engine.to_json(),
        }
        if self.source is not None:
            fields["source"] = self.source.to_json()
        fields["model"] = self.model.to_json()
        fields["chat_template"] = self.chat_template.to_json()
        if self.defaults is not None:
            fields["defaults"] = self.defaults.to_json()
        if self.ui_mode is not None:
            fields["ui_mode"] = self.ui_mode.to_json()
        if self.gpu_runtime is not None:
            fields["gpu_runtime"] = self.gpu_runtime.to_json()
        return fields

    @classmethod
    def from_json(cls, value: object) -> Manifest:
        fields = _Fields(value, "top level")
        check_format_version(value)
        return cls(
            name=fields.text("name"),
            engine=fields.record("runtime", EngineRecord.from_json),
            model=fields.record("model", ModelRecord.from_json),
            chat_template=fields.record("chat_template", ChatTemplateChoice.from_json),
            source=fields.optional_record("source", provenance_from_json),
            defaults=fields.optional_record("defaults", Defaults.from_json),
            ui_mode=fields.optional_record("ui_mode", UiMode.from_json),
            gpu_runtime=fields.optional_record("gpu_runtime", GpuRuntime.from_json),
        )

    def encode(self) -> bytes:
        """The bytes of manifest.json: sorted keys and a fixed layout, so the same
        manifest always gives the same bytes."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"manifest.json is not JSON ({exc})") from None
        return cls.from_json(value)

    def with_model_placed(self, sha256: str, offset: int, external: str | None = None) -> Manifest:
        """The manifest once the model is written: its hash, its offset, and the
        file beside the executable when it is not inside."""
        return replace(self, model=replace(self.model, sha256=sha256, offset=offset, external=external))


def check_format_version(value: object) -> None:
    """Refuse, before reading any field, a manifest of a format this llamapack does
    not know: a newer format may mean anything, so its fields are not guessed at."""
    fields = _Fields(value, "top level")
    if not fields.has("format"):
        raise FormatError("manifest.json has no format version")
    version = fields.integer("format")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"file format {version} is newer than this llamapack reads (format {FORMAT_VERSION}); "
            "use a newer llamapack"
        )
    if version != FORMAT_VERSION:
        raise FormatError(f"file format {version} is unknown (this llamapack reads format {FORMAT_VERSION})")
