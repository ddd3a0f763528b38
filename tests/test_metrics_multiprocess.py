"""prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, the usual gunicorn
setup): the series of several worker processes reach one scrape, summed (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import childenv
import pytest

pytestmark = pytest.mark.rabbitmq

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, multiprocessing, sys
    from prometheus_client import CollectorRegistry, multiprocess

    def worker(url, queue, n):
        from audit_child import OBSERVER, make_events
        from segmentlog.audit import Auditor
        auditor = Auditor(OBSERVER, connection_url=url, queue_name=queue)  # default REGISTRY
        for event in make_events(n):
            auditor.record(event)
        assert auditor.flush(30)
        auditor.close()

    if __name__ == "__main__":
        url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(url, queue, n)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, p.exitcode
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        out = {}
        for family in registry.collect():
            for s in family.samples:
                key = s.name + json.dumps(s.labels, sort_keys=True)
                out[key] = s.value
        print(json.dumps(out))
""")


def test_two_worker_processes_are_scraped_as_one(rabbitmq_url: str, tmp_path: Any) -> None:
    from amqptools import delete_queue

    queue = f"segmentlog-multiproc-{os.getpid()}"
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
               PYTHONPATH=childenv.pythonpath(str(HERE)))
    script = tmp_path / "scrape.py"  # a file: spawned workers import their function
    script.write_text(SCRIPT)
    try:
        res = subprocess.run([sys.executable, str(script), rabbitmq_url, queue, "25"],
                             env=env, capture_output=True, text=True, timeout=300, cwd=HERE)
    finally:
        delete_queue(rabbitmq_url, queue)
    assert res.returncode == 0, res.stderr[-3000:]
    samples: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])

    def total(name: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(name + "{"))

    assert total("audittools_successful_submissions_total") == 50
    # read at scrape time in one process; synced to the files in multiprocess mode
    assert total("segmentlog_auditor_recorded_events_total") == 50
    assert any(k.startswith("segmentlog_auditor_backlog_events{") for k in samples)
