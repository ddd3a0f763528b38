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
takes it: the same bytes, and the caller no longer pays for them (record() 5.3-5.8 ->
1.3-1.6 us on this VM, benchmarks/README.md). One delivery thread does everything
else, in order:

* **Direct**: with no backlog and the broker up, it takes queued events in arrival
  order and publishes them in confirmed batches (``Publisher.publish_batch``).
* **Buffer**: events it cannot publish (broker down, or the unconfirmed tail of a
  batch) go to the backing store with ``write_many`` (one durability point per
  batch), before any newer event.
* **Drain**: while the store holds events (a *backlog*), new events queue *behind*
  it: they are appended to the store too, and the store is drained oldest first
  (``read_encoded_up_to(drain_batch_size)`` -> ``publish_batch`` -> ``commit``). Draining
  starts as soon as the publisher reconnects (it retries every <= 0.5 s by default),
  not on a timer.

With ``write_ahead=True``, ``record()`` itself writes the event to the store and
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
        drained batch whose confirmed prefix was cut short is read again; its events
        that were already confirmed are skipped, not resent, while this process lives.
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

Drain speed
-----------
A drain is a loop of synchronous batches: read, publish with confirms, commit. The
broker is the bottleneck (its confirm-mode rate is below its no-confirm rate on a busy
host), so what the auditor controls is how often it leaves the broker idle: at the end
of every batch, while the last confirms arrive and the next batch is committed, read,
decoded and encoded. Two settings, both chosen by measurement (interleaved runs with
benchmarks/bench_auditor.py-style drains of a 100k-event file-store backlog against the
no-confirm rate of the same round; the numbers are in the comments of
:data:`DRAIN_BATCH_SIZE` and :data:`DRAIN_WINDOW`):

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
them again (its own work per event ~10.7 -> ~3 us). The publisher encodes each
message's frames in one step and writes a window's room 100 messages at a time
(segmentlog/amqp/frames.py; its CPU per message 34 -> 14 us). With both, a 100k-event
file-store backlog drained at 0.87-1.04x pika's no-confirm publish rate on a version 1
classic queue (the default of RabbitMQ before 3.13, and of the local 3.10 broker; four
runs) and 0.89-1.00x the bare Publisher's rate; before the frame encoder, 0.66-0.78x
(benchmarks/README.md). The broker's own no-confirm ceiling (frames encoded in advance
on a plain socket) is higher still: the drain reaches 0.65-0.72x of it, and confirmed
publishes from that same costless client 0.73-0.81x: the rest is what confirms cost
the broker. A version 2 classic queue (a ``queue-version`` policy, or
``${PREFIX}_QUEUE_ARGUMENTS`` = ``{"x-queue-version": 2}``, or the broker's
``classic_queue.default_version = 2``) raises that ceiling (15.1-17.7 k against
11.4-13.7 k msg/s here).

