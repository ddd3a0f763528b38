"""Prometheus metrics of the Auditors, one labelled series set per Auditor.

The original's two counters keep their names: ``audittools_successful_submissions``
(events the broker confirmed) and ``audittools_failed_submissions`` (publish attempts
that did not end in a confirm; the event is retried, so this counts attempts, not lost
events). prometheus-client exposes every counter with a ``_total`` suffix, so they read
``audittools_successful_submissions_total`` and ``audittools_failed_submissions_total``
in the exposition (the Go client exposed them without it).

Added by segmentlog (``segmentlog_auditor_*``): events recorded, events in the backing
store (backlog), events drained from the store (its ``rate()`` is the drain rate),
record-to-confirm latency, time callers spent blocked in ``record()`` (backpressure),
whether the store is full, and events a non-durable store still held at ``close()``.

Several auditors on one registry
--------------------------------
Every series carries an ``auditor`` label, as the stores' carry ``store`` and the
publishers' carry ``publisher``: the metric objects exist once per registry (created on
first use, kept in a weak map) and each auditor holds its labelled children. The label
is the auditor's ``metrics_name`` or, by default, its queue name; a second live auditor
with the same label on the same registry gets ``<label>-2``, then ``-3``. Queries written
for the original without the label still work (``sum``/``rate`` over the series).

Every series of a new label starts at 0 when the auditor is created, so alerts on absent
series work. ``release()`` (the auditor's ``close``) frees the label and removes its
gauges; counters and the histogram stay, and a later auditor with the same label
continues them (counters never go backwards), including the recorded-events counter,
which is read from the auditor at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from .errors import ConfigError
from .metrics import CallbackCounter, MetricSet, claim, release

__all__ = ["LABEL", "LATENCY_BUCKETS", "AuditorMetrics"]

PREFIX = "segmentlog_auditor_"

#: The label naming the auditor on every series.
LABEL = "auditor"

# A healthy broker confirms within milliseconds; a backlog drained after an outage
# reaches minutes or hours.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0, 21600.0,
)


class _RegistryMetrics(MetricSet):
    """The metric objects of one registry, and the ``auditor`` labels in use on it."""

    def __init__(self) -> None:
        super().__init__()
        labels = [LABEL]
        self.successful = Counter(
            "audittools_successful_submissions",
            "Counter for successful audit event submissions to the Hermes RabbitMQ "
            "server (confirmed by the broker).", labels, registry=None)
        self.failed = Counter(
            "audittools_failed_submissions",
            "Counter for failed (but retryable) audit event submissions to the Hermes "
            "RabbitMQ server (unconfirmed attempts; the event is retried).", labels,
            registry=None)
        # Read at scrape time from each auditor's own count: record() stays free of
        # prometheus-client's per-metric lock.
        self.recorded = CallbackCounter(
            PREFIX + "recorded_events", "Events accepted by record().", LABEL)
        self.backlog = Gauge(
            PREFIX + "backlog_events",
            "Events waiting in the backing store for the broker.", labels, registry=None,
            multiprocess_mode="livesum")
        self.drained = Counter(
            PREFIX + "drain_events",
            "Events drained from the backing store and confirmed by the broker.",
            labels, registry=None)
        self.latency = Histogram(
            PREFIX + "record_to_confirm_seconds",
            "Time from record() to the broker's confirm, per event.",
            labels, buckets=LATENCY_BUCKETS, registry=None)
        self.backpressure = Counter(
            PREFIX + "backpressure_seconds",
            "Time callers spent blocked in record() because the buffer was full.",
            labels, registry=None)
        self.store_full = Gauge(
            PREFIX + "store_full",
            "1 while the backing store is full (record() may block), else 0.",
            labels, registry=None, multiprocess_mode="livemax")
        self.undelivered_at_close = Counter(
            PREFIX + "undelivered_at_close_events",
            "Events a non-durable store (memory) still held when the auditor closed, "
            "or that could not be stored at close: lost.", labels, registry=None)

    def collectors(self) -> tuple[Collector, ...]:
        return (self.successful, self.failed, self.recorded, self.backlog, self.drained,
                self.latency, self.backpressure, self.store_full, self.undelivered_at_close)

    def gauges(self) -> tuple[Gauge, ...]:
        return (self.backlog, self.store_full)

    def on_release(self, label: str) -> None:
        self.recorded.detach(label)


class AuditorMetrics:
    """One auditor's series; updated by its delivery thread and by ``record()``."""

    def __init__(
        self, registry: CollectorRegistry, recorded: Callable[[], int], name: str = "auditor"
    ) -> None:
        try:
            shared, label = claim(registry, _RegistryMetrics, name or "auditor",
                                  lambda metrics, label: metrics.recorded.attach(label, recorded))
        except ValueError as exc:
            raise ConfigError(
                f"Auditor: the registry already holds a collector under an auditor "
                f"metric's name ({exc}); register auditors' metrics only through Auditor "
                "(several auditors may share a registry), or give this Auditor another "
                "CollectorRegistry"
            ) from exc
        self._shared = shared
        #: The ``auditor`` label value of this auditor's series.
        self.label = label
        # .labels() creates each child at 0: every series exists from the start.
        self.successful = shared.successful.labels(label)
        self.failed = shared.failed.labels(label)
        self.backlog = shared.backlog.labels(label)
        self.drained = shared.drained.labels(label)
        self.latency = shared.latency.labels(label)
        self.backpressure = shared.backpressure.labels(label)
        self.store_full = shared.store_full.labels(label)
        self.undelivered_at_close = shared.undelivered_at_close.labels(label)
        self._released = False

    @property
    def labels(self) -> dict[str, str]:
        """``{"auditor": label}``, e.g. for ``registry.get_sample_value(name, labels)``."""
        return {LABEL: self.label}

    def observe_latencies(self, latencies: Iterable[float]) -> None:
        observe = self.latency.observe
        for value in latencies:
            observe(value)

    def release(self) -> None:
        """Free the label and drop the gauge series (the auditor's ``close``). Idempotent."""
        if not self._released:
            self._released = True
            release(self._shared, self.label)
