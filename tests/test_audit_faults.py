"""The Auditor through real faults, mid-stream: resets, a silent partition, a broker
restart, and a SIGKILLed process with a write-ahead file store.

Each test records while the fault happens and then counts the queue against what was
recorded (tests/audit_child.py ``check_delivery``): nothing lost, nothing foreign, first
occurrences in recorded order, bodies byte-identical (duplicates are allowed: delivery
is at-least-once). Broker-wide changes are undone in ``finally``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_child import OBSERVER, check_delivery, consume, make_events, wire
from tcpproxy import TcpProxy

from segmentlog.audit import Auditor
from segmentlog.cadf import Event
from segmentlog.store import FileStore

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audit_child.py")


def _confirmed(auditor: Auditor) -> float:
    return auditor.registry.get_sample_value("audittools_successful_submissions_total",
                                             auditor.metrics.labels) or 0


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class _Recorder:
    """Records ``events`` from a thread at a steady pace (a service under load)."""

    def __init__(self, auditor: Auditor, events: list[Event], per_ms: int = 5) -> None:
        self.done = 0
        self.error: BaseException | None = None
        self._auditor = auditor
        self._events = events
        self._per_ms = per_ms
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i, e in enumerate(self._events):
                self._auditor.record(e)
                self.done += 1
                if i % self._per_ms == 0:
                    time.sleep(0.001)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the recorder is stuck"
        assert self.error is None, self.error


def test_connection_resets_mid_stream_lose_nothing_and_keep_order(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    events = make_events(20000)
    store = FileStore(tmp_path / "buf", fsync="never")
    try:
        with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                     backing_store=store) as auditor:
            rec = _Recorder(auditor, events)
            for at in (2000, 8000, 14000):
                _wait_for(lambda at=at: rec.done >= at, f"{at} events recorded")
                proxy.cut()  # RST mid-batch: the tail in flight goes to the store
                if at == 8000:
                    proxy.refuse()  # ...and a short outage: events pile up in the store
                    time.sleep(0.5)
                    proxy.accept()
            rec.join()
            assert auditor.flush(60)
            failed = auditor.registry.get_sample_value("audittools_failed_submissions_total",
                                                       auditor.metrics.labels)
            assert failed is not None and failed > 0, "the faults did not hit a publish"
            assert proxy.accepted >= 4
    finally:
        store.close()
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


def test_silent_partition_mid_stream_loses_nothing_and_keeps_order(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    events = make_events(8000)
    store = FileStore(tmp_path / "buf", fsync="never")
    try:
        with Auditor(OBSERVER, connection_url=proxy.url(), queue_name=queue,
                     backing_store=store) as auditor:
            rec = _Recorder(auditor, events, per_ms=2)
            _wait_for(lambda: _confirmed(auditor) >= 1000, "1000 confirms")
            proxy.go_silent()  # packets dropped, nothing closed: found by the liveness check
            _wait_for(lambda: not auditor.publisher.is_available(), "the partition detected")
            proxy.restore()
            rec.join()
            assert auditor.flush(60)
    finally:
        store.close()
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


def _rabbitmqctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.skip("rabbitmqctl is not installed (needed to restart the broker)")
    subprocess.run([exe, "-q", *args], check=True, capture_output=True, timeout=120)


def test_broker_restart_mid_stream_loses_nothing_and_keeps_order(
        rabbitmq_url: str, queue: str, tmp_path: Path) -> None:
    events = make_events(6000)
    store = FileStore(tmp_path / "buf", fsync="never")
    try:
        with Auditor(OBSERVER, connection_url=rabbitmq_url, queue_name=queue,
                     backing_store=store) as auditor:
            rec = _Recorder(auditor, events, per_ms=1)
            _wait_for(lambda: _confirmed(auditor) >= 500, "500 confirms")
            try:
                _rabbitmqctl("stop_app")
                _wait_for(lambda: rec.done >= 3000, "recording during the outage")
                assert rec.thread.is_alive() or rec.done == len(events)
            finally:
                _rabbitmqctl("start_app")
                _rabbitmqctl("await_startup")
            rec.join()
            assert auditor.flush(60)
            drained = auditor.registry.get_sample_value(
                "segmentlog_auditor_drain_events_total", auditor.metrics.labels)
            assert drained is not None and drained > 0, "nothing went through the store"
    finally:
        store.close()
    check_delivery(consume(rabbitmq_url, queue), [(e.id, wire(e)) for e in events])


def test_sigkill_during_outage_with_write_ahead_file_store_delivers_every_recorded_event(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update({
        "AUDIT_QUEUE_NAME": queue,
        "AUDIT_HOSTNAME": "127.0.0.1",
        "AUDIT_PORT": str(proxy.port),
        "AUDIT_BACKING_STORE": orjson.dumps({"type": "file", "params": {
            "directory": str(tmp_path / "buf"), "fsync": "always"}}).decode(),
    })
    child = subprocess.Popen([sys.executable, CHILD, "record"], stdout=subprocess.PIPE,
                             env=env, text=True)
    printed: list[str] = []
    try:
        assert child.stdout is not None
        stdout = child.stdout

        def read() -> None:
            for line in stdout:
                printed.append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _wait_for(lambda: len(printed) >= 300, "the child recording with the broker up")
        proxy.refuse()  # the outage: every later event lives only in the file store
        mark = len(printed)
        _wait_for(lambda: len(printed) >= mark + 500, "the child recording during the outage")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    reader.join(10)
    if child.stdout is not None:
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    proxy.accept()
    drain = subprocess.run([sys.executable, CHILD, "drain"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert drain.returncode == 0, drain.stdout + drain.stderr[-3000:]
    messages = consume(rabbitmq_url, queue)
    delivered = [mid for mid, _ in messages]
    missing = set(printed) - set(delivered)
    assert not missing, f"{len(missing)} of {len(printed)} recorded events lost by the crash"
    # At most the one event whose record() was running at the kill is not in `printed`.
    assert len(set(delivered) - set(printed)) <= 1
    first: list[str] = []
    seen: set[str] = set()
    for mid in delivered:
        if mid in seen or mid not in printed:
            continue
        seen.add(mid)
        first.append(mid)
    assert first == printed, "order broken across the crash"
    for mid, body in messages:
        assert orjson.loads(body)["id"] == mid
