"""asyncio: ``arecord``, ``aclose`` and ``aflush`` of the Auditor and its doubles never
block the event loop (segmentlog/audit.py: Auditor.arecord; audit_doubles.AuditorBase)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from audit_child import OBSERVER, check_delivery, consume, make_events, wire
from prometheus_client import CollectorRegistry
from tcpproxy import TcpProxy

from segmentlog.audit import Auditor, AuditorBase, EventLike, NullAuditor, RecordingAuditor
from segmentlog.errors import InvalidEventError, LogClosedError
from segmentlog.store import MemoryStore


async def _ticker(ticks: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        ticks[0] += 1
        await asyncio.sleep(0.005)


def _store_full(auditor: Auditor) -> float:
    value = auditor.registry.get_sample_value("segmentlog_auditor_store_full",
                                              auditor.metrics.labels)
    assert value is not None
    return value


def test_arecord_on_a_full_store_waits_without_blocking_the_loop(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    events = make_events(600)

    async def main(auditor: Auditor) -> None:
        ticks = [0]
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(ticks, stop))
        done = [0]

        async def recorder() -> None:
            for e in events:
                await auditor.arecord(e)
                done[0] += 1

        task = asyncio.create_task(recorder())
        while _store_full(auditor) != 1:
            assert not task.done(), "every event fit: the store never filled"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        stuck_at, ticks_at = done[0], ticks[0]
        await asyncio.sleep(0.3)
        # The recorder waits for room while the loop runs other tasks.
        assert not task.done() and done[0] == stuck_at < len(events)
        assert ticks[0] > ticks_at, "the event loop was blocked while arecord waited"
        proxy.accept()
        await asyncio.wait_for(task, 60)
        assert await auditor.aflush(60)
        stop.set()
        await ticker

    with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                 registry=CollectorRegistry(), backing_store=MemoryStore(max_events=200),
                 queue_size=50, full_timeout=20) as auditor:  # a blocked loop fails, not hangs
        proxy.refuse()
        while auditor.publisher.is_available():
            asyncio.run(asyncio.sleep(0.01))
        asyncio.run(main(auditor))
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


@pytest.mark.parametrize("write_ahead", [False, True], ids=["queued", "write-ahead"])
def test_arecord_delivers_like_record_and_aclose_closes(
        rabbitmq_url: str, queue: str, write_ahead: bool) -> None:
    events = make_events(50)

    async def main() -> None:
        auditor = Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                          registry=CollectorRegistry(), write_ahead=write_ahead,
                          backing_store=MemoryStore(max_events=100))
        for e in events:
            await auditor.arecord(e)
        assert await auditor.aflush(30)
        await auditor.aclose()
        with pytest.raises(LogClosedError):
            await auditor.arecord(events[0])
        await auditor.aclose()  # idempotent, as close()

    asyncio.run(main())
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


def test_arecord_refuses_a_bad_event_as_record_does(rabbitmq_url: str, queue: str) -> None:
    async def main() -> None:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     registry=CollectorRegistry()) as auditor, \
                pytest.raises(InvalidEventError, match="eventType"):
            await auditor.arecord({"typeURI": "x", "outcome": "maybe"})

    asyncio.run(main())


def test_doubles_offer_the_async_methods() -> None:
    event = make_events(1)[0]

    async def main() -> None:
        recording = RecordingAuditor()
        await recording.arecord(event)
        assert await recording.aflush()
        recording.expect_events(event)
        await recording.aclose()
        with pytest.raises(LogClosedError):
            await recording.arecord(event)
        null = NullAuditor()
        await null.arecord(event)
        with pytest.raises(InvalidEventError):
            await null.arecord({"typeURI": "x"})
        assert await null.aflush()
        await null.aclose()

    asyncio.run(main())


def test_a_custom_auditor_gets_arecord_run_in_a_worker_thread() -> None:
    class Custom(AuditorBase):
        def __init__(self) -> None:
            self.threads: list[int] = []
            self.closed = False

        def record(self, event: EventLike) -> None:
            self.threads.append(threading.get_ident())

        def close(self, timeout: float = 10.0) -> None:
            self.closed = True

    async def main() -> None:
        auditor = Custom()
        await auditor.arecord(make_events(1)[0])
        assert auditor.threads and auditor.threads[0] != threading.get_ident()
        assert await auditor.aflush()
        await auditor.aclose()
        assert auditor.closed

    asyncio.run(main())
