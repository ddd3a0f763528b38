/* Fuzz harness for the C core: run under -fsanitize=address,undefined by
 * tests/test_native_sanitizers.py.
 *
 * Theory of operation: LLVMFuzzerTestOneInput() takes one input, copies it into a buffer
 * of exactly its size (so AddressSanitizer sees any read past the end), and drives every
 * entry point over it: sl_scan with assorted offsets and limits, sl_resync from assorted
 * offsets, sl_unpack_format of every scan's payloads (parsed back), sl_frame_batch of
 * the input cut into payloads and read back, and sl_crc32c on
 * both the live and the portable code against a bitwise reference. Each call's answer is
 * checked against invariants that hold for any input (offsets inside the buffer,
 * counts within limits, frames found by resync scan as sound, ...); a violation aborts.
 *
 * It needs the test build (-DSL_TESTING): its hook runs the portable CRC32C code too.
 * Built with -DSL_LIBFUZZER it is a libFuzzer target (clang -fsanitize=fuzzer). Built
 * without, main() is a standalone driver: each file argument is one input; with no file
 * arguments it generates inputs from a seeded PRNG: valid frame runs, then damaged by bit
 * flips, overwrites, zeroed spans, stale copies and truncation, plus plain random bytes.
 *   fuzz_scan [-n ITERATIONS] [-s SEED] [-p] [FILE...]     (-p: portable CRC code)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segmentlog.h"

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "fuzz_scan: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                            \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* A bitwise CRC32C: slow, obviously right, shares no code with crc32c.c. */
static uint32_t crc_reference(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}

static uint64_t rd64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void check_crc(const unsigned char *buf, size_t len) {
    uint32_t want = crc_reference(0, buf, len);
    int was = sl_crc32c_force_portable(0);
    CHECK(sl_crc32c(0, (const char *)buf, len) == want);
    sl_crc32c_force_portable(1);
    CHECK(sl_crc32c(0, (const char *)buf, len) == want);
    /* Chaining at an arbitrary split point gives the same answer. */
    size_t cut = len ? buf[0] % (len + 1) : 0;
    uint32_t a = sl_crc32c(0, (const char *)buf, cut);
    CHECK(sl_crc32c(a, (const char *)buf + cut, len - cut) == want);
    sl_crc32c_force_portable(0);
    a = sl_crc32c(0, (const char *)buf, cut);
    CHECK(sl_crc32c(a, (const char *)buf + cut, len - cut) == want);
    sl_crc32c_force_portable(was);
}

/* One frame at pos is sound by an independent reading of FORMAT.md. */
static int sound_frame(const unsigned char *buf, uint64_t len, uint64_t pos) {
    if (pos > len || len - pos < SL_FRAME_HEADER_SIZE) return 0;
    const unsigned char *p = buf + pos;
    uint64_t flen = rd32(p + 4);
    if (rd32(p) != SL_FRAME_MARKER || rd32(p + 16) != 0) return 0;
    if (SL_FRAME_SIZE(flen) > len - pos) return 0;
    uint32_t crc = crc_reference(0, p, SL_FRAME_CRC_COVERS);
    crc = crc_reference(crc, p + SL_FRAME_HEADER_SIZE, (size_t)flen);
    return crc == rd32(p + 20);
}

/* sl_unpack_format of a scan's accepted payloads: parsed back, the format names exactly
 * those offsets and lengths; a buffer too small is refused without a write past it;
 * offsets out of order are refused. */
static void check_unpack_format(const uint64_t *offs, const uint64_t *lens, uint64_t n) {
    uint64_t cap = 2 + 42 * n;
    char *out = malloc((size_t)cap);
    CHECK(out);
    uint64_t w = 0;
    CHECK(sl_unpack_format(offs, lens, n, out, cap, &w) == SL_OK);
    CHECK(w >= 1 && w <= cap && out[0] == '<');
    uint64_t i = 0, pos = n ? offs[0] : 0, num = 0;
    int have = 0;
    for (uint64_t p = 1; p < w; p++) {
        char c = out[p];
        if (c >= '0' && c <= '9') {
            num = num * 10 + (uint64_t)(c - '0');
            have = 1;
            continue;
        }
        CHECK(have && (c == 'x' || c == 's'));
        if (c == 's') {
            CHECK(i < n && pos == offs[i] && num == lens[i]);
            i++;
        }
        pos += num;
        num = 0;
        have = 0;
    }
    CHECK(i == n && !have);
    /* One byte short of what it wrote: refused (ASan reports any write past it). */
    uint64_t small_cap = w - 1, unwritten = UINT64_MAX;
    char *small = malloc((size_t)(small_cap ? small_cap : 1));
    CHECK(small);
    CHECK(sl_unpack_format(offs, lens, n, small, small_cap, &unwritten) == SL_ERR_NO_SPACE);
    CHECK(unwritten == UINT64_MAX); /* an out-parameter is written only on SL_OK */
    if (n >= 2 && offs[0] < offs[1]) {
        uint64_t swapped_offs[2] = {offs[1], offs[0]}, swapped_lens[2] = {lens[1], lens[0]};
        CHECK(sl_unpack_format(swapped_offs, swapped_lens, 2, out, cap, &w) == SL_ERR_ARG);
    }
    free(small);
    free(out);
}

