"""A real gunicorn with 4 workers, --preload and max_requests recycling, one audit event
per request (tests/gunicorn_app.py), the broker cut for a while and a worker SIGKILLed:
every event whose request got a 2xx is delivered, and no log is left behind (issue 16).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import childenv
import orjson
import pytest
from amqptools import consume_all, message_count
from servertools import free_port
from tcpproxy import TcpProxy

pytestmark = pytest.mark.rabbitmq

HERE = Path(__file__).resolve().parent


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def test_gunicorn_workers_deliver_every_acknowledged_event(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, tmp_path: Any) -> None:
    buf = tmp_path / "buf"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=childenv.pythonpath(str(HERE)),
               AUDIT_HOSTNAME="127.0.0.1", AUDIT_PORT=str(proxy.port), AUDIT_QUEUE_NAME=queue,
               AUDIT_BACKING_STORE=orjson.dumps(
                   {"type": "file", "params": {"directory": str(buf)}}).decode())
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "4", "--preload", "--max-requests", "25",
         "--max-requests-jitter", "5", "--graceful-timeout", "30", "-b",
         f"127.0.0.1:{port}", "gunicorn_app:app"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    acknowledged: list[str] = []
    by_worker: dict[str, list[str]] = {}
    try:
        deadline = time.monotonic() + 60
        while _get(port, "/ready")[0] != 200:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        killed = False
        for i in range(150):
            if i == 40:
                proxy.refuse()  # the broker goes away; events go to the workers' logs
            status, body = _get(port, f"/v1/req/{i}")
            if status == 200:
                event_id, pid = body.split()
                acknowledged.append(event_id)
                by_worker.setdefault(pid, []).append(event_id)
                if i >= 70 and not killed:
                    os.kill(int(pid), signal.SIGKILL)  # a worker dies holding its backlog
                    killed = True
        proxy.accept()
        want = len(acknowledged) + 1  # + the /ready request's event
        deadline = time.monotonic() + 120  # adoption runs every few seconds
        while message_count(rabbitmq_url, queue) < want and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(90)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()  # type: ignore[union-attr]
    assert killed and len(acknowledged) == 150
    in_queue = [mid for mid, _, _ in consume_all(rabbitmq_url, queue, passive=True)]
    missing = set(acknowledged) - set(in_queue)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events lost"
    first = list(dict.fromkeys(in_queue))  # at least once: duplicates keep their first place
    for pid, ids in by_worker.items():  # each worker's events in the order it recorded them
        mine = set(ids)
        assert [m for m in first if m in mine] == ids, f"worker {pid}: order broken"
    left = list((buf / "logs").iterdir()) if (buf / "logs").exists() else []
    assert not left, f"logs left behind: {left}"
