"""The publisher's policies against scripted events and a fake clock: no broker (h11 style).

Each test plays the I/O thread: it writes what :meth:`BatchPolicy.to_publish` names,
reports the write, delivers the broker's answers (acks, nacks, returns, ``multiple``),
blocks, unblocks or drops the connection, and moves a fake clock; then it pins what the
policy tells the I/O to do. :class:`Failover` and :class:`Liveness` are driven the same
way, with scripted random numbers for the jitter. Nothing sleeps and nothing reads a
clock: times are the numbers the tests pass in.
"""

from __future__ import annotations

import inspect

import pytest

from segmentlog.amqp import MessageStatus, Publisher, backoff_delay
from segmentlog.amqp.policy import SLICE, BatchPolicy, Failover, Liveness, Step
from segmentlog.errors import ConfigError

C, N, R, L, U = (MessageStatus.CONFIRMED, MessageStatus.NACKED, MessageStatus.RETURNED,
                 MessageStatus.LOST, MessageStatus.UNSENT)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def _policy(window: int = 10, max_attempts: int = 3, retry_delay: float = 0.05,
            confirm_timeout: float = 30.0) -> BatchPolicy:
    return BatchPolicy(window, max_attempts=max_attempts, retry_delay=retry_delay,
                       confirm_timeout=confirm_timeout)


def _ids(n: int) -> list[str]:
    return [f"m{i}" for i in range(n)]


def _write(policy: BatchPolicy, clock: Clock) -> list[int]:
    """One turn of the I/O loop: write what the policy lets out, report it."""
    indices = policy.to_publish()
    policy.published(indices, clock.now)
    return indices


def _write_all(policy: BatchPolicy, clock: Clock) -> list[int]:
    """Turns of the loop until the window is full or nothing is left to send."""
    written: list[int] = []
    for _ in range(1000):
        indices = _write(policy, clock)
        written += indices
        if not policy.can_send_more:
            return written
    raise AssertionError("can_send_more stays True")


# ------------------------------------------------------------- Rule 1: window
def test_a_batch_within_the_window_goes_out_in_one_write_and_finishes_on_its_acks() -> None:
    clock, policy = Clock(), _policy(window=10)
    policy.start(_ids(4), clock.now)
    assert policy.running
    assert _write(policy, clock) == [0, 1, 2, 3]
    assert not policy.can_send_more and policy.to_publish() == []
    assert policy.next_step() is Step.WAIT  # all four in flight
    for tag in (1, 2, 3):
        policy.on_ack(tag, False, clock.advance(0.01))
        assert policy.next_step() is Step.WAIT
    policy.on_ack(4, False, clock.advance(0.01))
    assert policy.next_step() is Step.FINISH
    result = policy.result()
    assert result.delivered and result.statuses == (C,) * 4
    assert not policy.running


def test_the_window_caps_messages_in_flight_and_each_ack_frees_its_room() -> None:
    clock, policy = Clock(), _policy(window=3)
    policy.start(_ids(7), clock.now)
    assert _write_all(policy, clock) == [0, 1, 2]
    assert policy.tracker.inflight == 3 and policy.to_publish() == []
    policy.on_ack(1, False, clock.now)
    assert _write_all(policy, clock) == [3]  # one answer, one place
    policy.on_ack(3, True, clock.now)  # multiple: tags 2 and 3
    assert _write_all(policy, clock) == [4, 5]
    policy.on_ack(6, True, clock.now)
    assert _write_all(policy, clock) == [6]
    assert policy.next_step() is Step.WAIT
    policy.on_ack(7, False, clock.now)
    assert policy.next_step() is Step.FINISH
    assert policy.result().statuses == (C,) * 7


