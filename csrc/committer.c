/* The group committer: SegmentLog.append with fsync="always", in C (csrc/segmentlog.h).
 *
 * Theory of operation: a durable append frames its record into the group buffer (the
 * frames of file offsets [start, off) of the active segment, not yet written), then
 * waits until a group fsync covers it. The first appender that finds no round running
 * leads one: it waits a little for the others to append too (the gather), writes the
 * buffer into the segment with pwrite, and fdatasyncs with the mutex released while the
 * next group fills the buffer again; then it wakes everyone. All of it runs with the GIL
 * released (cffi releases it around every call), so the 16 threads a round covers wake
 * and return in parallel instead of handing the GIL and the log's lock to one another
 * (the Python group commit this replaces was bound by that chain of wake-ups: FORMAT.md,
 * "Group commit").
 *
 * Policy stays in Python, as with the cursor (csrc/cursor.c): SegmentLog opens the
 * committer over the active segment's descriptor and closes it whenever it takes its own
 * lock. Closing waits for a round in progress, writes the buffer into the file, and hands
 * back where the file ends, the next sequence number, what is durable and any error, so
 * under the lock the Python fields are the truth. A closed committer refuses appends
 * (nothing written; Python takes its own path). Appenders still waiting when it closes
 * go on waiting: reopened over the same segment, its later rounds cover them (the file
 * already holds their frames); reopened over another segment (a rotation) or retired,
 * they go back to Python (SL_NOT_DURABLE) with their sequence number, and Python makes
 * them durable its own way. Python opens it only while every older segment is durable,
 * so a round here may declare durable every record up to the last it wrote. A failed
 * write or fdatasync is sticky: every appender of that round goes back to Python the
 * same way, later ones are refused, and Python, learning of it at the next close (which
 * the settling appender's wait takes), fails the log.
 */
#define _POSIX_C_SOURCE 200809L /* pwrite, fdatasync, clock_gettime under -std=c11 */
#define _DEFAULT_SOURCE         /* syscall (the futex) */
#include <stdint.h>
#include <stdlib.h>

#include "segmentlog.h"

#if defined(_WIN32)

/* No POSIX threads or fdatasync: the Python group commit does this work on Windows. */
sl_committer *sl_commit_new(void) { return NULL; }
void sl_commit_free(sl_committer *c) { (void)c; }
void sl_commit_open(sl_committer *c, int fd, char *buf, uint64_t buf_cap, uint64_t off,
                    uint64_t window, uint64_t next_seq, uint64_t durable_next,
                    uint64_t segment_id, int mark, uint64_t gather_ns) {
    (void)c, (void)fd, (void)buf, (void)buf_cap, (void)off, (void)window, (void)next_seq;
    (void)durable_next, (void)segment_id, (void)mark, (void)gather_ns;
}
void sl_commit_close(sl_committer *c, sl_commit_state *out) { (void)c, (void)out; }
void sl_commit_retire(sl_committer *c) { (void)c; }
sl_status sl_commit_append(sl_committer *c, const char *payload, uint64_t len,
                           uint64_t *seq) {
    (void)c, (void)payload, (void)len, (void)seq;
    return SL_ERR_CLOSED;
}
#ifdef SL_TESTING
void sl_commit_fail_next(sl_committer *c, int err) { (void)c, (void)err; }
#endif

#else

#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#define SYNC_DATA fdatasync        /* the data and what reading it needs, not the mtime */
#define GATHER_CLOCK CLOCK_MONOTONIC
#else
#define SYNC_DATA fsync            /* POSIX systems without fdatasync (macOS) */
#define GATHER_CLOCK CLOCK_REALTIME /* without pthread_condattr_setclock */
#endif
/* Waiters sleep on a futex on Linux, on a condition elsewhere (or with
 * -DSL_COMMIT_NO_FUTEX, which tests/test_native_sanitizers.py builds too). */
#if defined(__linux__) && !defined(SL_COMMIT_NO_FUTEX)
#define USE_FUTEX 1
#include <linux/futex.h>
#include <sys/syscall.h>
#else
#define USE_FUTEX 0
#endif

/* Fields a waiter reads without the mutex (marked "atomic") are written under the mutex
 * with a release store and read with an acquire load. */
#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

