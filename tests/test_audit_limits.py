"""The Auditor at the edges of what it can keep (issue 15, items 2 and 3), against a real
RabbitMQ: an event too large for the store or broker, a store that refuses one event,
a store that fills (its own limit, and a real full device), and what close() reports.

Outages are tests/tcpproxy.py refusing connections (the proxy fixture closes it, so the
broker is never touched). The full device is a small tmpfs mounted for the test and
unmounted in ``finally``; where mounting is not allowed the test skips, and the same
behaviour is pinned through the store's ``max_total_size``.

Each test counts the queue against what ``record()`` accepted (tests/audit_child.py
``check_delivery``): every accepted event delivered, or named by close()'s
UndeliveredEventsError, never lost silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_child import OBSERVER, check_delivery, consume, make_events, wire
from prometheus_client import CollectorRegistry
from tcpproxy import TcpProxy

from segmentlog.audit import Auditor
from segmentlog.cadf import Attachment, Event
from segmentlog.errors import (
    BackingStoreFull,
    EventTooLargeError,
    InvalidEventError,
    RecordTooLargeError,
    UndeliveredEventsError,
)
from segmentlog.store import BackingStore, FileStore

pytestmark = pytest.mark.rabbitmq

MIB = 1 << 20


def _down(auditor: Auditor, proxy: TcpProxy) -> None:
    proxy.refuse()
    deadline = time.monotonic() + 10
    while auditor.publisher.is_available():
        assert time.monotonic() < deadline, "the publisher did not notice the outage"
        time.sleep(0.01)


def _big(event: Event, size: int) -> Event:
    """``event`` under a new id, with a plain (constant) attachment of ``size`` chars."""
    return dataclasses.replace(event, id="", attachments=[
        Attachment(type_uri="mime:text/plain", content="x" * size)])


@pytest.fixture()
def closing() -> list[Auditor]:
    """Auditors a test opened without ``with``: :func:`_release` closes them if the test
    failed before it did (idempotent otherwise)."""
    return []


def _release(auditors: list[Auditor], store: FileStore) -> None:
    """Close the auditors, then their store: a failing test must not leave a delivery
    thread writing to a store it closed."""
    for auditor in auditors:
        with contextlib.suppress(Exception):
            auditor.close(timeout=0.1)
    store.close()


def _drain_with_a_new_auditor(url: str, queue: str, store: FileStore) -> None:
    with Auditor(OBSERVER, connection_url=url, queue_name=queue,
                 backing_store=store) as second:
        assert second.flush(60)


class _UnknownLimits(FileStore):
    """A durable store that declares neither its event size limit nor its room (as a
    custom store may): the Auditor learns them only from refusals."""

    @property
    def max_event_size(self) -> int | None:
        return None

    def room(self, event_size: int) -> int | None:
        return None


# ------------------------------------------------------------------ one event too large
def test_an_event_larger_than_a_segment_is_refused_at_record_and_the_rest_are_delivered(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    # Issue 15 item 2: accepted, it failed the whole spilled batch again and again, and
    # close() lost all 1002 events with it (a log line, a normal return).
    events = make_events(1000)
    store = FileStore(tmp_path / "buf", max_file_size=MIB, registry=CollectorRegistry())
    try:
        with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                     backing_store=store) as auditor:
            _down(auditor, proxy)
            for e in events[:500]:
                auditor.record(e)
            too_large: list[Any] = [
                _big(events[0], 2 * MIB),  # a constant model: checked by its size bound
                dataclasses.replace(events[0], id="", attachments=[Attachment(
                    type_uri="mime:application/json", content={"blob": "y" * 2 * MIB})]),
                {**events[0].to_dict(OBSERVER.to_dict()), "id": None,
                 "requestPath": "/" + "z" * 2 * MIB},
            ]
            assert auditor.max_event_size == store.max_event_size
            for event in too_large:
                with pytest.raises(EventTooLargeError, match="max_file_size") as info:
                    auditor.record(event)
                # One exception type for "refused before buffering", whichever a caller
                # catches.
                assert isinstance(info.value, InvalidEventError)
                assert isinstance(info.value, RecordTooLargeError)
            # Fits after all: a constant model whose size bound exceeds the limit is
            # serialised in record() and measured.
            near = _big(events[0], store.max_event_size - len(wire(_big(events[0], 0))))
            assert len(wire(near)) == store.max_event_size < near.size_bound
            auditor.record(near)
            for e in events[500:]:
                auditor.record(e)
            recorded = [(e.id, wire(e)) for e in [*events[:500], near, *events[500:]]]
            deadline = time.monotonic() + 30
            while store.pending() != len(recorded):
                assert time.monotonic() < deadline, f"{store.pending()} events stored"
                time.sleep(0.02)
            proxy.accept()
            assert auditor.flush(60)
    finally:
        store.close()
    assert check_delivery(consume(rabbitmq_url, queue), recorded) == 0


def test_a_store_refusing_one_event_stores_the_others_and_close_reports_that_one(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        closing: list[Auditor]) -> None:
    # A store that does not declare its limit: the event passes record(), and the
    # store's refusal (RecordTooLargeError) must set it aside alone.
    events = make_events(1000)
    big = _big(events[0], 2 * MIB)
    store = _UnknownLimits(tmp_path / "buf", max_file_size=MIB, registry=CollectorRegistry())
    try:
        auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                          backing_store=store)
        closing.append(auditor)
        _down(auditor, proxy)
        for e in [*events[:500], big, *events[500:]]:
            auditor.record(e)
        with pytest.raises(UndeliveredEventsError, match="refused by the backing store") as info:
            auditor.close(timeout=5)
        assert [mid for mid, _ in info.value.events] == [big.id]
        assert info.value.events[0][1] == wire(big)
        assert store.pending() == len(events)
        proxy.accept()
        _drain_with_a_new_auditor(proxy.url(), queue, store)
    finally:
        _release(closing, store)
    assert check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events]) == 0


# ------------------------------------------------------------------ a store that fills
def _record_until_refused(auditor: Auditor, events: list[Event]) -> list[Event]:
    accepted = []
    with pytest.raises(BackingStoreFull, match="full_timeout"):
        for e in events:
            auditor.record(e)
            accepted.append(e)
    return accepted


def test_default_mode_store_full_blocks_record_before_accepting_what_it_cannot_keep(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        closing: list[Auditor]) -> None:
    # Issue 15 item 3 (max_total_size): record() went on accepting queue_size events
    # into memory after the store was full, and close() dropped them all (a log line).
    events = make_events(20_000)
    store = FileStore(tmp_path / "buf", max_file_size=64 << 10, max_total_size=256 << 10,
                      fsync="never", registry=CollectorRegistry())
    try:
        auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                          backing_store=store, full_timeout=0.5)
        closing.append(auditor)
        _down(auditor, proxy)
        accepted = _record_until_refused(auditor, events)
        assert 0 < len(accepted) < 2000, "record() accepted far more than the store holds"
        auditor.close(timeout=1)  # everything accepted is in the store: nothing to report
        assert store.pending() == len(accepted)
        proxy.accept()
        _drain_with_a_new_auditor(proxy.url(), queue, store)
    finally:
        _release(closing, store)
    assert check_delivery(consume(rabbitmq_url, queue),
                          [(e.id, wire(e)) for e in accepted]) == 0


@contextlib.contextmanager
def _small_device(kind: str, path: Path, size_kib: int) -> Iterator[Path]:
    """A file system of ``size_kib`` at ``path``: a tmpfs, or ext4 on a loop device
    (root, mount(8) and mkfs.ext4 needed; else the test skips), unmounted however the
    test ends."""
    path.mkdir()
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs",
                   str(path)]
    else:
        image = path.with_suffix(".img")
        with open(image, "wb") as f:
            f.truncate(size_kib << 10)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True,
                              text=True, check=False)
        if made.returncode:
            pytest.skip(f"cannot make an ext4 image here: {made.stderr.strip()}")
        command = ["mount", "-o", "loop", str(image), str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        pytest.skip(f"cannot mount here: {exc}")
    if done.returncode:
        pytest.skip(f"cannot mount a {kind} here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_default_mode_on_a_full_device_blocks_record_and_keeps_every_accepted_event(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        closing: list[Auditor], kind: str) -> None:
    # Issue 15 item 3 on a real full device (no max_total_size: ENOSPC at rotation).
    events = make_events(20_000)
    with _small_device(kind, tmp_path / "dev", 2048) as device:
        store = FileStore(device / "buf", max_file_size=128 << 10, fsync="never",
                          registry=CollectorRegistry())
        try:
            auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                              backing_store=store, full_timeout=0.5)
            closing.append(auditor)
            _down(auditor, proxy)
            accepted = _record_until_refused(auditor, events)
            # (The bug accepted all of them into memory: queue_size is 50,000.)
            assert 0 < len(accepted) < len(events)
            auditor.close(timeout=1)
            assert store.pending() == len(accepted)
            proxy.accept()
            _drain_with_a_new_auditor(proxy.url(), queue, store)
        finally:
            _release(closing, store)
    assert check_delivery(consume(rabbitmq_url, queue),
                          [(e.id, wire(e)) for e in accepted]) == 0


def _small_unknown_store(tmp_path: Path) -> _UnknownLimits:
    """A small file store (four segments of 64 KiB) that cannot tell its room."""
    return _UnknownLimits(tmp_path / "buf", max_file_size=64 << 10, max_total_size=256 << 10,
                          fsync="never", registry=CollectorRegistry())


def _record_until_full(store: BackingStore, proxy: TcpProxy, queue: str,
                       closing: list[Auditor]) -> tuple[Auditor, list[Event]]:
    """An Auditor over ``store`` with the broker down, recording until record() refuses
    (BackingStoreFull after full_timeout): it and the events it accepted."""
    auditor = Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                      backing_store=store, full_timeout=0.5)
    closing.append(auditor)
    _down(auditor, proxy)
    accepted: list[Event] = []
    with contextlib.suppress(BackingStoreFull):
        for e in make_events(3000):
            auditor.record(e)
            accepted.append(e)
    return auditor, accepted


def test_close_raises_with_every_accepted_event_the_full_store_refused(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        closing: list[Auditor]) -> None:
    # A store that cannot tell its room: memory fills before the store says "full".
    # What it refused is not dropped with a log line: close() raises with the events.
    store = _small_unknown_store(tmp_path)
    try:
        auditor, accepted = _record_until_full(store, proxy, queue, closing)
        with pytest.raises(UndeliveredEventsError, match="neither delivered nor stored") as info:
            auditor.close(timeout=0.5)
        stored = store.pending()
        assert stored > 0 and info.value.count == len(accepted) - stored
        assert info.value.events == [(e.id, wire(e)) for e in accepted[stored:]]
        proxy.accept()
        _drain_with_a_new_auditor(proxy.url(), queue, store)
    finally:
        _release(closing, store)
    assert check_delivery(consume(rabbitmq_url, queue),
                          [(e.id, wire(e)) for e in accepted[:stored]]) == 0


def test_close_waits_for_the_broker_while_the_store_refuses_what_it_holds(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path,
        closing: list[Auditor]) -> None:
    # A durable store normally lets close() return at once with the broker down (the
    # store keeps the rest); events the store refused have only the broker left.
    store = _small_unknown_store(tmp_path)
    try:
        auditor, accepted = _record_until_full(store, proxy, queue, closing)
        assert store.pending() < len(accepted), "the store took everything"
        returned = threading.Event()
        closer = threading.Thread(target=lambda: (auditor.close(timeout=60), returned.set()),
                                  daemon=True)
        closer.start()
        assert not returned.wait(1.0), "close() gave up while the broker was away"
        proxy.accept()
        closer.join(60)
        assert returned.is_set(), "close() did not finish after the broker came back"
        proxy.accept()
        _drain_with_a_new_auditor(proxy.url(), queue, store)
    finally:
        _release(closing, store)
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in accepted])


def test_close_at_the_end_of_a_with_block_does_not_hide_the_blocks_exception(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    proxy.refuse()
    store = _UnknownLimits(tmp_path / "buf", max_file_size=64 << 10,
                           registry=CollectorRegistry())
    try:
        with pytest.raises(RuntimeError, match="the service failed") as info, \
                Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                        backing_store=store, connect_wait=0) as auditor:
            auditor.record(_big(make_events(1)[0], 128 << 10))  # the store refuses it
            raise RuntimeError("the service failed")
        # The block's exception goes on; the loss rides along on it.
        assert any("1 recorded event(s) were neither delivered nor stored" in note
                   for note in info.value.__notes__)
    finally:
        store.close()


def test_write_ahead_refuses_an_event_larger_than_a_segment_before_the_store(
        rabbitmq_url: str, queue: str, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "buf", max_file_size=MIB, registry=CollectorRegistry())
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     backing_store=store, write_ahead=True) as auditor:
            with pytest.raises(EventTooLargeError, match="max_file_size"):
                auditor.record(_big(make_events(1)[0], 2 * MIB))
            assert store.log.stats()["pending_records"] == 0
    finally:
        store.close()
    assert os.path.isdir(tmp_path / "buf")
