"""The Auditor's routing decisions: a pure state machine, no I/O, no clock of its own.

Theory of operation
-------------------
The Auditor's delivery thread holds events taken from ``record()``'s queue (``pending``,
oldest first) and asks :class:`RoutingPolicy` what to do next; it does that (publish,
write to the store, drain the store, wait) and tells the policy what happened. The
policy decides; the thread does the I/O. Time comes in as ``now`` (monotonic seconds):
a backoff is an instant before which the policy says "not yet", never a sleep.

Routes (:meth:`RoutingPolicy.route`), after the thread took queued events into
``pending`` (at most :meth:`~RoutingPolicy.take_limit`):

* a *backlog* (the store may hold events) and the broker up: DRAIN, store the held
  events behind the backlog, then publish the store's oldest batch;
* a backlog, the broker away: WAIT, store the held events and wait for the broker;
* no backlog, held events, the broker up: PUBLISH the oldest ``batch_size`` directly;
* no backlog, held events, the broker away: STORE them (wait if the store refused some);
* nothing held: IDLE when nothing is queued (every accepted event is settled), DONE when
  closing; AGAIN when events are queued (take them).

Rule 1: order. ``pending`` is always newer than everything in the store and older than
        everything queued, so held events are only appended behind the backlog or
        published when there is none; the unconfirmed tail of a direct batch goes back
        to the head of ``pending`` (:meth:`~RoutingPolicy.published`); a store write is
        tried oldest first and what the store refuses stays at the head.
Rule 2: the backlog flag is set by every event stored and by a store that found other
        processes' events (adopt), and cleared only by a drain that read nothing.
        Starting with it set covers what an earlier run left.
Rule 3: a drained batch whose confirmed prefix was cut short (or whose commit failed) is
        read again; its ids up to the cut are the *skip list*: when the re-read batch
        starts with them, they are not sent again (they were confirmed). The thread
        then commits that prefix on its own (:meth:`~RoutingPolicy.prefix_committed`),
        so that no process sends it again once this one is gone; the skip list is for
        when that commit cannot be made.
Rule 4: the store is asked again with halves of a list it refuses: "full" fills it to
        its limit in order and keeps the rest; an event refused alone is set aside
        (returned to the caller to report), the rest stored. A full store is retried
        after :data:`FULL_RETRY` s, or at once after a commit frees space
        (:meth:`~RoutingPolicy.drain_committed`); a failing one after a capped doubling
        backoff (:meth:`~RoutingPolicy.store_backoff`). A failed drain batch is followed
        by a pause (:meth:`~RoutingPolicy.drain_backoff`).
Rule 5: closing. The thread stops at the deadline, or once nothing is held, queued or
        in the store; with a durable store and the broker gone (its reconnect round
        after close() failed), once everything held went to the store. A memory store
        would lose the rest: it waits for the broker until the deadline.

Tested with scripted events and a fake clock (tests/test_audit_policy.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence

__all__ = [
    "DRAIN_BATCH_SIZE",
    "FIRST_DRAIN_BATCH",
    "FULL_RETRY",
    "SPILL_MAX",
    "Closing",
    "Item",
    "Route",
    "RoutingPolicy",
    "StoreWrite",
]

Item = tuple[str, bytes, float]  # (event id, body, monotonic time of record())

#: Default ``drain_batch_size``: events per store batch while draining. The broker's
#: confirm-mode rate is the limit; larger batches gain a few percent (fewer batch ends,
#: where the broker idles while the auditor commits, reads and decodes) at the cost of
#: memory per decoded event: 5000 keeps the peak small (benchmarks/README.md, "Auditor
#: drain sizing").
DRAIN_BATCH_SIZE = 5000

#: The first batch of a drain (after start, or after the store was seen empty): small, so
#: the first events are confirmed soon after the broker's return; later batches are
#: drain_batch_size. Costs one batch end.
FIRST_DRAIN_BATCH = 1000

SPILL_MAX = 10_000  # most events moved from the queue to the store in one write
FULL_RETRY = 1.0  # seconds before a full store is asked again (a commit retries at once)
METRICS_EVERY = 5.0  # seconds between the thread's store readings (metrics, adopt)


class Route(enum.Enum):
    """What the delivery thread does next (see the module doc)."""

    DRAIN = "drain"
    WAIT = "wait"
    PUBLISH = "publish"
    STORE = "store"
    IDLE = "idle"
    DONE = "done"
    AGAIN = "again"


class Closing(enum.Enum):
    """What a closing delivery thread does (Rule 5)."""

    GO_ON = "go on"  # not closing, or still delivering
    STOP = "stop"  # leave the loop; what is held goes to the store on the way out
    STORE_ALL = "store all"  # take every queued event, store all; stop if all went


class RoutingPolicy:
    """The delivery thread's decisions and the state they rest on (module doc)."""

    def __init__(self, *, batch_size: int, drain_batch_size: int, durable_store: bool) -> None:
        self.batch_size = batch_size
        self.drain_batch_size = drain_batch_size
        self.durable_store = durable_store
        self.pending: deque[Item] = deque()  # held events, oldest first (Rule 1)
        self.backlog = True  # unknown until the first read: an earlier run may have left events
        self.stopping = False
        self.deadline = 0.0
        self.retry_store_at = 0.0
        self.store_failures = 0
        self.drain_failures = 0
        self.skip: list[str] = []  # Rule 3
        # A drain starts with a small batch (the first confirm comes fast), then reads
        # drain_batch_size; "Drain speed" in segmentlog.audit_delivery.
        self.drain_size = min(FIRST_DRAIN_BATCH, drain_batch_size)
        self.next_metrics = 0.0

    def restart(self) -> None:
        """A forked child starts over: nothing held, the store not yet read."""
        self.pending.clear()
        self.skip, self.backlog, self.stopping = [], True, False

    # ---------------------------------------------------------------- questions
    def metrics_due(self, now: float) -> bool:
        """Whether the store is read now (metrics, adopt); every METRICS_EVERY s."""
        if now < self.next_metrics:
            return False
        self.next_metrics = now + METRICS_EVERY
        return True

    def take_limit(self) -> int:
        """Most queued events to take into ``pending`` now: a whole store write behind a
        backlog, else what completes one direct batch."""
        if self.backlog:
            return SPILL_MAX - len(self.pending)
        return self.batch_size - len(self.pending)

    def stop_by(self, deadline: float) -> None:
        """close() was called: deliver until ``deadline`` (Rule 5)."""
        self.deadline = deadline
        self.stopping = True

    def closing(self, now: float, *, queued: int, broker_gone: bool) -> Closing:
        """Whether a closing thread stops now (Rule 5)."""
        if not self.stopping:
            return Closing.GO_ON
        if now >= self.deadline:
            return Closing.STOP
        if not queued and not self.pending and not self.backlog:
            return Closing.STOP
        if not self.durable_store or not broker_gone:
            return Closing.GO_ON  # deliver (a memory store would lose the rest: wait)
        # A durable store keeps the rest for the next run: no need to wait for a broker
        # that is down once everything held is in it. What the store refuses has only
        # the broker left: wait for it (up to the deadline).
        return Closing.STORE_ALL

    def closing_write_ahead(self, now: float, *, broker_gone: bool) -> bool:
        """Whether a closing write-ahead thread stops now: everything is in the store
        already, so at the deadline, or at once with a durable store and no broker."""
        if not self.stopping:
            return False
        return now >= self.deadline or (self.durable_store and broker_gone)

    def route(self, *, queued: int, available: bool) -> Route:
        """What to do with the held events (module doc, "Routes")."""
        if self.backlog:
            return Route.DRAIN if available else Route.WAIT
        if self.pending:
            return Route.PUBLISH if available else Route.STORE
        if queued:
            return Route.AGAIN
        return Route.DONE if self.stopping else Route.IDLE

    # ---------------------------------------------------------------- direct publishing
    def next_batch(self) -> list[Item]:
        """The oldest held events, at most ``batch_size``, out of ``pending``."""
        pending = self.pending
        return [pending.popleft() for _ in range(min(len(pending), self.batch_size))]

    def published(self, batch: list[Item], confirmed: int) -> list[Item]:
        """The broker confirmed the first ``confirmed`` events of ``batch``; the rest
        (returned) goes back to the head of ``pending``: it is older than every event
        still held, and is stored before any newer one (Rule 1)."""
        rest = batch[confirmed:]
        self.pending.extendleft(reversed(rest))
        return rest

    # ---------------------------------------------------------------- the store
    def store_write(self, now: float) -> StoreWrite | None:
        """A write of every held event, or None while a refusing store waits out its
        retry time (a closing thread tries at once)."""
        if now < self.retry_store_at and not self.stopping:
            return None
        return StoreWrite(self, now)

    def retry_store_now(self) -> None:
        self.retry_store_at = 0.0

    def store_backoff(self) -> float:
        """Seconds before a failing store is asked again: doubling from 0.2, at most 5."""
        return min(5.0, 0.1 * (1 << min(self.store_failures, 10)))

    def found_backlog(self) -> None:
        """The store holds events this thread did not write (adopted, Rule 2)."""
        self.backlog = True

    # ---------------------------------------------------------------- draining
    def skip_count(self, ids: Sequence[str]) -> int:
        """How many leading events of a drained batch to skip (Rule 3): the skip list,
        when the batch starts with it; else 0 (not the batch we half-sent)."""
        skip = len(self.skip)
        if not skip or list(ids[:skip]) != self.skip:
            return 0
        return skip

    def drain_empty(self) -> bool:
        """The store had nothing to read: no backlog. Returns whether there was one.
        The next backlog (after an outage) starts with a small batch again."""
        had = self.backlog
        self.skip = []
        self.drain_size = min(FIRST_DRAIN_BATCH, self.drain_batch_size)
        self.backlog = False
        return had

    def drain_cut(self, confirmed_ids: Sequence[str]) -> None:
        """A drained batch was not committed: its first events, ``confirmed_ids``, were
        confirmed and are skipped when it is read again (Rule 3). The batch keeps its
        size: the re-read must cover the confirmed prefix that the skip list skips."""
        self.skip = list(confirmed_ids)

    def prefix_committed(self) -> None:
        """The confirmed prefix of a batch cut short was committed on its own (Rule 3):
        nothing is left to skip, and a refused store write is retried at once (space
        was freed). The batch still failed: its backoff and size stay."""
        self.skip = []
        self.retry_store_at = 0.0

    def drain_committed(self) -> None:
        """A drained batch was confirmed whole and committed: full-size batches from now
        on, and a refused store write is retried at once (space was freed)."""
        self.skip = []
        self.drain_failures = 0
        self.drain_size = self.drain_batch_size
        self.retry_store_at = 0.0
        self.backlog = True

    def drain_backoff(self) -> float:
        """Seconds to pause after a failed drain batch (the broker still up: nacks, a
        failing store), so the loop does not spin: doubling from 0.04, at most 1."""
        self.drain_failures += 1
        return min(1.0, 0.02 * (1 << min(self.drain_failures, 10)))


