"""The pattern every metric set of segmentlog follows, in one place.

Rule 1: prometheus-client refuses a metric name twice on one registry, so each family of
metrics (a :class:`MetricSet`: the stores', the publishers', the auditors') exists once
per registry, created on first use and kept in a weak map, and every series carries its
owner's label (``store``, ``publisher``, ``auditor``). Several owners share a registry.
Rule 2: registering a set is all or nothing: a name clash with a foreign collector raises
``ValueError`` and leaves the registry as it was.
Rule 3: a label is unique among live owners: the base name, then ``<base>-2``,
``<base>-3``... :func:`release` frees it and drops its gauge series (an owner that is
gone buffers nothing); counters stay, and a later owner with the same label counts on
from where the last one stopped, so a counter never goes backwards.
Rule 4: under prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set
when it is imported, the usual gunicorn setup) a scrape reads the values every process
wrote to files, never a worker's collectors: a :class:`CallbackCounter` then also keeps
a plain counter that :func:`sync_callbacks` brings up to date (the Auditor calls it
every few seconds and at close), and gauges declare how processes combine
(``livesum``: a sum over live processes; ``livemax``).

This module never registers anything on prometheus-client's global registry by itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import values as _values
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["MULTIPROCESS", "CallbackCounter", "MetricSet", "claim", "register_all", "release",
           "shared_set", "sync_callbacks"]

#: prometheus-client writes values to files for a multiprocess scrape (Rule 4).
MULTIPROCESS = _values.ValueClass is not _values.MutexValue
_CALLBACKS: weakref.WeakSet[CallbackCounter] = weakref.WeakSet()


def sync_callbacks() -> None:
    """Multiprocess mode: bring every callback counter's file counter up to date."""
    if MULTIPROCESS:
        for counter in list(_CALLBACKS):
            counter.sync()


def _forked() -> None:
    # prometheus-client starts a forked child's values at 0 (its own files): so do the
    # counts synced so far; a lock another thread held at the fork stays held: replace it.
    for counter in list(_CALLBACKS):
        counter._lock = threading.Lock()
        counter._synced = {}


os.register_at_fork(after_in_child=_forked)


class MetricSet:
    """The metric objects of one family on one registry, and the labels in use on it.

    A subclass creates its collectors with ``registry=None`` in ``__init__`` (taking no
    arguments) and lists them in :meth:`collectors`; :func:`claim` registers them.
    """

    def __init__(self) -> None:
        self.labels_in_use: set[str] = set()

    def collectors(self) -> tuple[Collector, ...]:
        raise NotImplementedError

    def gauges(self) -> tuple[Gauge, ...]:
        """The gauges whose series of a released label are dropped (labelled by it only)."""
        return ()

    def on_release(self, label: str) -> None:
        """Extra clean-up of a released label (lock held)."""


S = TypeVar("S", bound=MetricSet)

_LOCK = threading.Lock()
_SETS: weakref.WeakKeyDictionary[CollectorRegistry, dict[type[MetricSet], MetricSet]] = (
    weakref.WeakKeyDictionary()
)


def register_all(registry: CollectorRegistry, collectors: Iterable[Collector]) -> None:
    """Register every collector or none (Rule 2)."""
    done: list[Collector] = []
    try:
        for collector in collectors:
            registry.register(collector)
            done.append(collector)
    except ValueError:
        for collector in done:
            registry.unregister(collector)
        raise


def _shared_locked(registry: CollectorRegistry, kind: type[S]) -> S:
    per = _SETS.get(registry)
    if per is None:
        per = _SETS[registry] = {}
    shared = per.get(kind)
    if shared is None:
        shared = kind()
        register_all(registry, shared.collectors())
        per[kind] = shared
    return shared  # type: ignore[return-value]


def shared_set(registry: CollectorRegistry, kind: type[S]) -> S:
    """The ``kind`` set of ``registry`` (registered on first use), without claiming a
    label: for owners that share their series by name (Rule 3 does not apply)."""
    with _LOCK:
        return _shared_locked(registry, kind)


def claim(registry: CollectorRegistry, kind: type[S], base: str,
          on_claim: Callable[[S, str], None] | None = None) -> tuple[S, str]:
    """The ``kind`` set of ``registry`` (registered on first use) and a free label made
    from ``base`` (Rule 3); ``on_claim(set, label)`` runs under the same lock."""
    with _LOCK:
        shared = _shared_locked(registry, kind)
        label, n = base, 2
        while label in shared.labels_in_use:
            label = f"{base}-{n}"
            n += 1
        shared.labels_in_use.add(label)
        if on_claim is not None:
            on_claim(shared, label)
        return shared, label


def release(shared: MetricSet, label: str) -> None:
    """Free ``label`` and drop its gauge series (idempotent)."""
    with _LOCK:
        if label not in shared.labels_in_use:
            return
        shared.labels_in_use.discard(label)
        shared.on_release(label)
        for gauge in shared.gauges():
            with contextlib.suppress(KeyError):  # already gone: nothing to drop
                gauge.remove(label)


class CallbackCounter(Collector):
    """A labelled counter whose values are read from callables at scrape time.

    Owners that count on a hot path keep a plain number and attach a callable reading
    it, so counting costs no prometheus-client lock. A detached label keeps its last
    value (``retired``) and a later owner with the same label counts on from it, so the
    series never goes backwards (Rule 3).
    """

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self._label = label
        self._name = name
        self._doc = documentation
        self._lock = threading.Lock()
        self._live: dict[str, Callable[[], int]] = {}
        self._retired: dict[str, int] = {}
        # Multiprocess mode (Rule 4): the same counts in a plain counter, kept in step by
        # sync(); the name without "_total" (prometheus-client adds it back).
        self._mirror = (Counter(name.removesuffix("_total"), documentation, [label],
                                registry=None) if MULTIPROCESS else None)
        self._synced: dict[str, int] = {}
        _CALLBACKS.add(self)

    def sync(self) -> None:
        """Add what each live label counted since the last sync to the file counter."""
        if self._mirror is None:
            return
        with self._lock:
            for label, value in self._live.items():
                self._sync_one(label, value())

    def _sync_one(self, label: str, now: int) -> None:
        assert self._mirror is not None
        delta = now - self._synced.get(label, 0)
        if delta > 0:
            self._mirror.labels(label).inc(delta)
        self._synced[label] = now

    def attach(self, label: str, value: Callable[[], int]) -> None:
        with self._lock:
            self._live[label] = value

    def detach(self, label: str) -> None:
        with self._lock:
            value = self._live.pop(label, None)
            if value is not None:
                now = value()
                self._retired[label] = self._retired.get(label, 0) + now
                if self._mirror is not None:
                    self._sync_one(label, now)
                    self._synced.pop(label, None)  # a later owner counts from 0 again

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        with self._lock:
            totals = dict(self._retired)
            for label, value in self._live.items():
                totals[label] = totals.get(label, 0) + value()
        for label in sorted(totals):
            family.add_metric([label], float(totals[label]))
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc, labels=[self._label])
