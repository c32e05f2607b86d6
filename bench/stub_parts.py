"""What each part of a runtime stub costs, compressed, as a Markdown table.

    .venv/bin/python -m bench.stub_parts                 # the host's cached stub
    .venv/bin/python -m bench.stub_parts PATH            # any stub (a Windows .exe too)

Reads the stub's PyInstaller archive (its table of contents gives each entry's
compressed size) and sums the entries by part. The README's stub table comes from it.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from PyInstaller.archive.readers import CArchiveReader

# (part, pattern on the archive entry's name), first match wins.
PARTS = [
    ("llama.cpp Vulkan backend (xz-compressed inside the archive)", r"llama_cpp/gpu/"),
    ("llama.cpp CPU variants (one per instruction set)", r"ggml-cpu"),
    ("llama.cpp (libllama, ggml)", r"llama_cpp/lib/|llama\.dll|ggml"),
    ("Python interpreter", r"libpython|python3\d*\.dll|^Python$"),
    ("Python modules (PYZ: runtime, stdlib, aiohttp, jinja2...)", r"^PYZ"),
    ("Python extension modules (stdlib)", r"lib-dynload/|^[^/]+\.pyd$|base_library"),
    ("aiohttp and its C extensions", r"aiohttp|multidict|yarl|frozenlist|propcache"),
    ("OpenSSL (https, for --ui-mcp-proxy)", r"libcrypto|libssl"),
    ("C++ and OpenMP runtimes", r"libstdc\+\+|libgcc|libgomp|libwinpthread|vcruntime|msvcp"),
    ("msgspec", r"msgspec"),
]
OTHER = "other (libffi, readline, certificates, the chat page...)"


def parts(stub: Path) -> tuple[dict[str, int], int]:
    archive = CArchiveReader(str(stub))
    sizes: dict[str, int] = defaultdict(int)
    for name, (_offset, compressed, _size, _flag, _kind) in archive.toc.items():
        part = next((part for part, pattern in PARTS if re.search(pattern, name)), OTHER)
        sizes[part] += compressed
    return dict(sizes), stub.stat().st_size


def table(stub: Path) -> str:
    sizes, total = parts(stub)
    bootloader = total - sum(sizes.values())
    rows = sorted(sizes.items(), key=lambda item: -item[1])
    lines = ["| part | MB (compressed) |", "|---|---|"]
    lines += [f"| {part} | {size / 1e6:.1f} |" for part, size in rows]
    lines += [f"| PyInstaller's bootloader and archive index | {bootloader / 1e6:.1f} |"]
    lines += [f"| **the stub** | **{total / 1e6:.1f}** |"]
    return "\n".join(lines)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("stub", nargs="?", type=Path, help="a runtime stub (default: the host's cached one)")
    args = parser.parse_args()
    if args.stub is None:
        from llamapack.builder.stub import ensure_stub

        args.stub = ensure_stub().path
    print(table(args.stub))


if __name__ == "__main__":
    main()