struct sl_committer {
    pthread_mutex_t mu;
    pthread_cond_t filled;  /* the gathering leader: as many records as last round are in */
#if !USE_FUTEX
    pthread_cond_t woken;   /* stands in for the futex on `wake` */
#endif
    char *buf;              /* the group buffer (the caller's) */
    uint64_t buf_cap;
    uint64_t start;         /* file offset of buf[0]: the file holds everything before */
    uint64_t off;           /* file offset of the next frame */
    uint64_t window;        /* frames end at or below this: the segment's size */
    uint64_t next_seq;
    uint64_t durable_next;  /* atomic: every record below this sequence number is durable */
    uint64_t segment_id;    /* atomic: the open segment (its base + 1); 0: retired */
    uint64_t gather_ns;     /* the longest a leader waits for the others */
    uint64_t rounds;        /* fdatasyncs done since sl_commit_new */
    uint64_t last_round;    /* records the previous round covered */
    uint64_t want_seq;      /* the gathering leader waits until next_seq reaches this */
    uint32_t wake;          /* atomic: bumped (and waiters woken) whenever what they wait
                             * for may have changed: a round ended, an open, a retire */
    int error;              /* atomic: errno of a failed pwrite/fdatasync; sticky */
    int open;               /* appends accepted; rounds may start */
    int fd;
    int mark;               /* zero bytes owed after the last frame (a recycled segment) */
    int syncing;            /* a leader is writing or fdatasyncing */
    int gathering;          /* a leader waits on `filled` for want_seq */
#ifdef SL_TESTING
    int fail_next;          /* test hook: the next fdatasync fails with this errno */
#endif
};

sl_committer *sl_commit_new(void) {
    sl_committer *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
#if defined(__linux__)
    pthread_condattr_setclock(&attr, GATHER_CLOCK);
#endif
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->filled, &attr);
#if !USE_FUTEX
    pthread_cond_init(&c->woken, NULL);
#endif
    pthread_condattr_destroy(&attr);
    return c;
}

