/* Stress test of the append cursor (csrc/cursor.c), built with -fsanitize=thread by
 * tests/test_native_sanitizers.py (not part of the extension).
 *
 * Four threads append distinct records through one cursor while a fifth closes and
 * reopens it over and over at the position close() reported, as the log's Python lock
 * does. At the end the buffer must hold exactly the records that got a sequence number,
 * once each, in sequence order, with sound checksums (sl_scan), and the sequence
 * numbers handed out must be 0..n-1. ThreadSanitizer reports any data race; exit 0 and
 * "all checks passed" otherwise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segmentlog.h"

#define THREADS 4
#define PER_THREAD 20000
#define CAP (64u << 20)

static sl_cursor cursor;
static char *buf;
static int64_t got[THREADS][PER_THREAD]; /* sequence number of each append, or -1 */
static volatile int stop_toggling;

static void payload(int t, int i, char *out, uint64_t *len) {
    *len = (uint64_t)snprintf(out, 64, "t%d-%d-%.*s", t, i, i % 23, "xxxxxxxxxxxxxxxxxxxxxxx");
}

static void *appender(void *arg) {
    int t = (int)(intptr_t)arg;
    char p[64];
    uint64_t len;
    for (int i = 0; i < PER_THREAD; i++) {
        payload(t, i, p, &len);
        int64_t seq = sl_cursor_append(&cursor, p, len);
        if (seq < 0 && seq != SL_ERR_CLOSED) {
            fprintf(stderr, "append returned %lld (%s)\n", (long long)seq, sl_strerror((int)seq));
            exit(2);
        }
        got[t][i] = seq;
    }
    return NULL;
}

static void *toggler(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop_toggling, __ATOMIC_ACQUIRE)) {
        sl_cursor_close(&cursor);
        sl_cursor_open(&cursor, buf, CAP, cursor.off, cursor.next_seq, CAP);
    }
    return NULL;
}

int main(void) {
    buf = calloc(1, CAP);
    if (!buf) return 3;
    sl_cursor_open(&cursor, buf, CAP, 0, 0, CAP);
    pthread_t th[THREADS], tog;
    pthread_create(&tog, NULL, toggler, NULL);
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, appender, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    __atomic_store_n(&stop_toggling, 1, __ATOMIC_RELEASE);
    pthread_join(tog, NULL);
    sl_cursor_close(&cursor);
    uint64_t n = cursor.next_seq, end = cursor.off;

    /* Which record holds each sequence number. */
    int *who_t = malloc(sizeof(int) * (n ? n : 1)), *who_i = malloc(sizeof(int) * (n ? n : 1));
    uint64_t *offs = malloc(sizeof(uint64_t) * (n + 1)), *lens = malloc(sizeof(uint64_t) * (n + 1));
    if (!who_t || !who_i || !offs || !lens) return 3;
    for (uint64_t s = 0; s < n; s++) who_t[s] = -1;
    uint64_t accepted = 0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            int64_t s = got[t][i];
            if (s < 0) continue;
            if ((uint64_t)s >= n || who_t[s] != -1) {
                fprintf(stderr, "sequence number %lld handed out twice or past %llu\n",
                        (long long)s, (unsigned long long)n);
                return 1;
            }
            who_t[s] = t;
            who_i[s] = i;
            accepted++;
        }
    if (accepted != n) {
        fprintf(stderr, "%llu appends accepted, next_seq %llu\n", (unsigned long long)accepted,
                (unsigned long long)n);
        return 1;
    }
    sl_scan_result res;
    if (sl_scan(buf, CAP, 0, 0, n + 1, 0, 0, offs, lens, &res) != SL_OK) return 1;
    if (res.count != n || res.end != end || res.status != SL_SCAN_ZERO) {
        fprintf(stderr, "scan: %llu frames to %llu (status %d); expected %llu to %llu\n",
                (unsigned long long)res.count, (unsigned long long)res.end, res.status,
                (unsigned long long)n, (unsigned long long)end);
        return 1;
    }
    for (uint64_t s = 0; s < n; s++) {
        char p[64];
        uint64_t len;
        payload(who_t[s], who_i[s], p, &len);
        if (lens[s] != len || memcmp(buf + offs[s], p, len) != 0) {
            fprintf(stderr, "record %llu is not the payload appended with it\n",
                    (unsigned long long)s);
            return 1;
        }
    }
    printf("%llu of %d appends accepted while the cursor was toggled; all checks passed\n",
           (unsigned long long)n, THREADS * PER_THREAD);
    free(who_t);
    free(who_i);
    free(offs);
    free(lens);
    free(buf);
    return 0;
}
