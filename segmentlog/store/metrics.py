"""The ``audittools_backing_store_*`` metrics, shared by every store on one registry.

Theory of operation
-------------------
The names are the Go original's, so existing dashboards keep working; each name has one
meaning for every store type:

=============================================  =======  ==========================================
name                                           type     meaning
=============================================  =======  ==========================================
``audittools_backing_store_writes_total``      counter  events written
``audittools_backing_store_reads_total``       counter  events handed out by ``read_batch``
``audittools_backing_store_errors_total``      counter  failures, by ``operation`` (see below)
``audittools_backing_store_size_bytes``        gauge    bytes the store occupies (always bytes)
``audittools_backing_store_files_count``       gauge    files the store occupies (0 for memory/SQL)
``audittools_backing_store_events``            gauge    events buffered (new; every store)
=============================================  =======  ==========================================

``operation`` values, all pre-initialised to 0 so alerts on absent series work:
``write`` (a write failed, not "full"), ``write_full`` (a write refused because the store
is full), ``read``, ``commit``, ``read_unmarshal`` (a stored event that does not parse,
moved to the dead-letter place), ``read_corrupt`` (a record that failed its checksum,
dead-lettered by the segment log), ``update_metrics``.

Two stores on one registry (two auditors in one process) must not collide, and
prometheus-client refuses to register a name twice. So the metric objects exist once per
registry (created on first use, kept in a weak map) and every series carries a ``store``
label. A store's label is its ``name`` parameter or, by default, its type (``file``,
``memory``, ``sql``, ``sqlite``); a second live store with the same label on the same
registry gets ``<label>-2``, then ``-3``. Queries written for the original without a
``store`` label still work (``sum``/``rate`` over the series). Closing a store frees its
label and removes its gauge series (a closed store buffers nothing); its counters stay,
and a later store with the same label continues them (counters never go backwards).

This module never registers on prometheus-client's global registry unless the caller
passes no registry (``None``), as the original did.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.registry import Collector

from ..metrics import CallbackCounter, MetricSet, claim, release

__all__ = ["OPERATIONS", "StoreMetrics"]

#: Every ``operation`` label value of ``audittools_backing_store_errors_total``.
OPERATIONS = (
    "write",
    "write_full",
    "read",
    "commit",
    "read_unmarshal",
    "read_corrupt",
    "update_metrics",
)


class _RegistryMetrics(MetricSet):
    """The metric objects of one registry, and the ``store`` labels in use on it."""

    def __init__(self) -> None:
        super().__init__()  # created unregistered: claim() registers them all or none
        # Read at scrape time from each store's own count: write() stays free of
        # prometheus-client's per-metric machinery (a third of a write's cost).
        self.writes = CallbackCounter(
            "audittools_backing_store_writes",
            "Total number of audit events written to the backing store.",
            "store",
        )
        self.reads = Counter(
            "audittools_backing_store_reads",
            "Total number of audit events read from the backing store.",
            ["store"],
            registry=None,
        )
        self.errors = Counter(
            "audittools_backing_store_errors",
            "Total number of backing store failures, by operation.",
            ["store", "operation"],
            registry=None,
        )
        self.size_bytes = Gauge(
            "audittools_backing_store_size_bytes",
            "Bytes the backing store occupies (files on disk, table size, or event bytes).",
            ["store"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.files_count = Gauge(
            "audittools_backing_store_files_count",
            "Number of files the backing store occupies (0 for memory and SQL stores).",
            ["store"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.events = Gauge(
            "audittools_backing_store_events",
            "Number of audit events buffered in the backing store.",
            ["store"],
            registry=None,
            multiprocess_mode="livesum",
        )

    def collectors(self) -> tuple[Collector, ...]:
        return (self.writes, self.reads, self.errors, self.size_bytes, self.files_count,
                self.events)

    def gauges(self) -> tuple[Gauge, ...]:
        return (self.size_bytes, self.files_count, self.events)

    def on_release(self, label: str) -> None:
        self.writes.detach(label)


class StoreMetrics:
    """One store's view of the shared metrics: the series with its ``store`` label.

    Custom stores may use it too: ``StoreMetrics(registry, "mytype")``.

    ``written``: a callable that tells how many events the store has written since it
    was opened, read at scrape time, for a store that counts them anyway (the file store:
    its log's sequence numbers); ``wrote()`` is then not called and writes count nothing.
    """

    def __init__(
        self, registry: CollectorRegistry | None, store_type: str, name: str | None = None,
        written: Callable[[], int] | None = None,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self._written = 0
        self._count_lock = threading.Lock()
        count = self._count if written is None else written
        shared, label = claim(registry, _RegistryMetrics, name or store_type,
                              lambda metrics, label: metrics.writes.attach(label, count))
        self._shared = shared
        #: The ``store`` label value of this store's series.
        self.label = label
        self._reads = shared.reads.labels(store=label)
        self._errors = {op: shared.errors.labels(store=label, operation=op) for op in OPERATIONS}
        self._size = shared.size_bytes.labels(store=label)
        self._files = shared.files_count.labels(store=label)
        self._events = shared.events.labels(store=label)
        self._released = False

    def wrote(self, n: int = 1) -> None:
        with self._count_lock:
            self._written += n

    def _count(self) -> int:
        return self._written

    def read(self, n: int) -> None:
        self._reads.inc(n)

    def error(self, operation: str, n: int = 1) -> None:
        """Count a failure; ``operation`` is one of :data:`OPERATIONS`."""
        self._errors[operation].inc(n)

    def set_size_bytes(self, value: float) -> None:
        self._size.set(value)

    def set_files(self, value: float) -> None:
        self._files.set(value)

    def set_events(self, value: float) -> None:
        self._events.set(value)

    def release(self) -> None:
        """Free the label and drop the gauge series (called by the store's ``close``)."""
        if not self._released:
            self._released = True
            release(self._shared, self.label)
