"""Every signature the file format writes or looks for, defined once.

The builder writes these and the runtime, `inspect` and `verify` look for them;
one definition keeps a writer and a reader from drifting apart.
"""

from __future__ import annotations

# A GGUF file starts with these four bytes (and so must the model entry's data).
GGUF_MAGIC = b"GGUF"

# The cookie that ends a PyInstaller archive. Split so this source file never
# holds it whole: PyInstaller's bootloader scans for it.
PYI_COOKIE_MAGIC = b"MEI\x0c" + b"\x0b\x0a\x0b\x0e"

# ZIP record signatures (APPNOTE 6.3.x), as little-endian 32-bit values.
ZIP_LOCAL_SIG = 0x04034B50
ZIP_CENTRAL_SIG = 0x02014B50
ZIP_END_SIG = 0x06054B50
ZIP64_END_SIG = 0x06064B50
ZIP64_LOCATOR_SIG = 0x07064B50

# Executable images a runtime stub may be.
ELF_MAGIC = b"\x7fELF"
DOS_MAGIC = b"MZ"  # a PE file starts with a DOS header
PE_SIGNATURE = b"PE\0\0"
MACHO_64_MAGIC = b"\xcf\xfa\xed\xfe"  # 64-bit Mach-O, little-endian
