/* Stress test of the group committer (csrc/committer.c), built with -fsanitize=thread by
 * tests/test_native_sanitizers.py (not part of the extension). Usage: stress_committer FILE
 *
 * Four threads append distinct records through one committer over FILE while a fifth
 * plays SegmentLog's Python lock: it closes the committer over and over and then either
 * reopens it at once, or first "syncs in Python" (fdatasync, then reopens declaring
 * everything durable), or retires it (every waiter goes back: SL_NOT_DURABLE) and
 * reopens it as a new segment id. A group buffer of 16 KiB makes appends meet a full
 * buffer too. At the end the file must hold exactly the records that got a sequence
 * number, once each, in order, with sound checksums (sl_scan); every append must have
 * come back with its sequence number, SL_OK or SL_NOT_DURABLE (or been refused, nothing
 * written); and an injected fdatasync failure (the test hook: built with SL_TESTING) must
 * send its appender back not durable, stay sticky, and be reported by close.
 * ThreadSanitizer reports any data race; exit 0 and "all checks passed" otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "segmentlog.h"
#include "stress_check.h"

#define THREADS 4
#define PER_THREAD 1500
#define CAP (8u << 20)
#define GROUP (16u << 10)

static sl_committer *committer;
static int fd;
static char group[GROUP];
static int64_t got[THREADS][PER_THREAD]; /* sequence number of each append */
static int settled[THREADS][PER_THREAD]; /* came back SL_NOT_DURABLE */
static volatile int stop_toggling;

static void payload(int t, int i, char *out, uint64_t *len) {
    *len = (uint64_t)snprintf(out, 96, "t%d-%d-%.*s", t, i, (i * 7) % 61,
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
}

static void *appender(void *arg) {
    int t = (int)(intptr_t)arg;
    char p[96];
    uint64_t len;
    for (int i = 0; i < PER_THREAD; i++) {
        payload(t, i, p, &len);
        sl_status rc;
        uint64_t seq = 0;
        while ((rc = sl_commit_append(committer, p, len, &seq)) == SL_ERR_CLOSED)
            sched_yield(); /* closed or buffer full: SegmentLog would take its locked path */
        if (rc != SL_OK && rc != SL_NOT_DURABLE) {
            fprintf(stderr, "append returned %d (%s)\n", (int)rc, sl_strerror(rc));
            exit(2);
        }
        got[t][i] = (int64_t)seq;
        settled[t][i] = rc == SL_NOT_DURABLE;
    }
    return NULL;
}

static void *toggler(void *arg) {
    (void)arg;
    uint64_t segment = 1;
    unsigned k = 0;
    while (!__atomic_load_n(&stop_toggling, __ATOMIC_ACQUIRE)) {
        sl_commit_state st;
        sl_commit_close(committer, &st);
        if (st.error) {
            fprintf(stderr, "close reported errno %d\n", st.error);
            exit(2);
        }
        uint64_t durable = st.durable_next;
        switch (k++ % 3) {
        case 1: /* a Python round: everything the file holds is durable */
            if (fdatasync(fd) != 0) exit(3);
            durable = st.next_seq;
            break;
        case 2: /* closed without reopening over it: the waiters go back to Python */
            sl_commit_retire(committer);
            segment++;
            break;
        default:
            break;
        }
        sl_commit_open(committer, fd, group, GROUP, st.off, CAP, st.next_seq, durable, segment,
                       0, 50000);
        for (int i = 0; i < 200; i++) sched_yield();
    }
    return NULL;
}

static int check_failure(void) {
    sl_commit_fail_next(committer, EIO);
    uint64_t seq = 0;
    sl_status rc = sl_commit_append(committer, "doomed", 6, &seq);
    if (rc != SL_NOT_DURABLE || seq != (uint64_t)(THREADS * PER_THREAD)) {
        fprintf(stderr, "an injected fdatasync failure returned %d (seq %llu), not "
                "SL_NOT_DURABLE\n", (int)rc, (unsigned long long)seq);
        return 1;
    }
    rc = sl_commit_append(committer, "after", 5, &seq);
    if (rc != SL_ERR_CLOSED) {
        fprintf(stderr, "an append after the failure returned %d, not SL_ERR_CLOSED\n",
                (int)rc);
        return 1;
    }
    sl_commit_state st;
    sl_commit_close(committer, &st);
    if (st.error != EIO) {
        fprintf(stderr, "close reported errno %d after the failure, not EIO\n", st.error);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 3;
    fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, CAP) != 0) return 3;
    committer = sl_commit_new();
    if (!committer) return 3;
    sl_commit_open(committer, fd, group, GROUP, 0, CAP, 0, 0, 1, 0, 50000);
    pthread_t th[THREADS], tog;
    pthread_create(&tog, NULL, toggler, NULL);
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, appender, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    __atomic_store_n(&stop_toggling, 1, __ATOMIC_RELEASE);
    pthread_join(tog, NULL);
    sl_commit_state st;
    sl_commit_close(committer, &st);
    uint64_t n = st.next_seq, end = st.off;
    if (n != THREADS * PER_THREAD || st.error) {
        fprintf(stderr, "next_seq %llu, errno %d\n", (unsigned long long)n, st.error);
        return 1;
    }
    char *buf = calloc(1, CAP);
    if (!buf) return 3;
    if (pread(fd, buf, CAP, 0) != (ssize_t)CAP) return 3;
    int rc = check_records(buf, CAP, n, end, &got[0][0], THREADS, PER_THREAD, payload);
    if (rc) return rc;
    uint64_t later = 0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) later += (uint64_t)settled[t][i];
    sl_commit_open(committer, fd, group, GROUP, st.off, CAP, st.next_seq, st.durable_next, 99,
                   0, 0);
    if (check_failure()) return 1;
    printf("%llu appends durable (%llu handed back) over %llu fdatasyncs; all checks passed\n",
           (unsigned long long)n, (unsigned long long)later, (unsigned long long)st.rounds);
    sl_commit_free(committer);
    close(fd);
    free(buf);
    return 0;
}
