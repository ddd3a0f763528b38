"""Batched confirm-mode RabbitMQ publisher: a thin pika adapter around ConfirmTracker.

Theory of operation
-------------------
One dedicated I/O thread runs pika's asynchronous ``SelectConnection`` on its own
``IOLoop`` and owns every piece of connection state: the connection, the channel, the
:class:`~segmentlog.amqp.confirms.ConfirmTracker`, the batch being published, the
reconnect timers. The calling thread never touches pika. ``publish_batch`` hands a
batch to the loop with ``IOLoop.add_callback_threadsafe`` and waits on an event for the
result. Why a thread and not "drive the loop from the caller": between batches (the
drainer may sleep for a minute) someone must answer heartbeats, notice a dead broker,
reconnect and hear ``connection.blocked``; a loop that only runs inside calls would
lose the connection every idle minute. Why not ``BlockingConnection``: its confirm
mode waits for each message's own confirm (~10x slower than a window).

Rule 1: a batch runs with at most ``window`` messages unanswered on the channel. Each
ack/nack frame (``multiple`` or not) frees room and the loop publishes more, 100
messages per socket write, their frames encoded by :mod:`segmentlog.amqp.frames` (the
bytes pika would send, at a ninth of its CPU; ``_pump`` and ``_send``).
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
Rule 5: a silent partition (no reset, packets dropped) is found by the loop's own
watchdog: no byte from the broker for ``liveness_timeout`` (default 2 x heartbeat
= 10 s; the broker sends a heartbeat every heartbeat/2 s) aborts the connection.
pika's own heartbeat checker alone takes up to 2 x (heartbeat + 5) s.
Rule 6: a password never appears in a log line or an error message: URLs are passed
through :func:`redact_url` and every error text through a scrubber that knows the
configured passwords.

Thread-safety: ``publish_batch`` calls are serialized by a lock (one drainer thread is
the intended caller); ``is_available``, ``wait_available`` and ``close`` may be called
from any thread. The publisher never reads or commits any buffer; that is the caller's.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop
from prometheus_client import CollectorRegistry

from segmentlog.amqp.confirms import ConfirmTracker, MessageStatus, PublishResult
from segmentlog.amqp.frames import CONTENT_TYPE, PublishFrames
from segmentlog.amqp.metrics import PublisherMetrics
from segmentlog.errors import BrokerUnavailableError, ConfigError, LogClosedError, PublishError

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Publisher", "backoff_delay", "redact_url"]

LOG = logging.getLogger("segmentlog.amqp.publisher")

_F = TypeVar("_F", bound=Callable[..., Any])


#: RabbitMQ's default ``max_message_size`` (3.8 and later): the broker refuses larger
#: message bodies (it closes the channel).
DEFAULT_MAX_MESSAGE_SIZE = 128 << 20
#: RabbitMQ's hard upper limit of ``max_message_size``.
_BROKER_MESSAGE_CEILING = 512 << 20


def _check_url(url: object) -> None:
    """Refuse a broker URL without a host, naming it redacted: ``amqp://user:password``
    (the ``@host`` forgotten) would otherwise be read as host ``user``, port
    ``password``, and the parser's error would show the password."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"Publisher: a broker URL must be a non-empty string, got "
                          f"{type(url).__name__}; expected amqp[s]://user:password@host:port/vhost")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("amqp", "amqps"):
        raise ConfigError(f"Publisher: broker URL {redact_url(url)} must start with amqp:// "
                          "or amqps://; expected amqp[s]://user:password@host:port/vhost")
    _, at, hostpart = rest.rpartition("@")
    hostport = hostpart.split("/", 1)[0].split("?", 1)[0]
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        port = tail[1:] if tail.startswith(":") else ""
        host += "]"
    elif ":" in hostport:
        host, port = hostport.rsplit(":", 1)
    if at and not host:
        raise ConfigError(f"Publisher: broker URL {redact_url(url)} has no host after '@'; "
                          "expected amqp[s]://user:password@host:port/vhost")
    if port and not port.isdigit():
        # Without '@' this is most likely user:password with the host left out.
        raise ConfigError(f"Publisher: broker URL {redact_url(url)} has no valid host:port "
                          "(is '@host' missing after user:password?); expected "
                          "amqp[s]://user:password@host:port/vhost")


