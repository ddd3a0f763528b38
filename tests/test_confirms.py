"""ConfirmTracker against scripted broker answers: no network (h11 style).

Each test scripts the frames a RabbitMQ channel could send (basic.ack / basic.nack
with or without ``multiple``, basic.return, a lost connection) and pins the statuses
and the confirmed prefix the caller would commit.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentlog.amqp import ConfirmTracker, MessageStatus, PublishResult, backoff_delay, redact_url
from segmentlog.errors import ConfigError

C, N, R, L, U, P = (MessageStatus.CONFIRMED, MessageStatus.NACKED, MessageStatus.RETURNED,
                    MessageStatus.LOST, MessageStatus.UNSENT, MessageStatus.PENDING)


def _batch(n: int, tracker: ConfirmTracker | None = None) -> tuple[ConfirmTracker, list[int]]:
    t = tracker or ConfirmTracker()
    t.start_batch([f"m{i}" for i in range(n)])
    tags = [t.publish(i, now=float(i)) for i in range(n)]
    return t, tags


def test_in_order_single_acks_confirm_the_whole_batch() -> None:
    t, tags = _batch(4)
    assert tags == [1, 2, 3, 4]
    for k, tag in enumerate(tags):
        s = t.on_ack(tag, multiple=False, now=10.0)
        assert s.confirmed == (k,)
        assert t.confirmed_prefix() == k + 1
    r = t.result()
    assert r.delivered and r.confirmed_prefix == 4 and r.statuses == (C, C, C, C)
    assert t.inflight == 0


def test_out_of_order_acks_prefix_stops_at_first_unanswered() -> None:
    t, tags = _batch(4)
    t.on_ack(tags[2], False, 5.0)
    t.on_ack(tags[0], False, 5.0)
    assert t.confirmed_prefix() == 1
    assert [t.status(i) for i in range(4)] == [C, P, C, P]
    t.on_ack(tags[1], False, 5.0)
    assert t.confirmed_prefix() == 3
    t.on_ack(tags[3], False, 5.0)
    assert t.result().confirmed_prefix == 4


def test_multiple_ack_confirms_every_pending_tag_up_to_it() -> None:
    t, tags = _batch(6)
    t.on_ack(tags[1], False, 9.0)  # a hole before the multiple ack
    s = t.on_ack(tags[4], multiple=True, now=9.0)
    assert sorted(s.confirmed) == [0, 2, 3, 4]
    assert t.confirmed_prefix() == 5 and t.inflight == 1
    t.on_ack(tags[5], True, 9.0)
    assert t.result().delivered


def test_nack_in_the_middle_cuts_the_prefix_before_it() -> None:
    t, tags = _batch(5)
    t.on_ack(tags[1], True, 1.0)
    s = t.on_nack(tags[2], False, 1.0)
    assert s.nacked == (2,)
    t.on_ack(tags[4], True, 1.0)
    r = t.result()
    assert r.statuses == (C, C, N, C, C)
    assert r.confirmed_prefix == 2 and not r.delivered
    assert r.unconfirmed_indices() == [2]
    assert r.confirmed_count == 4


def test_multiple_nack_nacks_every_pending_tag_up_to_it() -> None:
    t, tags = _batch(4)
    t.on_ack(tags[0], False, 1.0)
    s = t.on_nack(tags[2], True, 1.0)
    assert s.nacked == (1, 2)
    t.on_ack(tags[3], False, 1.0)
    assert t.result().statuses == (C, N, N, C)


def test_return_then_ack_is_returned_not_confirmed() -> None:
    t, tags = _batch(3)
    assert t.on_return("m1") == 1
    s = t.on_ack(tags[2], multiple=True, now=1.0)
    assert s.confirmed == (0, 2) and s.returned_acked == (1,)
    r = t.result()
    assert r.statuses == (C, R, C) and r.confirmed_prefix == 1


def test_return_matches_the_oldest_pending_publish_of_a_duplicate_id() -> None:
    t = ConfirmTracker()
    t.start_batch(["dup", "x", "dup"])
    tags = [t.publish(i, 0.0) for i in range(3)]
    assert t.on_return("dup") == 0
    assert t.on_return("dup") == 2
    assert t.on_return("dup") is None  # nothing left under that id
    assert t.unmatched_returns == 1
    t.on_ack(tags[2], True, 1.0)
    assert t.result().statuses == (R, C, R)


def test_return_of_an_unknown_id_changes_nothing() -> None:
    t, tags = _batch(2)
    assert t.on_return("never-sent") is None
    t.on_ack(tags[1], True, 1.0)
    assert t.result().delivered


def test_connection_lost_with_messages_in_flight_marks_them_lost() -> None:
    t, tags = _batch(5)
    t.on_ack(tags[1], True, 1.0)
    t.on_nack(tags[3], False, 1.0)
    lost = t.channel_lost()
    assert sorted(lost) == [2, 4]
    r = t.result()
    assert r.statuses == (C, C, L, N, L) and r.confirmed_prefix == 2
    # tags restart at 1 on the next channel, and late frames of the old one are unknown
    assert t.next_tag == 1 and t.inflight == 0 and t.orphans == 0


def test_unsent_messages_stay_unsent_when_the_batch_ends_early() -> None:
    t = ConfirmTracker()
    t.start_batch(["a", "b", "c"])
    t.publish(0, 0.0)
    t.channel_lost()
    assert t.result().statuses == (L, U, U)


def test_duplicate_and_unknown_acks_are_ignored_and_counted() -> None:
    t, tags = _batch(2)
    t.on_ack(tags[0], False, 1.0)
    s = t.on_ack(tags[0], False, 1.0)  # duplicate
    assert not s and t.unknown_answers == 1
    assert not t.on_ack(99, False, 1.0) and t.unknown_answers == 2
    assert not t.on_nack(tags[0], True, 1.0)  # covers only settled tags
    assert t.status(0) is C and t.inflight == 1


def test_tags_continue_across_batches_on_one_channel() -> None:
    t, tags = _batch(3)
    t.on_ack(tags[-1], True, 1.0)
    t.start_batch(["n0", "n1"])
    assert t.publish(0, 2.0) == 4
    assert t.publish(1, 2.0) == 5
    t.on_ack(5, True, 3.0)
    assert t.result().statuses == (C, C)


def test_abandoned_batch_late_acks_never_touch_the_next_batch() -> None:
    t, tags = _batch(3)
    t.on_ack(tags[0], False, 1.0)
    assert sorted(t.abandon_batch()) == [1, 2]
    assert t.result().statuses == (C, L, L)
    assert t.orphans == 2
    t.start_batch(["m1", "m2"])  # the caller retries the same ids
    new = [t.publish(i, 2.0) for i in range(2)]
    assert new == [4, 5]
    # the broker answers the orphans late: a return of the old m1, then acks
    assert t.on_return("m1") is None  # attributed to the orphan (published first)
    s = t.on_ack(tags[2], True, 3.0)
    assert not s.confirmed and t.orphans == 0
    assert t.inflight == 2 and t.status(0) is P
    t.on_ack(new[1], True, 4.0)
    assert t.result().statuses == (C, C)


def test_republishing_a_nacked_message_gets_a_new_tag_and_can_confirm() -> None:
    t, tags = _batch(3)
    t.on_nack(tags[1], False, 1.0)
    t.on_ack(tags[2], True, 1.0)
    retry = t.publish(1, 2.0)
    assert retry == 4 and t.status(1) is P
    s = t.on_ack(retry, False, 2.5)
    assert s.confirmed == (1,) and s.latencies == (0.5,)
    assert t.result().delivered


def test_latency_is_ack_time_minus_publish_time() -> None:
    t, tags = _batch(3)  # published at 0, 1, 2
    s = t.on_ack(tags[2], True, 10.0)
    assert sorted(s.latencies) == [8.0, 9.0, 10.0]


def test_misuse_is_reported() -> None:
    t, _ = _batch(2)
    with pytest.raises(ConfigError, match="in flight"):
        t.start_batch(["x"])
    with pytest.raises(ConfigError, match="already in flight"):
        t.publish(0, 0.0)
    with pytest.raises(ConfigError, match="abandon_batch"):
        t.result()


def test_publish_result_of_an_empty_batch_is_delivered() -> None:
    r = PublishResult((), 0)
    assert r.delivered and len(r) == 0 and r.unconfirmed_indices() == []


# ----------------------------------------------------------- property test
@st.composite
def _script(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, bool]]]:
    n = draw(st.integers(1, 40))
    events: list[tuple[str, int, bool]] = []
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.sampled_from(["ack", "nack", "return", "ack"]))
        events.append((kind, draw(st.integers(1, n)), draw(st.booleans())))
    return n, events


@settings(max_examples=300, deadline=None)
@given(_script(), st.booleans())
def test_tracker_matches_a_simple_model(script: tuple[int, list[tuple[str, int, bool]]],
                                        lose_at_end: bool) -> None:
    n, events = script
    t, _ = _batch(n)
    model: dict[int, MessageStatus] = {i: P for i in range(n)}
    answered: set[int] = set()
    returned: set[int] = set()
    for kind, tag, multiple in events:
        if kind == "return":
            # the broker returns before answering; model it only for unanswered tags
            cands = [i for i in range(n) if i + 1 not in answered and i not in returned]
            if not cands:
                continue
            i = cands[tag % len(cands)]
            assert t.on_return(f"m{i}") == i
            returned.add(i)
            model[i] = R
            continue
        covered = [x for x in (range(1, tag + 1) if multiple else [tag]) if x not in answered]
        (t.on_ack if kind == "ack" else t.on_nack)(tag, multiple, 1.0)
        for x in covered:
            answered.add(x)
            i = x - 1
            if i not in returned:
                model[i] = C if kind == "ack" else N
    if lose_at_end:
        t.channel_lost()
        for i in range(n):
            if i + 1 not in answered:
                model[i] = L
    assert [t.status(i) for i in range(n)] == [model[i] for i in range(n)]
    expected_prefix = 0
    for i in range(n):
        if model[i] is not C:
            break
        expected_prefix += 1
    assert t.confirmed_prefix() == expected_prefix
    assert t.inflight == sum(1 for i in range(n) if i + 1 not in answered) * (not lose_at_end)


# ---------------------------------------------------------------- helpers
@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
    ("amqps://u:p%40ss@host/vh", "amqps://u:***@host/vh"),
    ("amqp://u:pa/ss@host:5672/", "amqp://u:***@host:5672/"),  # unencoded '/'
    ("amqp://u:a@b@host/", "amqp://u:***@host/"),  # unencoded '@'
    ("amqp://user@host/", "amqp://user@host/"),  # no password: unchanged
    ("amqp://host:5672/", "amqp://host:5672/"),
    ("amqp://[::1]:5672/", "amqp://[::1]:5672/"),
    # "@host" left out: the "port" is the password (issue 15).
    ("amqp://guest:s3cr3t", "amqp://guest:***"),
    ("amqp://guest:s3cr3t/%2F", "amqp://guest:***/%2F"),
])
def test_redact_url_hides_the_password_and_keeps_the_rest(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert backoff_delay(0, 0.2, 30.0, 0.0) == pytest.approx(0.1)
    assert backoff_delay(0, 0.2, 30.0, 0.999999) == pytest.approx(0.2, rel=1e-5)
    assert backoff_delay(3, 0.2, 30.0, 0.0) == pytest.approx(0.8)
    assert backoff_delay(100, 0.2, 30.0, 0.0) == pytest.approx(15.0)
    assert backoff_delay(100, 0.2, 30.0, 0.999999) <= 30.0
    delays = [backoff_delay(k, 0.2, 30.0, 0.5) for k in range(12)]
    assert delays == sorted(delays) and delays[-1] == pytest.approx(22.5)