def test_a_write_takes_at_most_one_slice_and_the_rest_follows_on_the_next_turn() -> None:
    clock, policy = Clock(), _policy(window=1000)
    policy.start(_ids(250), clock.now)
    first = _write(policy, clock)
    assert first == list(range(SLICE))
    assert policy.can_send_more  # room and messages: the I/O schedules the next turn
    assert _write(policy, clock) == list(range(SLICE, 2 * SLICE))
    assert _write(policy, clock) == list(range(2 * SLICE, 250))
    assert not policy.can_send_more  # nothing left to send
    assert policy.tracker.inflight == 250


def test_a_multiple_ack_frees_every_tag_up_to_it_at_once() -> None:
    clock, policy = Clock(), _policy(window=5)
    policy.start(_ids(10), clock.now)
    assert _write_all(policy, clock) == [0, 1, 2, 3, 4]
    settled = policy.on_ack(4, True, clock.advance(0.2))
    assert settled.confirmed == (0, 1, 2, 3)
    assert settled.latencies == pytest.approx((0.2,) * 4)
    assert _write_all(policy, clock) == [5, 6, 7, 8]
    policy.on_ack(9, True, clock.now)
    assert _write_all(policy, clock) == [9]
    policy.on_ack(10, False, clock.now)
    assert policy.next_step() is Step.FINISH and policy.result().delivered


def test_a_failed_write_reports_nothing_and_the_same_messages_go_next_time() -> None:
    clock, policy = Clock(), _policy(window=4)
    policy.start(_ids(6), clock.now)
    assert policy.to_publish() == [0, 1, 2, 3]  # the write raised: published() not called
    assert policy.tracker.inflight == 0
    assert policy.next_step() is Step.WAIT  # nothing in flight, but not done either
    assert policy.to_publish() == [0, 1, 2, 3]


def test_unanswered_tags_of_an_abandoned_batch_hold_window_room_until_answered() -> None:
    clock, policy = Clock(), _policy(window=3)
    policy.start(_ids(3), clock.now)
    _write_all(policy, clock)
    assert policy.abandon() == [0, 1, 2]
    assert policy.result().statuses == (L, L, L)
    policy.start(_ids(4), clock.now)
    assert policy.to_publish() == []  # three orphans fill the window
    assert policy.next_step() is Step.WAIT  # nothing in flight, but not done either
    policy.on_ack(2, True, clock.now)  # late answers retire two orphans
    assert policy.tracker.orphans == 1
    assert _write_all(policy, clock) == [0, 1]
    # a late ack of an orphan is no progress of this batch and settles none of it
    before = policy.last_progress
    assert not policy.on_ack(3, False, clock.advance(1.0))
    assert policy.last_progress == before
    assert policy.tracker.inflight == 2 and policy.tracker.orphans == 0
    assert _write_all(policy, clock) == [2]
    policy.on_ack(6, True, clock.now)
    assert _write_all(policy, clock) == [3]
    policy.on_ack(7, False, clock.now)
    assert policy.next_step() is Step.FINISH and policy.result().delivered


# ---------------------------------------------------- Rule 2: retries, limits
def test_nacked_messages_are_retried_after_a_growing_delay_and_the_prefix_stays_whole() -> None:
    clock, policy = Clock(), _policy(window=10, max_attempts=3, retry_delay=0.05)
    policy.start(_ids(4), clock.now)
    _write_all(policy, clock)
    policy.on_ack(1, False, clock.now)
    policy.on_nack(3, True, clock.now)  # multiple nack: tags 2 and 3
    policy.on_ack(4, False, clock.now)
    assert policy.next_step() is Step.RETRY
    assert (policy.retrying, policy.attempt) == (2, 2)
    assert policy.retry_wait == pytest.approx(0.05)
    assert policy.to_publish() == []  # the retry timer owns the next step
    assert policy.next_step() is Step.WAIT
    assert policy.resume(clock.advance(0.05))
    assert _write_all(policy, clock) == [1, 2]
    policy.on_nack(5, False, clock.now)  # index 1 nacked again
    policy.on_ack(6, False, clock.now)
    assert policy.next_step() is Step.RETRY
    assert (policy.retrying, policy.attempt) == (1, 3)
    assert policy.retry_wait == pytest.approx(0.10)
    assert policy.resume(clock.advance(0.1))
    assert _write_all(policy, clock) == [1]
    policy.on_ack(7, False, clock.now)
    assert policy.next_step() is Step.FINISH
    result = policy.result()
    assert result.delivered and result.confirmed_prefix == 4


