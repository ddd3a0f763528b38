"""Prometheus metrics of one publisher, registered on the registry it is given.

Every publisher owns its own set of collectors; with ``registry=None`` it gets a fresh
private ``CollectorRegistry`` so two publishers in one process never collide. Counters
end in ``_total``; the histogram is in seconds (Prometheus naming conventions).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "PublisherMetrics"]

PREFIX = "segmentlog_publisher_"

# Confirms on a healthy local broker take ~1-50 ms; outages push them to seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class PublisherMetrics:
    """The publisher's collectors; the publisher updates them from its I/O thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.published = Counter(
            PREFIX + "published", "Messages written to the broker (including retries).",
            registry=r)
        self.confirmed = Counter(
            PREFIX + "confirmed", "Messages the broker confirmed (basic.ack, not returned).",
            registry=r)
        self.nacked = Counter(
            PREFIX + "nacked", "Messages the broker refused (basic.nack).", registry=r)
        self.returned = Counter(
            PREFIX + "returned", "Messages returned unroutable (basic.return).", registry=r)
        self.retried = Counter(
            PREFIX + "retried", "Messages republished inside a batch after a nack or return.",
            registry=r)
        self.lost = Counter(
            PREFIX + "lost_in_flight",
            "Messages in flight when the connection died or the batch was abandoned "
            "(reported unconfirmed; the caller retries them).", registry=r)
        self.reconnects = Counter(
            PREFIX + "reconnects", "Connections opened after the first one.", registry=r)
        self.connect_failures = Counter(
            PREFIX + "connect_failures", "Failed connection attempts (any address).",
            registry=r)
        self.inflight = Gauge(
            PREFIX + "inflight_messages", "Messages published and not yet answered.",
            registry=r)
        self.connected = Gauge(
            PREFIX + "connected", "1 when a confirm-mode channel is open, else 0.", registry=r)
        self.blocked = Gauge(
            PREFIX + "blocked", "1 while the broker blocks the connection (resource alarm).",
            registry=r)
        self.confirm_latency = Histogram(
            PREFIX + "confirm_latency_seconds", "Time from publish to basic.ack, per message.",
            buckets=LATENCY_BUCKETS, registry=r)

    def observe_latencies(self, latencies: tuple[float, ...]) -> None:
        observe = self.confirm_latency.observe
        for latency in latencies:
            observe(latency)
