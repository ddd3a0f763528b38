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

static void cursor_lock(sl_cursor *c) {
    while (!SPIN_TRY(&c->lock)) {
        /* The holder frames one record at most; if it was descheduled meanwhile, give
         * it the CPU rather than spinning through a whole time slice. */
        for (int i = 0; i < 64 && SPIN_HELD(&c->lock); i++) {
        }
        if (SPIN_HELD(&c->lock)) YIELD();
    }
}

int64_t sl_cursor_append(sl_cursor *c, const char *payload, uint64_t len) {
    if (c == NULL) return SL_ERR_ARG;
    cursor_lock(c);
    uint64_t seq = c->next_seq;
    int64_t end;
    if (len > SL_MAX_PAYLOAD || c->off > c->window || SL_FRAME_SIZE(len) > c->window - c->off)
        end = SL_ERR_CLOSED; /* closed, or the frame would pass the window */
    else if (seq > (uint64_t)INT64_MAX)
        end = SL_ERR_SEQ; /* the return value could not carry it */
    else
        end = sl_frame_one(c->base, c->cap, c->off, payload, len, seq);
    if (end >= 0) {
        c->off = (uint64_t)end;
        c->next_seq = seq + 1;
    }
    SPIN_FREE(&c->lock);
    return end >= 0 ? (int64_t)seq : end;
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

void sl_cursor_close(sl_cursor *c) {
    cursor_lock(c); /* waits for an append in progress */
    c->window = 0;
    SPIN_FREE(&c->lock);
}