def test_retries_stop_at_max_attempts_and_the_batch_reports_the_nacks() -> None:
    clock, policy = Clock(), _policy(window=10, max_attempts=2)
    policy.start(_ids(3), clock.now)
    _write_all(policy, clock)
    policy.on_ack(1, False, clock.now)
    policy.on_nack(2, False, clock.now)
    policy.on_ack(3, False, clock.now)
    assert policy.next_step() is Step.RETRY
    policy.resume(clock.now)
    assert _write_all(policy, clock) == [1]
    policy.on_nack(4, False, clock.now)
    assert policy.next_step() is Step.FINISH  # two publishes of message 1: the limit
    result = policy.result()
    assert result.statuses == (C, N, C) and result.confirmed_prefix == 1


def test_max_attempts_one_never_retries() -> None:
    clock, policy = Clock(), _policy(max_attempts=1)
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.on_nack(2, True, clock.now)
    assert policy.next_step() is Step.FINISH
    assert policy.result().statuses == (N, N)


def test_a_returned_message_redeclares_the_queue_before_it_is_sent_again() -> None:
    clock, policy = Clock(), _policy(window=10)
    policy.start(_ids(3), clock.now)
    _write_all(policy, clock)
    assert policy.on_return("m1") == 1
    returned_ack = policy.on_ack(3, True, clock.now)
    assert returned_ack.confirmed == (0, 2) and returned_ack.returned_acked == (1,)
    assert policy.next_step() is Step.REDECLARE
    assert policy.retrying == 1
    assert policy.resume(clock.now)  # the declaration's answer came
    assert _write_all(policy, clock) == [1]
    policy.on_ack(4, False, clock.now)
    assert policy.next_step() is Step.FINISH
    assert policy.result().delivered


def test_a_batch_with_returns_and_nacks_redeclares_first() -> None:
    clock, policy = Clock(), _policy(window=10)
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.on_return("m0")
    policy.on_ack(1, False, clock.now)
    policy.on_nack(2, False, clock.now)
    assert policy.next_step() is Step.REDECLARE
    assert policy.retrying == 2
    policy.resume(clock.now)
    assert _write_all(policy, clock) == [0, 1]


def test_returns_exhaust_their_attempts_like_nacks() -> None:
    clock, policy = Clock(), _policy(max_attempts=1)
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.on_return("m0")
    policy.on_return("m1")
    policy.on_ack(2, True, clock.now)
    assert policy.next_step() is Step.FINISH
    assert policy.result().statuses == (R, R)


def test_resume_outside_a_retry_wait_changes_nothing() -> None:
    clock, policy = Clock(), _policy()
    assert not policy.resume(clock.now)  # idle
    policy.start(_ids(1), clock.now)
    assert not policy.resume(clock.now)  # sending: no retry pending
    assert _write(policy, clock) == [0]


def test_an_answer_that_settles_nothing_is_no_progress() -> None:
    clock, policy = Clock(), _policy(confirm_timeout=5.0)
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    started = clock.now
    assert not policy.on_ack(99, False, clock.advance(3.0))  # a tag never sent
    assert policy.last_progress == started
    policy.on_ack(1, False, clock.advance(1.0))
    assert policy.last_progress == clock.now


# ------------------------------------------------------ Rule 3: blocked
def test_blocked_mid_batch_stops_sending_and_ends_once_nothing_is_in_flight() -> None:
    clock, policy = Clock(), _policy(window=4)
    policy.start(_ids(10), clock.now)
    _write_all(policy, clock)
    assert policy.on_blocked()  # the I/O starts the blocked_grace timer
    assert policy.to_publish() == [] and not policy.can_send_more
    policy.on_ack(2, True, clock.now)
    assert policy.to_publish() == []  # room, but blocked
    assert policy.next_step() is Step.WAIT
    policy.on_ack(4, True, clock.now)
    assert policy.next_step() is Step.FINISH  # no need to wait out the grace
    result = policy.result()
    assert result.statuses == (C,) * 4 + (U,) * 6 and result.confirmed_prefix == 4


