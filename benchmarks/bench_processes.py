"""Many worker processes on one file-store directory (issue 16's speed targets), one run.

Two figures, each a ratio of two rows measured in this same run (medians of
``--repeats`` interleaved rounds):

* **record() from N processes**: N spawned processes, each with an Auditor over one
  shared file-store directory (a log each), record ``--events`` CADF events (built
  before the clock) while the broker is away (an address nobody listens on), then
  ``close()``, which returns once every event is in the store. The clock runs from the
  common start to the last close: accepted *and kept*. Target: 4 processes >= 3x one.
  On a machine with fewer cores than processes the processes share the CPU, which
  bounds the ratio near the core count; the row says how many cores there were.
* **adoption drain**: a 100 k-event backlog drained (``read_encoded_up_to(1000)`` +
  commit, what the Auditor's drain calls) from the store's own log, against the same
  backlog left by a process that is gone and adopted (``adopt()``, timed too). Target:
  adopted >= 0.8x own.

Usage: python benchmarks/bench_processes.py [--dir PATH] [--events 20000]
       [--backlog 100000] [--processes 4] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)
from prometheus_client import CollectorRegistry

from segmentlog.bench import CADF_EVENT
from segmentlog.store import FileStore

NOBODY = "amqp://guest:guest@127.0.0.1:1/%2F"  # connection refused: the broker is away


def _recorder(directory: str, events: int, start: Any, out: Any) -> None:
    from segmentlog.audit import Auditor
    from segmentlog.cadf import Event, Observer, Resource

    user = Resource(type_uri="service/security/account/user", id="u-1")
    target = Resource(type_uri="service/resources/project", id="p-1")
    batch = [Event.from_request(action="update/set", reason_code=200, initiator=user,
                                target=target, request_path=f"/v1/projects/{i}")
             for i in range(events)]
    store = FileStore(directory, registry=CollectorRegistry())
    auditor = Auditor(Observer("service/resources", "bench", "bench"), connection_url=NOBODY,
                      queue_name="bench", backing_store=store, connect_wait=0,
                      registry=CollectorRegistry())
    start.wait()
    t0 = time.perf_counter()
    for event in batch:
        auditor.record(event)
    auditor.close(timeout=300)
    t1 = time.perf_counter()
    store.close()
    out.put((t0, t1))


def record_rate(root: str, processes: int, events: int) -> float:
    """Events recorded and stored per second by ``processes`` processes together."""
    directory = os.path.join(root, f"record-{processes}")
    shutil.rmtree(directory, ignore_errors=True)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_recorder, args=(directory, events, start, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    times = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"a recording process failed (exit {p.exitcode})")
    elapsed = max(t1 for _, t1 in times) - min(t0 for t0, _ in times)
    shutil.rmtree(directory, ignore_errors=True)
    return processes * events / elapsed


def _fill(store: FileStore, count: int) -> None:
    body = {**CADF_EVENT}
    for i in range(0, count, 1000):
        store.write_many([{**body, "id": f"{i + j:08d}-bench"} for j in range(1000)])


def _drain(store: FileStore) -> int:
    n = 0
    while True:
        bodies, _, commit = store.read_encoded_up_to(1000)
        if not bodies or commit is None:
            return n
        n += len(bodies)
        commit()


def drain_rates(root: str, backlog: int) -> tuple[float, float]:
    """(own log, adopted log) events drained per second."""
    own_dir, adopt_dir = os.path.join(root, "own"), os.path.join(root, "adopt")
    for d in (own_dir, adopt_dir):
        shutil.rmtree(d, ignore_errors=True)
    opts: dict[str, Any] = {"fsync": "never"}
    with FileStore(own_dir, registry=CollectorRegistry(), **opts) as store:
        _fill(store, backlog)
        t0 = time.perf_counter()
        assert _drain(store) == backlog
        own = backlog / (time.perf_counter() - t0)
    with FileStore(adopt_dir, registry=CollectorRegistry(), **opts) as drainer:
        gone = FileStore(adopt_dir, registry=CollectorRegistry(), **opts)
        _fill(gone, backlog)
        gone.close()  # its log stays: a process that exited with its backlog
        t0 = time.perf_counter()
        assert drainer.adopt() == backlog
        assert _drain(drainer) == backlog
        adopted = backlog / (time.perf_counter() - t0)
    for d in (own_dir, adopt_dir):
        shutil.rmtree(d, ignore_errors=True)
    return own, adopted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--events", type=int, default=20000, help="events per process")
    parser.add_argument("--backlog", type=int, default=100000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="segmentlog-procs-", dir=args.dir)
    rows: dict[str, list[float]] = {"record 1": [], f"record {args.processes}": [],
                                    "drain own": [], "drain adopted": []}
    try:
        for r in range(args.repeats):
            rows["record 1"].append(record_rate(root, 1, args.events))
            rows[f"record {args.processes}"].append(
                record_rate(root, args.processes, args.events))
            own, adopted = drain_rates(root, args.backlog)
            rows["drain own"].append(own)
            rows["drain adopted"].append(adopted)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rows.items()),
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    scale = med[f"record {args.processes}"] / med["record 1"]
    adopt = med["drain adopted"] / med["drain own"]
    result = {"cores": os.cpu_count(), "medians_per_second": med,
              "record_scaling": scale, "adopted_over_own_drain": adopt, "runs": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"cores: {os.cpu_count()}; medians of {args.repeats} interleaved rounds")
    for k, v in med.items():
        print(f"  {k:<16} {v:>12,.0f} events/s")
    print(f"record() from {args.processes} processes / 1: {scale:.2f}x (target >= 3x)")
    print(f"adopted backlog drain / own drain: {adopt:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
