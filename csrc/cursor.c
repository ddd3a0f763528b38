/* The append cursor (csrc/segmentlog.h): where the next frame of the active segment goes.
 *
 * Theory of operation: SegmentLog.append with fsync="never"/"interval" frames a record
 * into the active segment's map with one call here, without taking the log's Python lock
 * (cffi releases the GIL around the call, so the cursor needs a lock of its own: a spin
 * lock, held for one frame). The Python side owns all policy. It opens the cursor
 * over [off, window) of the mapped segment, and closes it (window 0) whenever it takes
 * its own lock, reading back off and next_seq; while closed the cursor refuses every
 * append, which then takes the Python path. So exactly one side writes at a time, and
 * the lock's acquire/release orders the frame bytes before the offset that publishes
 * them.
 */
#include <stdint.h>
#include <stdlib.h>

#include "segmentlog.h"

#if defined(_MSC_VER)
#include <intrin.h>
#include <windows.h>
#define SPIN_TRY(p) (_InterlockedExchange((volatile long *)(p), 1) == 0)
#define SPIN_FREE(p) _InterlockedExchange((volatile long *)(p), 0)
#define SPIN_HELD(p) (*(volatile long *)(p) != 0)
#define YIELD() SwitchToThread()
#else
#include <sched.h>
#define SPIN_TRY(p) (__atomic_exchange_n((p), 1, __ATOMIC_ACQUIRE) == 0)
#define SPIN_FREE(p) __atomic_store_n((p), 0, __ATOMIC_RELEASE)
#define SPIN_HELD(p) (__atomic_load_n((p), __ATOMIC_RELAXED) != 0)
#define YIELD() sched_yield()
#endif

/* Opaque to callers (csrc/segmentlog.h): only the functions below touch its fields. */
struct sl_cursor {
    char *base;        /* the active segment's map */
    uint64_t cap;      /* its size */
    uint64_t off;      /* where the next frame goes */
    uint64_t next_seq; /* the next frame's sequence number */
    uint64_t window;   /* frames must end at or below this; 0: closed */
    int32_t lock;      /* 0 free, 1 held */
};

sl_cursor *sl_cursor_new(void) {
    return calloc(1, sizeof(sl_cursor)); /* zeroed: closed */
}

void sl_cursor_free(sl_cursor *c) { free(c); }

static void cursor_lock(sl_cursor *c) {
    while (!SPIN_TRY(&c->lock)) {
        /* The holder frames one record at most; if it was descheduled meanwhile, give
         * it the CPU rather than spinning through a whole time slice. */
        for (int i = 0; i < 64 && SPIN_HELD(&c->lock); i++) {
        }
        if (SPIN_HELD(&c->lock)) YIELD();
    }
}

sl_status sl_cursor_append(sl_cursor *c, const char *payload, uint64_t len, uint64_t *seq) {
    if (c == NULL || seq == NULL) return SL_ERR_ARG;
    cursor_lock(c);
    uint64_t next = c->next_seq, end = 0;
    sl_status rc;
    if (len > SL_MAX_PAYLOAD || c->off > c->window || SL_FRAME_SIZE(len) > c->window - c->off)
        rc = SL_ERR_CLOSED; /* closed, or the frame would pass the window */
    else if (next > SL_APPEND_MAX_SEQ)
        rc = SL_ERR_SEQ;
    else
        rc = sl_frame_one(c->base, c->cap, c->off, payload, len, next, &end);
    if (rc == SL_OK) {
        c->off = end;
        c->next_seq = next + 1;
    }
    SPIN_FREE(&c->lock);
    if (rc == SL_OK) *seq = next;
    return rc;
}

void sl_cursor_open(sl_cursor *c, char *base, uint64_t cap, uint64_t off, uint64_t next_seq,
                    uint64_t window) {
    cursor_lock(c);
    c->base = base;
    c->cap = cap;
    c->off = off;
    c->next_seq = next_seq;
    c->window = window < cap ? window : cap;
    SPIN_FREE(&c->lock);
}

void sl_cursor_close(sl_cursor *c, uint64_t *off, uint64_t *next_seq) {
    cursor_lock(c); /* waits for an append in progress */
    c->window = 0;
    *off = c->off;
    *next_seq = c->next_seq;
    SPIN_FREE(&c->lock);
}
