"""Stores shared by several processes with one configuration (issue 16): real spawned
processes write at once; every event is read back exactly once."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from segmentlog.store import BackingStore, FileStore
from segmentlog.store.sqlite import SQLiteStore

WRITERS, EACH = 4, 200


def _open(kind: str, where: str) -> BackingStore:
    registry = CollectorRegistry()
    if kind == "file":
        return FileStore(where, max_file_size=64 << 10, registry=registry)
    return SQLiteStore(where, max_events=10 * WRITERS * EACH, registry=registry)


def _write(kind: str, where: str, writer: int, start: Any) -> None:
    store = _open(kind, where)
    start.wait(60)  # all writers at once (bounded: a writer that failed never comes)
    for i in range(0, EACH, 20):
        store.write_many([{"w": writer, "i": i + j} for j in range(20)])
    store.close()  # leaves its events for another process (the file store: its log)


def _drain(store: BackingStore) -> list[tuple[int, int]]:
    out = []
    while True:
        events, commit = store.read_batch(max_events=500)
        if not events:
            return out
        out += [(e["w"], e["i"]) for e in events]
        assert commit is not None
        commit()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_writers_in_several_processes_lose_and_repeat_nothing(kind: str, tmp_path: Any) -> None:
    where = str(tmp_path / ("buf" if kind == "file" else "buf.db"))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_write, args=(kind, where, w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = _open(kind, where)
    try:
        if kind == "file":
            # One writer's log became this store's own (a free log is claimed before a
            # new one is made); the others are adopted.
            assert store.adopt() == (WRITERS - 1) * EACH
        assert store.pending() == WRITERS * EACH
        got = _drain(store)
    finally:
        store.close()
    assert sorted(got) == [(w, i) for w in range(WRITERS) for i in range(EACH)]
    for w in range(WRITERS):  # each writer's events in the order it wrote them
        assert [i for ww, i in got if ww == w] == list(range(EACH))


def _open_at_once(path: str, start: Any) -> None:
    start.wait(60)
    _open("sqlite", path).close()


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path: Any) -> None:
    # Switching a new database to WAL needs it to itself: SQLite answered "database is
    # locked" at once (without its busy timeout) to some of several processes opening
    # it together, and their stores failed to open (a few opens in a hundred).
    ctx = multiprocessing.get_context("fork")
    for round_ in range(30):
        path = str(tmp_path / f"new-{round_}.db")
        start = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_at_once, args=(path, start)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 8, f"round {round_}"
