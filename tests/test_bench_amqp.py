"""The broker benchmarks (benchmarks/bench_publisher.py, bench_auditor.py) still run.

Functional only, with a few thousand messages: every row is reported with a positive
rate, the raw ceiling client gets every message stored, and no queue is left behind.
Speed is never judged here (the machine is shared); benchmarks/README.md has numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest
from amqptools import delete_queue

pytestmark = pytest.mark.rabbitmq

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(script: str, url: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--url", url, "--json", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _bench_queues() -> set[str]:
    """Queues named like the benchmarks' on the local broker (empty without rabbitmqctl)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return set()
    out = subprocess.run([ctl, "list_queues", "name", "--quiet"],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    return {q for q in out.split() if q.startswith("segmentlog-bench-")}


def test_bench_publisher_reports_every_window_and_the_raw_ceiling(rabbitmq_url: str) -> None:
    before = _bench_queues()
    result = _bench("bench_publisher.py", rabbitmq_url, "--messages", "3000",
                    "--each-messages", "200", "--batch", "1000", "--windows", "10,1000")
    assert set(result["windows"]) == {"10", "1000"}
    for row in result["windows"].values():
        assert row["rate"] > 0 and row["vs_no_confirm"] > 0 and row["vs_confirm_each"] > 0
    assert result["no_confirm_rate"] > 0 and result["confirm_each_rate"] > 0
    assert result["raw_no_confirm_rate"] > 0 and result["raw_window_rate"] > 0
    assert result["raw_window"] == 1000 and result["target_window"] == 1000
    assert _bench_queues() <= before


def test_raw_ceiling_client_stores_every_message(rabbitmq_url: str) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import raw_amqp
    finally:
        sys.path.remove(str(BENCH))
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        ch = conn.channel()
        queue = f"segmentlog-test-raw-{uuid.uuid4().hex[:10]}"
        ch.queue_declare(queue, durable=True)
        body = b"x" * 200_000  # several body frames each
        messages = [(f"raw-{i}", body if i % 50 == 0 else b"{}") for i in range(1500)]
        def stored() -> None:  # the no-confirm run's clock stops when all are in
            deadline = time.monotonic() + 30
            while ch.queue_declare(queue, passive=True).method.message_count < 2 * n:
                assert time.monotonic() < deadline, "raw no-confirm publishes not stored"
                time.sleep(0.01)

        n = len(messages)
        assert raw_amqp.publish(rabbitmq_url, queue, messages, window=100) > 0
        assert ch.queue_declare(queue, passive=True).method.message_count == n  # all acked
        assert raw_amqp.publish(rabbitmq_url, queue, messages, window=None, done=stored) > 0
        got = [ch.basic_get(queue, auto_ack=True) for _ in range(2 * n)]
        assert [(props.message_id, body) for _, props, body in got] == messages * 2
    finally:
        conn.close()
        delete_queue(rabbitmq_url, queue)


def test_bench_auditor_reports_record_drain_and_recovery(rabbitmq_url: str) -> None:
    result = _bench("bench_auditor.py", rabbitmq_url, "--records", "2000", "--backlog", "2000")
    assert result["record"]["model"]["median_us"] > 0
    assert result["record"]["serialise_only"]["median_us"] > 0
    assert result["record"]["model_with_container"]["median_us"] > 0
    assert result["drain"]["drain_rate"] > 0 and result["drain"]["recovery_to_first_s"] > 0
    assert result["raw_no_confirm_rate"] > 0 and result["publisher_rate"] > 0
    assert set(result["targets"]) == {"record_median_under_5us",
                                      "drain_at_least_0.8x_no_confirm", "recovery_under_1s"}
