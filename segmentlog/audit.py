"""The Auditor: what a service calls to ship every audit event to RabbitMQ, losing none.

Theory of operation
-------------------
``record(event)`` runs on the caller's thread: it checks the event (a
:class:`~segmentlog.cadf.Event` is checked when built; a mapping gets a structural
check; what JSON cannot carry, NaN included, is refused naming the field),
serialises it once with orjson, checks its size (Rule 5), appends
``(id, bytes, time)`` to a bounded in-process queue and returns. A model that cannot
change after it is built (:attr:`~segmentlog.cadf.Event.constant`: no attachment
holding a container) is queued as it is and serialised by the delivery thread when it
takes it: the same bytes, and the caller no longer pays for them (benchmarks/README.md).
One delivery thread does everything
else, in order:

* **Direct**: with no backlog and the broker up, it takes queued events in arrival
  order and publishes them in confirmed batches (``Publisher.publish_batch``).
* **Buffer**: events it cannot publish (broker down, or the unconfirmed tail of a
  batch) go to the backing store with ``write_many_encoded`` (the bytes ``record()``
  made; one durability point per batch), before any newer event.
* **Drain**: while the store holds events (a *backlog*), new events queue *behind*
  it: they are appended to the store too, and the store is drained oldest first
  (``read_encoded_up_to(drain_batch_size)`` -> ``publish_batch`` -> ``commit``). Draining
  starts as soon as the publisher reconnects (it retries every <= 0.5 s by default),
  not on a timer.

With ``write_ahead=True``, ``record()`` itself writes the event's bytes to the store and
returns when it is stored as durably as the store promises (file store with
``fsync="always"``: on disk, concurrent callers sharing fsyncs); the delivery thread
then only drains the store.

Rule 1: order. Events reach the broker in the order ``record()`` accepted them (first
        occurrences; see Rule 3). The in-memory events the delivery thread holds are
        always newer than everything in the store, so they are only ever appended
        behind it or published when the store is empty.
Rule 2: nothing is dropped silently. An event leaves the queue only into a confirmed
        publish or the store; a drained batch is committed only when every event of it
        was confirmed. What can be neither (an owned memory store's events at
        ``close()``, a store that refused events until the end, one event a store
        refuses alone) is *set aside*: logged, counted
        (``segmentlog_auditor_undelivered_at_close_events``) and handed to the caller:
        ``close()`` raises :class:`~segmentlog.errors.UndeliveredEventsError` with
        each event's id and bytes, after closing everything else.
Rule 3: at-least-once. An event whose confirm never came (connection lost with it in
        flight) is sent again, so consumers dedupe by ``message_id`` (= event id). A
        drained batch cut short (a nacked tail, a lost connection) has its confirmed
        prefix committed at once, so no process sends those events again; the rest is
        read again. (Should that commit fail, the confirmed events are skipped, not
        resent, while this process lives.)
Rule 4: only the store's room is backpressure. ``record()`` holds at most
        ``queue_size`` events in memory, and with a durable store no more than the
        store has room for (``BackingStore.room``, read after every write and commit):
        what it accepts can still be stored if the broker goes away. A store that
        refuses what the delivery thread holds (``BackingStoreFull``, or failing)
        stops ``record()`` at once, whatever the count. ``record()`` then blocks until
        there is room (or raises after ``full_timeout``). It clears itself: every
        commit retries the store at once, a failing store is retried with a capped
        backoff. ``close()`` waits up to its timeout for the broker while the store
        refuses events it holds. Nothing else makes ``record()`` wait, except a
        publish stuck on a silently dead connection (until ``liveness_timeout``, 4 s
        by default) filling all ``queue_size`` slots. (A store that cannot tell its
        room, ``room() -> None``, is only known full when it refuses: the events
        accepted meanwhile are what ``close()`` may have to report.)
Rule 5: an event is refused in ``record()`` (``EventTooLargeError``, an
        ``InvalidEventError``) when it is larger than the store's ``max_event_size``
        or the broker's ``max_message_size``: it could never be kept, and a batch
        holding it would be refused whole. A constant model is measured by its
        ``size_bound`` (no serialisation unless the bound is over the limit). An event
        a store still refuses alone is set aside (Rule 2); its neighbours are stored
        (the batch is split).

The delivery thread is the only reader of the store, and (without write-ahead) its only
writer. The auditor never publishes from the caller's thread and never commits a batch
it did not see confirmed.

Where it lives
--------------
This module holds the caller's side (``record()``, ``flush()``, ``close()``).
:mod:`segmentlog.audit_delivery` is the delivery thread (its start, its restart in a
forked child, and "Drain speed"), steered by the pure
:class:`~segmentlog.audit_policy.RoutingPolicy` (routes, skip list, backoffs, the full
store); :mod:`segmentlog.audit_config` reads the environment and checks the settings;
:mod:`segmentlog.audit_doubles` holds :class:`AuditorBase`, :class:`NullAuditor` and
:class:`RecordingAuditor` (all importable from here too).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from .amqp import Publisher
from .audit_config import (
    DRAIN_WINDOW,
    broker_settings,
    check_limits,
    check_observer,
    connection_from_env,
    open_store,
    publisher_kwargs,
    queue_arguments_from_env,
    store_limit,
)
from .audit_delivery import DeliveryThread, Queued
from .audit_doubles import AuditorBase, EventLike, NullAuditor, RecordingAuditor
from .audit_metrics import AuditorMetrics
from .audit_policy import DRAIN_BATCH_SIZE
from .cadf import Event, Observer, check_event_mapping, dump_event
from .errors import (
    BackingStoreError,
    BackingStoreFull,
    ConfigError,
    EventTooLargeError,
    InvalidEventError,
    LogClosedError,
    UndeliveredEventsError,
)
from .store import BackingStore, BackingStoreFactory

__all__ = [
    "DRAIN_BATCH_SIZE",
    "DRAIN_WINDOW",
    "Auditor",
    "AuditorBase",
    "NullAuditor",
    "RecordingAuditor",
    "connection_from_env",
    "queue_arguments_from_env",
]

LOG = logging.getLogger("segmentlog.audit")

_EXIT_TIMEOUT = 5.0  # close() at interpreter exit, for auditors nobody closed
class Auditor(DeliveryThread, AuditorBase):
    """Ships CADF events to one RabbitMQ queue through a backing store (see the module doc).

    Configuration, as in the original: either ``env_prefix`` (``${PREFIX}_HOSTNAME``,
    ``_PORT``, ``_USERNAME``, ``_PASSWORD``, ``_QUEUE_NAME``, ``_BACKING_STORE``) or
    ``connection_url`` (one URL or a list, for failover) plus ``queue_name``; an
    explicit URL wins. New: ``${PREFIX}_QUEUE_ARGUMENTS``, a JSON object of ``x-``
    arguments for the queue declaration, e.g. ``{"x-queue-version": 2}`` (see
    "Drain speed" in segmentlog.audit_delivery; ``publisher_options["queue_arguments"]``
    wins). The store is
    ``backing_store`` (an instance: the caller keeps ownership and closes it), else the
    one ``${PREFIX}_BACKING_STORE`` describes
    (``backing_store_factories`` adds types), else a memory store of 1000 events.

    :param write_ahead: every event is written to the store inside ``record()`` (Rule
        of the module doc); with a file store and ``fsync="always"`` a recorded event
        survives a process crash from the moment ``record()`` returns.
    :param full_timeout: most seconds ``record()`` blocks on a full buffer before it
        raises ``BackingStoreFull`` (``BackingStoreError`` if the store is failing
        rather than full); ``None`` blocks until there is room.
    :param queue_size: most events waiting in memory for the delivery thread (plus
        one batch being published).
    :param batch_size: most events per direct publish batch.
    :param drain_batch_size: most events per batch read from the store while draining,
        whatever the store's own ``batch_size`` (see "Drain speed" in
        segmentlog.audit_delivery; memory: about 3 KB per CADF event while a batch is decoded).
    :param connect_wait: seconds the constructor waits for the first connection (0:
        do not wait; events recorded meanwhile are buffered, then drained).
    :param publisher_options: keyword arguments for :class:`~segmentlog.amqp.Publisher`
        (defaults here: ``heartbeat=2``, ``backoff_max=0.5``: a recovered broker is
        found within 0.5 s; ``window=DRAIN_WINDOW``, see "Drain speed" in
        segmentlog.audit_delivery; ``metrics_name``: this auditor's metrics label).
    :param registry: Prometheus registry for the auditor's, the publisher's and the
        store's metrics; ``None``: prometheus_client's default ``REGISTRY`` (what
        ``start_http_server()`` exports), as the original. Several auditors may share one:
        every series carries the auditor's label (``auditor``, ``publisher``,
        ``store``; see audit_metrics.py).
    :param metrics_name: the ``auditor`` and ``publisher`` label of this auditor's
        series (default: the queue name; ``-2``, ``-3``... appended while another live
        auditor on the same registry has it).
    :param environ: the environment to read (default ``os.environ``).
    """

    def __init__(
        self,
        observer: Observer,
        env_prefix: str | None = None,
        connection_url: str | Sequence[str] | None = None,
        queue_name: str | None = None,
        backing_store: BackingStore | None = None,
        backing_store_factories: Mapping[str, BackingStoreFactory] | None = None,
        registry: CollectorRegistry | None = None,
        *,
        write_ahead: bool = False,
        full_timeout: float | None = None,
        queue_size: int = 50_000,
        batch_size: int = 5000,
        drain_batch_size: int = DRAIN_BATCH_SIZE,
        connect_wait: float = 2.0,
        publisher_options: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        metrics_name: str | None = None,
    ) -> None:
        self.observer = check_observer(observer)
        self._observer_dict = self.observer.to_dict()
        check_limits(queue_size=queue_size, batch_size=batch_size,
                     drain_batch_size=drain_batch_size, full_timeout=full_timeout,
                     connect_wait=connect_wait)
        # Checked before anything is created (the store's files, the metrics).
        urls, self.queue_name, env_queue_args = broker_settings(
            env_prefix, connection_url, queue_name, environ)
        # prometheus_client's default registry, as the original: what a service's
        # start_http_server() or multiprocess collector exports (issue 16).
        self.registry = registry if registry is not None else REGISTRY
        self._accepted = 0  # events accepted by record(), under _lock
        self.metrics = AuditorMetrics(self.registry, lambda: self._accepted,
                                      metrics_name or self.queue_name)
        self._write_ahead = bool(write_ahead)
        self._full_timeout = full_timeout
        self._queue_size = queue_size

        self._owns_store = backing_store is None
        try:
            store = open_store(backing_store, env_prefix, environ, backing_store_factories,
                               self.registry)
        except BaseException:
            self.metrics.release()
            raise
        self._store = store
        self._durable_store = bool(store.durable)
        try:
            store_max = store_limit(store)
        except BaseException:
            self._close_store()
            self.metrics.release()
            raise

        options = publisher_kwargs(self.metrics.label, env_queue_args, publisher_options,
                                   self.registry)
        self._publisher_args = (urls, options)  # a forked child makes its own publisher
        try:
            self._publisher = Publisher(urls, self.queue_name, **options)
        except ValueError as exc:  # ConfigError, or a foreign collector on the registry
            self._close_store()
            self.metrics.release()
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"Auditor: the registry already holds a collector under a "
                              f"publisher metric's name ({exc}); give this Auditor another "
                              "CollectorRegistry") from exc
        except BaseException:
            self._close_store()
            self.metrics.release()
            raise
        # The largest event that can ever be stored and published (Rule 5): record()
        # refuses a larger one, which would otherwise hold up every event with it.
        self._max_event_size = min(store_max or self._publisher.max_message_size,
                                   self._publisher.max_message_size)
        self._max_event_setting = (
            "the backing store's max_event_size (file store: raise max_file_size)"
            if store_max is not None and store_max < self._publisher.max_message_size
            else "the broker's max_message_size (publisher_options['max_message_size'])")
        # A constant model whose size bound is at most this is queued unserialised: the
        # limit less what the auditor's own observer may add to it (key and comma too;
        # for a model with its own observer this errs low: it is measured instead).
        self._model_size_limit = (self._max_event_size
                                  - len(orjson.dumps(self._observer_dict)) - 16)
        self._init_delivery(queue_size, batch_size, drain_batch_size)
        self._start_delivery(connect_wait)
        # The delivery thread is a daemon (a forgotten auditor must not hang the exit);
        # closing at exit still delivers or persists what was recorded.
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            auditor = ref()
            if auditor is not None:
                # Nobody is left to catch it at exit: the loss is logged and counted.
                with contextlib.suppress(UndeliveredEventsError):
                    auditor.close(timeout=_EXIT_TIMEOUT)

        self._close_at_exit = close_at_exit
        atexit.register(close_at_exit)

    def record(self, event: EventLike) -> None:
        """Accept ``event``; returns without waiting for the broker (see Rule 4 for when
        it blocks). Raises InvalidEventError naming the field for an event that is not
        valid CADF or not JSON (NaN, a lone surrogate, bytes...), EventTooLargeError (an
        InvalidEventError) for one larger than the store or broker can take (Rule 5),
        LogClosedError after close(), BackingStoreFull / BackingStoreError after
        ``full_timeout`` of a full / failing buffer."""
        # The hot path, inline (arecord shares it through _item and _enqueue: two calls
        # more, kept out of here).
        if (type(event) is Event and event.constant and not self._write_ahead
                and event.size_bound <= self._model_size_limit):
            item: Queued = (event.id, event, time.monotonic())  # see _item
        else:
            serialised = self._serialised(event)
            if serialised is None:
                return
            item = serialised
        if len(self._queue) + len(self._pending) >= self._memory_limit:
            self._wait_for_room()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._queue.append(item)
            self._accepted += 1
        if self._idle:
            self._idle = False
            self._wake.set()

    async def arecord(self, event: EventLike) -> None:
        """``record(event)`` for a coroutine: never blocks the event loop. The event is
        checked and serialised as ``record()`` does, in the caller's thread; when the
        buffer has room it is queued at once (the common case, as fast as ``record()``),
        else the wait for room (Rule 4) runs in a worker thread. With ``write_ahead``
        the store write (a disk write, perhaps an fsync) always runs in a worker thread.
        Raises what ``record()`` raises."""
        # The hot path of record(), inline as there (a coroutine already costs a call).
        if (type(event) is Event and event.constant and not self._write_ahead
                and event.size_bound <= self._model_size_limit
                and len(self._queue) + len(self._pending) < self._memory_limit):
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                self._queue.append((event.id, event, time.monotonic()))
                self._accepted += 1
            if self._idle:
                self._idle = False
                self._wake.set()
            return
        if self._write_ahead:
            await asyncio.to_thread(self.record, event)
            return
        item = self._item(event)
        if item is not None and not self._enqueue(item, wait=False):
            await asyncio.to_thread(self._enqueue, item, True)

    def _item(self, event: EventLike) -> Queued | None:
        """``event`` checked and ready to queue; None when it was written ahead."""
        if (type(event) is Event and event.constant and not self._write_ahead
                and event.size_bound <= self._model_size_limit):
            # Nothing in it can change: the delivery thread serialises it (_take), to
            # the bytes this thread would make (Rule 3 of segmentlog.cadf). Its fields
            # were checked when it was built, and its size bound fits (Rule 5). Not for
            # a subclass, which may add state of its own.
            return (event.id, event, time.monotonic())
        return self._serialised(event)

    def _serialised(self, event: EventLike) -> Queued | None:
        """``event`` checked and serialised in this thread; None when written ahead."""
        if isinstance(event, Event):
            mid = event.id
            data = event.wire_dict(self._observer_dict)
        else:
            data = check_event_mapping(event, self._observer_dict)
            mid = data["id"]
        body = dump_event(data)  # refuses what JSON cannot carry, naming the field
        if len(body) > self._max_event_size:
            raise self._too_large(mid, len(body))
        if self._write_ahead:
            self._record_write_ahead(mid, body)
            return None
        return (mid, body, time.monotonic())

    def _enqueue(self, item: Queued, wait: bool) -> bool:
        """Queue ``item``; False (nothing queued) if the buffer is full and not ``wait``."""
        if len(self._queue) + len(self._pending) >= self._memory_limit:
            if not wait:
                return False
            self._wait_for_room()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._queue.append(item)
            self._accepted += 1
        if self._idle:
            self._idle = False
            self._wake.set()
        return True

    def _closed_error(self) -> LogClosedError:
        return LogClosedError(f"auditor {self.queue_name!r} is closed; record() after "
                              "close() is refused")

    def _too_large(self, mid: str, size: int) -> EventTooLargeError:
        return EventTooLargeError(
            f"auditor {self.queue_name!r}: event {mid} is {size} bytes serialised, larger "
            f"than the {self._max_event_size} bytes it could ever be stored or published "
            f"in ({self._max_event_setting}); it was not recorded. Send less (e.g. large "
            "content by reference) or raise that limit")

    def _blocked_error(self, waited: float) -> Exception:
        if self._store_error is not None and not self._store_full:
            return BackingStoreError(
                f"auditor {self.queue_name!r}: record() waited {waited:.1f} s "
                f"(full_timeout) while the backing store fails ({self._store_error}) and the "
                "broker is unreachable; fix the store or raise full_timeout")
        return BackingStoreFull(
            f"auditor {self.queue_name!r}: record() waited {waited:.1f} s (full_timeout) for "
            "room: the backing store is full and the broker is not taking events; raise the "
            "store's limit or full_timeout")

    def _wait_for_room(self) -> None:
        start = time.monotonic()
        deadline = None if self._full_timeout is None else start + self._full_timeout
        with self._room:
            self._waiters += 1
            try:
                while (len(self._queue) + len(self._pending) >= self._memory_limit
                       and not self._closed):
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        raise self._blocked_error(now - start)
                    wait = 0.1 if deadline is None else min(0.1, deadline - now)
                    self._room.wait(wait)
            finally:
                self._waiters -= 1
                self.metrics.backpressure.inc(time.monotonic() - start)

    def _record_write_ahead(self, mid: str, body: bytes) -> None:
        if self._closed:
            raise LogClosedError(f"auditor {self.queue_name!r} is closed; record() after "
                                 "close() is refused")
        t = time.monotonic()
        # Tracked before the write: the delivery thread may confirm the event before
        # this thread runs again, and an entry added after that would never be removed.
        self._track(mid, t)
        start = 0.0
        while True:
            if self._closed:
                self._t_record.pop(mid, None)
                raise LogClosedError(f"auditor {self.queue_name!r} is closed; record() after "
                                     "close() is refused")
            try:
                # The bytes dump_event made: stored as they are (Rule 10 of the stores).
                self._store.write_many_encoded((body,))
                break
            except TypeError as exc:
                # Rule 2 of the stores: nothing was stored. Same error as the queue path.
                self._t_record.pop(mid, None)
                raise InvalidEventError(
                    f"invalid CADF event: not JSON-serialisable ({exc}); use str, int, "
                    "float, bool, None, lists and dicts with string keys") from None
            except ValueError:
                self._t_record.pop(mid, None)  # refused alone (Rule 2): nothing stored
                raise
            except BackingStoreFull:
                # Rule 4: wait for the delivery thread to commit a drained batch.
                now = time.monotonic()
                if not start:
                    start = now
                    self._set_full(True)
                if self._full_timeout is not None and now - start >= self._full_timeout:
                    self.metrics.backpressure.inc(now - start)
                    raise self._blocked_error(now - start) from None
                with self._room:
                    self._waiters += 1
                    try:
                        self._room.wait(0.1)
                    finally:
                        self._waiters -= 1
        if start:
            self.metrics.backpressure.inc(time.monotonic() - start)
            self._set_full(False)
        with self._lock:
            self._accepted += 1
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every event recorded so far, and any backlog an earlier run left in
        the store, was confirmed by the broker.

        Returns False if ``timeout`` passed first (events stay queued or buffered), and
        when an event was set aside (Rule 2: it will never be confirmed; ``close()``
        reports it).
        """
        with self._lock:
            target = self._accepted
        deadline = time.monotonic() + timeout
        with self._settled:
            self._wake.set()
            while self._delivered_upto < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._settled.wait(min(remaining, 0.1))
        return not self._lost

    @property
    def backlog(self) -> int:
        """Events the delivery thread holds in memory or in the store (an estimate)."""
        return len(self._queue) + len(self._pending) + self._backlog_events

    @property
    def max_event_size(self) -> int:
        """Bytes of the largest serialised event ``record()`` accepts (Rule 5): the
        smaller of the store's ``max_event_size`` and the broker's ``max_message_size``."""
        return self._max_event_size

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    @property
    def store(self) -> BackingStore:
        return self._store

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting events; deliver what the broker takes within ``timeout`` s and
        persist the rest in the store (a durable store keeps it for the next run);
        close the publisher, and the store if the auditor created it. Idempotent.

        Raises :class:`~segmentlog.errors.UndeliveredEventsError` (after closing
        everything) when recorded events were neither delivered nor stored: the store
        refused them (full or failing) and the broker stayed away until ``timeout``,
        the store refused one alone, or an owned memory store still held them. The
        error carries their ids and bytes; nothing else is lost silently.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._close_at_exit)
        deadline = time.monotonic() + max(0.0, timeout)
        # A broker that came back while the publisher waits out its backoff: try it now,
        # and let a durable store's backlog wait for that round (_broker_gone).
        self._close_rounds = self._publisher.reconnect_now()
        self._policy.stop_by(deadline)
        self._wake.set()
        with self._room:
            self._room.notify_all()
        # A publish in flight ends within the publisher's liveness/confirm timeouts.
        self._thread.join(max(0.0, timeout) + 60.0)
        if self._thread.is_alive():  # pragma: no cover - a bug; say so loudly
            LOG.error("auditor %r: delivery thread did not stop; %d event(s) may be "
                      "undelivered", self.queue_name, self.backlog)
        try:
            self._publisher.close()
        finally:
            try:
                self._close_store()
            finally:
                # Frees the ``auditor`` label (and drops its gauges) for a successor on
                # a shared registry; the counters stay.
                self.metrics.release()
        if self._lost:
            lost = list(self._lost)
            reasons = "; ".join(self._lost_reasons)
            raise UndeliveredEventsError(
                f"auditor {self.queue_name!r}: {len(lost)} recorded event(s) were neither "
                f"delivered nor stored (e.g. {reasons}); their ids and bytes are on this "
                "error's .events: keep them elsewhere. A durable store with room for an "
                "outage keeps them next time", lost)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except UndeliveredEventsError as error:
            if exc is None:
                raise
            # The block's own exception goes on (it may be why events were left); the
            # loss rides along on it and was logged.
            exc.add_note(str(error))

    def _close_store(self) -> None:
        if self._owns_store:
            self._store.close()
