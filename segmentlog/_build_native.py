"""cffi build script of the C core (out-of-line API mode), named in setup.py's cffi_modules.

It compiles csrc/crc32c.c, csrc/segmentlog.c, csrc/cursor.c and csrc/committer.c into the extension
``segmentlog._native`` and declares the narrow ABI of csrc/segmentlog.h to cffi (the
declarations are read from the header itself: ``cdef_from_header``). It
never runs at import time: setuptools runs it at install, and
``python segmentlog/_build_native.py`` builds the extension in place for development
(no package module shadows a standard one any more: ``inspect.py`` became
``examine.py``). Flags:
``-O2`` always; ``-Wall -Wextra -Werror`` only when ``SEGMENTLOG_STRICT_BUILD=1`` (the
test build), so a user's newer compiler with new warnings still installs the package.
"""

from __future__ import annotations

import os
import re
import sys

from cffi import FFI

# Paths relative to the project root (setuptools runs build scripts from there and
# rejects absolute source paths); __main__ below changes to the root first.
CSRC = "csrc"
SOURCES = [f"{CSRC}/crc32c.c", f"{CSRC}/segmentlog.c", f"{CSRC}/cursor.c",
           f"{CSRC}/committer.c"]

HEADER = f"{CSRC}/segmentlog.h"


def cdef_from_header(text: str) -> str:
    """The cffi declarations of csrc/segmentlog.h, derived from it (never a hand copy).

    Comments and preprocessor lines go; a value-like integer ``#define SL_*`` becomes
    ``#define SL_* ...`` (cffi reads its value from the compiled header); macros with
    arguments and string constants are not part of the ABI; the ``extern "C"`` guards
    of C++ are skipped. Typedefs and prototypes are kept as written.
    """
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"\\\n", " ", text)  # join continued macro lines
    out, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#ifdef __cplusplus"):
            skipping = True
        elif skipping:
            skipping = not stripped.startswith("#endif")
        elif stripped.startswith("#"):
            m = re.match(r"#\s*define\s+(SL_[A-Z0-9_]+)\s+([^\s\"].*)$", stripped)
            if m and "(" not in m.group(1):
                out.append(f"#define {m.group(1)} ...")
        elif stripped:
            out.append(line.rstrip())
    return "\n".join(out) + "\n"


def _read_header() -> str:
    with open(HEADER, encoding="utf-8") as f:
        return f.read()


def _compile_args() -> list[str]:
    if sys.platform == "win32":  # MSVC spells its flags differently and has no -Werror
        return ["/O2"]
    args = ["-O2"]
    if os.environ.get("SEGMENTLOG_STRICT_BUILD", "") not in ("", "0"):
        args += ["-Wall", "-Wextra", "-Werror"]
    return args


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header(_read_header()))
ffibuilder.set_source(
    "segmentlog._native",
    '#include "segmentlog.h"',
    sources=SOURCES,
    depends=[HEADER],
    include_dirs=[CSRC],
    extra_compile_args=_compile_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
