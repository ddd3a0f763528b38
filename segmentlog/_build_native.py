"""cffi build script of the C core (out-of-line API mode), named in setup.py's cffi_modules.

It compiles csrc/crc32c.c, csrc/segmentlog.c, csrc/cursor.c and csrc/committer.c into the extension
``segmentlog._native`` and declares the narrow ABI of csrc/segmentlog.h to cffi. It
never runs at import time: setuptools runs it at install, and
``python -P segmentlog/_build_native.py`` builds the extension in place for development
(``-P``: the package's own ``inspect`` module must not shadow the standard one). Flags:
``-O2`` always; ``-Wall -Wextra -Werror`` only when ``SEGMENTLOG_STRICT_BUILD=1`` (the
test build), so a user's newer compiler with new warnings still installs the package.
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

# Paths relative to the project root (setuptools runs build scripts from there and
# rejects absolute source paths); __main__ below changes to the root first.
CSRC = "csrc"
SOURCES = [f"{CSRC}/crc32c.c", f"{CSRC}/segmentlog.c", f"{CSRC}/cursor.c",
           f"{CSRC}/committer.c"]
DEPENDS = [f"{CSRC}/segmentlog.h"]

CDEF = """
#define SL_FORMAT_VERSION ...
#define SL_SEGMENT_HEADER_SIZE ...
#define SL_FRAME_MARKER ...
#define SL_FRAME_HEADER_SIZE ...
#define SL_FRAME_CRC_COVERS ...
#define SL_FRAME_ALIGN ...
#define SL_MAX_PAYLOAD ...

#define SL_SCAN_OK ...
#define SL_SCAN_ZERO ...
#define SL_SCAN_TRUNCATED ...
#define SL_SCAN_BAD_MARKER ...
#define SL_SCAN_BAD_CRC ...
#define SL_SCAN_BAD_FLAGS ...
#define SL_SCAN_BAD_SEQ ...

#define SL_OK ...
#define SL_ERR_ARG ...
#define SL_ERR_TOO_LARGE ...
#define SL_ERR_ALIGN ...
#define SL_ERR_NO_SPACE ...
#define SL_ERR_SEQ ...
#define SL_ERR_CLOSED ...
#define SL_COMMIT_SETTLE ...
#define SL_COMMIT_MAX_SEQ ...

#define SL_OPT_LIMIT_BYTES ...
#define SL_OPT_CONTINUE ...

typedef struct sl_scan_result {
    uint64_t end;
    uint64_t next_seq;
    uint64_t count;
    uint64_t nbytes;
    int status;
} sl_scan_result;

uint32_t sl_crc32c(uint32_t crc, const char *buf, uint64_t len);
const char *sl_crc32c_impl(void);
int sl_crc32c_force_portable(int on);
int64_t sl_frame_one(char *dst, uint64_t cap, uint64_t off, const char *payload,
                     uint64_t len, uint64_t seq);
int64_t sl_frame_batch(char *dst, uint64_t cap, uint64_t off, const char *src,
                       uint64_t src_len, const uint64_t *lens, uint64_t n,
                       uint64_t first_seq);
uint64_t sl_frames_size(const uint64_t *lens, uint64_t n);
int sl_scan(const char *buf, uint64_t len, uint64_t off, uint64_t expected_seq,
            uint64_t max_records, uint64_t max_bytes, unsigned int flags,
            uint64_t *out_off, uint64_t *out_len, sl_scan_result *res);
int sl_resync(const char *buf, uint64_t len, uint64_t off, uint64_t min_seq,
              uint64_t max_seq, uint64_t *out_off, uint64_t *out_seq);
int64_t sl_unpack_format(const uint64_t *offs, const uint64_t *lens, uint64_t n, char *out,
                         uint64_t cap);
typedef struct sl_cursor {
    char *base;
    uint64_t cap;
    uint64_t off;
    uint64_t next_seq;
    uint64_t window;
    int32_t lock;
} sl_cursor;
int64_t sl_cursor_append(sl_cursor *c, const char *payload, uint64_t len);
void sl_cursor_open(sl_cursor *c, char *base, uint64_t cap, uint64_t off, uint64_t next_seq,
                    uint64_t window);
void sl_cursor_close(sl_cursor *c);
typedef struct sl_committer sl_committer;
typedef struct sl_commit_state {
    uint64_t off;
    uint64_t next_seq;
    uint64_t durable_next;
    uint64_t rounds;
    int error;
} sl_commit_state;
sl_committer *sl_commit_new(void);
void sl_commit_free(sl_committer *c);
void sl_commit_open(sl_committer *c, int fd, char *buf, uint64_t buf_cap, uint64_t off,
                    uint64_t window, uint64_t next_seq, uint64_t durable_next,
                    uint64_t segment_id, int mark, uint64_t gather_ns);
void sl_commit_close(sl_committer *c, sl_commit_state *out);
void sl_commit_retire(sl_committer *c);
int64_t sl_commit_append(sl_committer *c, const char *payload, uint64_t len);
void sl_commit_fail_next(sl_committer *c, int err);
const char *sl_strerror(int code);
"""


def _compile_args() -> list[str]:
    if sys.platform == "win32":  # MSVC spells its flags differently and has no -Werror
        return ["/O2"]
    args = ["-O2"]
    if os.environ.get("SEGMENTLOG_STRICT_BUILD", "") not in ("", "0"):
        args += ["-Wall", "-Wextra", "-Werror"]
    return args


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "segmentlog._native",
    '#include "segmentlog.h"',
    sources=SOURCES,
    depends=DEPENDS,
    include_dirs=[CSRC],
    extra_compile_args=_compile_args(),
)

if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ffibuilder.compile(verbose=True)
