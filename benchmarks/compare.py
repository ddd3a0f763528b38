"""segmentlog beside the disk queues a Python service would otherwise use, at each durability.

Theory of operation
-------------------
Every system enqueues the same record (the ~514-byte CADF event, ``--size``) into its
own fresh directory on the same disk, then dequeues everything it stored. Systems are
grouped by the durability they really give, because speed without durability is cheap:

* ``no fsync``: records reach the page cache only (a power cut loses them);
* ``fsync per batch``: every batch of ``--batch`` records is on disk when the call returns;
* ``fsync per record``: every record is on disk when its call returns; ``--threads``
  writers at once (the case group commit exists for). Peers that are not thread-safe run
  one writer and say so.

Durability is measured, not taken from documentation: a separate audit pass runs every
system again in a child process under ``strace -f`` and counts the fsync, fdatasync,
msync, sync_file_range and syncfs calls made while it enqueued (and dequeued) a few
hundred records; SQLite's syncs are made in C, so a Python shim could not see them.
Without strace the column says "not measured". "checksum" says whether every record is
checked against a checksum when it is read back (SQLite's WAL frame checksums are only
used during crash recovery, never on a normal read, and the rollback journal has none).

Rates are records per second, the median of ``--reps`` repetitions; repetitions are
interleaved (system A, B, C, A, B, C, ...) so a burst of load on the shared machine hits
every system alike. Each measurement stops after ``--records`` records or a time cap.
"bytes/record" is the growth of allocated disk blocks while enqueuing, divided by the
records; segmentlog preallocates whole segments (64 MiB, plus one prepared ahead), so
its figure is the frame bytes it used (record + 24-byte header + padding to 8), with the
preallocation noted apart.

Also measured: the machine's own limits (sequential write bandwidth, fsync latency, copy
into a mapped file, CRC32C speed), and, when a RabbitMQ broker is reachable, the rate of
draining the log into it with segmentlog's publisher beside plain pika publishing
without confirms and with a confirm per message.

Output: a table on stdout; ``--out DIR`` (default benchmarks/results) gets
compare.json, compare.md and compare.png (records/s against durability, every system).

Usage: python benchmarks/compare.py [--records 20000] [--reps 3] [--dir PATH]
       [--size cadf] [--batch 100] [--threads 16] [--out DIR] [--no-audit]
       [--url amqp://guest:guest@127.0.0.1:5672/%2F] [--no-rabbitmq] [--quick]
Needs the ``bench`` extra: pip install 'segmentlog[bench]'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import mmap
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)

from segmentlog import SegmentLog, _pure
from segmentlog._backend import impl
from segmentlog.bench import payload_of

LEVELS = ("no fsync", "fsync per batch", "fsync per record")
SYNC_CALLS = ("fsync", "fdatasync", "msync", "sync_file_range", "syncfs")
AUDIT_MARK = "/segmentlog-compare-audit-mark-"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---------------------------------------------------------------------------- systems


@dataclass
class System:
    """One way to buffer records on disk, with its enqueue and dequeue loops.

    ``put`` takes a payload (``batch`` == 1) or a list of ``batch`` payloads; ``take``
    removes up to ``batch`` (or 1000 for logs) records and returns how many it removed,
    0 when empty."""

    name: str
    level: str
    durability: str
    checksum: str
    open: Callable[[str], Any]
    put: Callable[[Any, Any], None]
    take: Callable[[Any], int]
    close: Callable[[Any], None]
    batch: int = 1
    threads: int = 1
    thread_note: str = ""
    used_bytes: Callable[[Any, str], int] | None = None
    cap: float = 4.0
    notes: str = ""


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            # A temp file renamed away while we walked is not part of the store.
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


# segmentlog


def seglog(fsync: str, read_batch: int) -> dict[str, Any]:
    def take(log: SegmentLog) -> int:
        b = log.read_batch(read_batch)
        if b:
            log.commit(b)
        return len(b)

    def used(log: SegmentLog, _: str) -> int:
        s = log.stats()
        return int(s["write_offset"]) + int(s["rotations"]) * int(s["segment_size"])

    return {
        "open": lambda p: SegmentLog(p, fsync=fsync),
        "take": take, "close": lambda log: log.close(), "used_bytes": used,
        "checksum": "CRC32C per record, verified on every read",
        "notes": "preallocates 64 MiB segments (+1 prepared), reused after commit",
    }


def seg_put_one(log: SegmentLog, p: bytes) -> None:
    log.append(p)


def seg_put_batch(log: SegmentLog, ps: list[bytes]) -> None:
    log.append_batch(ps)


# plain files (the baselines)


class Jsonl:
    def __init__(self, path: str, fsync_every: int = 0) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = os.path.join(path, "events.jsonl")
        self.w = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self.r: Any = None
        self.fsync_every = fsync_every

    def put(self, p: bytes) -> None:
        self.w.write(p + b"\n")

    def put_batch(self, ps: list[bytes]) -> None:
        self.w.write(b"".join(p + b"\n" for p in ps))
        self.w.flush()
        os.fsync(self.w.fileno())

    def take(self, n: int = 1000) -> int:
        if self.r is None:
            self.w.flush()
            self.r = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        got = 0
        for _ in range(n):
            if not self.r.readline():
                break
            got += 1
        return got

    def close(self) -> None:
        self.w.close()
        if self.r is not None:
            self.r.close()


def go_put(path: str, p: bytes) -> None:
    """The Go original's file store: open, append one line, fsync, close, per event."""
    fd = os.open(os.path.join(path, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o600)
    try:
        os.write(fd, p + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


class GoReader:
    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.r: Any = None

    def take(self) -> int:
        if self.r is None:
            self.r = open(os.path.join(self.path, "events.jsonl"), "rb")  # noqa: SIM115
        got = 0
        for _ in range(1000):
            if not self.r.readline():
                break
            got += 1
        return got

    def close(self) -> None:
        if self.r is not None:
            self.r.close()


# SQLite in WAL mode, the way a careful user would write it


class SqliteWal:
    def __init__(self, path: str, synchronous: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "queue.db")
        self.synchronous = synchronous
        self.local = threading.local()
        self.all: list[sqlite3.Connection] = []  # every thread's connection, to close
        c = self.conn()
        c.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, body BLOB)")

    def conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self.local, "c", None)
        if c is None:
            c = sqlite3.connect(self.file, isolation_level=None, timeout=60,
                                check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={self.synchronous}")
            self.local.c = c
            self.all.append(c)
        return c

    def put(self, p: bytes) -> None:
        self.conn().execute("INSERT INTO q (body) VALUES (?)", (p,))

    def put_batch(self, ps: list[bytes]) -> None:
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO q (body) VALUES (?)", [(p,) for p in ps])
        c.execute("COMMIT")

    def take(self, n: int) -> int:
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        rows = c.execute("SELECT id, body FROM q ORDER BY id LIMIT ?", (n,)).fetchall()
        if rows:
            c.execute("DELETE FROM q WHERE id <= ?", (rows[-1][0],))
        c.execute("COMMIT")
        return len(rows)

    def close(self) -> None:
        for c in self.all:
            c.close()


def build_systems(batch: int, threads: int) -> list[System]:
    import diskcache  # type: ignore[import-untyped]
    import litequeue  # type: ignore[import-untyped]
    import persistqueue
    from queuelib import FifoDiskQueue
    from queuelib.queue import FifoSQLiteQueue

    def pq_take(q: Any) -> int:
        try:
            q.get(block=False)
        except persistqueue.Empty:
            return 0
        q.task_done()
        return 1

    def ql_take(q: Any) -> int:
        return 0 if q.pop() is None else 1

    def dc_take(q: Any) -> int:
        try:
            q.popleft()
        except IndexError:
            return 0
        return 1

    def lq_take(q: Any) -> int:
        m = q.pop()
        if m is None:
            return 0
        q.done(m.message_id)
        return 1

    def pqsql_take(q: Any) -> int:
        try:
            q.get(block=False)
        except persistqueue.Empty:
            return 0
        return 1

    none = "none"
    sqlite_sum = "none (SQLite WAL frame checksums: crash recovery only, not on read)"
    page = "page cache only: lost on power loss / kernel crash"
    systems = [
        # -- no fsync
        System("segmentlog fsync=never", "no fsync", page, put=seg_put_one,
               **seglog("never", 1000)),
        System(f"segmentlog fsync=never append_batch({batch})", "no fsync", page,
               put=seg_put_batch, batch=batch, **seglog("never", 1000)),
        System("jsonl buffered (baseline)", "no fsync", page + "; no framing after a crash",
               none, open=lambda p: Jsonl(p), put=lambda q, p: q.put(p),
               take=lambda q: q.take(), close=lambda q: q.close()),
        System("queuelib FifoDiskQueue", "no fsync", page, none,
               open=lambda p: FifoDiskQueue(p), put=lambda q, p: q.push(p), take=ql_take,
               close=lambda q: q.close()),
        System("persist-queue Queue autosave=False", "no fsync",
               page + "; fsync only when a 100-record chunk file fills", none,
               open=lambda p: persistqueue.Queue(p, autosave=False),
               put=lambda q, p: q.put(p), take=pq_take, close=lambda q: None),
        System("persist-queue Queue autosave=True", "no fsync",
               page + "; fsync only when a 100-record chunk file fills", none,
               open=lambda p: persistqueue.Queue(p, autosave=True),
               put=lambda q, p: q.put(p), take=pq_take, close=lambda q: None),
        System("diskcache Deque", "no fsync",
               "SQLite WAL synchronous=NORMAL (diskcache default): fsync at checkpoints only",
               sqlite_sum, open=lambda p: diskcache.Deque(directory=p),
               put=lambda q, p: q.append(p), take=dc_take, close=lambda q: None),
        System("litequeue", "no fsync",
               "SQLite WAL synchronous=NORMAL (litequeue default): fsync at checkpoints only",
               sqlite_sum, open=lambda p: litequeue.LiteQueue(os.path.join(
                   _mk(p), "q.db")), put=lambda q, p: q.put(p.decode()), take=lq_take,
               close=lambda q: q.close()),
        System(f"SQLite WAL synchronous=NORMAL, {batch} per transaction", "no fsync",
               "WAL synchronous=NORMAL: fsync at checkpoints only", sqlite_sum,
               open=lambda p: SqliteWal(p, "NORMAL"), put=lambda q, ps: q.put_batch(ps),
               take=lambda q: q.take(batch), close=lambda q: q.close(), batch=batch),
        # -- fsync per batch
        System(f"segmentlog fsync=always append_batch({batch})", "fsync per batch",
               f"on disk when append_batch returns (1 fsync per {batch})",
               put=seg_put_batch, batch=batch, cap=2.0, **seglog("always", batch)),
        System(f"SQLite WAL synchronous=FULL, {batch} per transaction", "fsync per batch",
               f"WAL synchronous=FULL: WAL fsynced per commit of {batch}", sqlite_sum,
               open=lambda p: SqliteWal(p, "FULL"), put=lambda q, ps: q.put_batch(ps),
               take=lambda q: q.take(batch), close=lambda q: q.close(), batch=batch, cap=2.0),
        System(f"jsonl + fsync per {batch} (baseline)", "fsync per batch",
               f"fsync per write of {batch} lines", none, open=lambda p: Jsonl(p),
               put=lambda q, ps: q.put_batch(ps), take=lambda q: q.take(),
               close=lambda q: q.close(), batch=batch, cap=2.0),
        # -- fsync per record
        System(f"segmentlog fsync=always, {threads} threads", "fsync per record",
               "on disk when append returns (group commit)", put=seg_put_one,
               threads=threads, cap=2.0, **seglog("always", 1000)),
        System("segmentlog fsync=always, 1 thread", "fsync per record",
               "on disk when append returns", put=seg_put_one, cap=2.0,
               **seglog("always", 1000)),
        System("go-original open/write/fsync/close, 1 thread", "fsync per record",
               "on disk when the call returns (fsync per record)", none,
               open=lambda p: (_mk(p), GoReader(p)), put=lambda q, p: go_put(q[0], p),
               take=lambda q: q[1].take(), close=lambda q: q[1].close(), cap=2.0),
        System(f"go-original open/write/fsync/close, {threads} threads", "fsync per record",
               "on disk when the call returns (fsync per record)", none,
               open=lambda p: (_mk(p), GoReader(p)), put=lambda q, p: go_put(q[0], p),
               take=lambda q: q[1].take(), close=lambda q: q[1].close(), threads=threads,
               cap=2.0),
        System(f"SQLite WAL synchronous=FULL, 1 per transaction, {threads} threads",
               "fsync per record", "WAL fsynced per commit", sqlite_sum,
               open=lambda p: SqliteWal(p, "FULL"), put=lambda q, p: q.put(p),
               take=lambda q: q.take(1000), close=lambda q: q.close(), threads=threads,
               cap=2.0),
        System(f"persist-queue SQLiteQueue, {threads} threads", "fsync per record",
               "SQLite WAL, synchronous=FULL (SQLite default): fsync per put", sqlite_sum,
               open=lambda p: persistqueue.SQLiteQueue(p, auto_commit=True,
                                                       multithreading=True),
               put=lambda q, p: q.put(p), take=pqsql_take, close=lambda q: q.close(),
               threads=threads, cap=2.0),
        System("queuelib FifoSQLiteQueue", "fsync per record",
               "SQLite rollback journal, synchronous=FULL (defaults): fsyncs per push", none,
               open=lambda p: FifoSQLiteQueue(os.path.join(_mk(p), "q.db")),
               put=lambda q, p: q.push(p), take=ql_take, close=lambda q: q.close(), cap=2.0,
               thread_note="1 thread: one sqlite3 connection, not thread-safe"),
    ]
    return systems


def _mk(p: str) -> str:
    os.makedirs(p, exist_ok=True)
    return p


# ---------------------------------------------------------------------------- measuring


@dataclass
class Result:
    system: System
    enq: list[float] = field(default_factory=list)  # records/s per repetition
    deq: list[float] = field(default_factory=list)
    bytes_per_record: list[float] = field(default_factory=list)
    audit: dict[str, float] | None = None


def mark(what: str) -> None:
    """A syscall the strace audit sees: it separates enqueue from dequeue."""
    os.access(AUDIT_MARK + what, os.F_OK)


def measure(s: System, path: str, payload: bytes, records: int,
            cap_scale: float = 1.0) -> tuple[float, float, float, int]:
    """Enqueue up to ``records`` (or the time cap), then dequeue them all: (enqueue
    records/s, dequeue records/s, bytes per record, records)."""
    q = s.open(path)
    try:
        before = s.used_bytes(q, path) if s.used_bytes else _du(path)
        cap = s.cap * cap_scale
        item: Any = [payload] * s.batch if s.batch > 1 else payload
        step = s.batch
        per_thread = max(step, records // s.threads)
        counts = [0] * s.threads
        errors: list[BaseException] = []
        start = threading.Barrier(s.threads + 1) if s.threads > 1 else None

        def writer(i: int, t_end: list[float]) -> None:
            try:
                if start is not None:
                    start.wait()
                put = s.put
                n = 0
                while n < per_thread:
                    put(q, item)
                    n += step
                    if n % 64 < step and time.perf_counter() > t_end[0]:
                        break
                counts[i] = n
            except BaseException as exc:
                errors.append(exc)

        mark("enqueue-begin")
        if s.threads == 1:
            t0 = time.perf_counter()
            writer(0, [t0 + cap])
        else:
            t_end = [float("inf")]
            pool = [threading.Thread(target=writer, args=(i, t_end)) for i in range(s.threads)]
            for t in pool:
                t.start()
            assert start is not None
            start.wait()
            t0 = time.perf_counter()
            t_end[0] = t0 + cap
            for t in pool:
                t.join()
        enq_s = time.perf_counter() - t0
        mark("enqueue-end")
        if errors:
            raise errors[0]
        n = sum(counts)
        after = s.used_bytes(q, path) if s.used_bytes else _du(path)
        got = 0
        t0 = time.perf_counter()
        take = s.take
        while got < n:
            k = take(q)
            if not k:
                break
            got += k
        deq_s = time.perf_counter() - t0
        mark("dequeue-end")
        if got != n:
            raise RuntimeError(f"{s.name}: dequeued {got} of {n} records")
        return n / enq_s, got / deq_s, (after - before) / n, n
    finally:
        s.close(q)


def audit(name: str, directory: str, size: str, records: int, batch: int,
          threads: int) -> dict[str, float] | None:
    """Sync syscalls per record of one system, counted by strace in a child process."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    out = os.path.join(directory, "strace.txt")
    sub = os.path.join(directory, "audit-" + uuid.uuid4().hex[:8])
    cmd = [strace, "-f", "-qq", "-o", out, "-e",
           "trace=" + ",".join(SYNC_CALLS) + ",access,faccessat,faccessat2",
           sys.executable, os.path.abspath(__file__), "--audit-child", name, "--dir", sub,
           "--size", size, "--records", str(records), "--batch", str(batch),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    shutil.rmtree(sub, ignore_errors=True)
    if proc.returncode != 0:
        sys.stderr.write(f"audit of {name} failed: {proc.stderr[-500:]}\n")
        return None
    phase, counts = None, {"enqueue": 0, "dequeue": 0}
    sync_re = re.compile(r"^\d+\s+(" + "|".join(SYNC_CALLS) + r")\(")
    with open(out) as f:
        for line in f:
            if AUDIT_MARK in line:
                what = line.split(AUDIT_MARK, 1)[1].split('"', 1)[0]
                phase = {"enqueue-begin": "enqueue", "enqueue-end": "dequeue",
                         "dequeue-end": None}[what]
            elif phase and sync_re.match(line):
                counts[phase] += 1  # "<... fsync resumed>" lines do not match: counted once
    os.unlink(out)
    with open(os.path.join(directory, "audit-records")) as f:
        n = int(f.read())
    return {"fsyncs_per_record_enqueue": counts["enqueue"] / n,
            "fsyncs_per_record_dequeue": counts["dequeue"] / n, "records": n}


def audit_child(args: argparse.Namespace) -> int:
    systems = {s.name: s for s in build_systems(args.batch, args.threads)}
    s = systems[args.audit_child]
    os.makedirs(args.dir, exist_ok=True)
    _, _, _, n = measure(s, os.path.join(args.dir, "q"), payload_of(args.size), args.records,
                         cap_scale=10.0)
    with open(os.path.join(os.path.dirname(args.dir), "audit-records"), "w") as f:
        f.write(str(n))
    return 0


# ---------------------------------------------------------------------------- machine


def machine_limits(directory: str) -> dict[str, float]:
    out: dict[str, float] = {}
    path = os.path.join(directory, "limits")
    chunk = os.urandom(1 << 20)
    # Sequential write bandwidth: 256 MiB in 1 MiB writes, then fdatasync.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for i in range(256):
            os.pwrite(fd, chunk, i << 20)
        os.fdatasync(fd)
        out["seq_write_mb_per_s"] = 256 * 1.048576 / (time.perf_counter() - t0)
        # fsync latency: rewrite 4 KiB in place, fdatasync; median of 200.
        lat = []
        for i in range(200):
            os.pwrite(fd, chunk[:4096], (i % 64) << 12)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t0)
        out["fdatasync_latency_us_median"] = statistics.median(lat) * 1e6
        # Copy into a mapped file (pages resident): GB/s.
        mm = mmap.mmap(fd, 64 << 20)
        try:
            mm[: 1 << 20] = chunk
            t0 = time.perf_counter()
            for _ in range(4):
                for i in range(64):
                    mm[i << 20 : (i + 1) << 20] = chunk
            out["mmap_copy_gb_per_s"] = 4 * 64 * 1.048576e-3 / (time.perf_counter() - t0)
        finally:
            mm.close()
    finally:
        os.close(fd)
        os.unlink(path)
    # CRC32C speed on 1 MiB, live backend and pure Python.
    t0 = time.perf_counter()
    for _ in range(200):
        impl.crc32c(chunk)
    out["crc32c_gb_per_s"] = 200 * 1.048576e-3 / (time.perf_counter() - t0)
    small = chunk[:16384]
    t0 = time.perf_counter()
    _pure.crc32c(small)
    out["crc32c_pure_mb_per_s"] = 0.016384 / (time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------- RabbitMQ


def rabbitmq(url: str, directory: str, payload: bytes, records: int,
             each: int) -> dict[str, Any] | None:
    """Drain a segment log into RabbitMQ with segmentlog's publisher, beside plain pika
    publishing without confirms and with a confirm per message."""
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672),
                                 timeout=1).close()
    except OSError:
        return None
    import pika

    from segmentlog.amqp import Publisher

    def declare() -> str:
        name = f"segmentlog-compare-{uuid.uuid4().hex[:10]}"
        c = pika.BlockingConnection(pika.URLParameters(url))
        c.channel().queue_declare(name, durable=True)
        c.close()
        return name

    def delete(name: str) -> None:
        c = pika.BlockingConnection(pika.URLParameters(url))
        try:
            c.channel().queue_delete(name)
        finally:
            c.close()

    def props(i: int) -> Any:
        return pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                    message_id=f"m-{i}")

    out: dict[str, Any] = {"records": records, "confirm_each_records": each}
    # 1. no confirms (the Go original's way); the clock stops when the broker holds all.
    name = declare()
    try:
        c = pika.BlockingConnection(pika.URLParameters(url))
        ch = c.channel()
        t0 = time.perf_counter()
        for i in range(records):
            ch.basic_publish("", name, payload, props(i))
        probe = c.channel()
        while probe.queue_declare(name, passive=True).method.message_count < records:
            time.sleep(0.002)
        out["no_confirm_per_s"] = records / (time.perf_counter() - t0)
        c.close()
    finally:
        delete(name)
    # 2. a confirm per message.
    name = declare()
    try:
        c = pika.BlockingConnection(pika.URLParameters(url))
        ch = c.channel()
        ch.confirm_delivery()
        t0 = time.perf_counter()
        for i in range(each):
            ch.basic_publish("", name, payload, props(i), mandatory=True)
        out["confirm_each_per_s"] = each / (time.perf_counter() - t0)
        c.close()
    finally:
        delete(name)
    # 3. the log drained through the windowed-confirm publisher, commit per batch.
    name = declare()
    logdir = os.path.join(directory, "amqp-log")
    try:
        with SegmentLog(logdir, fsync="always") as log:
            for i in range(0, records, 1000):
                log.append_batch([payload] * min(1000, records - i))
            with Publisher(url, name) as pub:
                pub.connect()
                t0 = time.perf_counter()
                sent = 0
                while sent < records:
                    b = log.read_batch(1000)
                    if not b:
                        break
                    msgs = [(f"m-{b.first_seq + k}", r) for k, r in enumerate(b.records)]
                    res = pub.publish_batch(msgs)
                    if not res.delivered:
                        raise RuntimeError(f"batch at {b.first_seq}: only "
                                           f"{res.confirmed_prefix} confirmed")
                    log.commit(b)
                    sent += len(b)
                out["segmentlog_drain_per_s"] = sent / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
        delete(name)
    out["drain_vs_no_confirm"] = out["segmentlog_drain_per_s"] / out["no_confirm_per_s"]
    out["drain_vs_confirm_each"] = out["segmentlog_drain_per_s"] / out["confirm_each_per_s"]
    return out


# ---------------------------------------------------------------------------- report


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def summarize(results: list[Result]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        s = r.system
        rows.append({
            "system": s.name, "level": s.level, "durability": s.durability,
            "checksum": s.checksum, "batch": s.batch, "threads": s.threads,
            "thread_note": s.thread_note, "notes": s.notes,
            "enqueue_per_s": statistics.median(r.enq),
            "dequeue_per_s": statistics.median(r.deq),
            "enqueue_runs": r.enq, "dequeue_runs": r.deq,
            "bytes_per_record": statistics.median(r.bytes_per_record),
            "audit": r.audit,
        })
    return compare_rows(rows)


def is_segmentlog(row: dict[str, Any]) -> bool:
    return str(row["system"]).startswith("segmentlog")


def is_baseline(row: dict[str, Any]) -> bool:
    return "(baseline)" in row["system"] or row["system"].startswith("go-original")


def compare_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair every other system with segmentlog like for like: same durability level, same
    records per call (batch) and the same number of writer threads (a peer that can only
    run one writer is compared with segmentlog's one-writer row)."""
    seg = [r for r in rows if is_segmentlog(r)]
    for r in rows:
        if is_segmentlog(r):
            r["versus"] = None
            r["segmentlog_over_this"] = None
            continue
        same = [x for x in seg if x["level"] == r["level"] and x["batch"] == r["batch"]
                and x["threads"] == r["threads"]]
        if not same:
            r["versus"] = r["segmentlog_over_this"] = None
            continue
        best = max(same, key=lambda x: x["enqueue_per_s"])
        r["versus"] = best["system"]
        r["segmentlog_over_this"] = best["enqueue_per_s"] / r["enqueue_per_s"]
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per durability level: is segmentlog faster than every peer, like for like?"""
    out = []
    for level in LEVELS:
        peers = [r for r in rows if r["level"] == level and not is_segmentlog(r)
                 and r["segmentlog_over_this"] is not None]
        slower = [r for r in peers if r["segmentlog_over_this"] < 1.0]
        parts = [f"{r['system']} {r['segmentlog_over_this']:.2f}x" for r in peers
                 if not is_baseline(r)]
        base = [f"{r['system']} {r['segmentlog_over_this']:.2f}x" for r in peers
                if is_baseline(r)]
        verdict = ("segmentlog fastest" if not [r for r in slower if not is_baseline(r)]
                   else "NOT fastest: " + ", ".join(r["system"] for r in slower
                                                    if not is_baseline(r)))
        line = f"**{level}**: {verdict} (segmentlog / peer: {'; '.join(parts)}"
        line += f"; baselines: {'; '.join(base)})" if base else ")"
        out.append(line)
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Records of {result['payload_bytes']} bytes, median of {result['reps']} interleaved "
        f"repetitions of up to {result['records']:,} records each; {m['cpus']} CPUs, "
        f"{m['platform']}, Python {m['python']}, segmentlog backend {result['backend']} "
        f"(CRC32C {result['crc32c']}); load average {m['loadavg_start'][0]:.1f} at the "
        f"start, {m['loadavg_end'][0]:.1f} at the end (a shared machine: compare ratios).",
        "",
        "| durability | system | enqueue rec/s | dequeue rec/s | segmentlog / this (like "
        "for like) | "
        "fsyncs per record (enq / deq, strace) | bytes on disk / record | checksum |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        a = r["audit"]
        fs = (f"{a['fsyncs_per_record_enqueue']:.3g} / {a['fsyncs_per_record_dequeue']:.3g}"
              if a else "not measured")
        ratio = (f"{r['segmentlog_over_this']:.2f}x" if r["segmentlog_over_this"] is not None
                 else "-")
        name = r["system"] + (f" ({r['thread_note']})" if r["thread_note"] else "")
        lines.append(f"| {r['level']} | {name} | {fmt_rate(r['enqueue_per_s'])} | "
                     f"{fmt_rate(r['dequeue_per_s'])} | {ratio} | {fs} | "
                     f"{r['bytes_per_record']:,.0f} | {r['checksum']} |")
    lines += ["", "Durability of each system, as configured:", ""]
    for r in result["rows"]:
        lines.append(f"- **{r['system']}**: {r['durability']}" + (
            f" ({r['notes']})" if r["notes"] else ""))
    lines += ["", "Verdict per durability level: enqueue rate of segmentlog over each system "
              "with the same records per call and writer threads (baselines shown apart, "
              "not counted):", ""]
    lines += [f"- {v}" for v in result["verdicts"]]
    lim = result["machine_limits"]
    lines += ["", "Machine limits (same disk):", "",
              f"- sequential write: {lim['seq_write_mb_per_s']:,.0f} MB/s",
              f"- fdatasync latency (4 KiB rewrite, median): "
              f"{lim['fdatasync_latency_us_median']:,.0f} us "
              f"(= {1e6 / lim['fdatasync_latency_us_median']:,.0f} syncs/s)",
              f"- copy into a mapped file: {lim['mmap_copy_gb_per_s']:.1f} GB/s",
              f"- CRC32C: {lim['crc32c_gb_per_s']:.1f} GB/s ({result['crc32c']}); pure Python "
              f"{lim['crc32c_pure_mb_per_s']:.2f} MB/s"]
    rq = result.get("rabbitmq")
    lines += ["", "RabbitMQ end to end (persistent messages, local broker):", ""]
    if rq is None:
        lines.append("- not measured: no broker reachable at " + result["rabbitmq_url_redacted"])
    else:
        lines += [
            f"- pika, no confirms (the Go original's way): {fmt_rate(rq['no_confirm_per_s'])}/s",
            f"- pika, a confirm per message: {fmt_rate(rq['confirm_each_per_s'])}/s "
            f"({rq['confirm_each_records']:,} messages)",
            f"- segmentlog drain (read_batch 1000, windowed confirms, commit): "
            f"{fmt_rate(rq['segmentlog_drain_per_s'])}/s = {rq['drain_vs_no_confirm']:.2f}x "
            f"no-confirm, {rq['drain_vs_confirm_each']:.1f}x confirm-each",
        ]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(12, 7))
    for level in LEVELS:
        x = LEVELS.index(level)
        at = sorted((r for r in result["rows"] if r["level"] == level),
                    key=lambda r: r["enqueue_per_s"])
        # Labels are stacked at least GAP decades apart so close rates stay readable;
        # a thin line joins each label to its point.
        gap, last = 0.075, -math.inf
        for r in at:
            y = r["enqueue_per_s"]
            seg = is_segmentlog(r)
            base = is_baseline(r)
            ax.scatter(x, y, s=110 if seg else 45, marker="*" if seg else ("s" if base else "o"),
                       color="tab:red" if seg else ("tab:gray" if base else "tab:blue"),
                       zorder=3)
            ly = max(math.log10(y), last + gap)
            last = ly
            ax.annotate(r["system"], (x, y), xytext=(x + 0.06, 10 ** ly), fontsize=7.5,
                        va="center", color="tab:red" if seg else "black",
                        arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"})
    ax.set_yscale("log")
    ax.set_xticks(range(len(LEVELS)))
    ax.set_xticklabels(["no fsync\n(page cache)", f"fsync per batch\n(of {result['batch']})",
                        f"fsync per record\n(1 or {result['threads']} writer threads)"])
    ax.set_xlim(-0.2, len(LEVELS) - 0.05)
    ax.set_ylabel("enqueue records/s (log scale)")
    ax.set_title(f"Disk queues: enqueue rate vs durability ({result['payload_bytes']}-byte "
                 f"records; red star = segmentlog, grey = baselines)")
    ax.grid(True, which="both", axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redact(url: str) -> str:
    p = urllib.parse.urlparse(url)
    if p.password:
        return url.replace(":" + p.password + "@", ":***@")
    return url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", default="cadf", choices=["64", "cadf", "4096"])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--dir", default=None, help="parent directory on the disk to measure")
    ap.add_argument("--out", default=RESULTS, help="where compare.json/.md/.png go")
    ap.add_argument("--no-audit", action="store_true", help="skip the strace fsync audit")
    ap.add_argument("--url", default=os.environ.get(
        "SEGMENTLOG_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    ap.add_argument("--no-rabbitmq", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2000 records, 1 repetition")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="only re-render compare.md/.png from a saved compare.json")
    ap.add_argument("--audit-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.audit_child:
        return audit_child(args)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        saved["rows"] = compare_rows(saved["rows"])
        saved["verdicts"] = verdicts(saved["rows"])
        write_results(saved, args.out)
        return 0
    if args.quick:
        args.records, args.reps = 2000, 1

    payload = payload_of(args.size)
    systems = build_systems(args.batch, args.threads)
    results = [Result(s) for s in systems]
    load_start = os.getloadavg()
    directory = tempfile.mkdtemp(prefix="segmentlog-compare-", dir=args.dir)
    try:
        total = args.reps * len(results)
        k = 0
        for rep in range(args.reps):
            for r in results:
                k += 1
                sys.stderr.write(f"\r[{k}/{total}] rep {rep + 1}: {r.system.name:<60}")
                sys.stderr.flush()
                path = os.path.join(directory, f"{k:03d}")
                enq, deq, bpr, _ = measure(r.system, path, payload, args.records)
                shutil.rmtree(path, ignore_errors=True)
                r.enq.append(enq)
                r.deq.append(deq)
                r.bytes_per_record.append(bpr)
        if not args.no_audit:
            for i, r in enumerate(results):
                sys.stderr.write(f"\r[audit {i + 1}/{len(results)}] {r.system.name:<60}")
                sys.stderr.flush()
                n = 480 if r.system.batch == 1 else 10 * r.system.batch
                r.audit = audit(r.system.name, directory, args.size, n, args.batch,
                                args.threads)
        sys.stderr.write("\r[machine limits]" + " " * 70)
        limits = machine_limits(directory)
        rq = None
        if not args.no_rabbitmq:
            sys.stderr.write("\r[rabbitmq]" + " " * 70)
            rq = rabbitmq(args.url, directory, payload, max(args.records, 2000),
                          max(args.records // 10, 500))
        sys.stderr.write("\r" + " " * 90 + "\r")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows = summarize(results)
    result: dict[str, Any] = {
        "payload_bytes": len(payload), "size": args.size, "records": args.records,
        "reps": args.reps, "batch": args.batch, "threads": args.threads,
        "backend": impl.NAME, "crc32c": impl.crc32c_impl(), "rows": rows,
        "verdicts": verdicts(rows), "machine_limits": limits, "rabbitmq": rq,
        "rabbitmq_url_redacted": redact(args.url),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": list(load_start),
                    "loadavg_end": list(os.getloadavg()),
                    "date": time.strftime("%Y-%m-%d %H:%M %Z")},
        "packages": _versions(),
    }
    write_results(result, args.out)
    return 0


def write_results(result: dict[str, Any], out: str | None) -> None:
    md = markdown(result)
    print(md)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "compare.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(out, "compare.md"), "w") as f:
            f.write(md)
        chart(result, os.path.join(out, "compare.png"))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("persist-queue", "queuelib", "diskcache", "litequeue", "pika", "matplotlib"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    out["sqlite"] = sqlite3.sqlite_version
    return out


if __name__ == "__main__":
    sys.exit(main())
