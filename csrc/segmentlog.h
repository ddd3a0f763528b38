/* segmentlog C core: CRC32C, framing a batch, scanning a buffer, resynchronising.
 *
 * FORMAT.md is the specification; the constants below only name its numbers, and
 * tests/test_format.py checks that they equal segmentlog/_format.py.
 *
 * The ABI is deliberately narrow and boring (STYLE.md section 3):
 *   - every exported symbol starts with sl_;
 *   - byte buffers are (pointer, length) pairs typed char, so cffi passes Python bytes
 *     without a copy; offsets and lengths are uint64_t;
 *   - a function that can fail returns an sl_status (0 is SL_OK, failures are negative
 *     SL_ERR_*, sl_strerror names each) and hands its results back through
 *     out-parameters, the last arguments: a return value never mixes a result with a
 *     code;
 *   - the caller owns every buffer; the state kept between calls sits behind two opaque
 *     handles, the append cursor (sl_cursor, csrc/cursor.c) and the group committer
 *     (sl_committer, csrc/committer.c), each made by its _new and freed by its _free;
 *   - test hooks exist only in a build with SL_TESTING defined (the tests' build), never
 *     in the shipped extension.
 * Policy (rotation, recovery, retention) lives in Python. Only the committer touches a
 * file descriptor: pwrite and fdatasync of the segment Python hands it.
 */
#ifndef SEGMENTLOG_H
#define SEGMENTLOG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* FORMAT.md: format version and segment header. */
#define SL_FORMAT_VERSION 1
#define SL_SEGMENT_MAGIC "SEGLOG\x1a\n"
#define SL_SEGMENT_HEADER_SIZE 32

/* FORMAT.md: record frame. */
#define SL_FRAME_MARKER 0x5AA55CD3u
#define SL_FRAME_HEADER_SIZE 24
#define SL_FRAME_CRC_COVERS 20 /* the CRC covers header bytes [0, 20), then the payload */
#define SL_FRAME_ALIGN 8
#define SL_MAX_PAYLOAD 0xFFFFFFFFu

/* Bytes one frame of `length` payload bytes occupies, padding included. */
#define SL_FRAME_SIZE(length) \
    ((((uint64_t)(length)) + SL_FRAME_HEADER_SIZE + SL_FRAME_ALIGN - 1) & \
     ~(uint64_t)(SL_FRAME_ALIGN - 1))

/* FORMAT.md, "Scanning": why a scan stopped (segmentlog/_format.py SCAN_*). */
#define SL_SCAN_OK 0          /* stopped at max_records / max_bytes, or at the end given */
#define SL_SCAN_ZERO 1        /* a zero marker: preallocated space, the end of written data */
#define SL_SCAN_TRUNCATED 2   /* the frame (or its header) extends past the end given */
#define SL_SCAN_BAD_MARKER 3  /* a non-zero word that is not the frame marker */
#define SL_SCAN_BAD_CRC 4     /* the checksum does not match header + payload */
#define SL_SCAN_BAD_FLAGS 5   /* checksum fine, flags this version does not know */
#define SL_SCAN_BAD_SEQ 6     /* checksum fine, not the expected sequence number */

/* Status codes (sl_strerror names them). An out-parameter is written only when the
 * status says so: on SL_OK, and *seq of sl_commit_append on SL_NOT_DURABLE too. */
typedef enum sl_status {
    SL_OK = 0,
    SL_NOT_FOUND = 1,      /* sl_resync: no frame qualifies (an answer, not an error) */
    SL_NOT_DURABLE = 2,    /* sl_commit_append: appended as *seq, not seen durable */
    SL_ERR_ARG = -1,       /* a NULL pointer with a non-zero length; lengths and bytes
                            * that disagree */
    SL_ERR_TOO_LARGE = -2, /* a payload longer than SL_MAX_PAYLOAD; frames whose total
                            * size does not fit 64 bits */
    SL_ERR_ALIGN = -3,     /* the offset is not a multiple of SL_FRAME_ALIGN */
    SL_ERR_NO_SPACE = -4,  /* the frames (or the format string) do not fit the capacity */
    SL_ERR_SEQ = -5,       /* a sequence number past what the call can hand out */
    SL_ERR_CLOSED = -6     /* cursor or committer closed or failed, or the frame would
                            * pass its window or the committer's group buffer */
} sl_status;

/* The last sequence number sl_cursor_append and sl_commit_append hand out (2^63 - 1, so
 * that a binding may hold it in a signed 64-bit integer); past it they refuse with
 * SL_ERR_SEQ and the caller frames the record its own way. */
#define SL_APPEND_MAX_SEQ 0x7FFFFFFFFFFFFFFFull