def test_blocked_grace_running_out_makes_the_unanswered_lost() -> None:
    clock, policy = Clock(), _policy(window=4)
    policy.start(_ids(6), clock.now)
    _write_all(policy, clock)
    policy.on_ack(1, False, clock.now)
    assert policy.on_blocked()
    assert policy.abandon() == [1, 2, 3]  # the grace timer fired
    assert policy.next_step() is Step.FINISH
    assert policy.result().statuses == (C, L, L, L, U, U)


def test_unblocked_within_the_grace_carries_on_with_the_batch() -> None:
    clock, policy = Clock(), _policy(window=2)
    policy.start(_ids(4), clock.now)
    _write_all(policy, clock)
    assert policy.on_blocked()
    assert policy.on_unblocked(clock.advance(0.3))  # the I/O stops the grace timer
    assert policy.last_progress == clock.now
    policy.on_ack(2, True, clock.now)
    assert _write_all(policy, clock) == [2, 3]
    policy.on_ack(4, True, clock.now)
    assert policy.next_step() is Step.FINISH and policy.result().delivered


def test_unblock_without_a_waiting_batch_only_clears_the_block() -> None:
    clock, policy = Clock(), _policy()
    assert not policy.on_blocked()  # no batch: no grace timer
    assert not policy.on_unblocked(clock.now)
    policy.start(_ids(1), clock.now)
    assert not policy.hold()
    assert _write(policy, clock) == [0]


def test_a_batch_started_while_blocked_holds_at_its_first_turn() -> None:
    clock, policy = Clock(), _policy()
    policy.on_blocked()
    policy.start(_ids(2), clock.now)
    assert policy.to_publish() == []  # nothing goes out while blocked, held or not
    assert policy.hold()  # the I/O starts the grace timer
    assert not policy.hold()  # once
    assert policy.next_step() is Step.FINISH  # nothing in flight
    assert policy.result().statuses == (U, U)


def test_blocked_during_a_retry_wait_holds_when_the_wait_ends_and_does_not_retry() -> None:
    clock, policy = Clock(), _policy()
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.on_ack(1, False, clock.now)
    policy.on_nack(2, False, clock.now)
    assert policy.next_step() is Step.RETRY
    assert not policy.on_blocked()  # the retry timer owns the next step
    assert policy.resume(clock.now)
    assert policy.hold()
    assert policy.to_publish() == []
    assert policy.next_step() is Step.FINISH
    assert policy.result().statuses == (C, N)


def test_failures_found_while_blocked_are_not_retried() -> None:
    clock, policy = Clock(), _policy()
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.on_nack(2, True, clock.now)  # the batch is complete: the I/O asks next_step...
    policy.on_blocked()  # ...but the block came first
    assert policy.next_step() is Step.FINISH
    assert policy.result().statuses == (N, N)


# ------------------------------------------------------ Rule 4: confirm timeout
def test_confirm_timeout_counts_from_the_last_progress_while_messages_are_in_flight() -> None:
    clock, policy = Clock(), _policy(window=10, confirm_timeout=30.0)
    assert policy.overdue(clock.now) is None  # idle
    policy.start(_ids(3), clock.now)
    assert policy.overdue(clock.advance(100.0)) is None  # nothing in flight yet
    _write_all(policy, clock)
    # a write is no progress: the start (or the latest answer) is
    assert policy.overdue(clock.now) == pytest.approx(100.0)
    policy.on_ack(1, False, clock.now)
    assert policy.overdue(clock.advance(30.0)) is None  # exactly the timeout: not yet
    assert policy.overdue(clock.advance(0.5)) == pytest.approx(30.5)
    policy.on_ack(3, True, clock.now)
    assert policy.overdue(clock.advance(60.0)) is None  # nothing in flight