void sl_commit_free(sl_committer *c) {
    if (c == NULL) return;
#if !USE_FUTEX
    pthread_cond_destroy(&c->woken);
#endif
    pthread_cond_destroy(&c->filled);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Wake every waiter (mutex held). They return without the mutex when their record is
 * durable: after a round's end, the covered appenders do not queue up on the mutex. */
static void wake_all(sl_committer *c) {
    STORE(&c->wake, c->wake + 1);
#if USE_FUTEX
    syscall(SYS_futex, &c->wake, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
#else
    pthread_cond_broadcast(&c->woken);
#endif
}

/* Sleep until `wake` differs from seen (mutex not held; may return early). */
static void wait_for_wake(sl_committer *c, uint32_t seen) {
#if USE_FUTEX
    syscall(SYS_futex, &c->wake, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    pthread_mutex_lock(&c->mu);
    while (LOAD(&c->wake) == seen) pthread_cond_wait(&c->woken, &c->mu);
    pthread_mutex_unlock(&c->mu);
#endif
}

void sl_commit_open(sl_committer *c, int fd, char *buf, uint64_t buf_cap, uint64_t off,
                    uint64_t window, uint64_t next_seq, uint64_t durable_next,
                    uint64_t segment_id, int mark, uint64_t gather_ns) {
    pthread_mutex_lock(&c->mu);
    c->fd = fd;
    c->buf = buf;
    c->buf_cap = buf_cap;
    c->start = c->off = off;
    c->window = window;
    c->open = 1;
    c->next_seq = next_seq;
    if (durable_next > c->durable_next) STORE(&c->durable_next, durable_next);
    STORE(&c->segment_id, segment_id);
    c->mark = mark;
    c->gather_ns = gather_ns;
    wake_all(c); /* waiters re-check: durable, to lead, or a new segment */
    pthread_mutex_unlock(&c->mu);
}

/* Write the group buffer into the file (mutex held). On error the committer fails. */
static void write_group(sl_committer *c) {
    uint64_t n = c->off - c->start;
    if (n == 0 || c->error) return;
    if (c->mark) { /* the zero marker after the frames of a recycled segment */
        uint64_t m = c->window - c->off < 8 ? c->window - c->off : 8;
        for (uint64_t i = 0; i < m; i++) c->buf[n + i] = 0;
        n += m;
    }
    uint64_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(c->fd, c->buf + done, (size_t)(n - done), (off_t)(c->start + done));
        if (w < 0) {
            if (errno == EINTR) continue;
            STORE(&c->error, errno ? errno : EIO);
            return;
        }
        if (w == 0) { /* preallocated space never runs out; treat it as the disk failing */
            STORE(&c->error, EIO);
            return;
        }
        done += (uint64_t)w;
    }
    c->start = c->off;
}

void sl_commit_close(sl_committer *c, sl_commit_state *out) {
    pthread_mutex_lock(&c->mu);
    c->open = 0; /* refuse new appends; a leader that is gathering stops waiting */
    pthread_cond_signal(&c->filled);
    while (c->syncing) { /* a round in progress: its leader wakes everyone at its end */
        uint32_t seen = c->wake;
        pthread_mutex_unlock(&c->mu);
        wait_for_wake(c, seen);
        pthread_mutex_lock(&c->mu);
    }
    write_group(c);
    out->off = c->start; /* == off, unless the write failed */
    out->next_seq = c->next_seq;
    out->durable_next = c->durable_next;
    out->rounds = c->rounds;
    out->error = c->error;
    pthread_mutex_unlock(&c->mu);
}

void sl_commit_retire(sl_committer *c) {
    pthread_mutex_lock(&c->mu);
    c->open = 0;
    STORE(&c->segment_id, 0); /* every waiter goes back to Python */
    wake_all(c);
    pthread_mutex_unlock(&c->mu);
}

#ifdef SL_TESTING
void sl_commit_fail_next(sl_committer *c, int err) {
    pthread_mutex_lock(&c->mu);
    c->fail_next = err;
    pthread_mutex_unlock(&c->mu);
}

/* The errno sl_commit_fail_next asked the next fdatasync to fail with (0: none), taken
 * back (mutex held). */
static int take_failure(sl_committer *c) {
    int fail = c->fail_next;
    c->fail_next = 0;
    return fail;
}
#else
#define take_failure(c) 0
#endif

/* One group fsync, led by the caller (mutex held on entry and on return). */
static void lead_round(sl_committer *c) {
    c->syncing = 1;
    if (c->gather_ns && c->last_round > 1) {
        /* The appenders the last round woke are about to append again: wait until as
         * many records are in (or gather_ns passed), so this fdatasync covers them too
         * instead of leaving most of them for the next one. */
        struct timespec until;
        clock_gettime(GATHER_CLOCK, &until);
        until.tv_nsec += (long)c->gather_ns;
        while (until.tv_nsec >= 1000000000L) {
            until.tv_nsec -= 1000000000L;
            until.tv_sec += 1;
        }
        c->want_seq = c->durable_next + c->last_round;
        c->gathering = 1;
        while (c->open && c->next_seq < c->want_seq) {
            if (pthread_cond_timedwait(&c->filled, &c->mu, &until) == ETIMEDOUT) break;
        }
        c->gathering = 0;
    }
    uint64_t covers = c->next_seq;
    uint64_t from = c->durable_next;
    write_group(c);
    int err = c->error;
    if (err == 0) {
        int fd = c->fd, fail = take_failure(c);
        pthread_mutex_unlock(&c->mu);
        int rc = fail ? -1 : SYNC_DATA(fd);
        if (fail) errno = fail;
        err = rc ? (errno ? errno : EIO) : 0;
        pthread_mutex_lock(&c->mu);
        c->rounds++;
    }
    c->syncing = 0;
    if (err) {
        STORE(&c->error, err);
    } else if (covers > c->durable_next) {
        c->last_round = covers - from;
        STORE(&c->durable_next, covers);
    }
    wake_all(c);
}

sl_status sl_commit_append(sl_committer *c, const char *payload, uint64_t len,
                           uint64_t *seq_out) {
    if (c == NULL || seq_out == NULL) return SL_ERR_ARG;
    pthread_mutex_lock(&c->mu);
    uint64_t seq = c->next_seq, size = SL_FRAME_SIZE(len), end = 0;
    uint64_t used = c->off - c->start;
    /* Refused, nothing written: closed, failed, past the segment, or past the buffer
     * (8 bytes kept for the zero marker). Python's path sorts out which. */
    sl_status rc = SL_ERR_CLOSED;
    if (c->open && !c->error && len <= SL_MAX_PAYLOAD && c->off <= c->window &&
        size <= c->window - c->off && used + 8 <= c->buf_cap && size <= c->buf_cap - used - 8)
        rc = seq > SL_APPEND_MAX_SEQ ? SL_ERR_SEQ
                                     : sl_frame_one(c->buf, c->buf_cap, used, payload, len,
                                                    seq, &end);
    if (rc != SL_OK) {
        pthread_mutex_unlock(&c->mu);
        return rc;
    }
    *seq_out = seq;
    c->off += size;
    c->next_seq = seq + 1;
    uint64_t segment = c->segment_id;
    if (c->gathering && c->next_seq >= c->want_seq) pthread_cond_signal(&c->filled);
    for (;;) { /* mutex held */
        if (!c->syncing && c->open && c->durable_next <= seq && !c->error &&
            c->segment_id == segment) {
            lead_round(c);
            continue;
        }
        uint32_t seen = c->wake; /* read after the checks: a change after them bumps it */
        pthread_mutex_unlock(&c->mu);
        for (;;) { /* mutex not held */
            if (LOAD(&c->durable_next) > seq) return SL_OK;
            if (LOAD(&c->error) || LOAD(&c->segment_id) != segment) {
                /* The disk failed, or rotated/retired: Python settles it (raises the
                 * error, or makes the record durable its own way). */
                return SL_NOT_DURABLE;
            }
            if (LOAD(&c->wake) != seen) break; /* a round ended without us: lead? */
            wait_for_wake(c, seen);
        }
        pthread_mutex_lock(&c->mu);
    }
}

#endif