/* sl_scan flags. */
#define SL_OPT_LIMIT_BYTES 1u /* max_bytes applies (otherwise payload bytes are unlimited) */
#define SL_OPT_CONTINUE 2u    /* an earlier call of the same scan accepted frames already */

/* CRC32C (Castagnoli) of buf[0, len), continuing from crc (0 to start), chained like
 * zlib's crc32: sl_crc32c(sl_crc32c(0, a, n), b, m) == CRC32C of a then b. */
uint32_t sl_crc32c(uint32_t crc, const char *buf, uint64_t len);

/* The live CRC32C implementation: "sse4.2", "armv8-crc" or "portable". */
const char *sl_crc32c_impl(void);

/* Write one frame (seq, payload[0, len)) at dst + off, zero padding included, and set
 * *end to the offset just past it. SL_ERR_TOO_LARGE / SL_ERR_ALIGN / SL_ERR_NO_SPACE /
 * SL_ERR_ARG: nothing was written. */
sl_status sl_frame_one(char *dst, uint64_t cap, uint64_t off, const char *payload,
                       uint64_t len, uint64_t seq, uint64_t *end);

/* Write n consecutive frames with sequence numbers first_seq, first_seq + 1, ... at
 * dst + off and set *end to the offset just past the last. src holds the payloads back
 * to back, src_len bytes in all; lens[i] is the length of payload i, and the lengths
 * must add up to src_len (else SL_ERR_ARG: a caller whose lengths and bytes disagree
 * never makes C read past src). All lengths and the total size are checked before
 * anything is written: on any SL_ERR_* nothing was. */
sl_status sl_frame_batch(char *dst, uint64_t cap, uint64_t off, const char *src,
                         uint64_t src_len, const uint64_t *lens, uint64_t n,
                         uint64_t first_seq, uint64_t *end);

/* Set *size to the bytes n frames of payload lengths lens[0..n) occupy, padding
 * included; SL_ERR_TOO_LARGE if a length exceeds SL_MAX_PAYLOAD or the sum does not fit
 * 64 bits. */
sl_status sl_frames_size(const uint64_t *lens, uint64_t n, uint64_t *size);

typedef struct sl_scan_result {
    uint64_t end;      /* offset just past the last accepted frame */
    uint64_t next_seq; /* the sequence number expected at end (modulo 2^64) */
    uint64_t count;    /* frames accepted */
    uint64_t nbytes;   /* payload bytes accepted */
    int status;        /* SL_SCAN_*: why the scan stopped at end */
} sl_scan_result;

/* Validate frames in buf[off, len) expecting sequence number expected_seq first; stop at
 * the first frame that is not sound (FORMAT.md, "Scanning"), after max_records frames,
 * or before a frame that would take the payload bytes past max_bytes when
 * SL_OPT_LIMIT_BYTES is set (the first frame of a scan is always accepted unless
 * SL_OPT_CONTINUE says this call resumes a scan). The payload offset and length of
 * frame i go to out_off[i] and out_len[i] (both NULL: validate only; otherwise both
 * hold max_records entries). A frame with sequence number 2^64 - 1 is the last one a
 * scan can accept. SL_OK (the outcome is in *res: a damaged frame is a scan status, not
 * an error) or SL_ERR_ARG. */
sl_status sl_scan(const char *buf, uint64_t len, uint64_t off, uint64_t expected_seq,
                  uint64_t max_records, uint64_t max_bytes, unsigned int flags,
                  uint64_t *out_off, uint64_t *out_len, sl_scan_result *res);

/* Find the first sound frame at an aligned offset >= off in buf[0, len) whose sequence
 * number lies in [min_seq, max_seq] and is dense enough: the records min_seq .. seq - 1
 * it skips must fit between off and it, at least one frame header each
 * ((seq - min_seq) * SL_FRAME_HEADER_SIZE <= pos - off). SL_OK: found, at *out_off with
 * sequence number *out_seq; SL_NOT_FOUND: there is none; SL_ERR_ARG. The length of a
 * damaged frame is never trusted: every aligned offset is tried. */
sl_status sl_resync(const char *buf, uint64_t len, uint64_t off, uint64_t min_seq,
                    uint64_t max_seq, uint64_t *out_off, uint64_t *out_seq);

/* The format of Python's struct module that unpacks n payloads at once: "<", then
 * "<gap>x<length>s" for payload i at offs[i] (gap: the bytes since the end of payload
 * i - 1; the first at offs[0], where unpacking starts). Python then builds every bytes
 * object of a batch in one struct call instead of one slice each (FORMAT.md, "Reading").
 * Offsets must ascend and payloads not overlap (else SL_ERR_ARG); a cap of 2 + 42 n
 * bytes always suffices (else SL_ERR_NO_SPACE). *written: the bytes written (no NUL). */
