/* Framing, scanning and resynchronisation of record frames (FORMAT.md, "Record frame").
 *
 * Theory of operation: this file mirrors segmentlog/_pure.py line for line; that module
 * is the reference and tests/test_backends.py holds both to the same answers. Every
 * read stays inside [0, len) of the buffer given: a frame's length field is compared
 * with the bytes left before it is used, and the length of a damaged frame is never
 * trusted (resync tries every aligned offset instead). Words are read with memcpy, so
 * unaligned offsets are safe. Nothing here allocates, keeps a pointer, or does I/O.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "segmentlog.h"

static inline uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get64(const unsigned char *p) {
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static inline void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void put64(unsigned char *p, uint64_t v) {
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* The checksum of a frame: header bytes [0, 20) then the payload. */
static inline uint32_t frame_crc(const unsigned char *head, const unsigned char *payload,
                                 uint64_t len) {
    uint32_t crc = sl_crc32c(0, (const char *)head, SL_FRAME_CRC_COVERS);
    return sl_crc32c(crc, (const char *)payload, len);
}

/* Write one frame at dst (room for SL_FRAME_SIZE(len) bytes already checked). The header
 * goes first, then the payload, then zero padding: the same order as _pure.frame_into. */
static void write_frame(unsigned char *dst, const unsigned char *payload, uint64_t len,
                        uint64_t seq) {
    unsigned char head[SL_FRAME_HEADER_SIZE];
    uint64_t size = SL_FRAME_SIZE(len);
    put32(head, SL_FRAME_MARKER);
    put32(head + 4, (uint32_t)len);
    put64(head + 8, seq);
    put32(head + 16, 0); /* flags */
    put32(head + 20, frame_crc(head, payload, len));
    memcpy(dst, head, sizeof head);
    if (len) memmove(dst + SL_FRAME_HEADER_SIZE, payload, (size_t)len);
    /* Padding is always written as zeros, even over stale bytes of a recycled segment. */
    memset(dst + SL_FRAME_HEADER_SIZE + len, 0, (size_t)(size - SL_FRAME_HEADER_SIZE - len));
}

/* The common placement check of sl_frame_one and sl_frame_batch. */
static sl_status check_room(uint64_t cap, uint64_t off, uint64_t size) {
    if (off % SL_FRAME_ALIGN) return SL_ERR_ALIGN;
    if (off > cap || size > cap - off) return SL_ERR_NO_SPACE;
    return SL_OK;
}

sl_status sl_frame_one(char *dst, uint64_t cap, uint64_t off, const char *payload,
                       uint64_t len, uint64_t seq, uint64_t *end) {
    if (len > SL_MAX_PAYLOAD) return SL_ERR_TOO_LARGE;
    uint64_t size = SL_FRAME_SIZE(len);
    sl_status rc = check_room(cap, off, size);
    if (rc != SL_OK) return rc;
    if (dst == NULL || (payload == NULL && len) || end == NULL) return SL_ERR_ARG;
    write_frame((unsigned char *)dst + off, (const unsigned char *)payload, len, seq);
    *end = off + size;
    return SL_OK;
}

sl_status sl_frame_batch(char *dst, uint64_t cap, uint64_t off, const char *src,
                         uint64_t src_len, const uint64_t *lens, uint64_t n,
                         uint64_t first_seq, uint64_t *end) {
    uint64_t total = 0;
    uint64_t sum = 0;
    if ((n && lens == NULL) || end == NULL) return SL_ERR_ARG;
    /* Every length is checked before the total, as _pure.frame_batch_into does; the sums
     * saturate, so a huge batch is reported as too big rather than wrapping around. */
    for (uint64_t i = 0; i < n; i++) {
        if (lens[i] > SL_MAX_PAYLOAD) return SL_ERR_TOO_LARGE;
        uint64_t size = SL_FRAME_SIZE(lens[i]);
        total = total > UINT64_MAX - size ? UINT64_MAX : total + size;
        sum += lens[i]; /* at most 2^32 * n: cannot wrap for any n that fits memory */
    }
    sl_status rc = check_room(cap, off, total);
    if (rc != SL_OK) return rc;
    if (n && first_seq > UINT64_MAX - (n - 1)) return SL_ERR_SEQ;
    if (sum != src_len || (dst == NULL && total) || (src == NULL && src_len)) return SL_ERR_ARG;
    const unsigned char *p = (const unsigned char *)src;
    unsigned char *out = (unsigned char *)dst + off;
    for (uint64_t i = 0; i < n; i++) {
        write_frame(out, p, lens[i], first_seq + i);
        out += SL_FRAME_SIZE(lens[i]);
        p += lens[i];
    }
    *end = off + total;
    return SL_OK;
}

