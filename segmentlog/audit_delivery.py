"""The Auditor's delivery thread: it does the I/O that :class:`RoutingPolicy` decides.

Theory of operation
-------------------
One daemon thread per Auditor, the only one that publishes, reads the store and (without
write-ahead) writes it. Each round it reads the store's metrics when they are due, takes
queued events into the policy's ``pending`` (serialising constant models on the way),
asks the policy (``closing``, ``route``) and does what it answers: publish a direct batch
(``Publisher.publish_batch``), write the held events to the store (the parts of a
``StoreWrite``, ``write_many_encoded``: the bytes ``record()`` encoded), drain one
store batch (``read_encoded_up_to`` -> ``publish_batch`` -> ``commit``), wait for the
broker, or sleep until ``record()`` wakes it. It tells the policy every outcome. The
rules it keeps are those of :mod:`segmentlog.audit` (order, nothing dropped silently,
at-least-once, the store's room as the only backpressure) and of
:mod:`segmentlog.audit_policy`.

It also keeps what callers must see: the memory limit ``record()`` checks (Rule 4 of
segmentlog.audit: the store's room, 0 while the store refuses what the thread holds),
the set-aside events ``close()`` reports (Rule 2), the count of settled events
``flush()`` waits for, and the auditor's metrics. In the child of a fork it starts
over: a new publisher and thread, nothing queued (the parent delivers what it recorded).

:class:`DeliveryThread` is a base of :class:`~segmentlog.audit.Auditor`, which builds the
store, the publisher and the metrics and calls :meth:`DeliveryThread._init_delivery`;
this module never creates them.

Drain speed
-----------
A drain is a loop of synchronous batches: read, publish with confirms, commit. The
broker is the bottleneck (its confirm-mode rate is below its no-confirm rate on a busy
host), so what the auditor controls is how often it leaves the broker idle: at the end
of every batch, while the last confirms arrive and the next batch is committed, read,
decoded and encoded. Two settings, both chosen by measurement (interleaved runs with
benchmarks/bench_auditor.py-style drains of a 100k-event file-store backlog against the
no-confirm rate of the same round; the numbers are in the comments of
:data:`~segmentlog.audit_policy.DRAIN_BATCH_SIZE` and
:data:`~segmentlog.audit_config.DRAIN_WINDOW`):

* ``drain_batch_size`` (default 5000): the store is read that many events at a time
  whatever ``batch_size`` the store itself was configured with (``read_batch_up_to``;
  a custom store with the old ``read_batch(self)`` keeps its own size). It trades
  memory (~3 KB per decoded event at the peak) for fewer idle ends of batches. The
  first batch of a drain is 1000 events, so the first confirm after an outage comes
  within ~0.1 s instead of after a whole large batch.
* the publisher's confirm window: :data:`DRAIN_WINDOW` (5000, a whole drain batch in
  flight) unless ``publisher_options`` sets ``window``; the Publisher's own default
  (1000) suits steady traffic, not a backlog.

The store is read with ``read_encoded_up_to``: the file and memory stores hand over
the JSON bytes they stored, so the drain neither decodes events into dicts nor encodes
them again. The publisher encodes each message's frames in one step and writes a
window's room 100 messages at a time (segmentlog/amqp/frames.py). With both, a drain
runs near pika's no-confirm publish rate; the rest is what confirms cost the broker,
and a version 2 classic queue (a ``queue-version`` policy, or
``${PREFIX}_QUEUE_ARGUMENTS`` = ``{"x-queue-version": 2}``, or the broker's
``classic_queue.default_version = 2``) raises that ceiling (the figures:
benchmarks/README.md, "Auditor drain sizing").

The backlog gauge (``segmentlog_auditor_backlog_events``) is the store's ``pending()``
read after every write and commit of the delivery thread and every 5 s (exact, including
events other writers added), or a running count when the store cannot tell (custom
stores whose ``pending()`` returns ``None``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

from .amqp import Publisher
from .audit_metrics import AuditorMetrics
from .audit_policy import Closing, Route, RoutingPolicy
from .cadf import Event, _dump_constant
from .errors import BackingStoreError, BackingStoreFull, BrokerUnavailableError
from .metrics import sync_callbacks
from .store import BackingStore
from .store.memory import MemoryStore

__all__ = ["DeliveryThread", "Queued"]

LOG = logging.getLogger("segmentlog.audit")  # the Auditor's logger

_POLL = 0.05  # how often a waiting delivery thread looks at new events / the broker
_IDLE = 0.5  # longest idle sleep (a safety net; record() wakes the thread)
_LATENCY_TRACKED = 200_000  # most record times kept for events routed through the store
_TYPICAL_EVENT = 1024  # bytes assumed per event for the store's room until one is seen


def _message_id_of(mid: str | None, body: bytes) -> str:
    """The AMQP message id of an event: its own id (a string of at most 255 bytes; 63
    characters are at most 252), when it can be one."""
    if mid and (len(mid) <= 63 or len(mid.encode()) <= 255):
        return mid
    # Not written by an Auditor (every recorded event has an id): derive a stable one,
    # so a resend of the same bytes carries the same id and consumers can dedupe it.
    return str(uuid.uuid5(uuid.NAMESPACE_OID, body.hex()))


#: An item of the record() queue: the body may still be the constant Event itself, which
#: _take serialises on the way to ``_pending``.
Queued = tuple[str, "bytes | Event", float]


class DeliveryThread:
    """The Auditor's delivery thread and the state it shares with the caller's side."""

    # Set by the Auditor before _init_delivery.
    queue_name: str
    metrics: AuditorMetrics
    _store: BackingStore
    _publisher: Publisher
    _owns_store: bool
    _durable_store: bool
    _write_ahead: bool
    _observer_dict: dict[str, Any]
    _accepted: int
    _queue_size: int
    _publisher_args: tuple[list[str], dict[str, Any]]

    def _init_delivery(self, queue_size: int, batch_size: int, drain_batch_size: int) -> None:
        # Shared between record() and the delivery thread.
        self._queue: deque[Queued] = deque()
        self._lock = threading.Lock()  # record() vs close(): nothing appended after close
        self._closed = False
        self._wake = threading.Event()
        self._idle = False
        self._room = threading.Condition()  # record() waiting for queue room or store space
        self._waiters = 0
        self._settled = threading.Condition()
        # _accepted value up to which everything is delivered; -1 until the store was
        # first seen empty (an earlier run may have left a backlog: flush() covers it).
        self._delivered_upto = -1
        self._store_full = False
        self._store_error: str | None = None
        # Set by the delivery thread while the store refuses events it holds (full or
        # failing): record() then accepts nothing more into memory (Rule 4).
        self._refused = False
        # Most events record() holds in memory (Rule 4): queue_size, or fewer while a
        # durable store has room for fewer (_room_limit, from _update_room), or 0 while
        # the store refuses what the delivery thread holds. One number, so record()
        # checks one condition.
        self._room_limit = queue_size
        self._memory_limit = queue_size
        self._largest_event = _TYPICAL_EVENT  # bytes, the largest serialised so far
        # Events the auditor could neither deliver nor store: reported by close().
        self._lost: list[tuple[str, bytes]] = []
        self._lost_reasons: list[str] = []
        self._t_record: dict[str, float] = {}
        self._close_rounds = 0  # the publisher's failed rounds when close() began
        self._failure: BaseException | None = None

        # The delivery thread's decisions (segmentlog.audit_policy); record() reads the
        # length of the events it holds (``_pending``, the policy's own deque).
        self._policy = RoutingPolicy(batch_size=batch_size,
                                     drain_batch_size=drain_batch_size,
                                     durable_store=self._durable_store)
        self._pending = self._policy.pending
        self._backlog_events = 0
        self._sync_backlog(0)

        self._update_room()  # an earlier run may have left the store (nearly) full
        self._update_room()  # an earlier run may have left the store (nearly) full

    def _start_delivery(self, connect_wait: float) -> None:
        """Connect (waiting up to ``connect_wait`` s) and start the thread."""
        self._thread = threading.Thread(target=self._run, name=f"auditor-{self.queue_name}",
                                        daemon=True)
        try:
            self._publisher.connect(timeout=connect_wait)
        except BrokerUnavailableError:
            # Not fatal: the publisher keeps reconnecting; events are buffered meanwhile.
            LOG.warning("auditor %r: broker not reachable yet (%s); buffering events in the "
                        "backing store until it is", self.queue_name, self._publisher.last_error)
        self._thread.start()
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        """The child of a fork (gunicorn --preload, a module-level auditor, a prefork
        pool): the delivery thread did not come along, the broker connection is the
        parent's, and every event recorded before the fork is the parent's to deliver
        (in its memory, or in its log). Start over with the child's own: the same
        settings, a new publisher and delivery thread, nothing queued. The store looks
        after itself (the file store claims a log of the child's own, the memory store
        starts empty)."""
        if self._closed:
            return
        old = self._publisher
        _forget_connection(old)
        with contextlib.suppress(Exception):
            old.metrics.release()  # the child's copy of the label, for the new publisher
        self._lock, self._wake = threading.Lock(), threading.Event()
        self._room, self._settled = threading.Condition(), threading.Condition()
        self._queue.clear()
        self._policy.restart()
        self._t_record, self._lost, self._lost_reasons = {}, [], []
        self._accepted = self._delivered_upto = 0
        self._waiters, self._idle, self._failure = 0, False, None
        self._refused = False
        urls, options = self._publisher_args
        self._publisher = Publisher(urls, self.queue_name, **options)
        self._thread = threading.Thread(target=self._run, name=f"auditor-{self.queue_name}",
                                        daemon=True)
        self._publisher.start()  # connects in the background; events buffer meanwhile
        self._thread.start()

    # ------------------------------------------------------------------ used by both sides
    def _track(self, mid: str, t: float) -> None:
        """Remember when an event routed through the store was recorded (for latency)."""
        t_record = self._t_record
        if len(t_record) >= _LATENCY_TRACKED:
            # Bounded: entries of events delivered by another process (or never) would
            # pile up; dropping them only costs latency samples.
            t_record.clear()
        t_record[mid] = t

    def _set_full(self, full: bool) -> None:
        if full != self._store_full:
            self._store_full = full
            self.metrics.store_full.set(1 if full else 0)
            if full:
                LOG.warning("auditor %r: backing store is full; record() blocks until the "
                            "broker drains it", self.queue_name)
            else:
                LOG.info("auditor %r: backing store has room again", self.queue_name)

    # ------------------------------------------------------------------ delivery thread
    def _run(self) -> None:
        try:
            if self._write_ahead:
                self._run_write_ahead()
            else:
                self._run_queue()
        except BaseException as exc:  # pragma: no cover - a bug; events stay in the store
            self._failure = exc
            LOG.exception("auditor %r: delivery thread failed", self.queue_name)
        finally:
            self._finish()
            with self._settled:
                self._settled.notify_all()

    def _tick_metrics(self) -> None:
        if not self._policy.metrics_due(time.monotonic()):
            return
        try:
            self._store.update_metrics()
        except Exception:  # metrics must never stop delivery
            LOG.debug("auditor %r: store.update_metrics failed", self.queue_name,
                      exc_info=True)
        sync_callbacks()  # multiprocess metrics mode: counts read at scrape time
        # The backlog of processes that are gone (a worker that exited or was
        # killed): delivered by this one (BackingStore Rule 9).
        try:
            if self._store.adopt():
                self._policy.found_backlog()
        except Exception:  # a store that cannot look now tries again next time
            LOG.warning("auditor %r: store.adopt failed", self.queue_name, exc_info=True)
        # Also between writes and commits: other writers of a shared store show up.
        self._sync_backlog(self._backlog_events)
        self._update_room()

    def _settle(self, snapshot: int) -> None:
        if snapshot > self._delivered_upto or self._delivered_upto < 0:
            with self._settled:
                self._delivered_upto = snapshot
                self._settled.notify_all()

    def _broker_gone(self) -> bool:
        """Closing: no channel now, and the connection round close() started (or one
        after it) failed. Until then the broker may be back (close() is called right
        after an outage ended): a durable store's backlog waits for that round."""
        return (not self._publisher.is_available()
                and self._publisher.rounds_failed > self._close_rounds)

    def _run_queue(self) -> None:
        policy = self._policy
        pending = self._pending
        publisher = self._publisher
        while True:
            self._tick_metrics()
            if self._refused and not pending:
                self._set_refused(False)  # what the store refused was published
            snapshot = self._accepted
            self._take(policy.take_limit())
            if policy.stopping:
                closing = policy.closing(time.monotonic(), queued=len(self._queue),
                                         broker_gone=self._broker_gone())
                if closing is Closing.STOP:
                    return
                if closing is Closing.STORE_ALL:
                    self._take(len(self._queue))
                    if self._spill():
                        return
            route = policy.route(queued=len(self._queue), available=publisher.is_available())
            if route is Route.DRAIN or route is Route.WAIT:
                if pending:
                    self._spill()  # behind the backlog (Rule 1)
                if route is Route.DRAIN:
                    self._drain_and_pause()
                else:
                    publisher.wait_available(_POLL)
            elif route is Route.PUBLISH:
                self._publish_pending()
            elif route is Route.STORE:
                if not self._spill():
                    publisher.wait_available(_POLL)
            elif route is not Route.AGAIN:
                self._settle(snapshot)
                if route is Route.DONE:
                    return
                self._sleep()

    def _sleep(self) -> None:
        self._idle = True
        self._wake.clear()
        if not self._queue and not self._policy.stopping:
            self._wake.wait(_IDLE)
        self._idle = False

    def _take(self, limit: int) -> None:
        """Move up to ``limit`` events from the queue to ``_pending``, serialising the
        ones record() left as constant models."""
        queue = self._queue
        pending = self._pending
        observer = self._observer_dict
        moved = 0
        while moved < limit and queue:
            mid, body, t = queue.popleft()
            if isinstance(body, Event):
                try:
                    body = _dump_constant(body.wire_dict(observer))
                except Exception as exc:  # a constant model always serialises; a bug
                    # Its fields were checked when it was built, so nothing can publish
                    # or store it: set aside and reported by close(), not lost silently.
                    self.metrics.failed.inc()
                    LOG.error("auditor %r: event %r cannot be serialised (%s); set aside "
                              "(close() reports it)", self.queue_name, mid, exc)
                    self._set_aside(mid, repr(body).encode("utf-8", "backslashreplace"),
                                    f"cannot be serialised ({exc})")
                    continue
            if len(body) > self._largest_event:
                self._largest_event = len(body)
            pending.append((mid, body, t))
            moved += 1

    def _notify_room(self) -> None:
        if self._waiters:
            with self._room:
                self._room.notify_all()

    def _set_backlog(self, events: int) -> None:
        self._backlog_events = max(0, events)
        self.metrics.backlog.set(self._backlog_events)

    def _sync_backlog(self, estimate: int) -> None:
        """Set the backlog from the store's ``pending()``; ``estimate`` if it cannot tell."""
        try:
            exact = self._store.pending()
        except Exception as exc:  # a custom store's pending() must not stop delivery
            # Only the gauge is affected: the drain itself never relies on this count.
            LOG.debug("auditor %r: store.pending() failed (%s); backlog gauge estimated",
                      self.queue_name, exc)
            exact = None
        self._set_backlog(estimate if exact is None else exact)

    def _publish_pending(self) -> None:
        batch = self._policy.next_batch()
        try:
            result = self._publisher.publish_batch([(mid, body) for mid, body, _ in batch])
            confirmed = result.confirmed_prefix
        except BrokerUnavailableError:
            confirmed = 0
        now = time.monotonic()
        if confirmed:
            self.metrics.successful.inc(confirmed)
            self.metrics.observe_latencies(now - t for _, _, t in batch[:confirmed])
            self._notify_room()
        rest = self._policy.published(batch, confirmed)
        if rest:
            # Rule 1: the unconfirmed tail is back at the head of what is held, and goes
            # into the store before any newer event.
            self.metrics.failed.inc(len(rest))
            self._spill()

    def _spill(self) -> bool:
        """Append every pending event to the store, oldest first; True when all went.

        The policy's StoreWrite splits what the store refuses (Rule 4 of
        segmentlog.audit_policy); one event refused alone (Rule 2 of the stores:
        TypeError, or a ValueError such as RecordTooLargeError) is set aside and
        reported, and the events around it are stored (Rule 5).
        """
        if not self._pending:
            self._set_refused(False)
            return True
        write = self._policy.store_write(time.monotonic())
        if write is None:
            return False  # waiting out the retry time of a store that refused
        while (part := write.next_part()) is not None:
            try:
                self._store.write_many_encoded([body for _, body, _ in part])
            except BackingStoreFull:
                if write.full():
                    self._set_full(True)
                continue
            except (TypeError, ValueError) as exc:
                item = write.refused()
                if item is not None:
                    # This one event can never be stored (and is not what made others
                    # wait): set aside alone, reported by close(), so the rest are kept.
                    mid, body, _ = item
                    self.metrics.failed.inc()
                    LOG.error("auditor %r: the backing store refuses event %r (%s); set "
                              "aside, the events around it are stored (close() reports it)",
                              self.queue_name, mid, exc)
                    self._set_aside(mid, body, f"refused by the backing store ({exc})")
                continue
            except (BackingStoreError, OSError) as exc:
                # Not "full": kept in memory and retried with a capped backoff (Rule 4).
                delay = write.failed()
                failures = self._policy.store_failures
                if self._store_error is None or failures in (1, 10, 100):
                    LOG.error("auditor %r: backing store write failed (%s); %d event(s) kept "
                              "in memory, retrying in %.1f s", self.queue_name, exc,
                              write.unplaced, delay)
                self._store_error = str(exc)
                continue
            write.stored()
            for mid, _, t in part:
                self._track(mid, t)
            self._sync_backlog(self._backlog_events + len(part))
            self._store_error = None
            self._set_full(False)
        done = write.finish()
        # Events the store would not take stay in memory: record() takes no more
        # until they are placed (Rule 4), so memory never holds what cannot be kept
        # beyond what was accepted before the store said no.
        self._set_refused(bool(self._pending))
        self._update_room()
        if done:
            self._notify_room()
        return not self._pending

    def _update_room(self) -> None:
        """Hold no more events in memory than the store has room for (Rule 4), so what
        record() accepts can still be stored if the broker goes away. A memory store
        is lossy anyway and keeps queue_size (its room would only slow a healthy
        broker's traffic); a store that cannot tell keeps it too."""
        if not self._durable_store:
            return
        try:
            room = self._store.room(self._largest_event)
        except Exception as exc:  # a reading: the refusal flag still stops record()
            LOG.debug("auditor %r: store.room() failed (%s)", self.queue_name, exc)
            room = None
        if room is None or isinstance(room, bool) or not isinstance(room, int):
            limit = self._queue_size
        else:
            # Every event in memory (queued or held by the delivery thread) is compared
            # with this: all of them must fit in the store.
            limit = min(self._queue_size, max(0, room))
        if limit != self._room_limit:
            self._room_limit = limit
            self._apply_limit()

    def _apply_limit(self) -> None:
        limit = 0 if self._refused else self._room_limit
        if limit != self._memory_limit:
            grew = limit > self._memory_limit
            self._memory_limit = limit
            if grew:
                self._notify_room()

    def _set_refused(self, refused: bool) -> None:
        if refused != self._refused:
            self._refused = refused
            self._apply_limit()

    def _set_aside(self, mid: str, body: bytes, reason: str) -> None:
        """An accepted event nothing can deliver or store: kept for close()'s report."""
        self._lost.append((mid, body))
        if len(self._lost_reasons) < 3:
            self._lost_reasons.append(f"{mid}: {reason}")

    def _drain_once(self) -> str:
        """Publish the store's oldest batch; commit it when all of it was confirmed.

        Returns ``"empty"``, ``"done"`` or ``"failed"``.
        """
        policy = self._policy
        try:
            # drain_batch_size whatever the store's own batch_size (module doc, "Drain
            # speed"); a custom store with the old read_batch(self) keeps its size. The
            # events come as JSON bytes and ids: the file and memory stores hand over the
            # bytes they stored, without decoding into dicts and encoding again.
            bodies, event_ids, commit = self._store.read_encoded_up_to(policy.drain_size)
        except (BackingStoreError, OSError) as exc:
            LOG.error("auditor %r: backing store read failed: %s", self.queue_name, exc)
            return "failed"
        if not bodies or commit is None:
            if policy.drain_empty():  # once per end of a drain, not per idle wake-up
                # Usually 0; the store's count also shows events another drainer holds
                # (a second process on one SQLite file).
                self._sync_backlog(0)
            return "empty"
        ids = [_message_id_of(mid, b) for mid, b in zip(event_ids, bodies, strict=True)]
        n = len(bodies)
        skip = policy.skip_count(ids)  # Rule 3: confirmed before the batch was cut short
        try:
            result = self._publisher.publish_batch(
                list(zip(ids[skip:], bodies[skip:], strict=True)))
            confirmed = result.confirmed_prefix
        except BrokerUnavailableError:
            confirmed = 0
        if confirmed:
            self._confirmed_from_store(ids[skip:skip + confirmed])
        done = skip + confirmed
        if done < n:
            self.metrics.failed.inc(n - done)
            policy.drain_cut(ids[:done])
            if done:
                self._commit_confirmed(ids[:done])
            return "failed"
        try:
            commit()
        except (BackingStoreError, OSError) as exc:
            LOG.error("auditor %r: commit of a delivered batch failed (%s); it will be read "
                      "again and its events skipped", self.queue_name, exc)
            policy.drain_cut(ids)
            return "failed"
        policy.drain_committed()
        self._committed(n)
        return "done"

    def _committed(self, n: int) -> None:
        """``n`` delivered events were committed (removed from the store)."""
        self.metrics.drained.inc(n)
        self._sync_backlog(self._backlog_events - n)
        # Space freed: a refused write is retried now; wake record() calls waiting for it.
        self._update_room()
        self._notify_room()

    def _commit_confirmed(self, ids: list[str]) -> None:
        """Remove the confirmed prefix ``ids`` of a batch cut short from the store: read
        exactly those events again (reading without a commit starts again from the same
        events, Rule 4 of the stores) and commit them. Otherwise, once this process is
        gone, whoever delivers the store after it would send them again, and only the
        messages whose confirm never came may be sent twice (Rule 3 of segmentlog.audit).
        Should the store hand over other events, or fail, nothing is committed: the skip
        list still skips them while this process lives."""
        try:
            bodies, event_ids, commit = self._store.read_encoded_up_to(len(ids))
            again = [_message_id_of(m, b) for m, b in zip(event_ids, bodies, strict=True)]
            if commit is None or again != ids:
                return
            commit()
        except (BackingStoreError, OSError) as exc:
            LOG.warning("auditor %r: could not commit the confirmed part of a batch cut "
                        "short (%s); it is skipped, not sent again, while this process "
                        "lives", self.queue_name, exc)
            return
        self._policy.prefix_committed()
        self._committed(len(ids))

    def _drain_and_pause(self) -> str:
        """One drain batch; after a failed one (nacks, a failing store) with the broker
        still up, a pause so the loop does not spin (a lost connection waits in the
        main loop)."""
        outcome = self._drain_once()
        if outcome == "failed":
            delay = self._policy.drain_backoff()
            if self._publisher.is_available():
                self._wake.wait(delay)
                self._wake.clear()
        return outcome

    def _confirmed_from_store(self, ids: Sequence[str]) -> None:
        self.metrics.successful.inc(len(ids))
        t_record = self._t_record
        if not t_record:
            return
        now = time.monotonic()
        pop = t_record.pop
        latencies = []
        for mid in ids:
            t = pop(mid, None)
            if t is not None:
                latencies.append(now - t)
        self.metrics.observe_latencies(latencies)

    def _run_write_ahead(self) -> None:
        policy = self._policy
        publisher = self._publisher
        while True:
            self._tick_metrics()
            if policy.stopping and policy.closing_write_ahead(
                    time.monotonic(), broker_gone=self._durable_store and self._broker_gone()):
                return
            if not publisher.is_available():
                publisher.wait_available(_POLL)
                continue
            self._wake.clear()
            snapshot = self._accepted
            if self._drain_and_pause() == "empty":
                self._settle(snapshot)
                if policy.stopping:
                    return
                self._wake.wait(_IDLE)

    def _finish(self) -> None:
        """The delivery thread's last act: put what it holds into the store (Rule 2)."""
        if not self._write_ahead:
            self._take(len(self._queue))
            if self._pending:
                self._policy.retry_store_now()
                self._spill()
            if self._pending:
                lost = len(self._pending)
                reason = f"the backing store refused them ({self._store_error or 'full'})"
                LOG.error("auditor %r: closing with %d event(s) neither delivered nor stored "
                          "(store: %s); close() raises UndeliveredEventsError with them",
                          self.queue_name, lost, self._store_error or "full")
                for mid, body, _ in self._pending:
                    self._set_aside(mid, body, reason)
                self._pending.clear()
        if not self._durable_store and self._owns_store and isinstance(self._store,
                                                                        MemoryStore):
            left = len(self._store)
            if left:
                # The memory store dies with the auditor: these events are not kept (the
                # store is documented as lossy; a durable store keeps them). close()
                # reports them with their bytes.
                LOG.error("auditor %r: closing with %d event(s) undelivered in the memory "
                          "store; they are not kept (use a file or SQL store to keep them); "
                          "close() raises UndeliveredEventsError with them",
                          self.queue_name, left)
                with contextlib.suppress(Exception):  # the count is reported either way
                    bodies, ids, _ = self._store.read_encoded_up_to(left)
                    left -= len(bodies)
                    for event_id, body in zip(ids, bodies, strict=True):
                        self._set_aside(_message_id_of(event_id, body), body,
                                        "undelivered in the memory store")
                for _ in range(left):  # not readable: counted without their bytes
                    self._set_aside("", b"", "undelivered in the memory store")
        if self._lost:
            self.metrics.undelivered_at_close.inc(len(self._lost))
        with contextlib.suppress(Exception):  # metrics only
            self._store.update_metrics()


def _forget_connection(publisher: Publisher) -> None:
    """In a forked child: close the child's copy of the parent's broker socket without a
    word on it (a Connection.Close would end the parent's connection), so the connection
    ends when the parent closes it. Best effort: pika may lack the internal it takes
    (segmentlog.amqp.pikainternals), or the connection may be going down."""
    with contextlib.suppress(Exception):
        publisher._forget_in_child()


_LIVE: weakref.WeakSet[DeliveryThread] = weakref.WeakSet()  # live auditors, for forks


def _forked() -> None:
    for auditor in list(_LIVE):
        auditor._after_fork_in_child()


os.register_at_fork(after_in_child=_forked)
