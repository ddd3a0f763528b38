/* The final check of the stress programs (tests/c/stress_cursor.c, tests/c/stress_committer.c;
 * built by tests/test_native_sanitizers.py, not part of the extension). */
#ifndef SEGMENTLOG_STRESS_CHECK_H
#define SEGMENTLOG_STRESS_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segmentlog.h"

/* Writes the payload of record i of thread t into out (128 bytes) and its length. */
typedef void (*stress_payload_fn)(int t, int i, char *out, uint64_t *len);

/* got[t * per + i] is the sequence number record i of thread t was given (< 0: refused,
 * nothing written). Returns 0 when the numbers handed out are exactly 0..n-1, once each;
 * buf[0, cap) scans (sl_scan) to exactly n sound frames in sequence order ending at `end`
 * on a zero marker; and each frame holds the payload its appender wrote. Otherwise it
 * prints why and returns 1 (3 when out of memory). */
static int check_records(const char *buf, uint64_t cap, uint64_t n, uint64_t end,
                         const int64_t *got, int threads, int per, stress_payload_fn payload) {
    int *who_t = malloc(sizeof(int) * (n ? n : 1)), *who_i = malloc(sizeof(int) * (n ? n : 1));
    uint64_t *offs = malloc(sizeof(uint64_t) * (n + 1)), *lens = malloc(sizeof(uint64_t) * (n + 1));
    int rc = 3;
    if (!who_t || !who_i || !offs || !lens) goto out;
    rc = 1;
    for (uint64_t s = 0; s < n; s++) who_t[s] = -1;
    uint64_t accepted = 0;
    for (int t = 0; t < threads; t++)
        for (int i = 0; i < per; i++) {
            int64_t s = got[(size_t)t * (size_t)per + (size_t)i];
            if (s < 0) continue;
            if ((uint64_t)s >= n || who_t[s] != -1) {
                fprintf(stderr, "sequence number %lld handed out twice or past %llu\n",
                        (long long)s, (unsigned long long)n);
                goto out;
            }
            who_t[s] = t;
            who_i[s] = i;
            accepted++;
        }
    if (accepted != n) {
        fprintf(stderr, "%llu appends accepted, next_seq %llu\n", (unsigned long long)accepted,
                (unsigned long long)n);
        goto out;
    }
    sl_scan_result res;
    if (sl_scan(buf, cap, 0, 0, n + 1, 0, 0, offs, lens, &res) != SL_OK) goto out;
    if (res.count != n || res.end != end || res.status != SL_SCAN_ZERO) {
        fprintf(stderr, "scan: %llu frames to %llu (status %d); expected %llu to %llu\n",
                (unsigned long long)res.count, (unsigned long long)res.end, res.status,
                (unsigned long long)n, (unsigned long long)end);
        goto out;
    }
    for (uint64_t s = 0; s < n; s++) {
        char p[128];
        uint64_t len;
        payload(who_t[s], who_i[s], p, &len);
        if (lens[s] != len || memcmp(buf + offs[s], p, len) != 0) {
            fprintf(stderr, "record %llu is not the payload appended with it\n",
                    (unsigned long long)s);
            goto out;
        }
    }
    rc = 0;
out:
    free(who_t);
    free(who_i);
    free(offs);
    free(lens);
    return rc;
}

#endif /* SEGMENTLOG_STRESS_CHECK_H */
