"""The llamapack file format, defined once for the builder (which writes it)
and the runtime (which reads it).

A built file is at once the runtime executable and a ZIP archive::

    [runtime stub, byte for byte: executable image + PyInstaller archive]
    [model.gguf local header, padded] [GGUF bytes, 64 KiB aligned, STORED]
    [manifest.json local header + data] [.args local header + data]
    [the archive's pointer: a copy of its table of contents and a cookie that
     reaches back to the archive in the stub]

With a model of about 4 GiB or more, which no 32-bit cookie reaches back over, the
stub is split instead: its image, the model and the other entries, then its
archive (an ELF's section headers with it, offsets moved; a Mach-O's image signed
again without it, see `macho`). Only a Mach-O whose signature cannot be renewed
(a real identity, entitlements, or code changed since signing) is followed by a
whole copy of its archive (see `executables`).
    [ZIP central directory] [ZIP64 end records when needed] [end record]

Why this order:

* PyInstaller's bootloader scans backwards from the end for its cookie at
  every launch; the pointer puts it a few KiB from the end however big the
  model is, and the runtime is in the file once (see `executables`).
* ZIP readers start from the end record and follow absolute offsets, so the
  stub before the entries and the pointer between the entries and the
  central directory are invisible to them: `unzip -l` and `zipfile` see three
  members.
* llama.cpp maps tensors at their absolute file offsets, so the GGUF data must
  be aligned in the file; 64 KiB also satisfies every page size in use.
* A Windows file that would reach 4 GiB keeps the model beside it instead
  (`ModelRecord.external`), since Windows will not start it.

The parts, each in its own module and all importable from here:

* `manifest`: manifest.json as typed records (`Manifest` and its parts), its
  format version, and `FormatError`;
* `zip_layout`: where each ZIP entry goes and the order a file is written in;
* `executables`: the runtime stub, its executable header (ELF, PE, Mach-O) and
  its PyInstaller archive;
* `macho`: Mach-O load commands and the ad-hoc code signature;
* `layout`: reading a built file back (`read_layout`, `classify`) and `.args`;
* `magic`: every signature the format writes or looks for.
"""

from __future__ import annotations

from llamapack.runtime.fileformat.executables import (
    PYI_COOKIE,
    STUB_TAIL_LIMIT,
    ExecutableHeader,
    Stub,
    StubError,
    executable_kind,
    read_executable_header,
    read_stub,
)
from llamapack.runtime.fileformat.layout import (
    USER_ARGS_MARKER,
    Layout,
    ModelSource,
    classify,
    decode_args,
    encode_args,
    merge_args,
    read_layout,
)
from llamapack.runtime.fileformat.magic import GGUF_MAGIC, PYI_COOKIE_MAGIC
from llamapack.runtime.fileformat.manifest import (
    FORMAT_VERSION,
    ChatTemplateChoice,
    Defaults,
    EngineRecord,
    FormatError,
    GpuLibrary,
    GpuRuntime,
    HubProvenance,
    LlamaCppBuild,
    LocalProvenance,
    Manifest,
    ModelRecord,
    Provenance,
    UiMode,
    ZipProvenance,
    provenance_from_json,
)
from llamapack.runtime.fileformat.zip_layout import (
    ARGS_NAME,
    MANIFEST_NAME,
    MODEL_ALIGNMENT,
    Member,
    PayloadEntry,
    Plan,
    central_directory,
    member_data_offset,
    payload_size,
    place_model,
    plan_file,
)

__all__ = [
    "ARGS_NAME",
    "FORMAT_VERSION",
    "GGUF_MAGIC",
    "MANIFEST_NAME",
    "MODEL_ALIGNMENT",
    "PYI_COOKIE",
    "PYI_COOKIE_MAGIC",
    "STUB_TAIL_LIMIT",
    "USER_ARGS_MARKER",
    "ChatTemplateChoice",
    "Defaults",
    "EngineRecord",
    "ExecutableHeader",
    "FormatError",
    "GpuLibrary",
    "GpuRuntime",
    "HubProvenance",
    "Layout",
    "LlamaCppBuild",
    "LocalProvenance",
    "Manifest",
    "Member",
    "ModelRecord",
    "ModelSource",
    "PayloadEntry",
    "Plan",
    "Provenance",
    "Stub",
    "StubError",
    "UiMode",
    "ZipProvenance",
    "central_directory",
    "classify",
    "decode_args",
    "encode_args",
    "executable_kind",
    "member_data_offset",
    "merge_args",
    "payload_size",
    "place_model",
    "plan_file",
    "provenance_from_json",
    "read_executable_header",
    "read_layout",
    "read_stub",
]
