"""The Auditor against a real RabbitMQ: delivery, order, outages, backpressure, config.

Every test records into its own uuid-named queue, consumes the queue back and counts it
against what was recorded (tests/audit_child.py ``check_delivery``): ids as sets, first
occurrences in recorded order, bodies byte-identical. Outages are a real TCP proxy
(tests/tcpproxy.py) that refuses connections; the slow faults (partition mid-stream,
broker restart, SIGKILL) live in test_audit_faults.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pika
import pika.exceptions
import pytest
from amqptools import consume_all, delete_queue
from audit_child import (
    OBSERVER,
    check_delivery,
    consume,
    make_events,
    wire,
)
from forktools import fork
from prometheus_client import CollectorRegistry, Counter
from tcpproxy import TcpProxy

from segmentlog.audit import (
    DRAIN_WINDOW,
    Auditor,
    NullAuditor,
    RecordingAuditor,
    connection_from_env,
)
from segmentlog.cadf import CADF_EVENT_TYPE_URI, Attachment, Event, Observer
from segmentlog.errors import (
    BackingStoreFull,
    ConfigError,
    InvalidEventError,
    LogClosedError,
    UndeliveredEventsError,
)
from segmentlog.store import BackingStore, Commit, FileStore, MemoryStore

pytestmark = pytest.mark.rabbitmq


def _labels(auditor: Auditor, name: str) -> dict[str, str]:
    """The labels of ``auditor``'s series of metric ``name`` (publisher or auditor)."""
    if name.startswith("segmentlog_publisher_"):
        return auditor.publisher.metrics.labels
    return auditor.metrics.labels


def _value(auditor: Auditor, name: str) -> float:
    value = auditor.registry.get_sample_value(name, _labels(auditor, name))
    assert value is not None, f"metric {name} is not registered"
    return float(value)


def _record_all(auditor: Auditor, events: list[Event]) -> list[tuple[str, bytes]]:
    for e in events:
        auditor.record(e)
    return [(e.id, wire(e)) for e in events]


def _mapping(i: int) -> dict[str, Any]:
    return {
        "typeURI": CADF_EVENT_TYPE_URI, "eventType": "activity", "action": "read",
        "outcome": "success", "requestPath": f"/m/{i}",
        "initiator": {"typeURI": "service/security/account/user", "id": "u-1"},
        "target": {"typeURI": "service/resources/project", "id": "p-2"},
    }


# ------------------------------------------------------------------ normal operation
def test_normal_operation_delivers_every_event_once_in_order_as_recorded(
        rabbitmq_url: str, queue: str) -> None:
    events = make_events(3000)
    # constant models: the delivery thread serialises them, to the bytes compared below
    assert all(e.constant for e in events)
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as auditor:
        recorded = _record_all(auditor, events)
        assert auditor.flush(30)
        assert _value(auditor, "audittools_successful_submissions_total") == len(events)
        assert _value(auditor, "audittools_failed_submissions_total") == 0
        assert _value(auditor, "segmentlog_auditor_recorded_events_total") == len(events)
        assert _value(auditor, "segmentlog_auditor_backlog_events") == 0
        assert _value(auditor, "segmentlog_auditor_record_to_confirm_seconds_count") == len(
            events)
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_mappings_get_id_time_and_observer_and_are_published_as_recorded(
        rabbitmq_url: str, queue: str) -> None:
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as auditor:
        event = _mapping(1)
        auditor.record(event)
        assert "id" not in event, "the caller's mapping must not be modified"
        given = dict(_mapping(2), id="fixed-id-2", eventTime="2025-01-31T12:00:00Z")
        auditor.record(given)
        given["action"] = "changed after record()"  # must not change what is delivered
        assert auditor.flush(30)
    messages = consume(rabbitmq_url, queue)
    assert len(messages) == 2
    first = orjson.loads(messages[0][1])
    assert uuid.UUID(first["id"]).version == 4 and messages[0][0] == first["id"]
    assert first["observer"] == OBSERVER.to_dict()
    second = orjson.loads(messages[1][1])
    assert (messages[1][0], second["action"], second["eventTime"]) == (
        "fixed-id-2", "read", "2025-01-31T12:00:00Z")


def test_a_model_whose_attachment_changes_after_record_is_published_as_recorded(
        rabbitmq_url: str, queue: str) -> None:
    content: dict[str, Any] = {"quota": 1, "items": ["a"]}
    event = make_events(1)[0]
    event = dataclasses.replace(event, attachments=(
        Attachment(type_uri="mime:application/json", content=content),))
    assert not event.constant  # record() must serialise it itself (Rule 3 of cadf)
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as auditor:
        expected = wire(event)
        auditor.record(event)
        content["quota"] = 2  # after record(): must not reach the broker
        content["items"].append("b")
        assert auditor.flush(30)
    assert check_delivery(consume(rabbitmq_url, queue), [(event.id, expected)]) == 0


def test_a_constant_model_that_fails_to_serialise_is_counted_and_the_rest_delivered(
        rabbitmq_url: str, queue: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Cannot happen with the real model (every field is checked when built): a failing
    # wire_dict stands for a bug in it, met on the delivery thread.
    good = make_events(2)
    bad = make_events(1)[0]
    assert bad.constant
    wire_dict = Event.wire_dict

    def broken(self: Event, observer: Any = None) -> dict[str, Any]:
        if self.id == bad.id:
            raise RuntimeError("broken model")
        return wire_dict(self, observer)

    monkeypatch.setattr(Event, "wire_dict", broken)
    auditor = Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue)
    auditor.record(good[0])
    auditor.record(bad)
    auditor.record(good[1])
    # The rest is delivered; flush() does not claim the set-aside one was.
    assert not auditor.flush(30)
    assert _value(auditor, "audittools_failed_submissions_total") == 1
    assert _value(auditor, "audittools_successful_submissions_total") == 2
    # Set aside, not dropped: close() reports it (issue 15: nothing lost silently).
    with pytest.raises(UndeliveredEventsError, match="cannot be serialised") as info:
        auditor.close()
    assert [mid for mid, _ in info.value.events] == [bad.id]
    monkeypatch.undo()
    assert check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in good]) == 0
    assert any("cannot be serialised" in r.getMessage() and bad.id in r.getMessage()
               for r in caplog.records)