def test_resume_and_unblock_restart_the_confirm_timeout() -> None:
    clock, policy = Clock(), _policy(confirm_timeout=1.0)
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.on_nack(1, False, clock.now)
    policy.on_ack(2, False, clock.now)
    assert policy.next_step() is Step.RETRY
    policy.resume(clock.advance(5.0))
    _write_all(policy, clock)
    assert policy.overdue(clock.advance(1.0)) is None
    policy.on_blocked()
    policy.on_unblocked(clock.advance(0.5))
    assert policy.overdue(clock.advance(1.0)) is None
    assert policy.overdue(clock.advance(0.1)) == pytest.approx(1.1)


# -------------------------------------------------- connection loss, misuse
def test_connection_lost_mid_window_makes_in_flight_lost_and_the_rest_unsent() -> None:
    clock, policy = Clock(), _policy(window=4)
    policy.start(_ids(10), clock.now)
    _write_all(policy, clock)
    policy.on_ack(2, True, clock.now)
    _write_all(policy, clock)  # indices 4 and 5 fill the window again
    policy.on_blocked()
    assert policy.channel_lost() == [2, 3, 4, 5]
    result = policy.result()  # the I/O ends the batch at once
    assert result.statuses == (C, C, L, L, L, L, U, U, U, U)
    assert result.confirmed_prefix == 2
    # a new connection starts unblocked, with tags from 1 on a fresh tracker
    tracker = policy.new_channel()
    assert tracker is policy.tracker and tracker.next_tag == 1
    policy.start(_ids(3), clock.now)
    assert not policy.hold()
    assert _write_all(policy, clock) == [0, 1, 2]
    assert policy.tracker.next_tag == 4


def test_answers_of_the_old_channel_never_reach_the_new_one() -> None:
    clock, policy = Clock(), _policy()
    old = policy.tracker
    policy.start(_ids(2), clock.now)
    _write_all(policy, clock)
    policy.channel_lost()
    policy.result()
    assert policy.new_channel() is not old  # the I/O drops answers bound to ``old``


def test_misuse_is_reported() -> None:
    clock, policy = Clock(), _policy()
    policy.start(_ids(2), clock.now)
    with pytest.raises(ConfigError, match="still running"):
        policy.start(_ids(1), clock.now)
    _write_all(policy, clock)
    with pytest.raises(ConfigError, match="in flight"):
        policy.result()
    with pytest.raises(ConfigError, match="window=0"):
        _policy(window=0)
    with pytest.raises(ConfigError, match="at least one address"):
        Failover(0, backoff_initial=0.1, backoff_max=1.0, rand=lambda: 0.0)


def test_an_empty_batch_is_complete_at_once() -> None:
    clock, policy = Clock(), _policy()
    policy.start([], clock.now)
    assert policy.to_publish() == []
    assert policy.next_step() is Step.FINISH
    assert policy.result().delivered


