"""What the publisher does next: its batch window, retries and reconnect rounds, pure.

Theory of operation
-------------------
The publisher's I/O thread (:class:`~segmentlog.amqp.publisher.Publisher` and its
:class:`~segmentlog.amqp.connection.BrokerConnection`) owns the socket, the timers and
the clock; this module owns the decisions they act on. The I/O side tells a policy
what happened (a publish written, an ack, a nack, a return, the broker blocked or
unblocked the connection, the connection died, a timer fired), passing ``now`` in, and
asks it what to do: which messages to write, whether to wait, retry, give up or abort,
which address to try and how long to wait first. Nothing here touches a socket,
thread, timer, metric or clock, so every branch is tested with scripted events and a
fake clock (tests/test_publisher_policy.py), like :mod:`segmentlog.amqp.confirms`.

:class:`BatchPolicy`, one batch at a time on one confirm-mode channel:

Rule 1: at most ``window`` messages are unanswered on the channel, the unanswered
tags of abandoned batches included (the broker still holds them); at most
:data:`SLICE` messages go out per write.
Rule 2: a batch is complete when nothing is in flight and nothing is left to send.
Its nacked and returned messages are then sent again, up to ``max_attempts``
publishes per message per batch, unless the broker blocks publishing: a return first
re-declares the queue (unroutable through the default exchange means the queue is
gone); a nack waits ``retry_delay * (attempt - 1)``. Retrying inside the batch keeps
its confirmed prefix whole, so the caller does not resend confirmed messages.
Rule 3: while the broker blocks the connection (resource alarm) nothing is sent. The
batch waits for what is in flight and ends as soon as nothing is, or when the
``blocked_grace`` timer gives up on the rest (LOST); an unblock before that carries on.
Rule 4: messages in flight with no answer for ``confirm_timeout`` mean a broker that
is alive but not confirming: the I/O aborts the connection, whose loss ends the batch.

:class:`Failover`, which address to connect to and when:

Rule 5: addresses are tried in order, starting with the last one that worked. A round
is every address once; after a failed round the next waits
``backoff_delay(rounds_failed - 1, ...)``. A connection lost after it worked starts a
round at once (jittered under half of ``backoff_initial``) at the same address.

:class:`Liveness`, the watchdog's test:

Rule 6: an open connection that received no byte for ``liveness_timeout`` is dead (a
silent partition: no reset, packets dropped).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence

from segmentlog.amqp.confirms import ConfirmTracker, MessageStatus, PublishResult, Settled
from segmentlog.errors import ConfigError

__all__ = ["SLICE", "BatchPolicy", "Failover", "Liveness", "Step", "backoff_delay"]

#: Most messages per write (Rule 1). A slice bounds how long one callback holds the
#: I/O loop (heartbeats, acks and the watchdog wait behind it); the Publisher's
#: ``_pump`` says what it costs.
SLICE = 100


def backoff_delay(attempt: int, initial: float, cap: float, rand: float) -> float:
    """Delay before reconnect round ``attempt`` (0-based): capped exponential, jittered.

    ``rand`` in [0, 1) picks a point in [half, full] of the capped delay ("equal
    jitter"), so publishers that lost the same broker do not return in lockstep.
    """
    full = min(cap, initial * (2.0 ** min(attempt, 62)))
    return full * (0.5 + 0.5 * rand)


class Step(enum.Enum):
    """What a batch needs after an event (:meth:`BatchPolicy.next_step`)."""

    WAIT = "wait"  # answers, a slice on the loop's next turn or a timer come first
    RETRY = "retry"  # resume() after retry_wait seconds (Rule 2)
    REDECLARE = "redeclare"  # declare the queue again, then resume() (Rule 2)
    FINISH = "finish"  # the batch is over: hand result() to its caller


class _Phase(enum.Enum):
    IDLE = "idle"  # no batch
    SENDING = "sending"  # publishing while the window has room, or waiting for answers
    RETRY_WAIT = "retry_wait"  # a retry timer or a queue declaration owns the next step
    BLOCKED_WAIT = "blocked_wait"  # blocked: waiting out blocked_grace (Rule 3)


# The phases as module constants: a global is read faster than an Enum member, and
# the hot methods (to_publish, published, on_ack) read them per ack frame.
_IDLE, _SENDING, _RETRY_WAIT, _BLOCKED_WAIT = (
    _Phase.IDLE, _Phase.SENDING, _Phase.RETRY_WAIT, _Phase.BLOCKED_WAIT)


class BatchPolicy:
    """The window, retries, blocked wait and confirm timeout of one batch at a time.

    Owns the channel's :class:`ConfirmTracker` (``tracker``; :meth:`new_channel` gives
    a fresh one). See the module docstring, Rules 1-4.
    """

    def __init__(self, window: int, *, max_attempts: int, retry_delay: float,
                 confirm_timeout: float) -> None:
        if window < 1 or max_attempts < 1:
            raise ConfigError(f"BatchPolicy: window={window} and max_attempts={max_attempts} "
                              "must be >= 1")
        self.window = window
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.confirm_timeout = confirm_timeout
        self.tracker = ConfirmTracker()
        self._phase = _IDLE
        self._blocked = False  # the broker blocks the connection (Rule 3)
        self._to_send: deque[int] = deque()  # batch indices not yet (re)published
        #: Publishes per message so far in this batch (1 + retries).
        self.attempt = 1
        #: How many messages the latest RETRY or REDECLARE step sends again.
        self.retrying = 0
        #: When the batch last moved: started, resumed, or an answer settled something.
        self.last_progress = 0.0

    # ---------------------------------------------------------------- events
    def new_channel(self) -> ConfirmTracker:
        """A new confirm-mode channel is open: tags restart at 1 in a fresh tracker
        (returned). No batch spans channels: the old one's loss ended it."""
        self.tracker = ConfirmTracker()
        return self.tracker

    def start(self, message_ids: Sequence[str], now: float) -> None:
        """Begin a batch of these messages, all to be sent."""
        if self._phase is not _IDLE:
            raise ConfigError("BatchPolicy.start: a batch is still running; take its "
                              "result() first")
        self.tracker.start_batch(message_ids)
        self._to_send.extend(range(len(message_ids)))
        self.attempt = 1
        self._phase = _SENDING
        self.last_progress = now

    def published(self, indices: Sequence[int], now: float) -> None:
        """The messages :meth:`to_publish` named were written to the socket."""
        publish = self.tracker.publish
        popleft = self._to_send.popleft
        for index in indices:
            publish(index, now)
            popleft()

    def on_ack(self, tag: int, multiple: bool, now: float) -> Settled:
        """A basic.ack arrived; an answer that settles something is progress (Rule 4)."""
        settled = self.tracker.on_ack(tag, multiple, now)
        if settled and self._phase is not _IDLE:
            self.last_progress = now
        return settled

    def on_nack(self, tag: int, multiple: bool, now: float) -> Settled:
        """A basic.nack arrived: its messages are sent again at the end (Rule 2)."""
        settled = self.tracker.on_nack(tag, multiple, now)
        if settled and self._phase is not _IDLE:
            self.last_progress = now
        return settled

    def on_return(self, message_id: str) -> int | None:
        """A basic.return arrived (see :meth:`ConfirmTracker.on_return`)."""
        return self.tracker.on_return(message_id)

    def on_blocked(self) -> bool:
        """The broker blocks the connection; True when the batch must now wait out the
        grace: the I/O starts the ``blocked_grace`` timer (Rule 3)."""
        self._blocked = True
        return self.hold()

    def on_unblocked(self, now: float) -> bool:
        """The broker lifted the block; True when a batch waiting out the grace carries
        on: the I/O stops the grace timer and publishes (Rule 3)."""
        self._blocked = False
        if self._phase is _BLOCKED_WAIT:
            self._phase = _SENDING
            self.last_progress = now
            return True
        return False

    def resume(self, now: float) -> bool:
        """The retry wait is over (its delay passed or the queue is declared again);
        True when the batch was waiting for it and now publishes (Rule 2)."""
        if self._phase is not _RETRY_WAIT:
            return False
        self._phase = _SENDING
        self.last_progress = now
        return True

    def abandon(self) -> list[int]:
        """Stop waiting for the batch (the grace passed, or the publisher closes): the
        unanswered messages become LOST (returned); late answers retire their tags."""
        return self.tracker.abandon_batch()

    def channel_lost(self) -> list[int]:
        """The connection died: every unanswered message is LOST (returned). A new
        connection starts unblocked."""
        self._blocked = False
        return self.tracker.channel_lost()

    # -------------------------------------------------------------- decisions
    @property
    def running(self) -> bool:
        """A batch started and its result was not taken yet."""
        return self._phase is not _IDLE

    def hold(self) -> bool:
        """While the broker blocks the connection, a sending batch stops and waits out
        the grace; True when it just did: the I/O starts the grace timer (Rule 3)."""
        if self._blocked and self._phase is _SENDING:
            self._phase = _BLOCKED_WAIT
            return True
        return False

    def to_publish(self) -> list[int]:
        """The batch indices to write now, in order (Rule 1); empty when none may go.
        Report them with :meth:`published` once written (a failed write reports none)."""
        to_send = self._to_send
        if self._phase is not _SENDING or self._blocked or not to_send:
            return []
        tracker = self.tracker
        room = self.window - tracker.inflight - tracker.orphans
        if room <= 0:
            return []
        return [to_send[i] for i in range(min(room, SLICE, len(to_send)))]

    @property
    def can_send_more(self) -> bool:
        """After a write: the window still has room and messages wait for it, so the
        next slice goes out on the loop's next turn."""
        tracker = self.tracker
        return (self._phase is _SENDING and not self._blocked and bool(self._to_send)
                and self.window - tracker.inflight - tracker.orphans > 0)

    def next_step(self) -> Step:
        """What the batch needs now (Rules 2 and 3); the I/O asks after every event.

        RETRY and REDECLARE queue the nacked and returned messages to be sent again and
        make the batch wait for :meth:`resume`.
        """
        phase = self._phase
        tracker = self.tracker
        if phase is _IDLE or tracker.inflight:
            return Step.WAIT
        if phase is _BLOCKED_WAIT:
            return Step.FINISH  # blocked and nothing in flight: no need to wait out the grace
        if phase is _RETRY_WAIT or self._to_send:
            return Step.WAIT
        failed = tracker.indices_with(MessageStatus.NACKED, MessageStatus.RETURNED)
        if failed and self.attempt < self.max_attempts and not self._blocked:
            self.attempt += 1
            self._to_send.extend(failed)
            self._phase = _RETRY_WAIT
            self.retrying = len(failed)
            if any(tracker.status(i) is MessageStatus.RETURNED for i in failed):
                return Step.REDECLARE
            return Step.RETRY
        # Done, or out of attempts, or blocked: the caller gets the statuses as they are
        # and resends everything after the confirmed prefix.
        return Step.FINISH

    @property
    def retry_wait(self) -> float:
        """Seconds before a RETRY step resumes: longer with every attempt."""
        return self.retry_delay * (self.attempt - 1)

    def overdue(self, now: float) -> float | None:
        """Seconds without progress while messages are in flight, once past
        ``confirm_timeout`` (the I/O then aborts the connection, Rule 4); else None."""
        if self._phase is _IDLE or not self.tracker.inflight:
            return None
        silent = now - self.last_progress
        return silent if silent > self.confirm_timeout else None

    def result(self) -> PublishResult:
        """The batch's outcome (nothing may be in flight: finished, abandoned or lost);
        the policy is then idle, ready for the next batch."""
        result = self.tracker.result()
        self._phase = _IDLE
        self._to_send.clear()
        return result