class _Annotated(Event):
    """A subclass with state of its own, which the model's ``constant`` cannot see."""

    def wire_dict(self, observer: Any = None) -> dict[str, Any]:
        out = dict(Event.wire_dict(self, observer))
        out["note"] = NOTES[self.id]
        return out


NOTES: dict[str, str] = {}


def test_a_subclass_of_the_model_is_serialised_inside_record(
        rabbitmq_url: str, queue: str) -> None:
    base = make_events(1)[0]
    event = _Annotated(action=base.action, outcome=base.outcome, initiator=base.initiator,
                       target=base.target, request_path=base.request_path)
    assert event.constant  # by the model's own fields; the Auditor still does not defer
    NOTES[event.id] = "as recorded"
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as auditor:
        auditor.record(event)
        NOTES[event.id] = "changed after record()"
        assert auditor.flush(30)
    (mid, body), = consume(rabbitmq_url, queue)
    assert mid == event.id and orjson.loads(body)["note"] == "as recorded"


def test_close_delivers_everything_recorded_before_it(rabbitmq_url: str, queue: str) -> None:
    auditor = Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue)
    recorded = _record_all(auditor, make_events(2000))
    auditor.close(timeout=30)
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_record_after_close_raises_and_double_close_is_harmless(
        rabbitmq_url: str, queue: str) -> None:
    auditor = Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue)
    auditor.close()
    auditor.close()
    with pytest.raises(LogClosedError, match="closed"):
        auditor.record(make_events(1)[0])


def test_write_ahead_file_store_delivers_in_order(
        rabbitmq_url: str, queue: str, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "buf", fsync="always")
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     backing_store=store, write_ahead=True) as auditor:
            recorded = _record_all(auditor, make_events(500))
            assert auditor.flush(30)
            assert _value(auditor, "segmentlog_auditor_drain_events_total") == 500
            assert _value(auditor, "segmentlog_auditor_backlog_events") == 0
    finally:
        store.close()
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


