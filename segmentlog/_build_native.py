"""cffi build script of the C core (out-of-line API mode), named in setup.py's cffi_modules.

It compiles csrc/crc32c.c, csrc/segmentlog.c, csrc/cursor.c and csrc/committer.c into the extension
``segmentlog._native`` and declares the narrow ABI of csrc/segmentlog.h to cffi (the
declarations are read from the header itself: ``cdef_from_header``), plus the binding's
one adapter (``GLUE``). It
never runs at import time: setuptools runs it at install, and
``python segmentlog/_build_native.py`` builds the extension in place for development
(no package module shadows a standard one any more: ``inspect.py`` became
``examine.py``). Flags:
``-O2`` always; ``SEGMENTLOG_STRICT_BUILD=1`` makes the test build: ``-Wall -Wextra
-Werror`` (so a user's newer compiler with new warnings still installs the package) and
``SL_TESTING``, which compiles in the test hooks of segmentlog.h: the shipped extension
has none (tests/test_format.py builds one without them and checks).
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


# The binding's one adapter, compiled into the extension only (static: not part of the
# library's ABI). SegmentLog.append's fast path with fsync="never"/"interval" is this
# one call; reading the sequence number from an out-parameter cell in Python would add
# a cell per thread in flight and a second crossing (tests/test_backends.py holds it to
# sl_cursor_append). Sequence numbers stop at SL_APPEND_MAX_SEQ, so they fit int64_t.
GLUE = """
/* sl_cursor_append for Python: the record's sequence number, or the negative status. */
static int64_t slpy_cursor_append(sl_cursor *c, const char *payload, uint64_t len) {
    uint64_t seq = 0;
    sl_status rc = sl_cursor_append(c, payload, len, &seq);
    return rc == SL_OK ? (int64_t)seq : (int64_t)rc;
}
"""


def cdef_from_header(text: str, testing: bool = False) -> str:
    """The cffi declarations of csrc/segmentlog.h, derived from it (never a hand copy).

    Comments and preprocessor lines go; a value-like integer ``#define SL_*`` becomes
    ``#define SL_* ...`` (cffi reads its value from the compiled header); macros with
    arguments and string constants are not part of the ABI; the ``extern "C"`` guards
    of C++ are skipped, and so are the test hooks (``#ifdef SL_TESTING``) unless
    ``testing``. Typedefs, enums and prototypes are kept as written.
    """
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"\\\n", " ", text)  # join continued macro lines
    out, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#ifdef __cplusplus") or (
            stripped.startswith("#ifdef SL_TESTING") and not testing
        ):
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


def cdef_of_glue(source: str) -> str:
    """The prototypes of the static functions of ``GLUE``, for cffi."""
    return "".join(f"{m.group(1).strip()};\n"
                   for m in re.finditer(r"^static\s+([^{;]*\))\s*\{", source, re.M))


def testing_build() -> bool:
    """Whether this is the test build (SEGMENTLOG_STRICT_BUILD=1): test hooks compiled in."""
    return os.environ.get("SEGMENTLOG_STRICT_BUILD", "") not in ("", "0")


def make_builder(module: str = "segmentlog._native", testing: bool | None = None,
                 root: str = "") -> FFI:
    """The cffi builder of the extension ``module``; ``testing`` (default: the
    environment's choice) compiles in the test hooks. Paths are relative to the project
    root (as setuptools wants them) unless ``root`` names it."""
    testing = testing_build() if testing is None else testing
    builder = FFI()
    builder.cdef(cdef_from_header(_read_header(root), testing) + cdef_of_glue(GLUE))
    builder.set_source(
        module,
        '#include "segmentlog.h"\n' + GLUE,
        sources=[os.path.join(root, source) for source in SOURCES],
        depends=[os.path.join(root, HEADER)],
        include_dirs=[os.path.join(root, CSRC)],
        define_macros=[("SL_TESTING", "1")] if testing else [],
        extra_compile_args=_compile_args(),
    )
    return builder


def _read_header(root: str = "") -> str:
    with open(os.path.join(root, HEADER), encoding="utf-8") as f:
        return f.read()


def _compile_args() -> list[str]:
    if sys.platform == "win32":  # MSVC spells its flags differently and has no -Werror
        return ["/O2"]
    args = ["-O2"]
    if testing_build():
        args += ["-Wall", "-Wextra", "-Werror"]
    return args


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