sl_status sl_frames_size(const uint64_t *lens, uint64_t n, uint64_t *size) {
    if ((n && lens == NULL) || size == NULL) return SL_ERR_ARG;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (lens[i] > SL_MAX_PAYLOAD) return SL_ERR_TOO_LARGE;
        uint64_t one = SL_FRAME_SIZE(lens[i]);
        if (total > UINT64_MAX - one) return SL_ERR_TOO_LARGE;
        total += one;
    }
    *size = total;
    return SL_OK;
}

/* Whether the frame at pos (with bytes [pos, end) available) is sound: SL_SCAN_OK, or
 * the status naming the first check it fails (the order of _pure._check_frame). */
static int check_frame(const unsigned char *buf, uint64_t pos, uint64_t end, uint64_t *len,
                       uint64_t *seq, uint64_t *size) {
    const unsigned char *p = buf + pos;
    uint64_t avail = end - pos;
    if (avail < SL_FRAME_HEADER_SIZE) {
        /* Too short for a header: all zeros is the tail of preallocated space; anything
         * else is the start of a frame cut short. */
        for (uint64_t i = 0; i < avail; i++)
            if (p[i]) return SL_SCAN_TRUNCATED;
        return SL_SCAN_ZERO;
    }
    uint32_t marker = get32(p);
    if (marker == 0) return SL_SCAN_ZERO;
    if (marker != SL_FRAME_MARKER) return SL_SCAN_BAD_MARKER;
    *len = get32(p + 4);
    *seq = get64(p + 8);
    *size = SL_FRAME_SIZE(*len);
    if (*size > avail) return SL_SCAN_TRUNCATED;
    if (frame_crc(p, p + SL_FRAME_HEADER_SIZE, *len) != get32(p + 20)) return SL_SCAN_BAD_CRC;
    if (get32(p + 16) != 0) return SL_SCAN_BAD_FLAGS;
    return SL_SCAN_OK;
}

sl_status sl_scan(const char *buf, uint64_t len, uint64_t off, uint64_t expected_seq,
                  uint64_t max_records, uint64_t max_bytes, unsigned int flags,
                  uint64_t *out_off, uint64_t *out_len, sl_scan_result *res) {
    if (res == NULL || (buf == NULL && len) || ((out_off == NULL) != (out_len == NULL)))
        return SL_ERR_ARG;
    const unsigned char *b = (const unsigned char *)buf;
    int limit_bytes = (flags & SL_OPT_LIMIT_BYTES) != 0;
    int resumed = (flags & SL_OPT_CONTINUE) != 0;
    uint64_t pos = off, seq = expected_seq, count = 0, nbytes = 0;
    int exhausted = 0; /* accepted seq 2^64 - 1: no later frame can carry the next number */
    int status = SL_SCAN_OK;
    while (count < max_records && pos < len) {
        uint64_t flen = 0, fseq = 0, fsize = 0;
        status = check_frame(b, pos, len, &flen, &fseq, &fsize);
        if (status == SL_SCAN_OK && (exhausted || fseq != seq)) status = SL_SCAN_BAD_SEQ;
        if (status != SL_SCAN_OK) break;
        /* max_bytes stops before a frame that would exceed it, but never before the
         * first frame of a scan: a record bigger than the limit must still be readable. */
        if (limit_bytes && (count || resumed) && (nbytes > max_bytes || flen > max_bytes - nbytes))
            break;
        if (out_off) {
            out_off[count] = pos + SL_FRAME_HEADER_SIZE;
            out_len[count] = flen;
        }
        count++;
        nbytes += flen;
        if (seq == UINT64_MAX)
            exhausted = 1;
        else
            seq++;
        pos += fsize;
    }
    res->end = pos;
    res->next_seq = exhausted ? 0 : seq;
    res->count = count;
    res->nbytes = nbytes;
    res->status = status;
    return SL_OK;
}