static void check_scan(const unsigned char *buf, uint64_t len, uint64_t off, uint64_t seq,
                       uint64_t max_records, uint64_t max_bytes, unsigned int flags) {
    uint64_t cap = max_records < 4096 ? max_records : 4096;
    uint64_t *offs = malloc((size_t)(cap ? cap : 1) * sizeof *offs);
    uint64_t *lens = malloc((size_t)(cap ? cap : 1) * sizeof *lens);
    CHECK(offs && lens);
    sl_scan_result res, again;
    CHECK(sl_scan((const char *)buf, len, off, seq, cap, max_bytes, flags, offs, lens, &res) ==
          SL_OK);
    CHECK(res.count <= cap);
    CHECK(res.status >= SL_SCAN_OK && res.status <= SL_SCAN_BAD_SEQ);
    CHECK(res.end >= off);
    if (res.count == 0) CHECK(res.end == off && res.nbytes == 0);
    uint64_t pos = off, total = 0;
    for (uint64_t i = 0; i < res.count; i++) {
        CHECK(offs[i] == pos + SL_FRAME_HEADER_SIZE);
        CHECK(sound_frame(buf, len, pos));
        CHECK(rd32(buf + pos + 4) == lens[i]);
        CHECK(rd64(buf + pos + 8) == seq + i);
        pos += SL_FRAME_SIZE(lens[i]);
        total += lens[i];
        CHECK(pos <= len);
    }
    CHECK(pos == res.end && total == res.nbytes && res.next_seq == seq + res.count);
    check_unpack_format(offs, lens, res.count);
    if ((flags & SL_OPT_LIMIT_BYTES) && res.count > 1) CHECK(res.nbytes <= max_bytes);
    /* Validate-only scanning (NULL arrays) gives the same answer. */
    CHECK(sl_scan((const char *)buf, len, off, seq, cap, max_bytes, flags, NULL, NULL, &again) ==
          SL_OK);
    CHECK(res.end == again.end && res.next_seq == again.next_seq &&
          res.count == again.count && res.nbytes == again.nbytes &&
          res.status == again.status);
    /* A stop that is not a limit names a real defect at end. */
    if (res.status == SL_SCAN_OK && res.count < cap && !(flags & SL_OPT_LIMIT_BYTES))
        CHECK(res.end >= len);
    if (res.status == SL_SCAN_BAD_CRC) CHECK(!sound_frame(buf, len, res.end));
    free(offs);
    free(lens);
}

/* Whether a frame numbered s at p may follow damage at off expecting min_seq: in range,
 * and the records it skips fit between off and p, a frame header each at least. */
static int resync_target(uint64_t s, uint64_t p, uint64_t off, uint64_t min_seq,
                         uint64_t max_seq) {
    return s >= min_seq && s <= max_seq && s - min_seq <= (p - off) / SL_FRAME_HEADER_SIZE;
}

