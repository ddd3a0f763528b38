"""RoutingPolicy against scripted events and a fake clock: no broker, no store, no sleeping.

Each test drives the Auditor's routing decisions (segmentlog.audit_policy) the way the
delivery thread does and pins one rule: every route, the closing rules, how a store
write is split when the store refuses, the backoff sequences, the drain batch sizes and
the skip list. A small model of the thread (``_World``: a list for the store, a list
for the broker) checks the ordering guarantee end to end, by hand and with hypothesis.
The thread's I/O is tested against a live broker in test_audit*.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentlog.audit_policy import (
    DRAIN_BATCH_SIZE,
    FIRST_DRAIN_BATCH,
    FULL_RETRY,
    SPILL_MAX,
    Closing,
    Item,
    Route,
    RoutingPolicy,
)


def _policy(batch_size: int = 3, drain_batch_size: int = DRAIN_BATCH_SIZE,
            durable: bool = True, backlog: bool = False) -> RoutingPolicy:
    policy = RoutingPolicy(batch_size=batch_size, drain_batch_size=drain_batch_size,
                           durable_store=durable)
    if not backlog:
        assert policy.drain_empty()  # a new policy assumes an earlier run's backlog
    return policy


def _items(*ids: str) -> list[Item]:
    return [(mid, mid.encode(), 0.0) for mid in ids]


def _ids(items: Iterable[Item]) -> list[str]:
    return [mid for mid, _, _ in items]


# ------------------------------------------------------------------ routes
def test_a_new_policy_assumes_a_backlog_an_earlier_run_may_have_left() -> None:
    policy = RoutingPolicy(batch_size=3, drain_batch_size=10, durable_store=True)
    assert policy.backlog
    assert policy.route(queued=0, available=True) is Route.DRAIN
    assert policy.route(queued=0, available=False) is Route.WAIT


def test_held_events_are_published_directly_when_there_is_no_backlog() -> None:
    policy = _policy()
    policy.pending.extend(_items("a"))
    assert policy.route(queued=0, available=True) is Route.PUBLISH


def test_held_events_go_to_the_store_while_the_broker_is_away() -> None:
    policy = _policy()
    policy.pending.extend(_items("a"))
    assert policy.route(queued=0, available=False) is Route.STORE


def test_with_a_backlog_held_events_never_go_directly() -> None:
    policy = _policy(backlog=True)
    policy.pending.extend(_items("a"))
    assert policy.route(queued=5, available=True) is Route.DRAIN
    assert policy.route(queued=5, available=False) is Route.WAIT


def test_nothing_held_is_idle_or_again_or_done_when_closing() -> None:
    policy = _policy()
    assert policy.route(queued=0, available=True) is Route.IDLE
    assert policy.route(queued=2, available=True) is Route.AGAIN
    policy.stop_by(10.0)
    assert policy.route(queued=0, available=False) is Route.DONE


def test_take_limit_fills_one_direct_batch_or_one_store_write() -> None:
    policy = _policy(batch_size=3)
    policy.pending.extend(_items("a"))
    assert policy.take_limit() == 2
    policy.found_backlog()
    assert policy.take_limit() == SPILL_MAX - 1


def test_store_data_of_other_processes_makes_a_backlog() -> None:
    policy = _policy()
    policy.found_backlog()
    assert policy.route(queued=0, available=True) is Route.DRAIN


def test_metrics_are_due_every_interval_of_the_passed_clock() -> None:
    policy = _policy()
    assert policy.metrics_due(100.0)
    assert not policy.metrics_due(104.9)
    assert policy.metrics_due(105.0)
    assert not policy.metrics_due(105.1)


def test_restart_after_fork_forgets_what_the_parent_held() -> None:
    policy = _policy()
    policy.pending.extend(_items("a"))
    policy.drain_cut(["x"])
    policy.stop_by(5.0)
    policy.restart()
    assert not policy.pending and policy.skip == [] and policy.backlog and not policy.stopping


# ------------------------------------------------------------------ closing
def test_not_closing_goes_on() -> None:
    policy = _policy()
    assert policy.closing(0.0, queued=0, broker_gone=True) is Closing.GO_ON
    assert not policy.closing_write_ahead(0.0, broker_gone=True)


def test_closing_stops_at_the_deadline_whatever_is_held() -> None:
    policy = _policy(durable=False)
    policy.pending.extend(_items("a"))
    policy.stop_by(10.0)
    assert policy.closing(9.9, queued=3, broker_gone=False) is Closing.GO_ON
    assert policy.closing(10.0, queued=3, broker_gone=False) is Closing.STOP


def test_closing_stops_once_nothing_is_held_queued_or_stored() -> None:
    policy = _policy(durable=False)
    policy.stop_by(10.0)
    assert policy.closing(1.0, queued=0, broker_gone=False) is Closing.STOP
    assert policy.closing(1.0, queued=1, broker_gone=False) is Closing.GO_ON
    policy.found_backlog()
    assert policy.closing(1.0, queued=0, broker_gone=False) is Closing.GO_ON


def test_closing_with_a_memory_store_waits_for_the_broker_until_the_deadline() -> None:
    policy = _policy(durable=False, backlog=True)
    policy.stop_by(10.0)
    assert policy.closing(5.0, queued=1, broker_gone=True) is Closing.GO_ON


def test_closing_with_a_durable_store_stores_all_once_the_broker_is_gone() -> None:
    policy = _policy(durable=True, backlog=True)
    policy.stop_by(3600.0)
    # The broker may be back (its round after close() has not failed yet): deliver.
    assert policy.closing(1.0, queued=1, broker_gone=False) is Closing.GO_ON
    assert policy.closing(1.0, queued=1, broker_gone=True) is Closing.STORE_ALL


def test_closing_write_ahead_stops_at_the_deadline_or_with_a_durable_store_and_no_broker(
        ) -> None:
    memory = _policy(durable=False)
    memory.stop_by(10.0)
    assert not memory.closing_write_ahead(5.0, broker_gone=True)
    assert memory.closing_write_ahead(10.0, broker_gone=False)
    durable = _policy(durable=True)
    durable.stop_by(10.0)
    assert not durable.closing_write_ahead(5.0, broker_gone=False)
    assert durable.closing_write_ahead(5.0, broker_gone=True)


# ------------------------------------------------------------------ direct publishing
def test_a_direct_batch_is_the_oldest_batch_size_events() -> None:
    policy = _policy(batch_size=3)
    policy.pending.extend(_items("a", "b", "c", "d"))
    assert _ids(policy.next_batch()) == ["a", "b", "c"]
    assert _ids(policy.pending) == ["d"]


def test_the_unconfirmed_tail_goes_back_before_newer_events() -> None:
    policy = _policy(batch_size=3)
    policy.pending.extend(_items("a", "b", "c", "d"))
    batch = policy.next_batch()
    policy.pending.extend(_items("e"))  # taken from the queue meanwhile: newer
    rest = policy.published(batch, 1)
    assert _ids(rest) == ["b", "c"]
    assert _ids(policy.pending) == ["b", "c", "d", "e"]


def test_a_confirmed_batch_leaves_nothing_behind() -> None:
    policy = _policy(batch_size=3)
    policy.pending.extend(_items("a", "b"))
    assert policy.published(policy.next_batch(), 2) == []
    assert not policy.pending


# ------------------------------------------------------------------ the store
def test_a_store_write_takes_every_held_event_in_one_part() -> None:
    policy = _policy()
    policy.pending.extend(_items("a", "b", "c"))
    write = policy.store_write(0.0)
    assert write is not None
    part = write.next_part()
    assert part is not None and _ids(part) == ["a", "b", "c"]
    write.stored()
    assert write.next_part() is None
    assert write.finish() == 3
    assert not policy.pending and policy.backlog


def test_a_full_store_is_filled_to_its_limit_in_order_and_asked_again_later() -> None:
    policy = _policy()
    policy.pending.extend(_items("a", "b", "c", "d", "e"))
    room = 2
    stored: list[str] = []
    write = policy.store_write(50.0)
    assert write is not None
    tried = []
    while (part := write.next_part()) is not None:
        tried.append(_ids(part))
        if len(part) > room - len(stored):
            write.full()
            continue
        stored += _ids(part)
        write.stored()
    assert tried == [["a", "b", "c", "d", "e"], ["a", "b"], ["c", "d"], ["c"]]
    assert stored == ["a", "b"]
    assert write.finish() == 2
    assert _ids(policy.pending) == ["c", "d", "e"]
    assert policy.retry_store_at == 50.0 + FULL_RETRY
    assert policy.store_write(50.0 + FULL_RETRY - 0.01) is None
    assert policy.store_write(50.0 + FULL_RETRY) is not None


def test_a_full_store_is_asked_again_at_once_after_a_commit() -> None:
    policy = _policy()
    policy.pending.extend(_items("a"))
    write = policy.store_write(0.0)
    assert write is not None and write.next_part() is not None
    assert write.full()  # one event, refused: final for now
    write.finish()
    assert policy.store_write(0.5) is None
    policy.drain_committed()
    assert policy.store_write(0.5) is not None


def test_a_closing_thread_asks_a_refusing_store_at_once() -> None:
    policy = _policy()
    policy.pending.extend(_items("a"))
    policy.retry_store_at = 100.0
    assert policy.store_write(1.0) is None
    policy.stop_by(200.0)
    assert policy.store_write(1.0) is not None
    policy.retry_store_now()
    assert policy.retry_store_at == 0.0


def test_the_one_event_a_store_refuses_is_set_aside_and_the_rest_stored() -> None:
    policy = _policy()
    policy.pending.extend(_items("a", "b", "bad", "c", "d"))
    stored: list[str] = []
    set_aside: list[str] = []
    write = policy.store_write(0.0)
    assert write is not None
    while (part := write.next_part()) is not None:
        if "bad" in _ids(part):
            item = write.refused()
            if item is not None:
                set_aside.append(item[0])
            continue
        stored += _ids(part)
        write.stored()
    assert set_aside == ["bad"]
    assert stored == ["a", "b", "c", "d"]
    assert write.finish() == 5 and not policy.pending


def test_a_failing_store_keeps_the_rest_held_and_backs_off_doubling_to_five_seconds() -> None:
    policy = _policy()
    policy.pending.extend(_items("a", "b"))
    delays = []
    now = 0.0
    for _ in range(8):
        write = policy.store_write(now)
        assert write is not None and write.next_part() is not None
        delays.append(write.failed())
        assert write.unplaced == 2 and write.next_part() is None
        assert write.finish() == 0
        assert policy.store_write(now + delays[-1] - 0.001) is None
        now += delays[-1]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert _ids(policy.pending) == ["a", "b"]
    write = policy.store_write(now)
    assert write is not None and write.next_part() is not None
    write.stored()
    assert policy.store_failures == 0
    assert policy.store_backoff() == pytest.approx(0.1)  # the next failure starts again


# ------------------------------------------------------------------ draining
def test_a_drain_starts_small_then_reads_drain_batch_size_and_starts_small_again() -> None:
    policy = _policy(drain_batch_size=5000, backlog=True)
    assert policy.drain_size == FIRST_DRAIN_BATCH
    policy.drain_committed()
    assert policy.drain_size == 5000
    assert policy.drain_empty()
    assert not policy.backlog and policy.drain_size == FIRST_DRAIN_BATCH
    assert not policy.drain_empty()  # no backlog was left to end


def test_a_drain_batch_size_below_the_first_batch_is_used_from_the_start() -> None:
    assert _policy(drain_batch_size=10, backlog=True).drain_size == 10


def test_a_failed_drain_batch_keeps_its_size_for_the_reread() -> None:
    policy = _policy(drain_batch_size=5000, backlog=True)
    policy.drain_cut(["a"])
    assert policy.drain_size == FIRST_DRAIN_BATCH


def test_the_confirmed_prefix_of_a_cut_batch_is_skipped_when_it_is_read_again() -> None:
    policy = _policy(backlog=True)
    assert policy.skip_count(["a", "b", "c"]) == 0
    policy.drain_cut(["a", "b"])
    assert policy.skip_count(["a", "b", "c"]) == 2


def test_the_skip_list_is_ignored_for_a_batch_that_does_not_start_with_it() -> None:
    policy = _policy(backlog=True)
    policy.drain_cut(["a", "b"])
    assert policy.skip_count(["x", "a", "b"]) == 0
    assert policy.skip_count(["a"]) == 0


def test_a_failed_commit_skips_the_whole_batch_when_it_is_read_again() -> None:
    policy = _policy(backlog=True)
    policy.drain_cut(["a", "b", "c"])
    assert policy.skip_count(["a", "b", "c"]) == 3


def test_a_commit_or_an_empty_store_clears_the_skip_list() -> None:
    policy = _policy(backlog=True)
    policy.drain_cut(["a"])
    policy.drain_committed()
    assert policy.skip_count(["a"]) == 0
    policy.drain_cut(["a"])
    policy.drain_empty()
    assert policy.skip_count(["a"]) == 0


def test_a_prefix_committed_on_its_own_clears_the_skip_list_and_retries_the_store() -> None:
    policy = _policy(drain_batch_size=5000, backlog=True)
    policy.retry_store_at = 99.0  # a full store waiting for space
    policy.drain_backoff()
    policy.drain_cut(["a", "b"])
    policy.prefix_committed()
    assert policy.skip_count(["a", "b", "c"]) == 0
    assert policy.retry_store_at == 0.0
    # The batch still failed: its size and its backoff stay.
    assert policy.drain_size == FIRST_DRAIN_BATCH
    assert policy.drain_backoff() == pytest.approx(0.08)


def test_failed_drain_batches_pause_doubling_to_one_second_until_a_commit() -> None:
    policy = _policy(backlog=True)
    delays = [policy.drain_backoff() for _ in range(7)]
    assert delays == pytest.approx([0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0])
    policy.drain_committed()
    assert policy.drain_backoff() == pytest.approx(0.04)


# ------------------------------------------------------------------ ordering, end to end
class _World:
    """The delivery thread's use of the policy, with a list for a store and a list for
    the broker (what it confirmed, in order). ``cut`` makes the next publish confirm
    only that many; ``room`` bounds the store."""

    def __init__(self, batch_size: int = 3, drain_batch_size: int = 4) -> None:
        self.policy = RoutingPolicy(batch_size=batch_size, drain_batch_size=drain_batch_size,
                                    durable_store=True)
        self.queue: deque[Item] = deque()
        self.store: list[Item] = []
        self.room = 10**9
        self.broker_up = True
        self.cut: int | None = None
        self.prefix_commits = True  # False: committing a cut batch's prefix fails
        self.confirmed: list[str] = []
        self.now = 0.0

    def record(self, *ids: str) -> None:
        self.queue.extend(_items(*ids))

    def publish(self, ids: list[str]) -> int:
        if not self.broker_up:
            return 0
        n = len(ids) if self.cut is None else min(self.cut, len(ids))
        self.cut = None
        self.confirmed += ids[:n]
        return n

    def spill(self) -> None:
        write = self.policy.store_write(self.now)
        if write is None:
            return
        while (part := write.next_part()) is not None:
            if len(self.store) + len(part) > self.room:
                write.full()
                continue
            self.store += part
            write.stored()
        write.finish()

    def drain(self) -> None:
        policy = self.policy
        batch = self.store[:policy.drain_size]
        if not batch:
            policy.drain_empty()
            return
        ids = _ids(batch)
        skip = policy.skip_count(ids)
        done = skip + self.publish(ids[skip:])
        if done < len(ids):
            policy.drain_cut(ids[:done])
            if done and self.prefix_commits:  # committed on its own (Rule 3)
                del self.store[:done]
                policy.prefix_committed()
            return
        del self.store[:len(batch)]
        policy.drain_committed()

    def step(self) -> Route:
        policy = self.policy
        for _ in range(min(max(0, policy.take_limit()), len(self.queue))):
            policy.pending.append(self.queue.popleft())
        route = policy.route(queued=len(self.queue), available=self.broker_up)
        if route in (Route.DRAIN, Route.WAIT):
            if policy.pending:
                self.spill()
            if route is Route.DRAIN:
                self.drain()
        elif route is Route.PUBLISH:
            batch = policy.next_batch()
            if policy.published(batch, self.publish(_ids(batch))):
                self.spill()
        elif route is Route.STORE:
            self.spill()
        self.now += 0.1
        return route

    def settle(self) -> None:
        self.broker_up, self.room, self.cut = True, 10**9, None
        for _ in range(1000):
            self.now += 10.0  # past any retry time
            if self.step() is Route.IDLE:
                return
        raise AssertionError("the policy never settled")


def test_the_store_backlog_is_delivered_before_newer_events() -> None:
    world = _World(drain_batch_size=2)
    world.policy.drain_empty()
    world.record("1", "2")
    assert world.step() is Route.PUBLISH
    world.broker_up = False
    world.record("3", "4", "5")
    assert world.step() is Route.STORE
    assert _ids(world.store) == ["3", "4", "5"]
    world.broker_up = True
    world.record("6", "7")
    # Newer events queue behind the backlog: stored, then the store drains oldest first.
    assert world.step() is Route.DRAIN
    assert _ids(world.store) == ["5", "6", "7"]
    assert world.confirmed == ["1", "2", "3", "4"]
    world.settle()
    assert world.confirmed == ["1", "2", "3", "4", "5", "6", "7"]


def test_a_cut_direct_batch_is_stored_before_the_events_after_it() -> None:
    world = _World(batch_size=3)
    world.policy.drain_empty()
    world.record("1", "2", "3", "4")
    world.cut = 1
    assert world.step() is Route.PUBLISH
    assert world.confirmed == ["1"]
    assert _ids(world.store) == ["2", "3"]  # "4" was still queued: it goes behind them
    world.record("5")
    world.settle()
    assert world.confirmed == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("prefix_commits", [True, False])
def test_a_cut_drain_batch_is_not_sent_again_from_its_start(prefix_commits: bool) -> None:
    world = _World(drain_batch_size=4)
    world.prefix_commits = prefix_commits
    world.broker_up = False
    world.record("1", "2", "3", "4", "5", "6")
    world.step()
    world.broker_up = True
    world.cut = 2
    assert world.step() is Route.DRAIN
    assert world.confirmed == ["1", "2"]
    # The confirmed prefix left the store; when that commit failed, it is skipped.
    assert _ids(world.store)[:2] == (["3", "4"] if prefix_commits else ["1", "2"])
    world.settle()
    assert world.confirmed == ["1", "2", "3", "4", "5", "6"]


_OPS = st.one_of(
    st.tuples(st.just("record"), st.integers(1, 7)),
    st.tuples(st.just("broker"), st.booleans()),
    st.tuples(st.just("cut"), st.integers(0, 5)),
    st.tuples(st.just("prefix_commits"), st.booleans()),
    st.tuples(st.just("room"), st.integers(0, 12)),
    st.tuples(st.just("step"), st.integers(1, 4)),
    st.tuples(st.just("wait"), st.floats(0.0, 6.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPS, max_size=40), st.integers(1, 5), st.integers(1, 6))
def test_events_are_confirmed_once_each_in_the_order_recorded(
        ops: list[tuple[str, Any]], batch_size: int, drain_batch_size: int) -> None:
    # Outages, cut batches and a full store in any order: once the broker is back and
    # the store has room, every recorded event was confirmed exactly once, in order.
    world = _World(batch_size, drain_batch_size)
    recorded: list[str] = []
    for op, arg in ops:
        if op == "record":
            ids = [str(len(recorded) + i) for i in range(arg)]
            recorded += ids
            world.record(*ids)
        elif op == "broker":
            world.broker_up = arg
        elif op == "cut":
            world.cut = arg
        elif op == "prefix_commits":
            world.prefix_commits = arg
        elif op == "room":
            world.room = len(world.store) + arg
        elif op == "wait":
            world.now += arg
        else:
            for _ in range(arg):
                world.step()
    world.settle()
    assert world.confirmed == recorded
    assert not world.store and not world.policy.pending
