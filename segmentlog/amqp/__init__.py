"""Confirm-mode RabbitMQ publishing for segmentlog.

``Publisher`` (:mod:`segmentlog.amqp.publisher`) publishes batches with a window of
unanswered messages and reports the confirmed prefix of each batch. Its parts: the
connection with failover and watchdog (:mod:`~segmentlog.amqp.connection`), the batches
on its channel (:mod:`~segmentlog.amqp.sender`), the pure decisions of both
(:mod:`~segmentlog.amqp.policy`) over the pure delivery-tag bookkeeping
``ConfirmTracker`` (:mod:`~segmentlog.amqp.confirms`), URL checks and redaction
(:mod:`~segmentlog.amqp.urls`), the pika internals it uses and their fallbacks
(:mod:`~segmentlog.amqp.pikainternals`). The publisher never reads or commits a buffer: the
caller commits exactly ``PublishResult.confirmed_prefix`` messages and retries the rest.
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
