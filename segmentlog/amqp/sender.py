"""Batches on the I/O thread: one at a time on the channel, as BatchPolicy says.

:class:`BatchSender` is the :class:`~segmentlog.amqp.connection.ChannelUser` of the
:class:`~segmentlog.amqp.publisher.Publisher`'s connection. It takes each
``publish_batch`` call (a :class:`Job`) on the I/O thread, writes the publishes the
:class:`~segmentlog.amqp.policy.BatchPolicy` lets out (Rule 1 of the publisher), feeds
it the broker's acks, nacks and returns, runs the timers it asks for (retry, blocked
grace) and hands the batch's :class:`PublishResult` back to the waiting caller.

It owns the policy (and through it the channel's ConfirmTracker), the running job and
the frame encoder; it decides nothing the policy decides, and never opens, closes or
watches a connection (:mod:`segmentlog.amqp.connection` does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions

from segmentlog.amqp.confirms import ConfirmTracker, PublishResult
from segmentlog.amqp.connection import BrokerConnection
from segmentlog.amqp.frames import CONTENT_TYPE, PublishFrames
from segmentlog.amqp.metrics import PublisherMetrics
from segmentlog.amqp.policy import BatchPolicy, Step

__all__ = ["BatchSender", "Job"]

LOG = logging.getLogger("segmentlog.amqp.publisher")


class Job:
    """One publish_batch call, owned by the I/O thread once handed over."""

    __slots__ = ("done", "messages", "result", "timer", "unavailable")

    def __init__(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.messages = messages
        self.done = threading.Event()
        self.result: PublishResult | None = None
        self.unavailable: str | None = None
        self.timer: Any = None  # the retry or blocked-grace timer, while one runs


class BatchSender:
    """Publishes one :class:`Job` at a time on ``link``'s channel (see the module doc)."""

    def __init__(self, link: BrokerConnection, queue_name: str, metrics: PublisherMetrics,
                 policy: BatchPolicy, blocked_grace: float) -> None:
        self.link = link
        self.queue_name = queue_name
        self.metrics = metrics
        self._policy = policy
        self._blocked_grace = blocked_grace
        self._job: Job | None = None
        self._pump_pending = False
        self._frames: PublishFrames | None = None
        self._emit: Callable[[Sequence[bytes]], None] | None = None

    # ------------------------------------------------ the connection's ChannelUser
    def attach(self, channel: Any) -> tuple[Callable[[Any], None],
                                            Callable[[Any, Any, Any, Any], None]]:
        """A new confirm-mode channel: fresh delivery tags, frames for its number, and
        the callbacks of its answers (bound to its tracker: a late answer from a
        channel already given up on is dropped)."""
        tracker = self._policy.new_channel()
        self._frames = PublishFrames(channel.channel_number, self.queue_name,
                                     channel.connection.params.frame_max)
        self._emit = self.link.paths.write_frames
        return (lambda frame: self._on_ack_nack(tracker, frame),
                lambda ch, method, props, body: self._on_return(tracker, method, props))

    def blocked(self) -> None:
        job = self._job
        if self._policy.on_blocked() and job is not None:
            self._start_grace(job)
            self._maybe_finish()

    def unblocked(self) -> None:
        job = self._job
        if self._policy.on_unblocked(time.monotonic()) and job is not None:
            # Unblocked within the grace period: carry on with the batch.
            if job.timer is not None:
                self.link.remove_timeout(job.timer)
                job.timer = None
            self._pump()

    def connection_lost(self) -> int:
        lost = self._policy.channel_lost()
        if lost:
            self.metrics.lost.inc(len(lost))
        self.metrics.inflight.set(0)
        return len(lost)

    def abandon(self) -> None:
        lost = self._policy.abandon()
        if lost:
            self.metrics.lost.inc(len(lost))

    def end_batch(self) -> None:
        job = self._job
        if job is not None:
            self._finish_job(job)

    def overdue(self, now: float) -> str | None:
        silent = self._policy.overdue(now)
        if silent is None:
            return None
        return (f"no confirm for {silent:.1f} s with {self._policy.tracker.inflight} "
                f"message(s) in flight (confirm_timeout={self._policy.confirm_timeout:g} s)")

    # ------------------------------------------------------------------ batches
    def start(self, job: Job) -> None:
        """Run ``job`` (on the I/O thread), or refuse it if no channel can take it."""
        if not self.link.can_publish():
            job.unavailable = self.link.unavailable_message()
            job.done.set()
            return
        self._job = job
        self._policy.start([m[0] for m in job.messages], time.monotonic())
        self._pump()

    def _start_grace(self, job: Job) -> None:
        # Stop publishing; give what is already sent a moment to be confirmed.
        job.timer = self.link.call_later(self._blocked_grace,
                                         lambda: self._blocked_give_up(job))

    def _blocked_give_up(self, job: Job) -> None:
        if job is not self._job:
            return
        job.timer = None
        # Rule 2: unanswered messages become LOST (the caller retries them); their tags
        # stay on the channel as orphans so late confirms cannot be misattributed.
        self.abandon()
        self._finish_job(job)

    def _pump(self) -> None:
        """Publish while the window has room (Rule 1), then see whether the batch is done.

        At most ``SLICE`` messages go out per call, each slice one socket write; if
        the window has room for more, the rest follows from the loop's next turn, after
        pika wrote the slice. One ack often frees hundreds of places: encoding them all
        before the first byte left kept the broker idle meanwhile (with pika's own
        encoding; with :class:`PublishFrames` the slice size no longer shows in the
        rate, benchmarks/README.md). Slices stay because they bound how long one
        callback holds the loop (heartbeats, acks, the watchdog wait behind it).
        """
        job = self._job
        if job is None:
            return
        policy = self._policy
        if policy.hold():
            self._start_grace(job)
            self._maybe_finish()
            return
        channel = self.link.channel
        indices = policy.to_publish() if channel is not None else None
        if indices:
            try:
                self._send(channel, job.messages, indices)
            except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
                self.link.abort(f"publish failed: {self.link.describe(exc)}")
                return
            # Recorded after the write: a publish that raised never reached the broker,
            # so it must not consume a delivery tag (Rule 3 of the tracker).
            policy.published(indices, time.monotonic())
            self.metrics.published.inc(len(indices))
            self.metrics.inflight.set(policy.tracker.inflight)
            if policy.can_send_more and not self._pump_pending:
                self._pump_pending = True
                self.link.call_later(0, self._pump_again)
        self._maybe_finish()

    def _pump_again(self) -> None:
        self._pump_pending = False
        self._pump()

    def _send(self, channel: Any, messages: Sequence[tuple[str, bytes]],
              indices: list[int]) -> None:
        """Write the publishes of ``messages[i] for i in indices``.

        If it raises, the caller aborts the connection without recording any of them:
        the fast path wrote nothing; the fallback may have written a few, which the
        broker then numbered, but the tags die with the channel, and messages the
        tracker never saw stay UNSENT, so they are retried like LOST ones.

        Fast path: the frames encoded by :class:`PublishFrames` (byte for byte pika's),
        handed to pika's connection as one buffer through the method its own
        ``basic_publish`` ends in (``_output_marshaled_frames``, which also keeps the
        connection's byte counters). If a pika release drops that method, every
        message goes through ``channel.basic_publish`` instead (~9x the CPU; the
        fallbacks are :mod:`segmentlog.amqp.pikainternals`').
        """
        if not channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("the channel is not open")
        frames, emit = self._frames, self._emit
        if frames is not None and emit is not None:
            encode = frames.encode
            emit([b"".join([encode(*messages[i]) for i in indices])])
            return
        props = pika.BasicProperties
        for i in indices:
            mid, body = messages[i]
            channel.basic_publish("", self.queue_name, body,
                                  props(delivery_mode=2, content_type=CONTENT_TYPE,
                                        message_id=mid),
                                  mandatory=True)
        if len(indices) > 1:
            self.link.paths.coalesce()

    def _on_ack_nack(self, tracker: ConfirmTracker, frame: Any) -> None:
        policy = self._policy
        if tracker is not policy.tracker:
            return  # an answer from a channel we already gave up on
        method = frame.method
        now = time.monotonic()
        if isinstance(method, pika.spec.Basic.Ack):
            settled = policy.on_ack(method.delivery_tag, method.multiple, now)
        else:
            settled = policy.on_nack(method.delivery_tag, method.multiple, now)
        if settled.confirmed:
            self.metrics.confirmed.inc(len(settled.confirmed))
            self.metrics.observe_latencies(settled.latencies)
        if settled.nacked:
            self.metrics.nacked.inc(len(settled.nacked))
            LOG.warning("publisher %r: broker nacked %d message(s)", self.queue_name,
                        len(settled.nacked))
        self.metrics.inflight.set(tracker.inflight)
        self._pump()

    def _on_return(self, tracker: ConfirmTracker, method: Any, props: Any) -> None:
        if tracker is not self._policy.tracker:
            return
        mid = props.message_id if props is not None else None
        self.metrics.returned.inc()
        LOG.warning("publisher %r: message %r returned by the broker: %s %s", self.queue_name,
                    mid, method.reply_code, method.reply_text)
        if mid is not None:
            self._policy.on_return(mid)

    def _maybe_finish(self) -> None:
        job = self._job
        if job is None:
            return
        policy = self._policy
        step = policy.next_step()
        if step is Step.WAIT:
            return
        if step is Step.FINISH:
            self._finish_job(job)
            return
        # Rule 3: retry inside the call, so the confirmed prefix can stay whole.
        self.metrics.retried.inc(policy.retrying)
        LOG.info("publisher %r: republishing %d nacked/returned message(s), attempt %d/%d",
                 self.queue_name, policy.retrying, policy.attempt, policy.max_attempts)

        def resume() -> None:
            if job is not self._job:
                return
            job.timer = None
            if policy.resume(time.monotonic()):
                self._pump()

        if step is Step.REDECLARE:
            # Unroutable through the default exchange means the queue is gone:
            # declare it again before resending.
            self.link.declare(self.link.safe(resume))
        else:
            job.timer = self.link.call_later(policy.retry_wait, resume)

    def _finish_job(self, job: Job) -> None:
        if job.timer is not None:
            self.link.remove_timeout(job.timer)
            job.timer = None
        job.result = self._policy.result()
        self._job = None
        self.metrics.inflight.set(self._policy.tracker.inflight)
        job.done.set()