sl_status sl_resync(const char *buf, uint64_t len, uint64_t off, uint64_t min_seq,
                    uint64_t max_seq, uint64_t *out_off, uint64_t *out_seq) {
    if ((buf == NULL && len) || out_off == NULL || out_seq == NULL) return SL_ERR_ARG;
    const unsigned char *b = (const unsigned char *)buf;
    uint64_t pad = (SL_FRAME_ALIGN - off % SL_FRAME_ALIGN) % SL_FRAME_ALIGN;
    if (len < 4 || off > len - 4 || pad > len - 4 - off) return SL_NOT_FOUND;
    /* Only aligned offsets whose marker word lies wholly inside the buffer can start a
     * frame; `last` is the highest such offset (computed so that nothing can wrap). */
    uint64_t pos = off + pad;
    uint64_t last = len - 4;
    for (;;) {
        if (get32(b + pos) == SL_FRAME_MARKER) {
            uint64_t flen = 0, fseq = 0, fsize = 0;
            /* Records min_seq .. fseq - 1 would lie in [off, pos), each in a frame of
             * SL_FRAME_HEADER_SIZE bytes or more: a sound frame numbered further ahead
             * than that is not this log's next record (a forged or misdirected frame). */
            if (check_frame(b, pos, len, &flen, &fseq, &fsize) == SL_SCAN_OK &&
                fseq >= min_seq && fseq <= max_seq &&
                fseq - min_seq <= (pos - off) / SL_FRAME_HEADER_SIZE) {
                *out_off = pos;
                *out_seq = fseq;
                return SL_OK;
            }
        }
        if (last - pos < SL_FRAME_ALIGN) return SL_NOT_FOUND;
        pos += SL_FRAME_ALIGN;
    }
}

/* Writes the decimal digits of v at out; returns how many (1..20). */
static uint64_t put_decimal(char *out, uint64_t v) {
    char digits[20];
    uint64_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (uint64_t i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    return n;
}

sl_status sl_unpack_format(const uint64_t *offs, const uint64_t *lens, uint64_t n,
                           char *out, uint64_t cap, uint64_t *written) {
    if ((n && (!offs || !lens)) || !out || !written)
        return SL_ERR_ARG;
    if (cap < 1)
        return SL_ERR_NO_SPACE;
    uint64_t w = 0;
    out[w++] = '<';
    uint64_t pos = n ? offs[0] : 0;
    for (uint64_t i = 0; i < n; i++) {
        if (offs[i] < pos || lens[i] > UINT64_MAX - offs[i])
            return SL_ERR_ARG;
        if (cap - w < 42) /* "<20 digits>x<20 digits>s" */
            return SL_ERR_NO_SPACE;
        if (offs[i] > pos) {
            w += put_decimal(out + w, offs[i] - pos);
            out[w++] = 'x';
        }
        w += put_decimal(out + w, lens[i]);
        out[w++] = 's';
        pos = offs[i] + lens[i];
    }
    *written = w;
    return SL_OK;
}

const char *sl_strerror(int code) {
    switch (code) {
    case SL_OK:
        return "ok";
    case SL_NOT_FOUND:
        return "not_found";
    case SL_NOT_DURABLE:
        return "not_durable";
    case SL_ERR_ARG:
        return "bad_argument";
    case SL_ERR_TOO_LARGE:
        return "too_large";
    case SL_ERR_ALIGN:
        return "misaligned";
    case SL_ERR_NO_SPACE:
        return "no_space";
    case SL_ERR_SEQ:
        return "seq_overflow";
    case SL_ERR_CLOSED:
        return "closed";
    default:
        return "unknown";
    }
}
