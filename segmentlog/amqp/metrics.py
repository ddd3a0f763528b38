"""Prometheus metrics of the publishers, one labelled series set per publisher.

Theory of operation
-------------------
Every ``segmentlog_publisher_*`` metric carries a ``publisher`` label, so several
publishers (several Auditors) can share one registry, the way the backing stores share
``audittools_backing_store_*`` (segmentlog/store/metrics.py): the metric objects exist
once per registry (created on first use, kept in a weak map) and each publisher holds
its own labelled children. A publisher's label is its ``metrics_name`` or, by default,
its queue name; a second live publisher with the same label on the same registry gets
``<label>-2``, then ``-3``. Every series of a new label starts at 0 the moment the
publisher is created, so alerts on absent series work.

Closing a publisher (``release``) frees its label and removes its gauge series (a
closed publisher has nothing in flight and no connection); its counters and its latency
histogram stay, and a later publisher with the same label continues them (counters
never go backwards). With ``registry=None`` a publisher gets a fresh private
``CollectorRegistry``; this module never touches prometheus-client's global registry.

Counters end in ``_total``; the histogram is in seconds (Prometheus naming conventions).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from ..metrics import MetricSet, claim, release

__all__ = ["LABEL", "LATENCY_BUCKETS", "PublisherMetrics"]

PREFIX = "segmentlog_publisher_"

#: The label naming the publisher on every series.
LABEL = "publisher"

# Confirms on a healthy local broker take ~1-50 ms; outages push them to seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class _RegistryMetrics(MetricSet):
    """The metric objects of one registry, and the ``publisher`` labels in use on it."""

    def __init__(self) -> None:
        super().__init__()
        labels = [LABEL]
        self.published = Counter(
            PREFIX + "published", "Messages written to the broker (including retries).",
            labels, registry=None)
        self.confirmed = Counter(
            PREFIX + "confirmed", "Messages the broker confirmed (basic.ack, not returned).",
            labels, registry=None)
        self.nacked = Counter(
            PREFIX + "nacked", "Messages the broker refused (basic.nack).", labels, registry=None)
        self.returned = Counter(
            PREFIX + "returned", "Messages returned unroutable (basic.return).", labels,
            registry=None)
        self.retried = Counter(
            PREFIX + "retried", "Messages republished inside a batch after a nack or return.",
            labels, registry=None)
        self.lost = Counter(
            PREFIX + "lost_in_flight",
            "Messages in flight when the connection died or the batch was abandoned "
            "(reported unconfirmed; the caller retries them).", labels, registry=None)
        self.reconnects = Counter(
            PREFIX + "reconnects", "Connections opened after the first one.", labels,
            registry=None)
        self.connect_failures = Counter(
            PREFIX + "connect_failures", "Failed connection attempts (any address).",
            labels, registry=None)
        self.inflight = Gauge(
            PREFIX + "inflight_messages", "Messages published and not yet answered.",
            labels, registry=None, multiprocess_mode="livesum")
        self.connected = Gauge(
            PREFIX + "connected", "1 when a confirm-mode channel is open, else 0.", labels,
            registry=None, multiprocess_mode="livesum")
        self.blocked = Gauge(
            PREFIX + "blocked", "1 while the broker blocks the connection (resource alarm).",
            labels, registry=None, multiprocess_mode="livemax")
        self.confirm_latency = Histogram(
            PREFIX + "confirm_latency_seconds", "Time from publish to basic.ack, per message.",
            labels, buckets=LATENCY_BUCKETS, registry=None)

    def collectors(self) -> tuple[Collector, ...]:
        return (self.published, self.confirmed, self.nacked, self.returned, self.retried,
                self.lost, self.reconnects, self.connect_failures, self.inflight,
                self.connected, self.blocked, self.confirm_latency)

    def gauges(self) -> tuple[Gauge, ...]:
        return (self.inflight, self.connected, self.blocked)


class PublisherMetrics:
    """One publisher's series (its ``publisher`` label); updated from its I/O thread.

    The attributes are the labelled children, used like plain metrics
    (``metrics.confirmed.inc(n)``). Raises ``ValueError`` if the registry holds a
    foreign collector under one of these names.
    """

    def __init__(self, registry: CollectorRegistry | None = None, name: str = "publisher") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        shared, label = claim(self.registry, _RegistryMetrics, name or "publisher")
        self._shared = shared
        #: The ``publisher`` label value of this publisher's series.
        self.label = label
        # .labels() creates each child at 0: every series exists from the start.
        self.published = shared.published.labels(label)
        self.confirmed = shared.confirmed.labels(label)
        self.nacked = shared.nacked.labels(label)
        self.returned = shared.returned.labels(label)
        self.retried = shared.retried.labels(label)
        self.lost = shared.lost.labels(label)
        self.reconnects = shared.reconnects.labels(label)
        self.connect_failures = shared.connect_failures.labels(label)
        self.inflight = shared.inflight.labels(label)
        self.connected = shared.connected.labels(label)
        self.blocked = shared.blocked.labels(label)
        self.confirm_latency = shared.confirm_latency.labels(label)
        self._released = False

    @property
    def labels(self) -> dict[str, str]:
        """``{"publisher": label}``, e.g. for ``registry.get_sample_value(name, labels)``."""
        return {LABEL: self.label}

    def observe_latencies(self, latencies: tuple[float, ...]) -> None:
        observe = self.confirm_latency.observe
        for latency in latencies:
            observe(latency)

    def release(self) -> None:
        """Free the label and drop the gauge series (the publisher's ``close``). Idempotent.

        A late update from the I/O thread after this goes to the detached child and is
        not exported: the series stays gone.
        """
        if not self._released:
            self._released = True
            release(self._shared, self.label)
