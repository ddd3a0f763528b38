"""The publisher's connection to RabbitMQ: its I/O thread, failover and watchdog.

Theory of operation
-------------------
One dedicated I/O thread runs pika's asynchronous ``SelectConnection`` on its own
``IOLoop`` and owns every piece of connection state: the connection, the channel, the
reconnect and watchdog timers. :class:`BrokerConnection` holds them and hands each new
confirm-mode channel to its :class:`ChannelUser` (the
:class:`~segmentlog.amqp.publisher.Publisher`, which publishes batches on it), telling
it when the broker blocks or unblocks the connection and when the connection dies.
Callers' threads never touch pika: they read the availability (``is_available``,
``last_error``...) under a condition and hand work to the loop
(``call_threadsafe``). Why a thread and not "drive the loop from the caller": between
batches (the drainer may sleep for a minute) someone must answer heartbeats, notice a
dead broker, reconnect and hear ``connection.blocked``; a loop that only runs inside
calls would lose the connection every idle minute. Why not ``BlockingConnection``: its
confirm mode waits for each message's own confirm (~10x slower than a window).

Rule 1: no open connection (the loop is reconnecting with capped exponential backoff
and jitter, failing over between the configured addresses in the order
:class:`~segmentlog.amqp.policy.Failover` decides) or a connection the broker blocks
(resource alarm) is "unavailable"; callers buffer and try later.
Rule 2: a silent partition (no reset, packets dropped) is found by the loop's own
watchdog: no byte from the broker for ``liveness_timeout`` (default 2 x heartbeat
= 10 s; the broker sends a heartbeat every heartbeat/2 s) aborts the connection.
pika's own heartbeat checker alone takes up to 2 x (heartbeat + 5) s. The watchdog
also aborts a connection whose confirms stopped (the user's ``overdue``).
Rule 3: a bug in a callback of the I/O thread resets the connection, not the thread
(:meth:`BrokerConnection.safe`).
Rule 4: no password in a log line or error (:class:`~segmentlog.amqp.urls.Redactor`).
Rule 5: the pika internals used (abort, fast send) are looked up when each connection
opens (:mod:`~segmentlog.amqp.pikainternals`, ``paths``), each with a public-API
fallback; which ones are used is logged once.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from segmentlog.amqp.metrics import PublisherMetrics
from segmentlog.amqp.pikainternals import PikaPaths, probe
from segmentlog.amqp.policy import Failover, Liveness
from segmentlog.amqp.urls import Redactor, scrub_url
from segmentlog.errors import BrokerUnavailableError, ConfigError

__all__ = ["BrokerConnection", "ChannelUser", "checked_queue_arguments"]

LOG = logging.getLogger("segmentlog.amqp.publisher")

_F = TypeVar("_F", bound=Callable[..., Any])


def checked_queue_arguments(given: Mapping[str, Any] | None, quorum: bool) -> dict[str, Any]:
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


class ChannelUser(Protocol):
    """What publishes on the channel; every call comes on the I/O thread."""

    def attach(self, channel: Any) -> tuple[Callable[[Any], None],
                                             Callable[[Any, Any, Any, Any], None]]:
        """A new confirm-mode channel opens: return its ack/nack and return callbacks."""

    def blocked(self) -> None:
        """The broker blocks the connection (resource alarm)."""

    def unblocked(self) -> None:
        """The broker lifted the block."""

    def connection_lost(self) -> int:
        """The connection died: its unanswered messages are LOST; return how many."""

    def abandon(self) -> None:
        """The publisher closes: stop waiting for the messages in flight (LOST)."""

    def end_batch(self) -> None:
        """The running batch, if any, is over: hand its result to its caller."""

    def overdue(self, now: float) -> str | None:
        """Why the confirms stopped coming (then the connection is aborted), or None."""


def _guard(fn: _F) -> _F:
    """Run an I/O-thread callback; a bug in it resets the connection, not the thread."""

    def wrapper(self: BrokerConnection, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception:
            LOG.exception("publisher %r: internal error in %s; resetting the connection",
                          self.queue_name, fn.__name__)
            self.abort("internal error")
            return None

    return wrapper  # type: ignore[return-value]


class BrokerConnection:
    """One connection at a time to one of ``urls``, kept open by its own I/O thread.

    The settings are the :class:`~segmentlog.amqp.publisher.Publisher`'s, checked
    there; ``window`` only names the window in the log. :meth:`bind` names the
    :class:`ChannelUser` and the metrics before the thread starts.
    """

    _user: ChannelUser
    metrics: PublisherMetrics

    def __init__(
        self,
        urls: Sequence[str],
        queue_name: str,
        *,
        window: int,
        queue_args: dict[str, Any],
        heartbeat: int,
        connect_timeout: float,
        liveness_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.queue_name = queue_name
        self._window = window
        self._queue_args = queue_args
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._redactor = Redactor(urls)
        self._redacted = self._redactor.redacted
        self._params = [
            self._make_params(u, r) for u, r in zip(urls, self._redacted, strict=True)]
        self._failover = Failover(len(urls), backoff_initial=backoff_initial,
                                  backoff_max=backoff_max, rand=random.Random().random)
        self._liveness = Liveness(liveness_timeout)

        # Shared with callers: written by the I/O thread under _cond.
        self._cond = threading.Condition()
        self._ready = False
        self._blocked = False
        self.closed = False
        self._last_error = "not connected yet"
        self._connected_index: int | None = None
        self.thread: threading.Thread | None = None
        self._ioloop: Any = None

        # I/O-thread state.
        self.conn: Any = None
        #: The open confirm-mode channel (None while there is none).
        self.channel: Any = None
        #: The internals ``conn`` offers (looked up when it is made and when it opens).
        self.paths = PikaPaths(None, None, None, None)
        self._paths_logged = False
        self._closing = False
        self._reconnect_timer: Any = None
        self._watchdog_timer: Any = None

    def bind(self, user: ChannelUser, metrics: PublisherMetrics) -> None:
        """Who publishes on the channel, and whose metrics count; before :meth:`start`."""
        self._user = user
        self.metrics = metrics

    # ------------------------------------------------------ callers' threads
    def connect(self, timeout: float | None) -> None:
        """Start the I/O thread and wait for the first usable channel (see
        :meth:`Publisher.connect <segmentlog.amqp.publisher.Publisher.connect>`)."""
        with self._cond:
            rounds_before = self._failover.rounds_failed
        self.start()
        if timeout is None:
            # one round: every address may take the whole handshake timeout
            timeout = self._connect_timeout * len(self._params) + 5.0
        deadline = time.monotonic() + timeout
        with self._cond:
            while (not self._ready and self._failover.rounds_failed == rounds_before
                   and not self.closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._ready and not self._blocked:
                return
        raise BrokerUnavailableError(self.unavailable_message())

    def start(self) -> None:
        """Start the I/O thread (once); it connects in the background."""
        with self._cond:
            if self.thread is not None:
                return
            self._ioloop = IOLoop()
            self.thread = threading.Thread(
                target=self._run, name=f"segmentlog-publisher-{self.queue_name}", daemon=True)
            self.thread.start()
        self._ioloop.add_callback_threadsafe(self._begin)

    def reconnect_now(self) -> int:
        """Start a waiting round now; return the rounds failed before it."""
        with self._cond:
            rounds = self._failover.rounds_failed
        if self._ioloop is not None and not self.closed:
            self._ioloop.add_callback_threadsafe(self._reconnect_early)
        return rounds

    @property
    def rounds_failed(self) -> int:
        with self._cond:
            return self._failover.rounds_failed

    def is_available(self) -> bool:
        return self._ready and not self._blocked and not self.closed

    def wait_available(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.is_available() and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self.is_available()

    @property
    def connected_url(self) -> str | None:
        index = self._connected_index
        return self._redacted[index] if index is not None and self._ready else None

    @property
    def last_error(self) -> str:
        return self._last_error

    def unavailable_message(self) -> str:
        if self.closed:
            return f"Publisher for queue {self.queue_name!r} is closed"
        if self._ready and self._blocked:
            return (f"RabbitMQ at {self.connected_url} blocks publishing (resource alarm: "
                    "memory or disk); free broker resources, the publisher resumes by itself")
        return (f"no RabbitMQ broker reachable for queue {self.queue_name!r} "
                f"(tried {', '.join(self._redacted)}): {self._last_error}; "
                "the publisher keeps reconnecting in the background")

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread (guarded, Rule 3)."""
        self._ioloop.add_callback_threadsafe(self.safe(fn))

    def mark_closed(self) -> bool:
        """Refuse new work from now on; False when it was closed already."""
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            self._cond.notify_all()
        return True

    def stop(self, timeout: float) -> None:
        """After :meth:`mark_closed`: close the connection and stop the I/O thread."""
        thread = self.thread
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

    def _make_params(self, url: str, redacted: str) -> Any:
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            raise ConfigError(
                f"Publisher: cannot parse broker URL {redacted}: "
                f"{scrub_url(str(exc), url)}; expected "
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

    # ------------------------------------------------------------ I/O thread
    def can_publish(self) -> bool:
        """A batch may start: a channel is open and not blocked (I/O thread)."""
        return (not self._closing and self._ready and not self._blocked
                and self.channel is not None)

    def describe(self, exc: BaseException | None) -> str:
        """``exc`` for a log line or an error: innermost cause, no password."""
        return self._redactor.describe(exc)

    def safe(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` as a callback of the I/O thread: a bug in it resets the connection."""

        def wrapper(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                LOG.exception("publisher %r: internal error in %s; resetting the connection",
                              self.queue_name, getattr(fn, "__name__", "a callback"))
                self.abort("internal error")

        return wrapper

    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        """A timer of the I/O loop running ``fn`` (guarded) in ``delay`` s."""
        return self._ioloop.call_later(delay, self.safe(fn))

    def remove_timeout(self, timer: Any) -> None:
        self._ioloop.remove_timeout(timer)

    def declare(self, then: Callable[[], None]) -> None:
        """Declare the queue on the channel, then call ``then``."""
        self.channel.queue_declare(
            self.queue_name, durable=True, arguments=self._queue_args,
            callback=lambda _frame: then())

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no close handshake: the peer may be silent)."""
        conn = self.conn
        if conn is None:
            return
        LOG.warning("publisher %r: aborting connection to %s: %s", self.queue_name,
                    self._redacted[self._failover.index], reason)
        with self._cond:
            self._last_error = reason
        if conn.is_closed:
            return
        terminate = self.paths.terminate
        if terminate is not None:
            # pika offers no public abort; _terminate_stream is what its own heartbeat
            # checker calls, and it ends in the usual close/open-error callbacks.
            terminate(pika.exceptions.AMQPConnectionError(reason))
            return
        # Fallback: ask for a close and forget the connection now. Its callbacks find
        # it is no longer self.conn and do nothing; the old channel's answers are
        # dropped (the channel is no longer self.channel), so none reaches the batch.
        if not conn.is_closing:
            conn.close(reply_text=reason)
        self._lost(reason)

    def forget_in_child(self) -> None:
        """In a forked child: close the child's copy of the socket (Rule 5; best
        effort: the connection may be gone or going)."""
        if self.conn is not None and not self.paths.close_inherited_socket():
            LOG.debug("publisher %r: forked child keeps its copy of the parent's socket",
                      self.queue_name)

    def _run(self) -> None:
        try:
            self._ioloop.start()
        except BaseException:
            LOG.exception("publisher %r: I/O loop crashed", self.queue_name)
        finally:
            self._user.connection_lost()
            self._user.end_batch()
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
        index = self._failover.index
        LOG.info("publisher %r: connecting to %s", self.queue_name, self._redacted[index])
        self._liveness.heard(-1, time.monotonic())
        try:
            conn = pika.SelectConnection(
                self._params[index],
                on_open_callback=self._on_conn_open,
                on_open_error_callback=self._on_conn_open_error,
                on_close_callback=self._on_conn_closed,
                custom_ioloop=self._ioloop,
            )
        except Exception as exc:
            self.conn = None
            self._attempt_failed(self.describe(exc))
            return
        self.conn = conn
        self.paths = probe(conn)
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)

    def _attempt_failed(self, reason: str) -> None:
        """One address failed; try the next, or wait (backoff) after a whole round."""
        self.metrics.connect_failures.inc()
        redacted = self._redacted[self._failover.index]
        LOG.warning("publisher %r: cannot use %s: %s", self.queue_name, redacted, reason)
        if self._closing:
            self._ioloop.stop()
            return
        with self._cond:
            delay = self._failover.failed(f"{redacted}: {reason}")
            if delay is not None:
                self._last_error = self._failover.round_error
                self._cond.notify_all()
        if delay is None:
            self._connect_next()
            return
        LOG.warning("publisher %r: no broker reachable (round %d); next round in %.2f s",
                    self.queue_name, self._failover.rounds_failed, delay)
        self._reconnect_timer = self._ioloop.call_later(delay, self._connect_next)

    @_guard
    def _on_conn_open(self, conn: Any) -> None:
        if conn is not self.conn:
            return
        self.paths = probe(conn)  # the transport exists from now on
        if not self._paths_logged:
            self._paths_logged = True
            LOG.info("publisher %r: %s", self.queue_name, self.paths.describe())
        conn.channel(on_open_callback=self._on_channel_open)

    @_guard
    def _on_conn_open_error(self, conn: Any, exc: BaseException) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if self._closing:
            self._ioloop.stop()
            return
        self._attempt_failed(self.describe(exc))

    @_guard
    def _on_channel_open(self, channel: Any) -> None:
        if channel.connection is not self.conn:
            return
        self.channel = channel
        on_answer, on_return = self._user.attach(channel)

        def answer(frame: Any) -> None:
            if channel is self.channel:  # not from a connection aborted and forgotten
                on_answer(frame)

        def returned(ch: Any, method: Any, props: Any, body: Any) -> None:
            if channel is self.channel:
                on_return(ch, method, props, body)

        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self.safe(returned))
        channel.confirm_delivery(self.safe(answer),
                                 callback=lambda _frame: self.declare(self._on_setup_done))

    @_guard
    def _on_setup_done(self) -> None:
        if self._closing:
            return
        reconnect = self._failover.ever_connected
        if reconnect:
            self.metrics.reconnects.inc()
        self.metrics.connected.set(1)
        with self._cond:
            self._failover.connected()
            self._connected_index = self._failover.index
            self._ready = True
            self._last_error = "connected"
            self._cond.notify_all()
        LOG.info("publisher %r: %s to %s (confirm mode, window %d)", self.queue_name,
                 "reconnected" if reconnect else "connected",
                 self._redacted[self._failover.index], self._window)

    @_guard
    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self.channel or self.conn is None or self._closing:
            return
        if not self.conn.is_open:
            return  # the connection is going down; its close callback handles the batch
        # The broker closed the channel (e.g. PRECONDITION_FAILED on declare, or the
        # queue's leader went away). Confirms of this channel can no longer arrive, so
        # the whole connection is reset; its close callback handles the batch.
        text = self.describe(reason)
        LOG.warning("publisher %r: channel closed by broker: %s", self.queue_name, text)
        with self._cond:
            self._last_error = f"channel closed: {text}"
        self.channel = None
        if self.conn.is_open:
            self.conn.close()

    @_guard
    def _on_conn_closed(self, conn: Any, exc: BaseException) -> None:
        if conn is not self.conn:
            return
        self._lost(self.describe(exc))

    def _lost(self, text: str) -> None:
        """The connection is gone (closed, or aborted and forgotten): its batch ends,
        and a new one starts (or the loop stops when closing)."""
        self.conn = None
        self.channel = None
        was_ready = self._ready
        lost = self._user.connection_lost()
        self.metrics.connected.set(0)
        self.metrics.blocked.set(0)
        with self._cond:
            self._ready = False
            self._blocked = False
            self._connected_index = None
            if was_ready:
                self._last_error = f"connection lost: {text}"
            self._cond.notify_all()
        self._user.end_batch()
        if self._closing:
            self._ioloop.stop()
            return
        if was_ready:
            LOG.warning("publisher %r: connection to %s lost (%s), %d message(s) in flight; "
                        "reconnecting", self.queue_name, self._redacted[self._failover.index],
                        text, lost)
            # First round right away (jittered a little), starting with the address
            # that just worked; failover and backoff follow if it stays down.
            delay = self._failover.lost()
            self._reconnect_timer = self._ioloop.call_later(delay, self._connect_next)
        else:
            # Died during channel setup or queue declare: this address failed.
            self._attempt_failed(self._last_error if self._last_error.startswith("channel")
                                 else text)

    @_guard
    def _on_blocked(self, conn: Any, frame: Any) -> None:
        if conn is not self.conn:
            return
        LOG.warning("publisher %r: broker blocked the connection (resource alarm: %s)",
                    self.queue_name, getattr(frame.method, "reason", "?"))
        self.metrics.blocked.set(1)
        with self._cond:
            self._blocked = True
            self._cond.notify_all()
        self._user.blocked()

    @_guard
    def _on_unblocked(self, conn: Any, frame: Any) -> None:
        if conn is not self.conn:
            return
        LOG.info("publisher %r: broker unblocked the connection", self.queue_name)
        self.metrics.blocked.set(0)
        with self._cond:
            self._blocked = False
            self._cond.notify_all()
        self._user.unblocked()

    @_guard
    def _watchdog(self) -> None:
        self._watchdog_timer = self._ioloop.call_later(1.0, self._watchdog)
        conn = self.conn
        if conn is None or self._closing:
            return
        now = time.monotonic()
        received = conn.bytes_received
        if not conn.is_open:
            # Still opening: pika's stack_timeout (= connect_timeout) owns this phase.
            self._liveness.heard(received, now)
            return
        silent = self._liveness.silence(received, now)
        if silent is not None:
            self.abort(f"no data from the broker for {silent:.1f} s "
                       f"(liveness_timeout={self._liveness.timeout:g} s): silent partition?")
            return
        overdue = self._user.overdue(now)
        if overdue is not None:
            self.abort(overdue)

    @_guard
    def _shutdown(self) -> None:
        self._closing = True
        if self._reconnect_timer is not None:
            self._ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        if self._watchdog_timer is not None:
            self._ioloop.remove_timeout(self._watchdog_timer)
            self._watchdog_timer = None
        self._user.abandon()
        self._user.end_batch()
        conn = self.conn
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
