"""Batched confirm-mode RabbitMQ publisher: a thin pika adapter around pure policies.

Theory of operation
-------------------
:class:`Publisher` is the public face; the I/O thread behind it has two halves that
each own their state. :class:`~segmentlog.amqp.connection.BrokerConnection` connects,
fails over, watches the connection and hands each new confirm-mode channel to
:class:`~segmentlog.amqp.sender.BatchSender`, which writes the publishes and feeds the
broker's answers to :class:`~segmentlog.amqp.policy.BatchPolicy`: the pure object that
decides (window, retries, blocked wait, confirm timeout) over the delivery tags of
:class:`~segmentlog.amqp.confirms.ConfirmTracker`. ``publish_batch`` hands a batch to
that thread and waits on an event for the result.

Rule 1: a batch runs with at most ``window`` messages unanswered on the channel. Each
ack/nack frame (``multiple`` or not) frees room and the loop publishes more, 100
messages per socket write, their frames encoded by :mod:`segmentlog.amqp.frames` (the
bytes pika would send, at a ninth of its CPU; ``BatchSender._pump`` and ``_send``).
Rule 2: ``publish_batch`` never raises because the broker failed *during* the batch:
it returns a :class:`PublishResult` whose ``confirmed_prefix`` says how far the
caller may commit. Messages whose answer never came are LOST (maybe stored, maybe
not), so the caller retries them and consumers deduplicate by ``message_id``.
Rule 3: nacked and returned messages are republished inside the same call, up to
``max_attempts`` times per batch, while the connection is up (a return first
re-declares the queue: unroutable means the queue is gone). Retrying inside the call
keeps the confirmed prefix whole, so the caller does not resend confirmed messages.
Rule 4: ``BrokerUnavailableError`` means nothing of the batch was published: no
connection is open (the loop is reconnecting with capped exponential backoff and
jitter, failing over between the configured addresses) or the broker blocks the
connection (resource alarm). Callers buffer and try later.
Rule 5: a silent partition, or a broker that stops confirming, is found by the
connection's watchdog, which aborts the connection (:mod:`segmentlog.amqp.connection`).
Rule 6: a password never appears in a log line or an error (:mod:`segmentlog.amqp.urls`).

Thread-safety: ``publish_batch`` calls are serialized by a lock (one drainer thread is
the intended caller); ``is_available``, ``wait_available`` and ``close`` may be called
from any thread. The publisher never reads or commits any buffer; that is the caller's.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from segmentlog.amqp.confirms import PublishResult
from segmentlog.amqp.connection import BrokerConnection, checked_queue_arguments
from segmentlog.amqp.metrics import PublisherMetrics
from segmentlog.amqp.policy import BatchPolicy, backoff_delay
from segmentlog.amqp.sender import BatchSender, Job
from segmentlog.amqp.urls import check_url, redact_url
from segmentlog.errors import BrokerUnavailableError, ConfigError, LogClosedError, PublishError

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Publisher", "backoff_delay", "redact_url"]

#: RabbitMQ's default ``max_message_size`` (3.8 and later): the broker refuses larger
#: message bodies (it closes the channel).
DEFAULT_MAX_MESSAGE_SIZE = 128 << 20
#: RabbitMQ's hard upper limit of ``max_message_size``.
_BROKER_MESSAGE_CEILING = 512 << 20


def _thread_died() -> PublishError:
    return PublishError(
        "publish_batch: the publisher's I/O thread stopped unexpectedly (see the "
        "'segmentlog.amqp.publisher' log); close() and create a new Publisher")


class Publisher:
    """Publishes batches of ``(message_id, json_body)`` to one durable queue with confirms.

    Parameters
    ----------
    urls:
        One ``amqp://`` / ``amqps://`` URL or several (failover, tried in order,
        starting with the last one that worked).
    queue_name:
        Declared durable (``x-queue-type: quorum`` when ``quorum``) on every connect;
        messages go through the default exchange with ``mandatory=True``.
    queue_arguments:
        Extra ``x-`` arguments of that declaration, e.g. ``{"x-queue-version": 2}`` (a
        classic queue of version 2: RabbitMQ 3.10-3.12; the default from 3.13; it takes
        more messages a second than version 1 here, benchmarks/README.md). A queue that
        already exists must have been declared with the same arguments (the broker
        refuses the declaration otherwise, and the publisher reports it as
        unavailable); a ``queue-version`` policy needs no argument (README, "Auditor").
    window:
        Most messages unanswered at once (Rule 1). 1 = wait for each confirm.
    heartbeat, liveness_timeout:
        AMQP heartbeat (s) and the silence after which the connection is declared dead
        (default ``2 * heartbeat``).
    connect_timeout:
        TCP connect and whole handshake (TCP + TLS + AMQP) per address.
    confirm_timeout:
        A batch whose in-flight messages see no answer for this long aborts the
        connection (the broker is alive but not confirming).
    max_attempts:
        Publishes per message per batch for nacks and returns (Rule 3).
    backoff_initial, backoff_max:
        Reconnect rounds wait ``backoff_delay(n, backoff_initial, backoff_max)``.
    blocked_grace:
        When the broker blocks the connection mid-batch, how long to wait for the
        messages already sent before giving up on them (reported LOST).
    max_message_size:
        The broker's ``max_message_size`` in bytes (RabbitMQ's default, 128 MiB, unless
        given). AMQP does not announce it; a larger body closes the channel, so users
        (the Auditor's ``record()``) refuse a larger message before it is queued.
    ssl_context:
        Used for ``amqps://`` URLs (default: ``ssl.create_default_context()``).
    registry:
        Prometheus registry for the metrics (default: a fresh private one). Several
        publishers may share one: each has its own ``publisher`` label (amqp/metrics.py).
    metrics_name:
        The ``publisher`` label of this publisher's series (default: the queue name;
        ``-2``, ``-3``... appended while another live publisher on the registry has it).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        queue_name: str,
        *,
        window: int = 1000,
        quorum: bool = False,
        queue_arguments: Mapping[str, Any] | None = None,
        heartbeat: int = 5,
        connect_timeout: float = 5.0,
        liveness_timeout: float | None = None,
        confirm_timeout: float = 30.0,
        max_attempts: int = 3,
        retry_delay: float = 0.05,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        blocked_grace: float = 1.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        registry: CollectorRegistry | None = None,
        metrics_name: str | None = None,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise ConfigError("Publisher: urls is empty; pass at least one amqp:// URL")
        if not queue_name or len(queue_name.encode()) > 255:
            raise ConfigError(
                f"Publisher: queue_name {queue_name!r} must be 1-255 bytes (AMQP short string)")
        if window < 1:
            raise ConfigError(f"Publisher: window={window} must be >= 1")
        if heartbeat < 1:
            raise ConfigError(
                f"Publisher: heartbeat={heartbeat} must be >= 1 s (0 would disable "
                "heartbeats and with them the detection of silent partitions)")
        for name, value in (("connect_timeout", connect_timeout),
                            ("confirm_timeout", confirm_timeout),
                            ("backoff_initial", backoff_initial),
                            ("backoff_max", backoff_max)):
            if value <= 0:
                raise ConfigError(f"Publisher: {name}={value} must be > 0")
        if max_attempts < 1:
            raise ConfigError(f"Publisher: max_attempts={max_attempts} must be >= 1")
        if (isinstance(max_message_size, bool) or not isinstance(max_message_size, int)
                or not 1 <= max_message_size <= _BROKER_MESSAGE_CEILING):
            raise ConfigError(
                f"Publisher: max_message_size={max_message_size!r} must be an integer of "
                f"bytes 1-{_BROKER_MESSAGE_CEILING} (the broker's max_message_size; "
                f"RabbitMQ's default is {DEFAULT_MAX_MESSAGE_SIZE})")
        for url in url_list:
            check_url(url)
        self.max_message_size = max_message_size
        self.queue_name = queue_name
        self.window = window
        self.quorum = quorum
        # The I/O thread's two halves: the connection (it parses the URLs, so it may
        # still refuse one: before the metrics claim a label) and the batches on it.
        self._link = BrokerConnection(
            url_list, queue_name, window=window,
            queue_args=checked_queue_arguments(queue_arguments, quorum), heartbeat=heartbeat,
            connect_timeout=connect_timeout,
            liveness_timeout=(
                liveness_timeout if liveness_timeout is not None else 2.0 * heartbeat),
            backoff_initial=backoff_initial, backoff_max=backoff_max, ssl_context=ssl_context)
        self.metrics = PublisherMetrics(registry, metrics_name or queue_name)
        self.registry = self.metrics.registry
        self._sender = BatchSender(
            self._link, queue_name, self.metrics,
            BatchPolicy(window, max_attempts=max_attempts, retry_delay=retry_delay,
                        confirm_timeout=confirm_timeout), blocked_grace)
        self._link.bind(self._sender, self.metrics)
        self._publish_lock = threading.Lock()

    # ------------------------------------------------------------ public API
    def connect(self, timeout: float | None = None) -> None:
        """Start the I/O thread and wait for the first usable channel.

        Returns once a confirm-mode channel is open and the queue declared. Raises
        :class:`BrokerUnavailableError` when a whole round over every address failed
        (or ``timeout`` passed); the publisher stays started and keeps reconnecting in
        the background (``is_available()`` turns True later) until ``close()``.
        Calling it again waits for the next round's outcome.
        """
        self._check_open()
        self._link.connect(timeout)

    def start(self) -> None:
        """Start connecting in the background and return at once (``connect`` without
        the wait); ``is_available()`` turns True when a channel is ready."""
        self._check_open()
        self._link.start()

    def reconnect_now(self) -> int:
        """Cut a backoff wait short: if the publisher waits for its next connection round,
        that round starts now. Returns how many rounds had failed before it; a caller
        waits for :meth:`is_available` or for :attr:`rounds_failed` to grow past that to
        know the outcome."""
        return self._link.reconnect_now()

    @property
    def rounds_failed(self) -> int:
        """Connection rounds (every address tried once) that failed so far."""
        return self._link.rounds_failed

    def is_available(self) -> bool:
        """True when a batch could be published now (channel open, not blocked)."""
        return self._link.is_available()

    def wait_available(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until :meth:`is_available`; return its value."""
        return self._link.wait_available(timeout)

    @property
    def connected_url(self) -> str | None:
        """The (redacted) address of the open connection, if any."""
        return self._link.connected_url

    @property
    def last_error(self) -> str:
        """Why the publisher is (or last was) unavailable; never contains a password."""
        return self._link.last_error

    def _forget_in_child(self) -> None:
        """In a forked child: close the child's copy of the connection's socket without
        a word on it (the Auditor's after-fork cleanup; best effort)."""
        self._link.forget_in_child()

    def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> PublishResult:
        """Publish ``messages`` (``(message_id, json_body)``) and wait for their answers.

        Returns a :class:`PublishResult` (Rule 2): commit ``confirmed_prefix`` messages,
        retry the rest. Raises :class:`BrokerUnavailableError` when nothing could be
        published (Rule 4), :class:`LogClosedError` after ``close()``,
        :class:`ConfigError` for a malformed message, :class:`PublishError` if the I/O
        thread died (a bug; the message says so).
        """
        self._check_open()
        for i, item in enumerate(messages):
            if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str)
                    or not isinstance(item[1], (bytes, bytearray, memoryview))):
                raise ConfigError(
                    f"publish_batch: message {i} must be a (message_id: str, body: bytes) "
                    f"tuple, got {type(item).__name__}")
            if len(item[0].encode()) > 255:
                raise ConfigError(
                    f"publish_batch: message {i} has a message_id longer than 255 bytes "
                    "(AMQP short string); use a shorter event id")
        if not messages:
            return PublishResult((), 0)
        if self._link.thread is None:
            self.connect()
        elif not self._link.thread.is_alive():
            raise _thread_died()
        with self._publish_lock:
            if not self.is_available():
                raise BrokerUnavailableError(self._link.unavailable_message())
            job = Job(messages)
            self._link.call_threadsafe(lambda: self._sender.start(job))
            thread = self._link.thread
            while not job.done.wait(1.0):
                if thread is None or not thread.is_alive():
                    raise _thread_died()
            if job.unavailable is not None:
                raise BrokerUnavailableError(job.unavailable)
            assert job.result is not None
            return job.result

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection and stop the I/O thread. Idempotent.

        A batch still running returns with its unanswered messages LOST.
        """
        if not self._link.mark_closed():
            return
        try:
            self._link.stop(timeout)
        finally:
            # Free the ``publisher`` label for a successor on a shared registry.
            self.metrics.release()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._link.closed:
            raise LogClosedError(
                f"Publisher for queue {self.queue_name!r} is closed; create a new one")