class StoreWrite:
    """One attempt to store every held event, oldest first, in as few writes as the
    store takes (Rule 4). The thread writes each :meth:`next_part` and reports how it
    went; :meth:`finish` takes what left ``pending`` (stored or set aside) out of it."""

    def __init__(self, policy: RoutingPolicy, now: float) -> None:
        self._policy = policy
        self._now = now
        self._items = list(policy.pending)
        self._done = 0  # events of _items that left pending (stored or set aside)
        self._chunk = len(self._items)
        self._stopped = False
        self._part: list[Item] = []

    def next_part(self) -> list[Item] | None:
        """The events to write next, or None when all are placed or the store refused."""
        if self._stopped or self._done >= len(self._items):
            return None
        self._part = self._items[self._done:self._done + self._chunk]
        return self._part

    def stored(self) -> None:
        """The part is in the store."""
        self._done += len(self._part)
        self._policy.backlog = True
        self._policy.store_failures = 0

    def full(self) -> bool:
        """The store is full: True when that is final for now (one event refused), False
        when a smaller part is tried (filling the store to its limit, in order)."""
        if len(self._part) > 1:
            self._chunk = max(1, len(self._part) // 2)
            return False
        # A commit retries at once; this timer only covers a store that frees space by
        # itself (e.g. shared with another consumer).
        self._policy.retry_store_at = self._now + FULL_RETRY
        self._stopped = True
        return True

    def refused(self) -> Item | None:
        """The store refuses an event of the part (not JSON, too large): a smaller part
        is tried to find it; the one event refused alone is returned, to be set aside
        and reported, and the rest is tried whole again (it is not what made others
        wait)."""
        if len(self._part) > 1:
            self._chunk = max(1, len(self._part) // 2)
            return None
        self._done += 1
        self._chunk = len(self._items) - self._done
        return self._part[0]

    def failed(self) -> float:
        """The store fails (not "full"): the rest stays held, retried after the returned
        backoff."""
        policy = self._policy
        policy.store_failures += 1
        delay = policy.store_backoff()
        policy.retry_store_at = self._now + delay
        self._stopped = True
        return delay

    @property
    def unplaced(self) -> int:
        """Events of this write not yet stored or set aside."""
        return len(self._items) - self._done

    def finish(self) -> int:
        """Take the placed events out of ``pending``; returns how many."""
        pending = self._policy.pending
        for _ in range(self._done):
            pending.popleft()
        return self._done
