"""Confirm-mode RabbitMQ publishing for segmentlog.

``Publisher`` (pika adapter, :mod:`segmentlog.amqp.publisher`) publishes batches with a
window of unanswered messages and reports the confirmed prefix of each batch;
``ConfirmTracker`` (:mod:`segmentlog.amqp.confirms`) is its pure, network-free
bookkeeping. The publisher never reads or commits a buffer: the caller commits
exactly ``PublishResult.confirmed_prefix`` messages and retries the rest.
"""

from __future__ import annotations

from segmentlog.amqp.confirms import ConfirmTracker, MessageStatus, PublishResult, Settled
from segmentlog.amqp.metrics import PublisherMetrics
from segmentlog.amqp.publisher import Publisher, backoff_delay, redact_url

__all__ = [
    "ConfirmTracker",
    "MessageStatus",
    "PublishResult",
    "Publisher",
    "PublisherMetrics",
    "Settled",
    "backoff_delay",
    "redact_url",
]