static void check_resync(const unsigned char *buf, uint64_t len, uint64_t off,
                         uint64_t min_seq, uint64_t max_seq) {
    uint64_t at = 0, seq = 0;
    sl_status rc = sl_resync((const char *)buf, len, off, min_seq, max_seq, &at, &seq);
    CHECK(rc == SL_OK || rc == SL_NOT_FOUND);
    if (rc == SL_NOT_FOUND) {
        CHECK(at == 0 && seq == 0); /* outputs untouched */
        /* No aligned offset holds a sound target. */
        for (uint64_t p = off + (SL_FRAME_ALIGN - off % SL_FRAME_ALIGN) % SL_FRAME_ALIGN;
             p + 4 <= len; p += SL_FRAME_ALIGN) {
            if (sound_frame(buf, len, p))
                CHECK(!resync_target(rd64(buf + p + 8), p, off, min_seq, max_seq));
        }
    } else {
        CHECK(at >= off && at % SL_FRAME_ALIGN == 0 && at < len);
        CHECK(sound_frame(buf, len, at));
        CHECK(rd64(buf + at + 8) == seq && resync_target(seq, at, off, min_seq, max_seq));
        /* No sound target was skipped on the way. */
        for (uint64_t p = off + (SL_FRAME_ALIGN - off % SL_FRAME_ALIGN) % SL_FRAME_ALIGN;
             p < at; p += SL_FRAME_ALIGN) {
            if (sound_frame(buf, len, p))
                CHECK(!resync_target(rd64(buf + p + 8), p, off, min_seq, max_seq));
        }
        sl_scan_result res;
        CHECK(sl_scan((const char *)buf, len, at, seq, 1, 0, 0, NULL, NULL, &res) == SL_OK);
        CHECK(res.count == 1);
    }
}

/* Cut data into payloads, frame them into a fresh buffer, and read them back. */
static void check_roundtrip(const unsigned char *data, size_t size) {
    uint64_t lens[64];
    uint64_t n = 0, used = 0, total = 0;
    while (n < 64 && used < size) {
        uint64_t take = data[used] % 97;
        if (take > size - used) take = size - used;
        lens[n++] = take;
        used += take;
        total += SL_FRAME_SIZE(take);
        if (take == 0) used++; /* move on, so the next length comes from another byte */
    }
    /* The payloads are data[0, sum(lens)) back to back; sum(lens) <= used <= size. */
    uint64_t first_seq = size >= 8 ? rd64(data) : 0;
    if (n && first_seq > UINT64_MAX - n) first_seq = 0;
    char *dst = malloc((size_t)(total ? total : 1));
    CHECK(dst);
    uint64_t src_len = 0;
    for (uint64_t i = 0; i < n; i++) src_len += lens[i];
    uint64_t sized = 0, end = 0;
    CHECK(sl_frames_size(lens, n, &sized) == SL_OK && sized == total);
    CHECK(sl_frame_batch(dst, total, 0, (const char *)data, src_len, lens, n, first_seq,
                         &end) == SL_OK);
    CHECK(end == total);
    if (total) CHECK(sl_frame_batch(dst, total - 1, 0, (const char *)data, src_len, lens, n,
                                    first_seq, &end) == SL_ERR_NO_SPACE);
    /* Lengths that disagree with the bytes given are refused, nothing written. */
    if (n) CHECK(sl_frame_batch(dst, total, 0, (const char *)data, src_len + 1, lens, n,
                                first_seq, &end) == SL_ERR_ARG);
    CHECK(end == total); /* an out-parameter is written only on SL_OK */
    uint64_t offs[64], got[64];
    sl_scan_result res;
    CHECK(sl_scan(dst, total, 0, first_seq, n, 0, 0, offs, got, &res) == SL_OK);
    CHECK(res.count == n && res.end == total && res.status == SL_SCAN_OK);
    uint64_t p = 0;
    for (uint64_t i = 0; i < n; i++) {
        CHECK(got[i] == lens[i]);
        CHECK(memcmp(dst + offs[i], data + p, (size_t)lens[i]) == 0);
        p += lens[i];
    }
    /* sl_frame_one writes the same bytes frame by frame. */
    char *one = malloc((size_t)(total ? total : 1));
    CHECK(one);
    uint64_t at = 0;
    p = 0;
    for (uint64_t i = 0; i < n; i++) {
        CHECK(sl_frame_one(one, total, at, (const char *)data + p, lens[i], first_seq + i,
                           &at) == SL_OK);
        CHECK(at > 0);
        p += lens[i];
    }
    CHECK(at == total && memcmp(one, dst, (size_t)total) == 0);
    free(one);
    free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* An exact-size copy: any read past `size` is a heap overflow ASan reports. */
    unsigned char *buf = malloc(size ? size : 1);
    CHECK(buf);
    if (size) memcpy(buf, data, size);
    uint64_t len = size;
    uint64_t knob = size >= 8 ? rd64(buf + size - 8) : 0x9e3779b97f4a7c15u;
    uint64_t seq = len >= 24 + 8 ? rd64(buf + 8) : knob; /* the first frame's seq, if any */

    check_crc(buf, size);
    for (uint64_t off = 0; off <= len && off < 64; off += 1 + (knob & 7)) {
        check_scan(buf, len, off, seq, UINT64_MAX, 0, 0);
        check_scan(buf, len, off, seq + 1, 3, 0, 0);
        check_scan(buf, len, off, seq, UINT64_MAX, knob % 512, SL_OPT_LIMIT_BYTES);
        check_scan(buf, len, off, seq, 2, knob % 64, SL_OPT_LIMIT_BYTES | SL_OPT_CONTINUE);
        check_resync(buf, len, off, 0, UINT64_MAX);
        check_resync(buf, len, off, seq, seq + (knob & 3));
    }
    check_scan(buf, len, len, seq, UINT64_MAX, 0, 0);
    check_resync(buf, len, len, 0, UINT64_MAX);
    check_resync(buf, len, len + 9, 0, UINT64_MAX);
    check_roundtrip(buf, size);
    free(buf);
    return 0;
}