# --------------------------------------------------- Rule 5: failover, backoff
class Rand:
    """Scripted jitter: returns the given numbers in turn."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


def test_failover_tries_every_address_in_order_then_backs_off() -> None:
    failover = Failover(3, backoff_initial=0.2, backoff_max=30.0, rand=Rand(0.0))
    assert failover.index == 0
    assert failover.failed("a: refused") is None and failover.index == 1
    assert failover.failed("b: timeout") is None and failover.index == 2
    delay = failover.failed("c: auth")
    assert delay == pytest.approx(0.1)  # round 1: half of backoff_initial at rand 0
    assert failover.rounds_failed == 1
    assert failover.round_error == "a: refused; b: timeout; c: auth"
    assert failover.index == 0  # the next round starts over, in order


def test_backoff_doubles_each_failed_round_up_to_the_cap() -> None:
    rands = [0.0, 0.5, 0.999, 0.0, 0.0, 0.0, 0.5]
    failover = Failover(1, backoff_initial=0.2, backoff_max=1.0, rand=Rand(*rands))
    delays = [failover.failed("x") for _ in rands]
    assert delays == pytest.approx([0.1, 0.3, 0.7996, 0.5, 0.5, 0.5, 0.75])  # capped at 1.0
    assert delays == [backoff_delay(k, 0.2, 1.0, r) for k, r in enumerate(rands)]
    assert failover.rounds_failed == len(rands)


def test_a_connection_restarts_the_rounds_from_the_address_that_worked() -> None:
    failover = Failover(3, backoff_initial=0.2, backoff_max=30.0, rand=Rand(0.0, 0.5, 0.0))
    failover.failed("a")
    failover.failed("b")
    failover.failed("c")  # round 1 failed
    failover.failed("a")  # round 2: a fails, b works
    assert failover.index == 1 and not failover.ever_connected
    failover.connected()
    assert failover.rounds_failed == 0 and failover.ever_connected
    # b dies: a new round at once (jitter below half of backoff_initial), b first
    assert failover.lost() == pytest.approx(0.2 * 0.5 * 0.5)
    assert failover.index == 1
    assert failover.failed("b: lost") is None and failover.index == 2
    assert failover.failed("c: refused") is None and failover.index == 0
    delay = failover.failed("a: refused")
    assert delay == pytest.approx(0.1)  # a fresh backoff sequence: round 1 again
    assert failover.round_error == "b: lost; c: refused; a: refused"  # no error of before


def test_a_connection_forgets_the_errors_of_the_round_it_cut_short() -> None:
    failover = Failover(2, backoff_initial=0.2, backoff_max=30.0, rand=Rand(0.0, 0.0))
    assert failover.failed("a: refused") is None
    failover.connected()  # b works
    failover.lost()
    assert failover.failed("b: lost") is None  # a round has two tries again
    assert failover.failed("a: refused again") == pytest.approx(0.1)
    assert failover.round_error == "b: lost; a: refused again"


# -------------------------------------------------------- Rule 6: liveness
def test_liveness_declares_an_open_connection_dead_after_timeout_of_silence() -> None:
    clock, live = Clock(), Liveness(10.0)
    live.heard(-1, clock.now)  # connecting
    assert live.silence(512, clock.advance(1.0)) is None  # first bytes: news
    assert live.silence(512, clock.advance(9.0)) is None  # silent 9 s
    assert live.silence(640, clock.advance(1.0)) is None  # a heartbeat: news
    assert live.silence(640, clock.advance(10.0)) is None  # exactly the timeout
    assert live.silence(640, clock.advance(0.5)) == pytest.approx(10.5)


def test_liveness_while_opening_counts_nothing() -> None:
    clock, live = Clock(), Liveness(2.0)
    live.heard(-1, clock.now)
    for _ in range(10):  # the handshake is slow: its own timeout owns it
        live.heard(0, clock.advance(1.0))
    assert live.silence(0, clock.advance(1.0)) is None
    assert live.silence(0, clock.advance(1.5)) == pytest.approx(2.5)


def test_the_default_settings_find_a_silent_partition_within_15_seconds() -> None:
    """With the Publisher's default heartbeat (liveness = 2 x heartbeat) and the
    watchdog's 1 s ticks, a connection that goes silent just after a tick is declared
    dead at the first tick past the timeout: well within the required 15 s."""
    heartbeat = inspect.signature(Publisher).parameters["heartbeat"].default
    clock, live = Clock(), Liveness(2.0 * heartbeat)
    live.heard(-1, clock.now)
    assert live.silence(100, clock.advance(1.0)) is None  # the last bytes
    silent_at = clock.now + 0.001
    ticks = 0
    while live.silence(100, clock.advance(1.0)) is None:
        ticks += 1
        assert ticks < 60
    assert clock.now - silent_at < 15.0