sl_status sl_unpack_format(const uint64_t *offs, const uint64_t *lens, uint64_t n,
                           char *out, uint64_t cap, uint64_t *written);

/* The append cursor (csrc/cursor.c): where the next frame of the active segment goes.
 * sl_cursor_new makes one, closed (NULL: no memory); sl_cursor_free frees it once no
 * thread uses it. */
typedef struct sl_cursor sl_cursor;
sl_cursor *sl_cursor_new(void);
void sl_cursor_free(sl_cursor *c);

/* Frame one record at the cursor, advance it, and set *seq to the record's sequence
 * number. SL_ERR_CLOSED (closed, or the frame would pass the window), SL_ERR_SEQ (past
 * SL_APPEND_MAX_SEQ) or a code of sl_frame_one: nothing written. Safe to call from any
 * number of threads. */
sl_status sl_cursor_append(sl_cursor *c, const char *payload, uint64_t len, uint64_t *seq);

/* Point the cursor at base[off, window) (window is capped at cap) and open it. */
void sl_cursor_open(sl_cursor *c, char *base, uint64_t cap, uint64_t off, uint64_t next_seq,
                    uint64_t window);

/* Close the cursor: on return no append is in progress and none succeeds until the next
 * sl_cursor_open. *off and *next_seq: where the next frame goes and its sequence
 * number (final until the next open). */
void sl_cursor_close(sl_cursor *c, uint64_t *off, uint64_t *next_seq);

/* The group committer (csrc/committer.c): SegmentLog.append with fsync="always". */
typedef struct sl_committer sl_committer;

/* What sl_commit_close hands back to Python. */
typedef struct sl_commit_state {
    uint64_t off;          /* the file holds the frames of the segment up to here */
    uint64_t next_seq;     /* the next record's sequence number */
    uint64_t durable_next; /* every record below this sequence number is durable */
    uint64_t rounds;       /* fdatasyncs done since sl_commit_new */
    int error;             /* errno of a failed pwrite/fdatasync (sticky), or 0 */
} sl_commit_state;

/* A new, closed committer, or NULL (no memory, or no POSIX threads: on Windows the
 * Python group commit does the work). Free it with sl_commit_free once no thread uses it. */
sl_committer *sl_commit_new(void);
void sl_commit_free(sl_committer *c);

/* Open over segment file descriptor fd, whose file holds every frame below offset off;
 * frames end at or below window (the segment's size), sequence numbers continue at
 * next_seq, records below durable_next are durable. buf[0, buf_cap) is the group buffer
 * (the caller's, kept until the next close). segment_id names the segment (never 0):
 * waiters of another one go back to Python. mark != 0: write up to 8 zero bytes after the
 * last frame (a recycled segment). A leader waits up to gather_ns for the others. */
void sl_commit_open(sl_committer *c, int fd, char *buf, uint64_t buf_cap, uint64_t off,
                    uint64_t window, uint64_t next_seq, uint64_t durable_next,
                    uint64_t segment_id, int mark, uint64_t gather_ns);

/* Close: refuse new appends, wait for a round in progress, write the group buffer into the
 * file, and report the state. Waiters stay waiting (see sl_commit_retire). */
void sl_commit_close(sl_committer *c, sl_commit_state *out);

/* Closed and not reopened over this segment: send every waiter back to Python. */
void sl_commit_retire(sl_committer *c);

/* Append one record as *seq and return once it is durable (SL_OK). SL_NOT_DURABLE: it
 * was appended as *seq but the committer could not see it durable (closed over another
 * segment, retired, or its disk failed): the caller makes it durable its own way or
 * raises the committer's error (sl_commit_close reports it). SL_ERR_CLOSED (closed,
 * failed, the segment or the group buffer full), SL_ERR_SEQ (past SL_APPEND_MAX_SEQ) or
 * another code of framing: nothing written. */
sl_status sl_commit_append(sl_committer *c, const char *payload, uint64_t len,
                           uint64_t *seq);

/* The name of a status code ("ok", "too_large", ...); "unknown" for anything else. */
const char *sl_strerror(int code);

#ifdef SL_TESTING
/* Test hooks: compiled only with SL_TESTING (the tests' build), never shipped. */

/* on != 0 forces the portable slicing-by-8 CRC32C code even when the CPU has CRC
 * instructions; on == 0 returns to the best one. Returns the previous setting. */
int sl_crc32c_force_portable(int on);

/* The next fdatasync of a committer's round fails with errno err instead of running. */
void sl_commit_fail_next(sl_committer *c, int err);
#endif

#ifdef __cplusplus
}
#endif

#endif /* SEGMENTLOG_H */