#ifndef SL_LIBFUZZER
/* xorshift64*: a small, seeded, reproducible generator. */
static uint64_t rng_state = 88172645463325252u;

static uint64_t rng(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717u;
}

/* A buffer of valid frames (as the log writes them), then damaged at random. */
static size_t make_input(unsigned char *out, size_t cap) {
    size_t len = 0;
    uint64_t kind = rng() % 8;
    if (kind == 0) { /* plain random bytes */
        len = (size_t)(rng() % cap);
        for (size_t i = 0; i < len; i++) out[i] = (unsigned char)rng();
        return len;
    }
    uint64_t lens[32];
    char payload[32 * 200];
    uint64_t n = rng() % 32, src = 0, total = 0;
    for (uint64_t i = 0; i < n; i++) {
        lens[i] = rng() % 200;
        if (total + SL_FRAME_SIZE(lens[i]) > cap) {
            n = i;
            break;
        }
        for (uint64_t k = 0; k < lens[i]; k++) payload[src + k] = (char)rng();
        src += lens[i];
        total += SL_FRAME_SIZE(lens[i]);
    }
    uint64_t first = (rng() & 1) ? rng() % 1000 : UINT64_MAX - (rng() % 40);
    if (n && first > UINT64_MAX - (n - 1)) first = UINT64_MAX - (n - 1);
    memset(out, 0, cap);
    uint64_t end = 0;
    CHECK(sl_frame_batch((char *)out, cap, 0, payload, src, lens, n, first, &end) == SL_OK);
    CHECK(end == total);
    len = (size_t)(total + rng() % (cap - total + 1)); /* some zero space after */
    int damage = (int)(rng() % 6);
    for (int d = 0; d < damage && len; d++) {
        size_t at = (size_t)(rng() % len);
        switch (rng() % 6) {
        case 0: /* bit flip */
            out[at] ^= (unsigned char)(1u << (rng() % 8));
            break;
        case 1: /* random overwrite */
            for (size_t k = at; k < len && k < at + rng() % 40; k++) out[k] = (unsigned char)rng();
            break;
        case 2: /* a zeroed span */
            memset(out + at, 0, (size_t)(rng() % (len - at + 1)));
            break;
        case 3: /* truncation */
            len = at;
            break;
        case 4: /* a stale copy of earlier bytes further on (a recycled segment) */
        {
            size_t from = (size_t)(rng() % len), span = (size_t)(rng() % 256);
            if (from + span <= len && at + span <= len) memmove(out + at, out + from, span);
            break;
        }
        default: /* a forged marker at an aligned offset */
            at &= ~(size_t)7;
            if (at + 4 <= len) memcpy(out + at, "\xd3\x5c\xa5\x5a", 4);
            break;
        }
    }
    return len;
}

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    static unsigned char data[1 << 20];
    size_t size = fread(data, 1, sizeof data, f);
    fclose(f);
    LLVMFuzzerTestOneInput(data, size);
    return 0;
}

int main(int argc, char **argv) {
    long iterations = 2000;
    int files = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            iterations = strtol(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "-s") && i + 1 < argc) {
            rng_state = strtoull(argv[++i], NULL, 10) | 1;
        } else if (!strcmp(argv[i], "-p")) {
            sl_crc32c_force_portable(1); /* scan with the portable CRC code too */
        } else {
            files++;
            rc |= run_file(argv[i]);
        }
    }
    if (files) return rc;
    static unsigned char input[8192];
    for (long it = 0; it < iterations; it++) {
        size_t len = make_input(input, sizeof input);
        LLVMFuzzerTestOneInput(input, len);
    }
    printf("fuzz_scan: %ld inputs, crc32c %s, all checks passed\n", iterations,
           sl_crc32c_impl());
    return 0;
}
#endif