def redact_url(url: str) -> str:
    """Return ``url`` with the password replaced by ``***`` (user and host kept).

    Works on the raw string (not ``urlsplit``) so an unencoded ``/`` or ``@`` in the
    password cannot push part of it into the "path": everything up to the last ``@``
    after the scheme is user info, and everything after its first ``:`` is hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    prefix = f"{scheme}://" if sep else ""
    if not at:
        # No user info: "host:port". A "port" that is not a number may be a password
        # whose "@host" was left out (amqp://user:password): hide it.
        hostport, slash, path = rest.partition("/")
        host, colon, port = hostport.rpartition(":")
        if colon and port and not port.isdigit() and not hostport.endswith("]"):
            return f"{prefix}{host}:***{slash}{path}"
        return url
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{prefix}{user}:***@{hostpart}"


def _coalesce_output(conn: Any) -> None:
    """Join the frames pika has queued for the socket into one buffer.

    pika's transport sends each queued frame with its own ``send()``: three per message
    (method, header, body), each a TCP segment the broker reads on its own. Joined, a
    window's worth goes out in a few large writes. Measured (100 k persistent messages,
    window 5000, 3 interleaved runs): 20-25% less publisher CPU per message, ~4% less
    broker CPU, 3-6% more messages/s. The deque is pika's own (``_tx_buffers``, pika
    1.x, plain and TLS transports); if a pika release renames it, this does nothing.
    """
    buffers = getattr(getattr(conn, "_transport", None), "_tx_buffers", None)
    if isinstance(buffers, deque) and len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)


#: Messages per socket write in ``_pump`` (see there).
_PUMP_SLICE = 100


def backoff_delay(attempt: int, initial: float, cap: float, rand: float) -> float:
    """Delay before reconnect round ``attempt`` (0-based): capped exponential, jittered.

    ``rand`` in [0, 1) picks a point in [half, full] of the capped delay ("equal
    jitter"), so publishers that lost the same broker do not return in lockstep.
    """
    full = min(cap, initial * (2.0 ** min(attempt, 62)))
    return full * (0.5 + 0.5 * rand)


def _passwords(urls: Sequence[str]) -> list[str]:
    out = []
    for url in urls:
        rest = url.partition("://")[2] or url
        userinfo, at, _ = rest.rpartition("@")
        if at and ":" in userinfo:
            pw = userinfo.split(":", 1)[1]
            if pw:
                out.append(pw)
                try:  # the percent-decoded form is what pika sends and might echo
                    from urllib.parse import unquote

                    out.append(unquote(pw))
                except ValueError:  # pragma: no cover - unquote does not raise on str
                    pass
    return sorted(set(out), key=len, reverse=True)


class _Job:
    """One publish_batch call, owned by the I/O thread once handed over."""

    __slots__ = ("attempt", "blocked_wait", "done", "last_progress", "messages", "result",
                 "timer", "to_send", "unavailable", "waiting")

    def __init__(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.messages = messages
        self.done = threading.Event()
        self.result: PublishResult | None = None
        self.unavailable: str | None = None
        self.to_send: deque[int] = deque()
        self.attempt = 1
        self.waiting = False  # a retry or blocked-grace timer owns the next step
        self.blocked_wait = False  # ...and it is the blocked-grace one
        self.timer: Any = None
        self.last_progress = 0.0


def _queue_arguments(given: Mapping[str, Any] | None, quorum: bool) -> dict[str, Any]:
    """The arguments of the queue declaration: ``given`` checked, plus quorum's."""
    if given is not None and not isinstance(given, Mapping):
        raise ConfigError(f"Publisher: queue_arguments must be a mapping of x- arguments, "
                          f"e.g. {{'x-queue-version': 2}}, got {type(given).__name__}")
    args = dict(given or {})
    for key, value in args.items():
        if not isinstance(key, str) or not key.startswith("x-"):
            raise ConfigError(f"Publisher: queue_arguments key {key!r} is not an x- argument "
                              "(e.g. 'x-queue-version', 'x-max-length')")
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"Publisher: queue_arguments[{key!r}] = {value!r} must be a "
                              "string, number or boolean")
    if quorum:
        if args.get("x-queue-type", "quorum") != "quorum":
            raise ConfigError(
                f"Publisher: quorum=True contradicts queue_arguments x-queue-type="
                f"{args['x-queue-type']!r}; drop one of them")
        args["x-queue-type"] = "quorum"
    return args


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
            _check_url(url)
        self.max_message_size = max_message_size
        self._urls = url_list
        self._redacted = [redact_url(u) for u in url_list]
        self._secrets = _passwords(url_list)
        self.queue_name = queue_name
        self.window = window
        self.quorum = quorum
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._liveness_timeout = (
            liveness_timeout if liveness_timeout is not None else 2.0 * heartbeat)
        self._confirm_timeout = confirm_timeout
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._blocked_grace = blocked_grace
        self._ssl_context = ssl_context
        self._params = [
            self._make_params(u, r) for u, r in zip(url_list, self._redacted, strict=True)]
        self._queue_args = _queue_arguments(queue_arguments, quorum)
        self.metrics = PublisherMetrics(registry, metrics_name or queue_name)
        self.registry = self.metrics.registry
        self._rng = random.Random()

        # Shared with callers: written by the I/O thread under _cond.
        self._cond = threading.Condition()
        self._ready = False
        self._blocked = False
        self._closed = False
        self._rounds_failed = 0
        self._last_error = "not connected yet"
        self._connected_index: int | None = None
        self._publish_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ioloop: Any = None

        # I/O-thread state.
        self._conn: Any = None
        self._channel: Any = None
        self._tracker = ConfirmTracker()
        self._job: _Job | None = None
        self._closing = False
        self._url_index = 0
        self._tried_in_round = 0
        self._round_errors: list[str] = []
        self._ever_connected = False
        self._setup_done = False
        self._reconnect_timer: Any = None
        self._watchdog_timer: Any = None
        self._last_rx_bytes = -1
        self._last_rx_time = 0.0
        self._pump_pending = False
        self._frames: PublishFrames | None = None
        self._emit: Callable[[Sequence[bytes]], None] | None = None
        #: False sends through ``channel.basic_publish`` (the fallback, tested as such).
        self._fast_frames = True

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
        with self._cond:
            rounds_before = self._rounds_failed
        self._start()
        if timeout is None:
            # one round: every address may take the whole handshake timeout
            timeout = self._connect_timeout * len(self._urls) + 5.0
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready and self._rounds_failed == rounds_before and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._ready and not self._blocked:
                return
        raise BrokerUnavailableError(self._unavailable_message())

    def start(self) -> None:
        """Start connecting in the background and return at once (``connect`` without
        the wait); ``is_available()`` turns True when a channel is ready."""
        self._check_open()
        self._start()

    def reconnect_now(self) -> int:
        """Cut a backoff wait short: if the publisher waits for its next connection round,
        that round starts now. Returns how many rounds had failed before it; a caller
        waits for :meth:`is_available` or for :attr:`rounds_failed` to grow past that to
        know the outcome."""
        with self._cond:
            rounds = self._rounds_failed
        if self._ioloop is not None and not self._closed:
            self._ioloop.add_callback_threadsafe(self._reconnect_early)
        return rounds

    @property
    def rounds_failed(self) -> int:
        """Connection rounds (every address tried once) that failed so far."""
        with self._cond:
            return self._rounds_failed

    def is_available(self) -> bool:
        """True when a batch could be published now (channel open, not blocked)."""
        return self._ready and not self._blocked and not self._closed

    def wait_available(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until :meth:`is_available`; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.is_available() and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self.is_available()

    @property
    def connected_url(self) -> str | None:
        """The (redacted) address of the open connection, if any."""
        index = self._connected_index
        return self._redacted[index] if index is not None and self._ready else None

    @property
    def last_error(self) -> str:
        """Why the publisher is (or last was) unavailable; never contains a password."""
        return self._last_error

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
        if self._thread is None:
            self.connect()
        elif not self._thread.is_alive():
            raise PublishError(
                "publish_batch: the publisher's I/O thread stopped unexpectedly (see the "
                "'segmentlog.amqp.publisher' log); close() and create a new Publisher")
        with self._publish_lock:
            if not self.is_available():
                raise BrokerUnavailableError(self._unavailable_message())
            job = _Job(messages)
            self._ioloop.add_callback_threadsafe(lambda: self._start_job(job))
            thread = self._thread
            while not job.done.wait(1.0):
                if thread is None or not thread.is_alive():
                    raise PublishError(
                        "publish_batch: the publisher's I/O thread stopped unexpectedly "
                        "(see the 'segmentlog.amqp.publisher' log); close() and create a "
                        "new Publisher")
            if job.unavailable is not None:
                raise BrokerUnavailableError(job.unavailable)
            assert job.result is not None
            return job.result

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection and stop the I/O thread. Idempotent.

        A batch still running returns with its unanswered messages LOST.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            thread = self._thread
            if thread is not None and thread.is_alive():
                try:
                    self._ioloop.add_callback_threadsafe(self._shutdown)
                except Exception:  # the loop is already gone: nothing left to stop
                    LOG.debug("close: I/O loop already stopped", exc_info=True)
                thread.join(timeout)
                if thread.is_alive():
                    LOG.warning("close: I/O thread did not stop within %.1f s", timeout)
                    return
            if self._ioloop is not None:
                self._ioloop.close()
        finally:
            # Free the ``publisher`` label for a successor on a shared registry.
            self.metrics.release()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------- caller helpers
    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(
                f"Publisher for queue {self.queue_name!r} is closed; create a new one")

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._ioloop = IOLoop()
            self._thread = threading.Thread(
                target=self._run, name=f"segmentlog-publisher-{self.queue_name}", daemon=True)
            self._thread.start()
        self._ioloop.add_callback_threadsafe(self._begin)

    def _unavailable_message(self) -> str:
        if self._closed:
            return f"Publisher for queue {self.queue_name!r} is closed"
        if self._ready and self._blocked:
            return (f"RabbitMQ at {self.connected_url} blocks publishing (resource alarm: "
                    "memory or disk); free broker resources, the publisher resumes by itself")
        return (f"no RabbitMQ broker reachable for queue {self.queue_name!r} "
                f"(tried {', '.join(self._redacted)}): {self._last_error}; "
                "the publisher keeps reconnecting in the background")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException | None) -> str:
        if exc is None:
            return "closed"
        # pika wraps the real cause (refused, TLS verification, auth...) in workflow
        # exceptions whose str() is empty or generic: name the innermost one.
        for _ in range(5):
            inner = getattr(exc, "exceptions", None)
            if isinstance(inner, (list, tuple)) and inner:
                exc = inner[-1]
                continue
            inner = getattr(exc, "exception", None)
            if isinstance(inner, BaseException):
                exc = inner
                continue
            if len(exc.args) == 1 and isinstance(exc.args[0], BaseException):
                exc = exc.args[0]
                continue
            break
        text = str(exc) or repr(exc)
        return self._scrub(f"{type(exc).__name__}: {text}")

    def _make_params(self, url: str, redacted: str) -> Any:
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            raise ConfigError(
                f"Publisher: cannot parse broker URL {redacted}: "
                f"{self._scrub_static(str(exc), url)}; expected "
                "amqp[s]://user:password@host:port/vhost") from None
        params.heartbeat = self._heartbeat
        params.socket_timeout = self._connect_timeout
        params.stack_timeout = self._connect_timeout
        params.connection_attempts = 1
        params.retry_delay = 0
        params.blocked_connection_timeout = None
        params.client_properties = {"connection_name": f"segmentlog publisher {self.queue_name}"}
        if params.ssl_options is not None:
            context = self._ssl_context or ssl.create_default_context()
            params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
        return params

    @staticmethod
    def _scrub_static(text: str, url: str) -> str:
        for secret in _passwords([url]):
            text = text.replace(secret, "***")
        return text.replace(url, redact_url(url))

    # ------------------------------------------------------------ I/O thread
    @staticmethod
    def _guard(fn: _F) -> _F:
        """Run an I/O-thread callback; a bug in it resets the connection, not the thread."""

        def wrapper(self: Publisher, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception:
                LOG.exception("publisher %r: internal error in %s; resetting the connection",
                              self.queue_name, fn.__name__)
                self._abort("internal error")
                return None

        return wrapper  # type: ignore[return-value]

    def _safe(self, fn: Callable[[], None]) -> Callable[[], None]:
        """``_guard`` for a zero-argument closure handed to a pika timer or RPC."""

        def wrapper() -> None:
            try:
                fn()
            except Exception:
                LOG.exception("publisher %r: internal error; resetting the connection",
                              self.queue_name)
                self._abort("internal error")

        return wrapper

    def _run(self) -> None:
        try:
            self._ioloop.start()
        except BaseException:
            LOG.exception("publisher %r: I/O loop crashed", self.queue_name)
        finally:
            job = self._job
            if job is not None and not job.done.is_set():
                self._tracker.channel_lost()
                self._finish_job(job)
            with self._cond:
                self._ready = False
                self._cond.notify_all()
            self.metrics.connected.set(0)

    def _begin(self) -> None:
        self._watchdog_timer = self._ioloop.call_later(1.0, self._watchdog)
        self._connect_next()

    @_guard
    def _reconnect_early(self) -> None:
        if self._reconnect_timer is None or self._closing:
            return  # connected, connecting, or closing: nothing to hurry
        self._ioloop.remove_timeout(self._reconnect_timer)
        self._connect_next()

    @_guard
    def _connect_next(self) -> None:
        self._reconnect_timer = None
        if self._closing:
            return
        index = self._url_index
        LOG.info("publisher %r: connecting to %s", self.queue_name, self._redacted[index])
        self._setup_done = False
        self._last_rx_bytes = -1
        self._last_rx_time = time.monotonic()
        try:
            conn = pika.SelectConnection(
                self._params[index],
                on_open_callback=self._on_conn_open,
                on_open_error_callback=self._on_conn_open_error,
                on_close_callback=self._on_conn_closed,
                custom_ioloop=self._ioloop,
            )
        except Exception as exc:
            self._conn = None
            self._attempt_failed(self._describe(exc))
            return
        self._conn = conn
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)

    def _attempt_failed(self, reason: str) -> None:
        """One address failed; try the next, or wait (backoff) after a whole round."""
        self.metrics.connect_failures.inc()
        index = self._url_index
        LOG.warning("publisher %r: cannot use %s: %s", self.queue_name,
                    self._redacted[index], reason)
        self._round_errors.append(f"{self._redacted[index]}: {reason}")
        self._url_index = (index + 1) % len(self._urls)
        self._tried_in_round += 1
        if self._closing:
            self._ioloop.stop()
            return
        if self._tried_in_round < len(self._urls):
            self._connect_next()
            return
        with self._cond:
            self._last_error = "; ".join(self._round_errors)
            self._rounds_failed += 1
            rounds = self._rounds_failed
            self._cond.notify_all()
        self._tried_in_round = 0
        self._round_errors = []
        delay = backoff_delay(rounds - 1, self._backoff_initial, self._backoff_max,
                              self._rng.random())
        LOG.warning("publisher %r: no broker reachable (round %d); next round in %.2f s",
                    self.queue_name, rounds, delay)
        self._reconnect_timer = self._ioloop.call_later(delay, self._connect_next)

    @_guard
    def _on_conn_open(self, conn: Any) -> None:
        if conn is not self._conn:
            return
        conn.channel(on_open_callback=self._on_channel_open)

    @_guard
    def _on_conn_open_error(self, conn: Any, exc: BaseException) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._closing:
            self._ioloop.stop()
            return
        self._attempt_failed(self._describe(exc))

    @_guard
    def _on_channel_open(self, channel: Any) -> None:
        if channel.connection is not self._conn:
            return
        self._channel = channel
        self._tracker = ConfirmTracker()
        self._frames = PublishFrames(channel.channel_number, self.queue_name,
                                     channel.connection.params.frame_max)
        emit = getattr(channel.connection, "_output_marshaled_frames", None)
        self._emit = emit if self._fast_frames and callable(emit) else None
        tracker = self._tracker
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(
            lambda ch, method, props, body: self._on_return(tracker, method, props))
        channel.confirm_delivery(lambda frame: self._on_ack_nack(tracker, frame),
                                 callback=lambda _frame: self._declare(self._on_setup_done))

    def _declare(self, then: Callable[[], None]) -> None:
        self._channel.queue_declare(
            self.queue_name, durable=True, arguments=self._queue_args,
            callback=lambda _frame: then())

    @_guard
    def _on_setup_done(self) -> None:
        if self._closing:
            return
        self._setup_done = True
        reconnect = self._ever_connected
        self._ever_connected = True
        self._tried_in_round = 0
        self._round_errors = []
        if reconnect:
            self.metrics.reconnects.inc()
        self.metrics.connected.set(1)
        with self._cond:
            self._connected_index = self._url_index
            self._ready = True
            self._rounds_failed = 0
            self._last_error = "connected"
            self._cond.notify_all()
        LOG.info("publisher %r: %s to %s (confirm mode, window %d)", self.queue_name,
                 "reconnected" if reconnect else "connected",
                 self._redacted[self._url_index], self.window)

    @_guard
    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel or self._conn is None or self._closing:
            return
        if not self._conn.is_open:
            return  # the connection is going down; its close callback handles the batch
        # The broker closed the channel (e.g. PRECONDITION_FAILED on declare, or the
        # queue's leader went away). Confirms of this channel can no longer arrive, so
        # the whole connection is reset; its close callback handles the batch.
        text = self._describe(reason)
        LOG.warning("publisher %r: channel closed by broker: %s", self.queue_name, text)
        with self._cond:
            self._last_error = f"channel closed: {text}"
        self._channel = None
        if self._conn.is_open:
            self._conn.close()

    @_guard
    def _on_conn_closed(self, conn: Any, exc: BaseException) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._channel = None
        was_ready = self._ready
        text = self._describe(exc)
        lost = self._tracker.channel_lost()
        if lost:
            self.metrics.lost.inc(len(lost))
        self.metrics.inflight.set(0)
        self.metrics.connected.set(0)
        self.metrics.blocked.set(0)
        with self._cond:
            self._ready = False
            self._blocked = False
            self._connected_index = None
            if was_ready:
                self._last_error = f"connection lost: {text}"
            self._cond.notify_all()
        job = self._job
        if job is not None:
            self._finish_job(job)
        if self._closing:
            self._ioloop.stop()
            return
        if was_ready:
            LOG.warning("publisher %r: connection to %s lost (%s), %d message(s) in flight; "
                        "reconnecting", self.queue_name, self._redacted[self._url_index],
                        text, len(lost))
            self._tried_in_round = 0
            self._round_errors = []
            # First round right away (jittered a little), starting with the address
            # that just worked; failover and backoff follow if it stays down.
            delay = self._backoff_initial * 0.5 * self._rng.random()
            self._reconnect_timer = self._ioloop.call_later(delay, self._connect_next)
        else:
            # Died during channel setup or queue declare: this address failed.
            self._attempt_failed(self._last_error if self._last_error.startswith("channel")
                                 else text)

    @_guard
    def _on_blocked(self, conn: Any, frame: Any) -> None:
        if conn is not self._conn:
            return
        LOG.warning("publisher %r: broker blocked the connection (resource alarm: %s)",
                    self.queue_name, getattr(frame.method, "reason", "?"))
        self.metrics.blocked.set(1)
        with self._cond:
            self._blocked = True
            self._cond.notify_all()
        job = self._job
        if job is not None and not job.waiting:
            self._enter_blocked_wait(job)

    def _enter_blocked_wait(self, job: _Job) -> None:
        # Stop publishing; give what is already sent a moment to be confirmed.
        job.waiting = True
        job.blocked_wait = True
        job.timer = self._ioloop.call_later(self._blocked_grace,
                                            lambda: self._blocked_give_up(job))
        self._maybe_finish()

    @_guard
    def _blocked_give_up(self, job: _Job) -> None:
        if job is not self._job:
            return
        job.timer = None
        # Rule 2: unanswered messages become LOST (the caller retries them); their tags
        # stay on the channel as orphans so late confirms cannot be misattributed.
        lost = self._tracker.abandon_batch()
        if lost:
            self.metrics.lost.inc(len(lost))
        self._finish_job(job)

    @_guard
    def _on_unblocked(self, conn: Any, frame: Any) -> None:
        if conn is not self._conn:
            return
        LOG.info("publisher %r: broker unblocked the connection", self.queue_name)
        self.metrics.blocked.set(0)
        with self._cond:
            self._blocked = False
            self._cond.notify_all()
        job = self._job
        if job is not None and job.blocked_wait:
            # Unblocked within the grace period: carry on with the batch.
            if job.timer is not None:
                self._ioloop.remove_timeout(job.timer)
                job.timer = None
            job.waiting = job.blocked_wait = False
            job.last_progress = time.monotonic()
            self._pump()

    @_guard
    def _watchdog(self) -> None:
        self._watchdog_timer = self._ioloop.call_later(1.0, self._watchdog)
        conn = self._conn
        if conn is None or self._closing:
            return
        now = time.monotonic()
        received = conn.bytes_received
        if not conn.is_open:
            # Still opening: pika's stack_timeout (= connect_timeout) owns this phase.
            self._last_rx_bytes = received
            self._last_rx_time = now
            return
        if received != self._last_rx_bytes:
            self._last_rx_bytes = received
            self._last_rx_time = now
        elif now - self._last_rx_time > self._liveness_timeout:
            self._abort(f"no data from the broker for {now - self._last_rx_time:.1f} s "
                        f"(liveness_timeout={self._liveness_timeout:g} s): silent partition?")
            return
        job = self._job
        if (job is not None and self._tracker.inflight
                and now - job.last_progress > self._confirm_timeout):
            self._abort(f"no confirm for {now - job.last_progress:.1f} s with "
                        f"{self._tracker.inflight} message(s) in flight "
                        f"(confirm_timeout={self._confirm_timeout:g} s)")

    def _abort(self, reason: str) -> None:
        """Drop the connection at once (no close handshake: the peer may be silent)."""
        conn = self._conn
        if conn is None:
            return
        LOG.warning("publisher %r: aborting connection to %s: %s", self.queue_name,
                    self._redacted[self._url_index], reason)
        with self._cond:
            self._last_error = reason
        if conn.is_closed:
            return
        # pika offers no public abort; _terminate_stream is what its own heartbeat
        # checker calls, and it ends in the usual close/open-error callbacks.
        conn._terminate_stream(pika.exceptions.AMQPConnectionError(reason))

    @_guard
    def _start_job(self, job: _Job) -> None:
        if self._closing or not self._ready or self._blocked or self._channel is None:
            job.unavailable = self._unavailable_message()
            job.done.set()
            return
        self._job = job
        self._tracker.start_batch([m[0] for m in job.messages])
        job.to_send.extend(range(len(job.messages)))
        job.last_progress = time.monotonic()
        self._pump()

    def _pump(self) -> None:
        """Publish while the window has room (Rule 1), then see whether the batch is done.

        At most ``_PUMP_SLICE`` messages go out per call, each slice one socket write; if
        the window has room for more, the rest follows from the loop's next turn, after
        pika wrote the slice. One ack often frees hundreds of places, and with pika's own
        encoding (~18 us a message) encoding them all before the first byte left kept
        the broker idle meanwhile: slices took 100 k messages at window 1000 from 7.5 to
        8.4 k msg/s. With :class:`PublishFrames` (~2 us) the slice size no longer shows
        (60 k messages, 3 interleaved runs: slices of 25, 100, 400 and unbounded, medians
        8.4-8.6 k msg/s); slices stay because they bound how long one callback holds the
        loop (heartbeats, acks, the watchdog wait behind it).
        """
        job = self._job
        if job is None:
            return
        if self._blocked and not job.waiting:
            self._enter_blocked_wait(job)
            return
        channel = self._channel
        tracker = self._tracker
        room = self.window - tracker.inflight - tracker.orphans
        to_send = job.to_send
        if (channel is not None and not job.waiting and not self._blocked and room > 0
                and to_send):
            take = min(room, _PUMP_SLICE, len(to_send))
            indices = [to_send[i] for i in range(take)]
            try:
                self._send(channel, job.messages, indices)
            except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
                self._abort(f"publish failed: {self._describe(exc)}")
                return
            # Recorded after the write: a publish that raised never reached the broker,
            # so it must not consume a delivery tag (Rule 3 of the tracker).
            now = time.monotonic()
            publish = tracker.publish
            for index in indices:
                publish(index, now)
                to_send.popleft()
            self.metrics.published.inc(take)
            self.metrics.inflight.set(tracker.inflight)
            if room > take and to_send and not self._pump_pending:
                self._pump_pending = True
                self._ioloop.call_later(0, self._safe(self._pump_again))
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
        message goes through ``channel.basic_publish`` instead (~9x the CPU).
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
            _coalesce_output(self._conn)

    @_guard
    def _on_ack_nack(self, tracker: ConfirmTracker, frame: Any) -> None:
        if tracker is not self._tracker:
            return  # an answer from a channel we already gave up on
        method = frame.method
        now = time.monotonic()
        if isinstance(method, pika.spec.Basic.Ack):
            settled = tracker.on_ack(method.delivery_tag, method.multiple, now)
        else:
            settled = tracker.on_nack(method.delivery_tag, method.multiple, now)
        if settled.confirmed:
            self.metrics.confirmed.inc(len(settled.confirmed))
            self.metrics.observe_latencies(settled.latencies)
        if settled.nacked:
            self.metrics.nacked.inc(len(settled.nacked))
            LOG.warning("publisher %r: broker nacked %d message(s)", self.queue_name,
                        len(settled.nacked))
        job = self._job
        if job is not None and settled:
            job.last_progress = now
        self.metrics.inflight.set(tracker.inflight)
        self._pump()

    @_guard
    def _on_return(self, tracker: ConfirmTracker, method: Any, props: Any) -> None:
        if tracker is not self._tracker:
            return
        mid = props.message_id if props is not None else None
        self.metrics.returned.inc()
        LOG.warning("publisher %r: message %r returned by the broker: %s %s", self.queue_name,
                    mid, method.reply_code, method.reply_text)
        if mid is not None:
            tracker.on_return(mid)

    def _maybe_finish(self) -> None:
        job = self._job
        tracker = self._tracker
        if job is None or tracker.inflight:
            return
        if job.waiting:
            if job.blocked_wait and job.timer is not None:
                # Blocked and nothing left in flight: no need to wait out the grace.
                self._ioloop.remove_timeout(job.timer)
                job.timer = None
                self._finish_job(job)
            return
        if job.to_send:
            return
        failed = tracker.indices_with(MessageStatus.NACKED, MessageStatus.RETURNED)
        if failed and job.attempt < self._max_attempts and self._ready and not self._blocked:
            # Rule 3: retry inside the call, so the confirmed prefix can stay whole.
            job.attempt += 1
            job.to_send.extend(failed)
            job.waiting = True
            self.metrics.retried.inc(len(failed))
            returned = any(tracker.status(i) is MessageStatus.RETURNED for i in failed)
            LOG.info("publisher %r: republishing %d nacked/returned message(s), attempt %d/%d",
                     self.queue_name, len(failed), job.attempt, self._max_attempts)

            def resume() -> None:
                if job is not self._job:
                    return
                job.waiting = False
                job.timer = None
                job.last_progress = time.monotonic()
                self._pump()

            if returned:
                # Unroutable through the default exchange means the queue is gone:
                # declare it again before resending.
                self._declare(self._safe(resume))
            else:
                job.timer = self._ioloop.call_later(
                    self._retry_delay * (job.attempt - 1), self._safe(resume))
            return
        self._finish_job(job)

    def _finish_job(self, job: _Job) -> None:
        if job.timer is not None:
            self._ioloop.remove_timeout(job.timer)
            job.timer = None
        job.result = self._tracker.result()
        self._job = None
        self.metrics.inflight.set(self._tracker.inflight)
        job.done.set()

    @_guard
    def _shutdown(self) -> None:
        self._closing = True
        if self._reconnect_timer is not None:
            self._ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        if self._watchdog_timer is not None:
            self._ioloop.remove_timeout(self._watchdog_timer)
            self._watchdog_timer = None
        job = self._job
        if job is not None:
            lost = self._tracker.abandon_batch()
            if lost:
                self.metrics.lost.inc(len(lost))
            self._finish_job(job)
        conn = self._conn
        with self._cond:
            self._ready = False
            self._cond.notify_all()
        self.metrics.connected.set(0)
        if conn is None or conn.is_closed:
            self._ioloop.stop()
            return
        if not conn.is_closing:
            conn.close()  # also interrupts a connection that is still opening
        # A silent peer never answers Connection.Close: stop the loop anyway.
        self._ioloop.call_later(2.0, self._ioloop.stop)
