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
#include "stress_check.h"

#define THREADS 4
#define PER_THREAD 20000
#define CAP (64u << 20)

static sl_cursor *cursor;
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
        uint64_t seq = 0;
        sl_status rc = sl_cursor_append(cursor, p, len, &seq);
        if (rc != SL_OK && rc != SL_ERR_CLOSED) {
            fprintf(stderr, "append returned %d (%s)\n", (int)rc, sl_strerror(rc));
            exit(2);
        }
        got[t][i] = rc == SL_OK ? (int64_t)seq : -1;
    }
    return NULL;
}

static void *toggler(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop_toggling, __ATOMIC_ACQUIRE)) {
        uint64_t off, next_seq;
        sl_cursor_close(cursor, &off, &next_seq);
        sl_cursor_open(cursor, buf, CAP, off, next_seq, CAP);
    }
    return NULL;
}

int main(void) {
    buf = calloc(1, CAP);
    cursor = sl_cursor_new();
    if (!buf || !cursor) return 3;
    sl_cursor_open(cursor, buf, CAP, 0, 0, CAP);
    pthread_t th[THREADS], tog;
    pthread_create(&tog, NULL, toggler, NULL);
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, appender, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    __atomic_store_n(&stop_toggling, 1, __ATOMIC_RELEASE);
    pthread_join(tog, NULL);
    uint64_t n, end;
    sl_cursor_close(cursor, &end, &n);
    sl_cursor_free(cursor);

    int rc = check_records(buf, CAP, n, end, &got[0][0], THREADS, PER_THREAD, payload);
    if (rc) return rc;
    printf("%llu of %d appends accepted while the cursor was toggled; all checks passed\n",
           (unsigned long long)n, THREADS * PER_THREAD);
    free(buf);
    return 0;
}