The backlog gauge (``segmentlog_auditor_backlog_events``) is the store's ``pending()``
read after every write and commit of the delivery thread and every 5 s (exact, including
events other writers added), or a running count when the store cannot tell (custom
stores whose ``pending()`` returns ``None``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
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
from .audit_doubles import AuditorBase, EventLike, NullAuditor, RecordingAuditor
from .audit_metrics import AuditorMetrics
from .audit_policy import DRAIN_BATCH_SIZE, Closing, Route, RoutingPolicy
from .cadf import Event, Observer, _dump_constant, check_event_mapping, dump_event
from .errors import (
    BackingStoreError,
    BackingStoreFull,
    BrokerUnavailableError,
    ConfigError,
    EventTooLargeError,
    InvalidEventError,
    LogClosedError,
    UndeliveredEventsError,
)
from .metrics import sync_callbacks
from .store import BackingStore, BackingStoreFactory
from .store.memory import MemoryStore

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

_POLL = 0.05  # how often a waiting delivery thread looks at new events / the broker
_IDLE = 0.5  # longest idle sleep (a safety net; record() wakes the thread)
_LATENCY_TRACKED = 200_000  # most record times kept for events routed through the store
_EXIT_TIMEOUT = 5.0  # close() at interpreter exit, for auditors nobody closed
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
_Queued = tuple[str, "bytes | Event", float]


class Auditor(AuditorBase):
    """Ships CADF events to one RabbitMQ queue through a backing store (see the module doc).

    Configuration, as in the original: either ``env_prefix`` (``${PREFIX}_HOSTNAME``,
    ``_PORT``, ``_USERNAME``, ``_PASSWORD``, ``_QUEUE_NAME``, ``_BACKING_STORE``) or
    ``connection_url`` (one URL or a list, for failover) plus ``queue_name``; an
    explicit URL wins. New: ``${PREFIX}_QUEUE_ARGUMENTS``, a JSON object of ``x-``
    arguments for the queue declaration, e.g. ``{"x-queue-version": 2}`` (see
    "Drain speed"; ``publisher_options["queue_arguments"]`` wins). The store is
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
        whatever the store's own ``batch_size`` (see "Drain speed" in the module doc;
        memory: about 3 KB per CADF event while a batch is decoded).
    :param connect_wait: seconds the constructor waits for the first connection (0:
        do not wait; events recorded meanwhile are buffered, then drained).
    :param publisher_options: keyword arguments for :class:`~segmentlog.amqp.Publisher`
        (defaults here: ``heartbeat=2``, ``backoff_max=0.5``: a recovered broker is
        found within 0.5 s; ``window=DRAIN_WINDOW``, see "Drain speed" in the module
        doc; ``metrics_name``: this auditor's metrics label).
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

        # Shared between record() and the delivery thread.
        self._queue: deque[_Queued] = deque()
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
        self._thread = threading.Thread(target=self._run, name=f"auditor-{self.queue_name}",
                                        daemon=True)
        try:
            self._publisher.connect(timeout=connect_wait)
        except BrokerUnavailableError:
            # Not fatal: the publisher keeps reconnecting; events are buffered meanwhile.
            LOG.warning("auditor %r: broker not reachable yet (%s); buffering events in the "
                        "backing store until it is", self.queue_name, self._publisher.last_error)
        self._thread.start()
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
        _AUDITORS.add(self)

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

    # ------------------------------------------------------------------ caller side
    def record(self, event: EventLike) -> None:
        """Accept ``event``; returns without waiting for the broker (see Rule 4 for when
        it blocks). Raises InvalidEventError naming the field for an event that is not
        valid CADF or not JSON (NaN, a lone surrogate, bytes...), EventTooLargeError (an
        InvalidEventError) for one larger than the store or broker can take (Rule 5),
        LogClosedError after close(), BackingStoreFull / BackingStoreError after
        ``full_timeout`` of a full / failing buffer."""
        item: _Queued
        if (type(event) is Event and event.constant and not self._write_ahead
                and event.size_bound <= self._model_size_limit):
            # Nothing in it can change: the delivery thread serialises it (_take), to
            # the bytes this thread would make (Rule 3 of segmentlog.cadf). Its fields
            # were checked when it was built, and its size bound fits (Rule 5). Not for
            # a subclass, which may add state of its own.
            item = (event.id, event, time.monotonic())
        else:
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
                self._record_write_ahead(mid, data)
                return
            item = (mid, body, time.monotonic())
        if len(self._queue) + len(self._pending) >= self._memory_limit:
            self._wait_for_room()
        with self._lock:
            if self._closed:
                raise LogClosedError(f"auditor {self.queue_name!r} is closed; record() after "
                                     "close() is refused")
            self._queue.append(item)
            self._accepted += 1
        if self._idle:
            self._idle = False
            self._wake.set()

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

    def _record_write_ahead(self, mid: str, data: dict[str, Any]) -> None:
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
                self._store.write(data)
                break
            except TypeError as exc:
                # Rule 2 of the stores: nothing was stored. Same error as the queue path.
                self._t_record.pop(mid, None)
                raise InvalidEventError(
                    f"invalid CADF event: not JSON-serialisable ({exc}); use str, int, "
                    "float, bool, None, lists and dicts with string keys") from None
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
                self._store.write_many([orjson.loads(body) for _, body, _ in part])
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
            return "failed"
        try:
            commit()
        except (BackingStoreError, OSError) as exc:
            LOG.error("auditor %r: commit of a delivered batch failed (%s); it will be read "
                      "again and its events skipped", self.queue_name, exc)
            policy.drain_cut(ids)
            return "failed"
        policy.drain_committed()
        self.metrics.drained.inc(n)
        self._sync_backlog(self._backlog_events - n)
        # Space freed: a refused write is retried now; wake record() calls waiting for it.
        self._update_room()
        self._notify_room()
        return "done"

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
    ends when the parent closes it. Best effort: pika's internals may change."""
    with contextlib.suppress(Exception):
        sock = publisher._conn._transport._sock
        os.close(sock.detach())


_AUDITORS: weakref.WeakSet[Auditor] = weakref.WeakSet()


def _forked() -> None:
    for auditor in list(_AUDITORS):
        auditor._after_fork_in_child()


os.register_at_fork(after_in_child=_forked)