class Failover:
    """Which of ``addresses`` addresses to connect to next, and when (Rule 5).

    ``rand`` returns a float in [0, 1) for the jitter (``random.random`` in use; a
    script in tests).
    """

    def __init__(self, addresses: int, *, backoff_initial: float, backoff_max: float,
                 rand: Callable[[], float]) -> None:
        if addresses < 1:
            raise ConfigError("Failover: at least one address is needed")
        self.addresses = addresses
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._rand = rand
        #: The address to try next; while connected, the one in use.
        self.index = 0
        #: Rounds that failed in a row since the last connection (0 once connected).
        self.rounds_failed = 0
        #: Why the latest failed round failed: every address's error, in order.
        self.round_error = ""
        self.ever_connected = False
        self._tried = 0
        self._errors: list[str] = []

    def failed(self, error: str) -> float | None:
        """The address at ``index`` failed with ``error`` (no password in it): move on.

        Returns None when the next address is to be tried now, else the seconds to
        wait before the next round (this one failed: ``round_error`` says why).
        """
        self._errors.append(error)
        self.index = (self.index + 1) % self.addresses
        self._tried += 1
        if self._tried < self.addresses:
            return None
        self.round_error = "; ".join(self._errors)
        self.rounds_failed += 1
        self._tried = 0
        self._errors = []
        return backoff_delay(self.rounds_failed - 1, self.backoff_initial, self.backoff_max,
                             self._rand())

    def connected(self) -> None:
        """The address at ``index`` works: rounds start anew from it."""
        self.ever_connected = True
        self.rounds_failed = 0
        self._tried = 0
        self._errors = []

    def lost(self) -> float:
        """The working connection died: the seconds to wait before a new round starts
        with the same address (a little jitter, no backoff yet; :meth:`connected`
        already emptied the round)."""
        return self.backoff_initial * 0.5 * self._rand()


class Liveness:
    """Bytes received over time: silence past ``timeout`` means a dead peer (Rule 6)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._received = -1
        self._since = 0.0

    def heard(self, received: int, now: float) -> None:
        """The byte counter is ``received`` at ``now`` and counts as news (a connection
        starts, or is still opening: its handshake timeout owns that phase)."""
        self._received = received
        self._since = now

    def silence(self, received: int, now: float) -> float | None:
        """Seconds of silence of an open connection once past the timeout, else None."""
        if received != self._received:
            self.heard(received, now)
            return None
        silent = now - self._since
        return silent if silent > self.timeout else None