# ------------------------------------------------------------------ draining
class _CountingStore(MemoryStore):
    """A real memory store that remembers the size of every batch it handed out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[int] = []

    def read_batch(self, max_events: int | None = None) -> tuple[list[dict[str, Any]],
                                                                 Commit | None]:
        events, commit = super().read_batch(max_events)
        if events:
            self.batches.append(len(events))
        return events, commit


class _OldStyleStore(BackingStore):
    """A custom store written before ``max_events`` and ``pending()`` existed."""

    def __init__(self, batch_size: int) -> None:
        self.inner = _CountingStore(max_events=10_000, batch_size=batch_size,
                                    registry=CollectorRegistry())

    def write(self, event: Any) -> None:
        self.inner.write(event)

    def write_many(self, events: Any) -> None:
        self.inner.write_many(events)

    def read_batch(self) -> tuple[list[dict[str, Any]], Commit | None]:  # type: ignore[override]
        return self.inner.read_batch()

    def close(self) -> None:
        self.inner.close()


def _stored(events: list[Event]) -> list[dict[str, Any]]:
    """``events`` as an Auditor keeps them in a store (the wire JSON, parsed)."""
    return [orjson.loads(wire(e)) for e in events]


def test_drain_reads_drain_batch_size_events_whatever_the_store_batch_size(
        rabbitmq_url: str, queue: str) -> None:
    events = make_events(1200)
    store = _CountingStore(max_events=10_000, batch_size=10, registry=CollectorRegistry())
    store.write_many(_stored(events))  # a backlog left by an earlier run
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     backing_store=store, drain_batch_size=500) as auditor:
            assert auditor.flush(30)
            assert _value(auditor, "segmentlog_auditor_drain_events_total") == 1200
            assert _value(auditor, "segmentlog_auditor_backlog_events") == 0
        assert store.batches == [500, 500, 200]  # not 120 batches of the store's 10
    finally:
        store.close()
    assert check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events]) == 0


def test_a_drain_starts_with_a_small_batch_then_reads_drain_batch_size(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    tag = uuid.uuid4().hex[:8]
    backlog, during = make_events(8000, tag + "a"), make_events(1500, tag + "b")
    store = _CountingStore(max_events=20_000, batch_size=10, registry=CollectorRegistry())
    store.write_many(_stored(backlog))
    try:
        with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                     backing_store=store, drain_batch_size=5000) as auditor:
            assert auditor.flush(30)
            # The first confirm must not wait for a whole drain_batch_size batch.
            assert store.batches == [1000, 5000, 2000]
            proxy.refuse()  # an outage: events go to the (now empty) store...
            recorded = _record_all(auditor, during)
            deadline = time.monotonic() + 10
            while _value(auditor, "segmentlog_auditor_backlog_events") < len(during):
                assert time.monotonic() < deadline, "events were not buffered in the store"
                time.sleep(0.02)
            proxy.accept()  # ...and the new drain starts small again
            assert auditor.flush(30)
            assert store.batches[3:] == [1000, 500]
    finally:
        store.close()
    recorded = [(e.id, wire(e)) for e in backlog] + recorded
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_old_style_custom_store_is_drained_in_its_own_batch_size(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    events = make_events(100)
    store = _OldStyleStore(batch_size=30)
    store.write_many(_stored(events[:60]))
    try:
        proxy.refuse()
        with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                     backing_store=store, connect_wait=0) as auditor:
            recorded = _record_all(auditor, events[60:])
            deadline = time.monotonic() + 10
            # No pending(): the gauge counts what the auditor itself put in the store.
            while _value(auditor, "segmentlog_auditor_backlog_events") < 40:
                assert time.monotonic() < deadline, "events were not buffered in the store"
                time.sleep(0.02)
            proxy.accept()
            assert auditor.flush(30)
            assert _value(auditor, "segmentlog_auditor_drain_events_total") == 100
            assert _value(auditor, "segmentlog_auditor_backlog_events") == 0
        assert store.inner.batches == [30, 30, 30, 10]
    finally:
        store.close()
    recorded = [(e.id, wire(e)) for e in events[:60]] + recorded
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_backlog_gauge_is_the_store_count_including_events_of_other_writers(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    mine, theirs, last = (make_events(50, tag + "a"), make_events(30, tag + "b"),
                          make_events(1, tag + "c"))
    store = FileStore(tmp_path / "buf", fsync="never")
    try:
        proxy.refuse()
        with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                     backing_store=store, connect_wait=0) as auditor:
            recorded = _record_all(auditor, mine)
            deadline = time.monotonic() + 10
            while _value(auditor, "segmentlog_auditor_backlog_events") < 50:
                assert time.monotonic() < deadline, "events were not buffered in the store"
                time.sleep(0.02)
            store.write_many(_stored(theirs))  # written behind the auditor's back
            recorded += [(e.id, wire(e)) for e in theirs]
            recorded += _record_all(auditor, last)
            while _value(auditor, "segmentlog_auditor_backlog_events") != 81:
                assert time.monotonic() < deadline, "gauge is not the store's count"
                time.sleep(0.02)
            assert auditor.backlog == 81
            proxy.accept()
            assert auditor.flush(30)
            assert _value(auditor, "segmentlog_auditor_backlog_events") == 0
            assert _value(auditor, "segmentlog_auditor_drain_events_total") == 81
    finally:
        store.close()
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_publisher_gets_the_drain_window_unless_publisher_options_set_one(
        rabbitmq_url: str, queue: str) -> None:
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as auditor:
        assert auditor.publisher.window == DRAIN_WINDOW
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                 publisher_options={"window": 10}) as auditor:
        assert auditor.publisher.window == 10
        recorded = _record_all(auditor, make_events(25))
        assert auditor.flush(30)
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


# ------------------------------------------------------------------ outages
def test_memory_store_loses_nothing_across_an_outage_and_new_events_queue_behind_the_backlog(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    tag = uuid.uuid4().hex[:8]
    before, during, after = (make_events(300, tag + "a"), make_events(600, tag + "b"),
                             make_events(300, tag + "c"))
    with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                 backing_store=MemoryStore(max_events=1000)) as auditor:
        recorded = _record_all(auditor, before)
        assert auditor.flush(30)
        proxy.refuse()
        recorded += _record_all(auditor, during)  # returns at once: the broker is gone
        deadline = time.monotonic() + 10
        while _value(auditor, "segmentlog_auditor_backlog_events") < len(during):
            assert time.monotonic() < deadline, "events were not buffered in the store"
            time.sleep(0.02)
        proxy.accept()
        # Recorded while the backlog drains: they must arrive after it (order kept).
        recorded += _record_all(auditor, after)
        assert auditor.flush(30)
        assert _value(auditor, "segmentlog_auditor_drain_events_total") >= len(during)
        assert _value(auditor, "segmentlog_auditor_backpressure_seconds_total") == 0
    check_delivery(consume(rabbitmq_url, queue), recorded)


class _SeesEncoded:
    """Keeps what the Auditor hands to ``write_many_encoded`` (and still stores it)."""

    encoded: list[bytes]

    def write_many_encoded(self, bodies: Any) -> None:
        self.encoded.extend(bodies)
        super().write_many_encoded(bodies)  # type: ignore[misc]


class _SeesEncodedMemory(_SeesEncoded, MemoryStore):
    pass


class _SeesEncodedFile(_SeesEncoded, FileStore):
    pass


@pytest.mark.parametrize("write_ahead", [False, True], ids=["spill", "write-ahead"])
@pytest.mark.parametrize("kind", ["memory", "file"])
def test_the_store_keeps_the_bytes_record_made_through_spill_and_write_ahead(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path, kind: str,
        write_ahead: bool) -> None:
    # Issue 18 goal 3: JSON is encoded once, in record(). The store gets those bytes
    # (not a decoded dict to encode again) and hands the very same bytes back.
    store: _SeesEncodedMemory | _SeesEncodedFile = (
        _SeesEncodedMemory(max_events=1000, registry=CollectorRegistry())
        if kind == "memory" else
        _SeesEncodedFile(tmp_path / "buf", fsync="never", registry=CollectorRegistry()))
    store.encoded = []
    events = make_events(400)
    proxy.refuse()
    try:
        auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                          backing_store=store, write_ahead=write_ahead, connect_wait=0)
        recorded = _record_all(auditor, events)
        deadline = time.monotonic() + 30
        while _value(auditor, "segmentlog_auditor_backlog_events") < len(events):
            assert time.monotonic() < deadline, "events were not buffered in the store"
            time.sleep(0.02)
        auditor.close(timeout=0)  # the broker is away: they stay in the caller's store
        assert store.encoded == [body for _, body in recorded]
        bodies, ids, commit = store.read_encoded_up_to(1000)
        assert list(zip(ids, bodies, strict=True)) == recorded
        assert commit is not None
    finally:
        store.close()


def _store_config(store_type: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """``${PREFIX}_BACKING_STORE`` for a persistent store of ``store_type`` (file, sqlite
    or sql: a table of its own, dropped after the test)."""
    params: dict[str, Any] = {}
    if store_type == "file":
        params = {"directory": str(tmp_path / "buffer"), "fsync": "interval"}
    elif store_type == "sqlite":
        params = {"path": str(tmp_path / "buffer.db")}
    else:
        from test_store_conformance import drop_tables

        dsn = request.getfixturevalue("postgres_dsn")
        table = "audit_e2e_" + uuid.uuid4().hex[:8]
        params = {"dsn": dsn, "table_name": table}
        request.addfinalizer(lambda: drop_tables(dsn, table))
    return orjson.dumps({"type": store_type, "params": params}).decode()


@pytest.mark.parametrize("kind", ["file", "sqlite", "sql", "file-write-ahead"])
def test_every_store_configured_from_the_env_carries_an_outage_in_order(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        request: pytest.FixtureRequest, kind: str) -> None:
    """The Auditor over each persistent store, set up as a service would
    (``${PREFIX}_BACKING_STORE`` JSON): the backlog of an outage drains after it, and
    events recorded while it drains queue behind it."""
    tag = uuid.uuid4().hex[:8]
    store_type = kind.removesuffix("-write-ahead")
    parts = urlsplit(proxy.url())
    environ = {"SVC_AUDIT_QUEUE_NAME": queue, "SVC_AUDIT_HOSTNAME": parts.hostname or "",
               "SVC_AUDIT_PORT": str(parts.port),
               "SVC_AUDIT_BACKING_STORE": _store_config(store_type, tmp_path, request)}
    before, during, after = (make_events(200, tag + "a"), make_events(700, tag + "b"),
                             make_events(200, tag + "c"))
    with Auditor(OBSERVER, env_prefix="SVC_AUDIT", environ=environ,
                 write_ahead=kind.endswith("write-ahead")) as auditor:
        assert auditor.store.__class__.__name__.lower().startswith(store_type)
        recorded = _record_all(auditor, before)
        assert auditor.flush(30)
        proxy.refuse()
        recorded += _record_all(auditor, during)
        deadline = time.monotonic() + 15
        while auditor.store.pending() != len(during):
            assert time.monotonic() < deadline, (
                f"{auditor.store.pending()} of {len(during)} events in the store")
            time.sleep(0.02)
        proxy.accept()
        recorded += _record_all(auditor, after)
        assert auditor.flush(30)
        assert auditor.store.pending() == 0
        assert _value(auditor, "segmentlog_auditor_drain_events_total") >= len(during)
    # PostgreSQL's jsonb keeps an event's content, not its bytes (keys come back in its
    # own order): the SQL store's events are compared as JSON (module doc of store.sql).
    assert check_delivery(consume(rabbitmq_url, queue), recorded,
                          exact=store_type != "sql") == 0


def test_broker_unreachable_at_start_buffers_then_delivers(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    proxy.refuse()
    with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                 connect_wait=0.5) as auditor:
        recorded = _record_all(auditor, make_events(200))
        assert not auditor.flush(0.3)
        proxy.accept()
        assert auditor.flush(30)
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def _blocked_recorder(auditor: Auditor, events: list[Event]) -> tuple[threading.Thread,
                                                                        dict[str, Any]]:
    box: dict[str, Any] = {"done": 0}

    def run() -> None:
        try:
            for e in events:
                auditor.record(e)
                box["done"] += 1
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_store_full_blocks_record_then_resumes_with_nothing_lost(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    events = make_events(1500)
    with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                 backing_store=MemoryStore(max_events=300), queue_size=100) as auditor:
        proxy.refuse()
        while auditor.publisher.is_available():
            time.sleep(0.01)
        thread, box = _blocked_recorder(auditor, events)
        deadline = time.monotonic() + 10
        while _value(auditor, "segmentlog_auditor_store_full") != 1:
            assert time.monotonic() < deadline, "the store never filled"
            time.sleep(0.02)
        time.sleep(0.5)
        stuck_at = box["done"]
        assert thread.is_alive() and stuck_at < len(events), "record() did not block"
        time.sleep(0.3)
        assert box["done"] == stuck_at, "record() kept returning with the buffer full"
        proxy.accept()
        thread.join(60)
        assert not thread.is_alive() and "error" not in box, box.get("error")
        assert auditor.flush(60)
        assert _value(auditor, "segmentlog_auditor_store_full") == 0
        assert _value(auditor, "segmentlog_auditor_backpressure_seconds_total") > 0.5
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


def test_full_timeout_raises_backing_store_full_and_keeps_what_was_accepted(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    events = make_events(400)
    with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                 backing_store=MemoryStore(max_events=100), queue_size=50,
                 full_timeout=0.3) as auditor:
        proxy.refuse()
        while auditor.publisher.is_available():
            time.sleep(0.01)
        accepted = []
        with pytest.raises(BackingStoreFull, match="full_timeout"):
            for e in events:
                auditor.record(e)
                accepted.append(e)
        assert 100 <= len(accepted) < len(events)
        proxy.accept()
        assert auditor.flush(30)
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in accepted])


def test_write_ahead_full_store_blocks_until_drained(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    events = make_events(300)
    with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                 backing_store=MemoryStore(max_events=100), write_ahead=True) as auditor:
        proxy.refuse()
        while auditor.publisher.is_available():
            time.sleep(0.01)
        thread, box = _blocked_recorder(auditor, events)
        deadline = time.monotonic() + 10
        while box["done"] < 100:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)
        assert box["done"] == 100 and thread.is_alive(), "write-ahead record() did not block"
        proxy.accept()
        thread.join(30)
        assert "error" not in box, box.get("error")
        assert auditor.flush(30)
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


def _file_store_env(queue: str, port: int, directory: Path) -> dict[str, str]:
    """A service's environment: the broker on 127.0.0.1:``port``, a file store in
    ``directory`` (the configuration every worker of a service shares)."""
    return {"AUDIT_QUEUE_NAME": queue, "AUDIT_HOSTNAME": "127.0.0.1", "AUDIT_PORT": str(port),
            "AUDIT_BACKING_STORE": orjson.dumps(
                {"type": "file", "params": {"directory": str(directory)}}).decode()}


def test_close_with_broker_down_persists_to_the_file_store_for_the_next_auditor(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    config = _file_store_env(queue, proxy.port, tmp_path / "buf")
    proxy.refuse()
    first = Auditor(OBSERVER, env_prefix="AUDIT", environ=config, connect_wait=0)
    recorded = _record_all(first, make_events(700))
    # A deadline past the test's own timeout: close() returns because everything went
    # to the durable store and the broker is gone (Rule 5 of segmentlog.audit_policy,
    # pinned with a fake clock in test_audit_policy.py), never because time ran out.
    first.close(timeout=3600)
    assert _value(first, "segmentlog_auditor_undelivered_at_close_events_total") == 0
    proxy.accept()
    with Auditor(OBSERVER, env_prefix="AUDIT", environ=config) as second:
        assert second.flush(30)
        assert _value(second, "segmentlog_auditor_drain_events_total") == 700
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_a_live_auditor_delivers_the_backlog_a_closed_one_left_in_the_shared_directory(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    # Issue 16: workers share one configuration; a worker that exits during an outage
    # leaves its log, and a live worker delivers it once the broker is back (not only a
    # restart of that same worker).
    config = _file_store_env(queue, proxy.port, tmp_path / "buf")
    proxy.refuse()
    with Auditor(OBSERVER, env_prefix="AUDIT", environ=config, connect_wait=0) as live:
        gone = Auditor(OBSERVER, env_prefix="AUDIT", environ=config, connect_wait=0)
        recorded = _record_all(gone, make_events(300, tag="gone"))
        gone.close(timeout=1)
        proxy.accept()
        deadline = time.monotonic() + 60  # adoption is checked every few seconds
        while (_value(live, "segmentlog_auditor_drain_events_total") < 300
               and time.monotonic() < deadline):
            time.sleep(0.1)
        assert _value(live, "segmentlog_auditor_drain_events_total") == 300
    # Consumed once the drain is over (consume_all acks what it is sent), at least once.
    check_delivery(consume(rabbitmq_url, queue), recorded)
    assert not os.listdir(tmp_path / "buf" / "logs")  # delivered logs are removed


@pytest.mark.parametrize("store_type", ["file", "sqlite", "sql"])
def test_the_confirmed_part_of_a_batch_cut_short_is_not_sent_again_by_the_next_process(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        request: pytest.FixtureRequest, store_type: str) -> None:
    # Issue 16: duplicates only from messages whose confirm never came. A full queue
    # (x-overflow reject-publish) nacks the tail of a drained batch: its first events
    # were confirmed, and the auditor closes before the rest goes. The next process to
    # take the store delivers the rest, and must not send the confirmed events again.
    store = _store_config(store_type, tmp_path, request)
    environ = {"AUDIT_QUEUE_NAME": queue, "AUDIT_HOSTNAME": "127.0.0.1",
               "AUDIT_PORT": str(proxy.port), "AUDIT_BACKING_STORE": store,
               "AUDIT_QUEUE_ARGUMENTS": '{"x-max-length": 4, "x-overflow": "reject-publish"}'}
    proxy.refuse()  # so that the drain's first batch holds every event
    with Auditor(OBSERVER, env_prefix="AUDIT", environ=environ, write_ahead=True,
                 connect_wait=0, registry=CollectorRegistry()) as first:
        recorded = _record_all(first, make_events(10))
        proxy.accept()
        deadline = time.monotonic() + 30
        while (_value(first, "audittools_failed_submissions_total") < 6
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert _value(first, "audittools_successful_submissions_total") == 4
        first.close(timeout=0.5)
    held = [(mid, body) for mid, _, body in consume_all(rabbitmq_url, queue, passive=True)]
    assert check_delivery(held, recorded[:4], exact=store_type != "sql") == 0
    other = f"{queue}-next"
    try:
        with Auditor(OBSERVER, env_prefix="AUDIT", registry=CollectorRegistry(),
                     environ={**environ, "AUDIT_QUEUE_NAME": other,
                              "AUDIT_QUEUE_ARGUMENTS": ""}) as second:
            assert second.flush(30)
        assert check_delivery(consume(rabbitmq_url, other), recorded[4:],
                              exact=store_type != "sql") == 0
    finally:
        delete_queue(rabbitmq_url, other)


def test_close_right_after_the_broker_came_back_delivers_the_backlog(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    # Issue 16, item 4: close(timeout=120) returned at once and left the backlog in the
    # store while the publisher waited out its backoff, the broker back already.
    proxy.refuse()
    store = FileStore(tmp_path / "buf")
    auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                      backing_store=store, connect_wait=0,
                      publisher_options={"backoff_initial": 30.0, "backoff_max": 30.0})
    try:
        recorded = _record_all(auditor, make_events(300))
        while auditor.publisher.rounds_failed < 1:  # now waiting out a 30 s backoff
            time.sleep(0.05)
        proxy.accept()
        auditor.close(timeout=60)
        assert _value(auditor, "segmentlog_auditor_drain_events_total") == 300
        assert store.pending() == 0
    finally:
        auditor.close()
        store.close()
    check_delivery(consume(rabbitmq_url, queue), recorded)


def test_close_with_memory_store_and_broker_down_reports_the_lost_events(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture) -> None:
    proxy.refuse()
    auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue, connect_wait=0)
    recorded = _record_all(auditor, make_events(50))
    with caplog.at_level(logging.ERROR, logger="segmentlog.audit"), \
            pytest.raises(UndeliveredEventsError, match="memory store") as info:
        auditor.close(timeout=0.5)
    # Reported to the caller with their bytes (a return value nobody checks, or a log
    # line alone, would lose them silently), and counted.
    assert info.value.count == 50
    assert info.value.events == recorded
    assert _value(auditor, "segmentlog_auditor_undelivered_at_close_events_total") == 50
    assert "50 event(s) undelivered in the memory store" in caplog.text


# ------------------------------------------------------------------ bad input
def test_bad_events_are_rejected_before_they_are_buffered(rabbitmq_url: str, queue: str) -> None:
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as auditor:
        with pytest.raises(InvalidEventError, match="outcome"):
            auditor.record(dict(_mapping(1), outcome="maybe"))
        with pytest.raises(InvalidEventError, match=r"target\.id"):
            auditor.record(dict(_mapping(1), target={"typeURI": "x"}))
        with pytest.raises(InvalidEventError, match="JSON-serialisable"):
            auditor.record(dict(_mapping(1), attachments=[{"typeURI": "x", "content": object()}]))
        with pytest.raises(InvalidEventError, match="CADF Event or a mapping"):
            auditor.record("not an event")  # type: ignore[arg-type]
        good = make_events(1)
        auditor.record(good[0])
        assert auditor.flush(30)
        assert _value(auditor, "segmentlog_auditor_recorded_events_total") == 1
    assert check_delivery(consume(rabbitmq_url, queue), [(good[0].id, wire(good[0]))]) == 0


@pytest.mark.parametrize("write_ahead", [False, True])
def test_values_json_cannot_carry_are_refused_by_record_naming_the_field(
        rabbitmq_url: str, queue: str, tmp_path: Path, write_ahead: bool) -> None:
    # Issue 15 item 8: NaN and infinity went out as null; a lone surrogate was accepted
    # and dropped later on the delivery thread with a log line.
    model = make_events(1)[0]
    bad: list[tuple[Any, str]] = [
        (dict(_mapping(1), ratio=float("nan")), "ratio"),
        (dict(_mapping(1), initiator={"typeURI": "u", "id": "u-1", "name": "caf\udce9"}),
         "initiator.name"),
        (dict(_mapping(1), extra={"n": 2**70}), "extra.n"),
        (dict(_mapping(1), extra={"blob": b"raw"}), "extra.blob"),
        (dict(_mapping(1), extra={7: "seven"}), "extra[7]"),
        (dataclasses.replace(model, id="", attachments=[
            Attachment(type_uri="mime:application/json", content={"v": [float("inf")]})]),
         "attachments[0].content.v[0]"),
    ]
    store = FileStore(tmp_path / "buf", registry=CollectorRegistry())
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     backing_store=store, write_ahead=write_ahead) as auditor:
            for event, field in bad:
                with pytest.raises(InvalidEventError) as info:
                    auditor.record(event)
                assert info.value.field == field, str(info.value)
            assert _value(auditor, "segmentlog_auditor_recorded_events_total") == 0
            assert store.log.stats()["next_seq"] == 0
            auditor.record(model)
            assert auditor.flush(30)
    finally:
        store.close()
    assert check_delivery(consume(rabbitmq_url, queue), [(model.id, wire(model))]) == 0


def test_a_model_holding_a_lone_surrogate_is_refused_when_built_not_dropped_later() -> None:
    # A constant model is serialised on the delivery thread, where an error could only
    # be logged: so it is checked when built.
    with pytest.raises(InvalidEventError) as info:
        dataclasses.replace(make_events(1)[0], request_path="/v1/\udc80")
    assert info.value.field == "requestPath"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"full_timeout": float("nan")}, "full_timeout=nan must be a finite number"),
        ({"full_timeout": float("inf")}, "full_timeout=inf .* or None to block"),
        ({"full_timeout": "5"}, "full_timeout='5' must be a finite number"),
        ({"full_timeout": -1}, "full_timeout=-1"),
        ({"connect_wait": float("nan")}, "connect_wait=nan"),
        ({"publisher_options": {"max_message_size": 0}}, "max_message_size"),
    ],
)
def test_bad_numbers_raise_config_error_naming_the_setting(
        rabbitmq_url: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name="q", **kwargs)


@pytest.mark.parametrize("url", ["amqp://guest:s3cr3t-PW", "amqp://guest:s3cr3t-PW/%2F",
                                 "amqp://guest:s3cr3t-PW@"])
def test_a_url_without_host_is_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="host") as info:
        Auditor(OBSERVER, connection_url=url, queue_name="q", connect_wait=0)
    assert "s3cr3t" not in str(info.value)


def test_write_ahead_rejects_bad_events_before_the_store(
        rabbitmq_url: str, queue: str, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "buf")
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     backing_store=store, write_ahead=True) as auditor:
            with pytest.raises(InvalidEventError, match="JSON-serialisable"):
                auditor.record(dict(_mapping(1), attachments=[{"typeURI": "x",
                                                               "content": {1, 2}}]))
            assert store.log.stats()["pending_records"] == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "AUDIT_QUEUE_NAME"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_PORT": "amqp"}, "AUDIT_PORT"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_PORT": "70000"}, "AUDIT_PORT"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_BACKING_STORE": "{not json"}, "AUDIT_BACKING_STORE"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_BACKING_STORE": '{"type":"floppy"}'},
         "AUDIT_BACKING_STORE"),
        ({"AUDIT_QUEUE_NAME": "q",
          "AUDIT_BACKING_STORE": '{"type":"memory","params":{"max_event":5}}'},
         "max_event"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": "{x-queue-version: 2}"},
         "invalid JSON in AUDIT_QUEUE_ARGUMENTS"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": "[2]"},
         "AUDIT_QUEUE_ARGUMENTS must be a JSON object"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": '{"queue-version": 2}'},
         "'queue-version' is not an x- argument"),
        # Issue 15: these were not checked (the host was spliced into the URL; a wrong
        # argument type made the broker refuse every declaration: an endless outage).
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_HOSTNAME": "rmq.example:5672"}, "AUDIT_HOSTNAME"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_HOSTNAME": "user@rmq.example"}, "AUDIT_HOSTNAME"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_HOSTNAME": "amqp://rmq"}, "AUDIT_HOSTNAME"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_HOSTNAME": "rmq example"}, "AUDIT_HOSTNAME"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": '{"x-queue-version": "2"}'},
         "AUDIT_QUEUE_ARGUMENTS: 'x-queue-version' must be a JSON integer"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": '{"x-queue-version": 3}'},
         "AUDIT_QUEUE_ARGUMENTS: 'x-queue-version' must be 1 or 2"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": '{"x-max-length": 1.5}'},
         "AUDIT_QUEUE_ARGUMENTS: 'x-max-length' must be a JSON integer"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": '{"x-queue-type": 1}'},
         "AUDIT_QUEUE_ARGUMENTS: 'x-queue-type' must be a non-empty JSON string"),
        ({"AUDIT_QUEUE_NAME": "q", "AUDIT_QUEUE_ARGUMENTS": '{"x-custom": {"a": 1}}'},
         "AUDIT_QUEUE_ARGUMENTS: 'x-custom' must be a string, number or boolean"),
    ],
)
def test_bad_configuration_raises_config_error_naming_the_variable(
        environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Auditor(OBSERVER, env_prefix="AUDIT", environ=environ, connect_wait=0)


def test_bad_arguments_raise_config_error_naming_them(rabbitmq_url: str) -> None:
    with pytest.raises(ConfigError, match="env_prefix"):
        Auditor(OBSERVER)
    with pytest.raises(ConfigError, match="queue_name"):
        Auditor(OBSERVER, connection_url=rabbitmq_url)
    with pytest.raises(ConfigError, match="observer"):
        Auditor("limes", connection_url=rabbitmq_url, queue_name="q")  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match=r"observer\.id"):
        Observer("service", "limes", "")
    with pytest.raises(ConfigError, match="queue_size"):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name="q", queue_size=0)
    with pytest.raises(ConfigError, match="backing_store"):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name="q",
                backing_store={"type": "memory"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window"):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name="q",
                publisher_options={"window": 0})
    with pytest.raises(ConfigError, match="drain_batch_size"):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name="q", drain_batch_size=0)


def test_auditor_that_fails_to_start_frees_its_label_on_a_shared_registry(
        rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ConfigError, match="window"):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue, registry=registry,
                publisher_options={"window": 0})
    assert registry.get_sample_value("segmentlog_auditor_backlog_events",
                                     {"auditor": queue}) is None
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                 registry=registry) as auditor:
        assert auditor.metrics.label == auditor.publisher.metrics.label == queue
        # The failed one's memory store was closed too: its label is free again.
        assert registry.get_sample_value("audittools_backing_store_events",
                                         {"store": "memory"}) == 0


def test_connection_from_env_uses_the_originals_defaults() -> None:
    assert connection_from_env("A", {"A_QUEUE_NAME": "audit"}) == (
        "amqp://guest:guest@localhost:5672/%2F", "audit")
    for host, netloc in (("10.0.0.7", "10.0.0.7"), ("::1", "[::1]"), ("[fe80::1]", "[fe80::1]"),
                         ("rmq-0.rmq.svc.cluster.local", "rmq-0.rmq.svc.cluster.local")):
        url, _ = connection_from_env("A", {"A_QUEUE_NAME": "q", "A_HOSTNAME": host})
        assert url == f"amqp://guest:guest@{netloc}:5672/%2F"
    url, _ = connection_from_env("A", {"A_QUEUE_NAME": "q", "A_HOSTNAME": "rmq.example",
                                       "A_PORT": "5673", "A_USERNAME": "svc",
                                       "A_PASSWORD": "p@ss/w:rd"})
    assert url == "amqp://svc:p%40ss%2Fw%3Ard@rmq.example:5673/%2F"


def test_env_configuration_delivers(rabbitmq_url: str, queue: str) -> None:
    parts = urlsplit(rabbitmq_url)
    environ = {"SVC_AUDIT_QUEUE_NAME": queue, "SVC_AUDIT_HOSTNAME": parts.hostname or "",
               "SVC_AUDIT_PORT": str(parts.port or 5672)}
    with Auditor(OBSERVER, env_prefix="SVC_AUDIT", environ=environ) as auditor:
        recorded = _record_all(auditor, make_events(10))
        assert auditor.flush(30)
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_env_queue_arguments_reach_the_queue_declaration(rabbitmq_url: str, queue: str) -> None:
    """${PREFIX}_QUEUE_ARGUMENTS declares a version 2 classic queue (the broker then
    refuses it as version 1), and every event is delivered."""
    parts = urlsplit(rabbitmq_url)
    environ = {"SVC_AUDIT_QUEUE_NAME": queue, "SVC_AUDIT_HOSTNAME": parts.hostname or "",
               "SVC_AUDIT_PORT": str(parts.port or 5672),
               "SVC_AUDIT_QUEUE_ARGUMENTS": '{"x-queue-version": 2}'}
    with Auditor(OBSERVER, env_prefix="SVC_AUDIT", environ=environ) as auditor:
        recorded = _record_all(auditor, make_events(10))
        assert auditor.flush(30)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-version"):
            conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-version": 1})
    finally:
        conn.close()
    got = [(mid, body) for mid, _, body in consume_all(rabbitmq_url, queue, 5.0, passive=True)]
    assert check_delivery(got, recorded) == 0


# ------------------------------------------------------------------ several auditors
def test_two_auditors_in_one_process_keep_their_queues_and_metrics_apart(
        rabbitmq_url: str, queue: str) -> None:
    other = queue + "-b"
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as a, \
                Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=other) as b:
            rec_a = _record_all(a, make_events(300))
            rec_b = _record_all(b, make_events(200))
            assert a.flush(30) and b.flush(30)
            assert _value(a, "audittools_successful_submissions_total") == 300
            assert _value(b, "audittools_successful_submissions_total") == 200
        assert check_delivery(consume(rabbitmq_url, queue), rec_a) == 0
        assert check_delivery(consume(rabbitmq_url, other), rec_b) == 0
    finally:
        delete_queue(rabbitmq_url, other)


def test_two_auditors_on_one_registry_keep_their_own_labelled_series(
        rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    other = queue + "-b"
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     registry=registry) as a, \
                Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=other,
                        registry=registry) as b:
            assert (a.metrics.label, b.metrics.label) == (queue, other)
            assert (a.publisher.metrics.label, b.publisher.metrics.label) == (queue, other)
            rec_a = _record_all(a, make_events(300))
            rec_b = _record_all(b, make_events(200))
            assert a.flush(30) and b.flush(30)
            for auditor, n in ((a, 300), (b, 200)):
                assert _value(auditor, "audittools_successful_submissions_total") == n
                assert _value(auditor, "segmentlog_auditor_recorded_events_total") == n
                assert _value(auditor, "segmentlog_publisher_confirmed_total") == n
                assert _value(auditor, "segmentlog_auditor_backlog_events") == 0
            # Queries written for the unlabelled original still add up (sum over series).
            total = sum(s.value for m in registry.collect()
                        if m.name == "audittools_successful_submissions" for s in m.samples
                        if s.name.endswith("_total"))
            assert total == 500
            # The two memory stores share the registry too (store label memory, memory-2).
            assert registry.get_sample_value("audittools_backing_store_writes_total",
                                             {"store": "memory-2"}) is not None
        assert check_delivery(consume(rabbitmq_url, queue), rec_a) == 0
        assert check_delivery(consume(rabbitmq_url, other), rec_b) == 0
    finally:
        delete_queue(rabbitmq_url, other)


def test_two_auditors_of_one_queue_on_one_registry_get_distinct_labels_freed_on_close(
        rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    first = Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue, registry=registry)
    second = Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     registry=registry)
    try:
        assert (first.metrics.label, second.metrics.label) == (queue, queue + "-2")
        assert second.publisher.metrics.label == queue + "-2"
        rec = _record_all(second, make_events(20))
        assert second.flush(30)
        assert _value(second, "audittools_successful_submissions_total") == 20
        assert _value(first, "audittools_successful_submissions_total") == 0
        second.close()
        # Closed: its gauges are gone, its counters stay (never backwards).
        labels = {"auditor": queue + "-2"}
        assert registry.get_sample_value("segmentlog_auditor_backlog_events", labels) is None
        assert registry.get_sample_value(
            "segmentlog_publisher_connected", {"publisher": queue + "-2"}) is None
        assert registry.get_sample_value(
            "audittools_successful_submissions_total", labels) == 20
        assert registry.get_sample_value(
            "segmentlog_auditor_recorded_events_total", labels) == 20
        # The freed label goes to the next auditor, which counts on from there.
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     registry=registry) as third:
            assert third.metrics.label == queue + "-2"
            rec += _record_all(third, make_events(5))
            assert third.flush(30)
            assert _value(third, "audittools_successful_submissions_total") == 25
            assert _value(third, "segmentlog_auditor_recorded_events_total") == 25
            assert _value(third, "segmentlog_auditor_backlog_events") == 0
    finally:
        second.close()
        first.close()
    assert check_delivery(consume(rabbitmq_url, queue), rec) == 0


def test_foreign_collector_under_an_auditor_metric_name_is_a_config_error_naming_it(
        rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    Counter("audittools_failed_submissions", "someone else's", registry=registry)
    with pytest.raises(ConfigError, match="audittools_failed_submissions"):
        Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue, registry=registry)
    # Nothing half-registered is left behind: only the foreign counter.
    assert [m.name for m in registry.collect()] == ["audittools_failed_submissions"]


def test_metrics_start_at_zero_on_the_given_registry(rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue, registry=registry):
        for name in ("audittools_successful_submissions_total",
                     "audittools_failed_submissions_total",
                     "segmentlog_auditor_recorded_events_total",
                     "segmentlog_auditor_backlog_events",
                     "segmentlog_auditor_drain_events_total",
                     "segmentlog_auditor_backpressure_seconds_total",
                     "segmentlog_auditor_store_full",
                     "segmentlog_auditor_record_to_confirm_seconds_count"):
            assert registry.get_sample_value(name, {"auditor": queue}) == 0, name
        for name in ("segmentlog_publisher_confirmed_total",
                     "segmentlog_publisher_lost_in_flight_total",
                     "segmentlog_publisher_confirm_latency_seconds_count"):
            assert registry.get_sample_value(name, {"publisher": queue}) == 0, name
        assert registry.get_sample_value(
            "audittools_backing_store_events", {"store": "memory"}) == 0


# ------------------------------------------------------------------ the other auditors
def test_null_auditor_checks_events_and_discards_them(caplog: pytest.LogCaptureFixture) -> None:
    auditor = NullAuditor()
    with caplog.at_level(logging.DEBUG, logger="segmentlog.audit"):
        auditor.record(make_events(1)[0])
        auditor.record(_mapping(3))
    assert caplog.text.count("discarded (NullAuditor)") == 2
    with pytest.raises(InvalidEventError, match="outcome"):
        auditor.record(dict(_mapping(1), outcome="maybe"))
    auditor.close()


def test_recording_auditor_expects_events_ignoring_id_time_and_observer() -> None:
    auditor = RecordingAuditor()
    events = make_events(3)
    for e in events:
        auditor.record(e)
    assert [ev["id"] for ev in auditor.events] == [e.id for e in events]
    twins = [Event.from_request(action="update/set", reason_code=200 if i % 7 else 500,
                                initiator=e.initiator, target=e.target,
                                request_path=e.request_path) for i, e in enumerate(events)]
    auditor.expect_events(*twins)
    assert auditor.events == [], "expect_events forgets what it checked"
    auditor.record(_mapping(9))
    with pytest.raises(AssertionError, match="recorded 1 event"):
        auditor.expect_events()
    auditor.record(_mapping(9))
    auditor.ignore_events_until_now()
    auditor.expect_events()
    with pytest.raises(InvalidEventError):
        auditor.record(dict(_mapping(1), initiator=None))
    auditor.close()
    with pytest.raises(LogClosedError):
        auditor.record(_mapping(1))


@pytest.mark.parametrize("store", ["memory", "file"])
def test_an_auditor_made_before_fork_delivers_every_event_once(
        rabbitmq_url: str, queue: str, tmp_path: Path, store: str) -> None:
    # Issue 16: an Auditor made before fork (gunicorn --preload, a module-level auditor)
    # failed in the child with the parent's connection; events recorded before the fork
    # must be delivered by the parent only.
    params = ({"type": "memory", "params": {}} if store == "memory" else
              {"type": "file", "params": {"directory": str(tmp_path / "buf")}})
    where = urlsplit(rabbitmq_url)
    config = {"AUDIT_QUEUE_NAME": queue, "AUDIT_HOSTNAME": str(where.hostname),
              "AUDIT_PORT": str(where.port), "AUDIT_BACKING_STORE": orjson.dumps(params).decode()}
    auditor = Auditor(OBSERVER, env_prefix="AUDIT", environ=config)
    recorded = _record_all(auditor, make_events(50, tag="before"))
    children = []
    for name in ("child-1", "child-2"):
        def child(name: str = name) -> None:
            mine = _record_all(auditor, make_events(40, tag=name))
            auditor.close(timeout=30)  # raises if anything was neither delivered nor kept
            (tmp_path / name).write_bytes(orjson.dumps([[m, b.decode()] for m, b in mine]))
        children.append((name, fork(child)))
    recorded += _record_all(auditor, make_events(30, tag="after"))
    auditor.close(timeout=30)
    for name, pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        recorded += [(m, b.encode()) for m, b in orjson.loads((tmp_path / name).read_bytes())]
    messages = consume(rabbitmq_url, queue)
    got = {mid for mid, _ in messages}
    assert got == {mid for mid, _ in recorded}
    assert len(messages) == len(recorded), "an event was delivered twice"


def test_metrics_go_to_the_default_registry_without_registry(
        rabbitmq_url: str, queue: str) -> None:
    # Issue 16: a service exporting prometheus_client's default registry (its
    # start_http_server(), or the multiprocess collector) saw none of our series.
    from prometheus_client import REGISTRY

    with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                 metrics_name=f"default-{queue}") as first, \
            Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue) as second:
        assert first.registry is REGISTRY and second.registry is REGISTRY
        _record_all(first, make_events(3))
        assert first.flush(30)
        label = {"auditor": f"default-{queue}"}
        assert REGISTRY.get_sample_value(
            "audittools_successful_submissions_total", label) == 3
        assert REGISTRY.get_sample_value(
            "segmentlog_auditor_recorded_events_total", label) == 3
    consume(rabbitmq_url, queue)
