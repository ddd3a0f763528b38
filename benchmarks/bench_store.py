"""Backing-store write throughput against the Go original's approach, in one run.

Every figure is events per second with the ~514-byte CADF event of segmentlog.bench,
the median of ``--repeats`` rounds in which every case runs once, in turn; every ratio
divides two figures measured in this same process on the same disk and server, so
machine noise cancels as far as it can.

File store (``segmentlog.store.FileStore``) against the original's file store,
reimplemented in Python: per event ``open(O_APPEND)``, write one JSON line, ``fsync``,
``close`` (rotation at 10 MiB by file size, as the original):

* ``write`` with ``fsync="always"``: durable per event, as the original (target >= 1x);
* ``write_many`` of 100 with ``fsync="always"``: one fsync per 100 (target >= 50x);
* ``write`` with ``fsync="interval"``: synced every 10 ms (target >= 100x).

SQL store (``segmentlog.store.SQLStore``, PostgreSQL) against the original's write: per
event ``SELECT COUNT(*)`` of the whole table, then ``INSERT`` (autocommit, as
database/sql does). The COUNT's cost grows with the rows buffered, so both are measured
on a table already holding ``--prefill`` rows (default 5000: half the original's
default ``max_events`` 10000, a table mid-outage) and on an empty table (the original's
best case):

* ``write`` (target >= 2x) and ``write_many`` of 100 (target >= 10x).

Usage: python benchmarks/bench_store.py [--dir PATH] [--dsn DSN] [--repeats 3]
       [--events N] [--prefill 5000] [--no-sql] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)
import orjson
from prometheus_client import CollectorRegistry

from segmentlog.bench import CADF_EVENT
from segmentlog.store import FileStore, SQLStore

# The issues' "CADF event": the same ~514-byte event `python -m segmentlog bench` uses.
CADF: dict[str, Any] = dict(CADF_EVENT)


def event(i: int) -> dict[str, Any]:
    return {**CADF, "id": f"{i:08d}-2f1e-4a53-9f0c-6b1f0e9b7d11"}


def rate(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


Case = tuple[str, int, Callable[[], Callable[[], None]]]


def interleaved(repeats: int, cases: list[Case], after: Callable[[], None]) -> dict[str, float]:
    """Median events/s per case. Cases take turns within each repeat, so a slow moment of
    a shared machine hits every case alike instead of one whole series.

    A case is (name, events, setup); ``setup()`` prepares and returns the timed part.
    """
    rates: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(repeats):
        for name, n, setup in cases:
            timed = setup()
            try:
                rates[name].append(rate(n, timed))
            finally:
                after()
    return {name: statistics.median(r) for name, r in rates.items()}


# -- file ------------------------------------------------------------------------------------


class OriginalFileStore:
    """The Go original's file store write path: open, append one line, fsync, close."""

    MAX_FILE_SIZE = 10 << 20

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.index = 0
        self.size = 0

    def write(self, ev: dict[str, Any]) -> None:
        line = orjson.dumps(ev) + b"\n"
        if self.size + len(line) > self.MAX_FILE_SIZE:
            self.index += 1
            self.size = 0
        path = os.path.join(self.directory, f"audit-events-{self.index:06d}.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.size += len(line)


def steady(store: FileStore) -> None:
    """Wait until the log's background preparer has made the next segment, then flush.

    A new log zero-fills its next segment (10 MiB here) in the background once; timing
    the first thousand events against that write-back would measure a start-up
    transient that a running service pays once per segment (and never once consumed
    segments are recycled), not the steady state.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = store.log.stats()
        if stats["disk_bytes"] >= 2 * stats["segment_size"]:
            break
        time.sleep(0.01)
    store.log.sync()
    os.sync()


def bench_file(base: str, repeats: int, n: int) -> dict[str, float]:
    events = [event(i) for i in range(max(n, 100) * 20)]
    holder: dict[str, Any] = {}

    def fresh(name: str) -> str:
        path = os.path.join(base, f"{name}-{uuid.uuid4().hex[:8]}")
        return path

    def cleanup() -> None:
        store = holder.pop("store", None)
        if store is not None:
            store.close()
        shutil.rmtree(holder.pop("dir"), ignore_errors=True)

    def original() -> Callable[[], None]:
        d = holder["dir"] = fresh("orig")
        store = OriginalFileStore(d)
        os.sync()  # start from the same clean page cache as the file store runs

        def go() -> None:
            for ev in events[:n]:
                store.write(ev)

        return go

    def file_store(fsync: str, count: int, batch: int) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            d = holder["dir"] = fresh(fsync)
            store = holder["store"] = FileStore(d, fsync=fsync, registry=CollectorRegistry())
            store.write(events[0])
            steady(store)

            def go() -> None:
                if batch == 1:
                    for ev in events[:count]:
                        store.write(ev)
                else:
                    for i in range(0, count, batch):
                        store.write_many(events[i : i + batch])
                if fsync != "always":
                    store.log.sync()  # the data is on disk when the clock stops

            return go

        return setup

    many, inter = n * 10, n * 20
    return interleaved(repeats, [
        ("original_write", n, original),
        ("file_write_always", n, file_store("always", n, 1)),
        ("file_write_many100_always", many, file_store("always", many, 100)),
        ("file_write_interval", inter, file_store("interval", inter, 1)),
    ], cleanup)


# -- sql -------------------------------------------------------------------------------------


def bench_sql(dsn: str, repeats: int, n: int, prefill: int) -> dict[str, float]:
    import psycopg

    events = [event(i) for i in range(n)]
    admin = psycopg.connect(dsn, autocommit=True)
    tables: list[str] = []
    holder: dict[str, Any] = {}

    def new_table(prefilled: bool) -> str:
        name = "bench_" + uuid.uuid4().hex[:10]
        tables.append(name)
        admin.execute(
            f"CREATE TABLE {name} (id BIGSERIAL PRIMARY KEY, event_data JSONB NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        if prefilled and prefill:
            admin.execute(
                f"INSERT INTO {name} (event_data) SELECT %s::jsonb FROM "
                "generate_series(1, %s)",
                (orjson.dumps(CADF).decode(), prefill),
            )
            admin.execute(f"VACUUM ANALYZE {name}")
        return name

    def cleanup() -> None:
        store = holder.pop("store", None)
        if store is not None:
            store.close()
        conn = holder.pop("conn", None)
        if conn is not None:
            conn.close()
        while tables:
            t = tables.pop()
            for suffix in ("", "_meta", "_deadletter"):
                admin.execute(f"DROP TABLE IF EXISTS {t}{suffix}")

    def naive(prefilled: bool) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            t = new_table(prefilled)
            conn = holder["conn"] = psycopg.connect(dsn, autocommit=True)
            count_q = f"SELECT COUNT(*) FROM {t}"
            insert_q = f"INSERT INTO {t} (event_data) VALUES (%s)"

            def go() -> None:
                for ev in events:
                    (count,) = conn.execute(count_q).fetchone() or (0,)
                    if count >= 10_000_000:
                        raise RuntimeError("full")
                    conn.execute(insert_q, (orjson.dumps(ev).decode(),))

            return go

        return setup

    def store(prefilled: bool, batch: int) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            t = new_table(prefilled)
            s = holder["store"] = SQLStore.from_params(
                {"dsn": dsn, "table_name": t, "max_events": 10_000_000}, CollectorRegistry()
            )

            def go() -> None:
                if batch == 1:
                    for ev in events:
                        s.write(ev)
                else:
                    for i in range(0, n, batch):
                        s.write_many(events[i : i + batch])

            return go

        return setup

    cases: list[Case] = []
    for prefilled, tag in ((True, f"prefill{prefill}"), (False, "empty")):
        cases += [
            (f"sql_naive_{tag}", n, naive(prefilled)),
            (f"sql_write_{tag}", n, store(prefilled, 1)),
            (f"sql_write_many100_{tag}", n, store(prefilled, 100)),
        ]
    try:
        return interleaved(repeats, cases, cleanup)
    finally:
        cleanup()
        admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="directory on the disk to measure")
    ap.add_argument("--dsn", default=os.environ.get(
        "SEGMENTLOG_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--events", type=int, default=1000,
                    help="events per durable-per-event run (batched runs use more)")
    ap.add_argument("--prefill", type=int, default=5000)
    ap.add_argument("--no-sql", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    base = tempfile.mkdtemp(prefix="bench-store-", dir=args.dir)
    try:
        res = bench_file(base, args.repeats, args.events)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratios = {
        "file write_many(100) always / original (target >= 50)":
            res["file_write_many100_always"] / res["original_write"],
        "file write interval / original (target >= 100)":
            res["file_write_interval"] / res["original_write"],
        "file write always / original (target >= 1)":
            res["file_write_always"] / res["original_write"],
    }
    if not args.no_sql:
        sql = bench_sql(args.dsn, args.repeats, max(args.events // 2, 100), args.prefill)
        res.update(sql)
        for tag in (f"prefill{args.prefill}", "empty"):
            ratios[f"sql write_many(100) / naive, {tag} (target >= 10)"] = (
                sql[f"sql_write_many100_{tag}"] / sql[f"sql_naive_{tag}"])
            ratios[f"sql write / naive, {tag} (target >= 2)"] = (
                sql[f"sql_write_{tag}"] / sql[f"sql_naive_{tag}"])
    if args.json:
        print(json.dumps({"events_per_s": res, "ratios": ratios}, indent=2))
        return
    from segmentlog import backend

    print(f"backend: {backend}; CADF event {len(orjson.dumps(CADF))} bytes; "
          f"median of {args.repeats}")
    for name, value in res.items():
        print(f"  {name:32s} {value:12,.0f} events/s")
    for name, value in ratios.items():
        print(f"  {name:55s} {value:8.1f}x")


if __name__ == "__main__":
    main()
