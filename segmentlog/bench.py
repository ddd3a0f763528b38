"""``python -m segmentlog bench``: the log beside what users would otherwise write, in one run.

Theory of operation
-------------------
The default run measures the **sustained regime**, the one a service that appends for
minutes lives in: segments of the log's default size, enough records per row that at
least ``ROTATIONS`` segments fill and rotate inside the clock (so rotation and the wait
for a prepared segment are timed, whatever they cost), the log opened before the clock
starts, and for ``fsync="never"`` and ``"interval"`` the durability barrier (``sync()``)
inside it: a row's clock stops when its records are on disk, as the baselines' do.

Every row appends (drain rows read back and commit) the same record on the same disk in
the same process, so its ratio to a baseline holds even on a busy machine: the rows of
one repetition run one after another, repetitions are interleaved (row A, B, C, A, B, C,
...) rather than back to back, and the table shows the median rate. The CADF event gets
every row; 64-byte and 4 KiB records get the key rows (the baselines, appends one at a
time and in batches of 1000, the drain). ``--size`` picks one size and gives it every row.

Each row has a regime (the table groups rows by it):

* ``sustained``: as above, for ``LOG_ROWS`` and their drains. The rows a target judges
  run to the end (``TARGET_CAP`` is only a safety stop); the others stop at ``FAST_CAP``.
  The ``rot`` column shows the segment boundaries each row crossed inside its clock
  (median of the repetitions): a row stopped by its time cap, or run with a small
  ``--records``, shows fewer than ``ROTATIONS``.
* ``time cap``: rows bound by an fsync per record (or by ``read_batch(1)``) run for a
  fixed time instead: their rate does not depend on the log's length.
* ``steady state``: the 16-thread durable row runs its threads for a warm-up, then counts
  the records of ``--threads-seconds``.
* ``short run``: ``SHORT`` records into a log that never rotates, no ``sync()`` inside the
  clock: the figure a quick benchmark gives, kept to compare with, never judged.

Baselines, all in this process, for each record size:

* ``jsonl append + fsync at end``: a buffered JSON-lines file (write, flush, fsync,
  close; no checksum): what a service writes when it does not use a log, durable when
  the clock stops. ``jsonl append`` is the same run with the clock stopped before the
  fsync (durability: the page cache).
* ``jsonl read``: the same file read back line by line (the drain baseline).
* ``page cache fill, 1 MiB writes + fsync at end``: the JSONL file's bytes written with
  one ``write()`` per MiB, then one fsync, inside the clock: no framing, no checksum, a
  system call per MiB, so the ceiling for appends on this machine and disk.
  ``page cache fill, 1 MiB writes`` is the same run with the clock stopped before the fsync.
* ``go-original append``: the Go original's file store, open/append/fsync/close per event.
* ``queuelib FifoDiskQueue`` (short run): only when ``queuelib`` is importable
  (``segmentlog[bench]``).

Durability columns are measured, not claimed: ``fsync/rec`` counts the calls to
``os.fsync`` and ``os.fdatasync`` made while a row ran (a counting shim installed for the
run; every sync of the log and of the baselines goes through these two functions, except
the C group committer's fdatasyncs, which the log counts and the row adds) divided by the
records of the row. ``CRC`` says whether every record carries a checksum that is verified
when it is read.

The targets (``TARGETS``) are ratios of two rows of the CADF event in the sustained
regime. A target gets a verdict (met or missed) only when its row ran in that regime:
the C core, the default segment size, and ``ROTATIONS`` rotations inside the clock or,
for a row bound by fsyncs, ``STEADY`` seconds of it; otherwise the report says why not.

The native/pure ratio runs the short-run append and drain rows in a child process started
with ``SEGMENTLOG_BACKEND=pure`` (the backend is chosen once per process), with fewer
records, and divides the native short-run rates by the child's.

Needs nothing but the package: no broker, no database, no extra library. Everything is
written below one temporary directory, removed afterwards even on error or Ctrl-C.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from segmentlog._backend import impl
from segmentlog._format import SEGMENT_HEADER_SIZE, frame_size
from segmentlog.log import SegmentLog

# A realistic CADF audit event (the payload the pipeline ships), 514 bytes as JSON.
CADF_EVENT: dict[str, Any] = {
    "typeURI": "http://schemas.dmtf.org/cloud/audit/1.0/event",
    "id": "7189ce80-6e73-5ad9-bdc5-dcc47f176378",
    "eventTime": "2026-11-29T10:21:53.123+00:00",
    "eventType": "activity",
    "action": "update/quota",
    "outcome": "success",
    "reason": {"reasonType": "HTTP", "reasonCode": "200"},
    "initiator": {
        "typeURI": "service/security/account/user",
        "id": "e2d1f2b6a8c94d0b",
        "host": {"address": "10.0.0.127"},
    },
    "target": {"typeURI": "service/resources/project", "id": "3f1c2b4a5d"},
    "observer": {"typeURI": "service/resources", "name": "limes", "id": "limes"},
}
THREADS = 16
# The log's own default: the sustained regime measures what users get.
SEGMENT_SIZE: int = inspect.signature(SegmentLog).parameters["segment_size"].default
ROTATIONS = 8  # segment rotations a sustained row puts inside its clock, at the least
SHORT = 100_000  # records of a short-run row
FILL_CHUNK = 1 << 20  # bytes per write() of the page-cache fill row

TARGET_CAP = 60.0  # seconds: a safety stop for the rows the targets judge
FAST_CAP = 2.0  # seconds: the other sustained rows stop early on a slow disk
DURABLE_CAP = 4.0  # seconds: append_batch(100) with fsync="always" (an fsync per 100)
SLOW_CAP = 0.6  # seconds: rows bound by an fsync per record
GO_CAP = 1.0  # seconds: the Go original (an fsync per record), a baseline of two targets
DRAIN1_CAP = 1.0  # seconds: read_batch(1), bound by the call, not by the log's length
WARMUP = 0.5  # seconds the 16 threads run before their steady state is counted
STEADY = 3.0  # seconds of steady state a row bound by fsyncs needs for a verdict

REGIMES = ("sustained", "time cap", "steady state", "short run")

FSYNC_AT_END = "jsonl append + fsync at end"
FILL = "page cache fill, 1 MiB writes + fsync at end"
THREADS_ROW = f"segmentlog append fsync=always batch=1 threads={THREADS}"

# The engine's targets in the sustained regime, each a ratio of two rows of one run,
# stated for the CADF event (other sizes show their ratios without a verdict). The last
# field says when the row ran in that regime: ROTATIONS segment boundaries crossed inside
# its clock, STEADY seconds of it (rows bound by fsyncs, whose rate does not depend on
# the log's length), or either.
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("append one at a time, fsync=never, sync at the end",
     "segmentlog append fsync=never batch=1 + sync", FSYNC_AT_END, 1.0, "rotations"),
    ("append_batch(1000), fsync=never, sync at the end",
     "segmentlog append fsync=never batch=1000 + sync", FILL, 0.8, "rotations"),
    ("append_batch(1000), fsync=never, sync at the end",
     "segmentlog append fsync=never batch=1000 + sync", FSYNC_AT_END, 1.0, "rotations"),
    ("read_batch(1000) + commit, CRC verified",
     "segmentlog drain fsync=never batch=1000", "jsonl read", 1.0, "rotations"),
    (f"fsync=always, {THREADS} threads one record each", THREADS_ROW,
     "go-original append", 8.0, "seconds"),
    ("fsync=always, append_batch(100)", "segmentlog append fsync=always batch=100",
     "go-original append", 50.0, "rotations or seconds"),
]
# The log's sustained rows of a size that gets every row: (fsync, batch).
LOG_ROWS = (("never", 1), ("never", 1000), ("interval", 1), ("interval", 1000),
            ("always", 1), ("always", 100), ("always", 1000))
# Rows the child process measures with the pure-Python backend (short runs).
PURE_ROWS = ("short run: segmentlog append fsync=never batch=1",
             "short run: segmentlog append fsync=never batch=1000",
             "short run: segmentlog drain fsync=never batch=1000")


def payload_of(size: str) -> bytes:
    """The record every row writes: the CADF event, or JSON padded to 64 or 4096 bytes."""
    if size == "cadf":
        return orjson.dumps(CADF_EVENT)
    n = int(size)
    return b'{"pad":"' + b"x" * (n - 10) + b'"}'


def records_per_segment(payload: bytes, segment_size: int = SEGMENT_SIZE) -> int:
    """Records of ``payload`` one segment holds (frames never straddle two)."""
    return (segment_size - SEGMENT_HEADER_SIZE) // frame_size(len(payload))


def sustained_records(payload: bytes, segment_size: int = SEGMENT_SIZE,
                      rotations: int = ROTATIONS) -> int:
    """Records a sustained row appends: ``rotations`` full segments and an eighth of one
    more (so the last rotation is inside the clock whatever the batch size), rounded up
    to whole batches of 1000."""
    per = records_per_segment(payload, segment_size)
    need = rotations * per + max(1, per // 8)
    return -(-need // 1000) * 1000


class FsyncCounter:
    """Counts ``os.fsync`` and ``os.fdatasync`` calls while installed (any thread).

    The shim only counts and calls through: a lock and an addition, well under a
    microsecond, on calls that take tens of microseconds at the least."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0

    def _tick(self) -> None:
        with self._lock:
            self.calls += 1

    @contextmanager
    def installed(self) -> Iterator[FsyncCounter]:
        real_fsync, real_fdatasync = os.fsync, os.fdatasync
        tick = self._tick

        def fsync(fd: Any) -> None:
            tick()
            real_fsync(fd)

        def fdatasync(fd: Any) -> None:
            tick()
            real_fdatasync(fd)

        os.fsync, os.fdatasync = fsync, fdatasync
        try:
            yield self
        finally:
            os.fsync, os.fdatasync = real_fsync, real_fdatasync


@dataclass
class Row:
    size: str
    name: str
    op: str  # "append" or "drain"
    regime: str
    durability: str
    checksum: bool
    records: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    fsyncs: list[int] = field(default_factory=list)
    rotations: list[int] = field(default_factory=list)  # the log's rows only

    @property
    def rate(self) -> float:
        return statistics.median(n / s for n, s in zip(self.records, self.seconds, strict=True))

    @property
    def fsyncs_per_record(self) -> float:
        return statistics.median(f / n for f, n in zip(self.fsyncs, self.records, strict=True))


@dataclass
class Workload:
    """One record size: its payload, its rows' record counts, every row or the key ones."""

    size: str
    payload: bytes
    records: int  # per sustained row
    full: bool
    short: int = SHORT
    slow: int = 1000  # most records of a row bound by an fsync per record

    @property
    def line(self) -> bytes:
        return self.payload + b"\n"


def _durability(fsync: str, batch: int, op: str) -> str:
    if op == "drain":
        if fsync == "always":
            return "commit: checkpoint fsynced per read_batch"
        return "commit: checkpoint written <= every 50 ms, re-read after a crash"
    return {
        "never": "page cache only (lost on power loss)",
        "interval": "fsync every 10 ms (<= 10 ms lost)",
        "always": ("on disk at return, group fsync" if batch == 1
                   else f"on disk at return, 1 fsync per {batch}"),
    }[fsync]


def _settle(log: SegmentLog, timeout: float = 10.0) -> None:
    """Wait until the background preparer has the next segment ready, so the clock starts
    from the state of a log that has been open a while (later preparations are timed)."""
    deadline = time.monotonic() + timeout
    size = log.stats()["segment_size"]
    while ((log.stats()["disk_bytes"] < 2 * size or not log._preparer.idle)
           and time.monotonic() < deadline):
        time.sleep(0.005)
    log.sync()


Step = tuple[str, Callable[[], None]]


class Bench:
    def __init__(self, directory: str, sizes: list[str], reps: int, *,
                 records: int | None = None, segment_size: int = SEGMENT_SIZE,
                 thread_seconds: float = STEADY, progress: bool = False,
                 pure: bool = True) -> None:
        self.directory, self.reps = directory, reps
        self.segment_size = segment_size
        self.thread_seconds = thread_seconds
        self.workloads: list[Workload] = []
        for i, size in enumerate(sizes):
            payload = payload_of(size)
            n = records if records is not None else sustained_records(payload, segment_size)
            w = Workload(size, payload, n, full=i == 0, short=min(SHORT, n))
            w.slow = max(50, min(w.short // 100, 1000))
            self.workloads.append(w)
        self.rows: dict[tuple[str, str], Row] = {}
        self.progress = progress
        self.pure = pure and impl.NAME != "pure"
        first = self.workloads[0]
        self.pure_records = max(200, min(first.short // 20, 5000))
        self.pure_rows: dict[str, Row] = {}
        self.counter = FsyncCounter()
        self.notes: list[str] = []
        self.elapsed = 0.0
        self._n = 0
        try:
            import queuelib  # noqa: F401
            self.queuelib = True
        except ImportError:
            self.queuelib = False

    def fresh(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.directory, f"{self._n:04d}-{name}")

    def add(self, w: Workload, name: str, op: str, regime: str, durability: str,
            checksum: bool, records: int, seconds: float, fsyncs: int,
            rotations: int | None = None) -> None:
        row = self.rows.setdefault((w.size, name),
                                   Row(w.size, name, op, regime, durability, checksum))
        row.records.append(records)
        row.seconds.append(max(seconds, 1e-9))
        row.fsyncs.append(fsyncs)
        if rotations is not None:
            row.rotations.append(rotations)

    # -- baselines ---------------------------------------------------------------------

    def jsonl(self, w: Workload, short: bool = False) -> None:
        """A buffered JSON-lines file: written, fsynced at the end, read back."""
        records = w.short if short else w.records
        prefix, regime = ("short run: ", "short run") if short else ("", "sustained")
        path = self.fresh("jsonl")
        line = w.line
        f0 = self.counter.calls
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            write = f.write
            for _ in range(records):
                write(line)
            f.flush()
            t_written = time.perf_counter()
            os.fsync(f.fileno())
            t_synced = time.perf_counter()
        t_closed = time.perf_counter()
        fsyncs = self.counter.calls - f0
        n = 0
        with open(path, "rb") as f:
            for _ in f:
                n += 1
        t_read = time.perf_counter()
        if n != records:
            raise RuntimeError(f"jsonl baseline read {n} lines, wrote {records}")
        os.unlink(path)
        # Without the fsync: write, flush and close, as a plain buffered file.
        self.add(w, prefix + "jsonl append", "append", regime,
                 "page cache only (lost on power loss)", False, records,
                 (t_written - t0) + (t_closed - t_synced), 0)
        if not short:
            self.add(w, FSYNC_AT_END, "append", regime, "on disk at the end", False,
                     records, t_closed - t0, fsyncs)
        self.add(w, prefix + "jsonl read", "drain", regime, "no commit, no checksum", False,
                 n, t_read - t_closed, 0)

    def page_fill(self, w: Workload) -> None:
        """The JSONL file's bytes in 1 MiB write() calls, then one fsync: the ceiling."""
        path = self.fresh("fill")
        line = w.line
        per = max(1, FILL_CHUNK // len(line))
        chunk = line * per
        full, rest = divmod(w.records, per)
        f0 = self.counter.calls
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write = os.write
            for _ in range(full):
                write(fd, chunk)
            if rest:
                write(fd, line * rest)
            t_written = time.perf_counter()
            os.fsync(fd)
            t_synced = time.perf_counter()
        finally:
            os.close(fd)
        t_closed = time.perf_counter()
        if os.path.getsize(path) != w.records * len(line):
            raise RuntimeError(f"page cache fill wrote {os.path.getsize(path)} bytes, "
                               f"meant {w.records * len(line)}")
        os.unlink(path)
        self.add(w, "page cache fill, 1 MiB writes", "append", "sustained",
                 "page cache only (lost on power loss)", False, w.records,
                 (t_written - t0) + (t_closed - t_synced), 0)
        self.add(w, FILL, "append", "sustained", "on disk at the end", False, w.records,
                 t_closed - t0, self.counter.calls - f0)

    def go_original(self, w: Workload) -> None:
        path = self.fresh("go")
        line = w.line
        f0 = self.counter.calls
        t0 = time.perf_counter()
        deadline = t0 + GO_CAP
        n = 0
        while n < 10 * w.slow and (n < 20 or time.perf_counter() < deadline):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, line)
            os.fsync(fd)
            os.close(fd)
            n += 1
        self.add(w, "go-original append", "append", "time cap",
                 "on disk at return, fsync per record", False, n,
                 time.perf_counter() - t0, self.counter.calls - f0)
        os.unlink(path)

    def queuelib_fifo(self, w: Workload) -> None:
        from queuelib import FifoDiskQueue  # type: ignore[import-not-found,unused-ignore]

        path = self.fresh("queuelib")
        q = FifoDiskQueue(path)
        payload, n = w.payload, w.short
        f0 = self.counter.calls
        t0 = time.perf_counter()
        push = q.push
        for _ in range(n):
            push(payload)
        t1 = time.perf_counter()
        f1 = self.counter.calls
        pop = q.pop
        got = 0
        while pop() is not None:
            got += 1
        t2 = time.perf_counter()
        f2 = self.counter.calls
        q.close()  # removes its directory once empty
        shutil.rmtree(path, ignore_errors=True)
        self.add(w, "short run: queuelib FifoDiskQueue push", "append", "short run",
                 "page cache only (lost on power loss)", False, n, t1 - t0, f1 - f0)
        self.add(w, "short run: queuelib FifoDiskQueue pop", "drain", "short run",
                 "no commit, no checksum", False, got, t2 - t1, f2 - f1)

    # -- segmentlog ------------------------------------------------------------------

    def fsyncs(self, log: SegmentLog) -> int:
        """fsync calls so far: the counter's, plus the C group committer's fdatasyncs
        (csrc/committer.c calls fdatasync itself, unseen by the counter)."""
        log.stats()  # takes the log's lock: the committer hands its count back
        return self.counter.calls + log._writer.commit_rounds

    def log_rows(self, w: Workload, fsync: str, batch: int, *, records: int, cap: float,
                 regime: str = "sustained", drain_cap: float | None = FAST_CAP,
                 drain_regime: str | None = None, short: bool = False) -> None:
        """Append ``records`` one by one (batch 1) or with append_batch (then ``sync()``
        inside the clock, unless fsync="always" made them durable already or the row is
        a short run), then drain them with read_batch(batch) + commit (``drain_cap``
        None: no drain row). Each part stops early at its time cap."""
        records = max(records, batch)  # at least one call
        per_segment = records_per_segment(w.payload, self.segment_size)
        prefix = "short run: " if short else ""
        sync_at_end = fsync != "always" and not short
        name = f"segmentlog append fsync={fsync} batch={batch}" + (" + sync" if sync_at_end
                                                                   else "")
        path = self.fresh(f"log-{fsync}-{batch}")
        payload = w.payload
        one_by_one = fsync == "always"  # each append waits for the disk: check the time
        with SegmentLog(path, segment_size=self.segment_size, fsync=fsync) as log:
            _settle(log)
            f0 = self.fsyncs(log)
            r0 = log.stats()["rotations"]
            n = 0
            t0 = time.perf_counter()
            deadline = t0 + cap
            if batch == 1:
                append = log.append
                step = 1 if one_by_one else 64
                while n < records:
                    for _ in range(min(step, records - n)):
                        append(payload)
                    n += min(step, records - n)
                    if n >= 20 and time.perf_counter() > deadline:
                        break
            else:
                chunk = [payload] * batch
                append_batch = log.append_batch
                while n + batch <= records:
                    append_batch(chunk)
                    n += batch
                    if n >= 20 and time.perf_counter() > deadline:
                        break
            if sync_at_end:
                log.sync()  # the records are on disk when the clock stops
            elapsed = time.perf_counter() - t0
            rotations = log.stats()["rotations"] - r0
            durability = _durability(fsync, batch, "append")
            if sync_at_end:
                durability = ("on disk at the end (sync())" if fsync == "never"
                              else durability + ", sync() at the end")
            self.add(w, prefix + name, "append", regime, durability, True, n, elapsed,
                     self.fsyncs(log) - f0, rotations)
            if drain_cap is not None:
                f0 = self.fsyncs(log)
                got = 0
                t0 = time.perf_counter()
                deadline = t0 + drain_cap
                read_batch, commit = log.read_batch, log.commit
                capped = False
                while b := read_batch(batch):
                    got += len(b)
                    commit(b)
                    if got >= 20 and time.perf_counter() > deadline:
                        capped = True
                        break
                elapsed = time.perf_counter() - t0
                if got != n and not capped:
                    raise RuntimeError(f"drained {got} records of {n} appended")
                self.add(w, f"{prefix}segmentlog drain fsync={fsync} batch={batch}", "drain",
                         drain_regime or regime, _durability(fsync, batch, "drain"), True,
                         got, elapsed, self.fsyncs(log) - f0, got // per_segment)
        shutil.rmtree(path)

    def log_threads(self, w: Workload) -> None:
        """16 threads append one record each with fsync="always": counted over
        ``thread_seconds`` after a warm-up."""
        path = self.fresh("log-threads")
        payload = w.payload
        done = [0] * THREADS
        with SegmentLog(path, segment_size=self.segment_size, fsync="always") as log:
            _settle(log)
            start = threading.Barrier(THREADS + 1)
            stop = threading.Event()

            def work(i: int) -> None:
                start.wait()
                append = log.append
                k = 0
                while not stop.is_set():
                    append(payload)
                    k += 1
                    done[i] = k

            pool = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
            for t in pool:
                t.start()
            start.wait()
            time.sleep(WARMUP)
            f0, n0, r0 = self.fsyncs(log), sum(done), log.stats()["rotations"]
            t0 = time.perf_counter()
            time.sleep(self.thread_seconds)
            f1, n1, r1 = self.fsyncs(log), sum(done), log.stats()["rotations"]
            elapsed = time.perf_counter() - t0
            stop.set()
            for t in pool:
                t.join()
            self.add(w, THREADS_ROW, "append", "steady state", "on disk at return, group fsync",
                     True, n1 - n0, elapsed, f1 - f0, r1 - r0)
        shutil.rmtree(path)

    def pure_pass(self) -> None:
        """The PURE_ROWS with the pure-Python backend, in a child process."""
        code = ("import sys; from segmentlog.bench import _pure_child; "
                "sys.exit(_pure_child(sys.argv[1:]))")
        env = dict(os.environ, SEGMENTLOG_BACKEND="pure")
        size = self.workloads[0].size
        out = subprocess.run(
            [sys.executable, "-c", code, self.directory, size, str(self.pure_records)],
            env=env, capture_output=True, check=False, timeout=120,
        )
        if out.returncode != 0:
            self.pure = False
            self.notes.append("pure-backend pass failed: "
                              + out.stderr.decode(errors="replace").strip()[-300:])
            return
        for r in json.loads(out.stdout):
            row = self.pure_rows.setdefault(r["name"],
                                            Row(size, r["name"], r["op"], "short run", "", True))
            row.records.append(r["records"])
            row.seconds.append(r["seconds"])
            row.fsyncs.append(r["fsyncs"])

    # -- the run ---------------------------------------------------------------------

    def plan(self) -> list[Step]:
        """The steps of one repetition, in order."""
        steps: list[Step] = []
        for w in self.workloads:
            tag = w.size
            steps += [(f"{tag}: jsonl", partial(self.jsonl, w)),
                      (f"{tag}: page cache fill", partial(self.page_fill, w))]
            if not w.full:
                steps += [
                    (f"{tag}: fsync=never batch=1",
                     partial(self.log_rows, w, "never", 1, records=w.records, cap=TARGET_CAP,
                             drain_cap=None)),
                    (f"{tag}: fsync=never batch=1000",
                     partial(self.log_rows, w, "never", 1000, records=w.records,
                             cap=TARGET_CAP, drain_cap=TARGET_CAP)),
                ]
                continue
            steps.append((f"{tag}: go-original", partial(self.go_original, w)))
            for fsync, batch in LOG_ROWS:
                steps.append((f"{tag}: fsync={fsync} batch={batch}",
                              self._log_step(w, fsync, batch)))
            steps.append((f"{tag}: {THREADS} threads", partial(self.log_threads, w)))
            steps.append((f"{tag}: short runs", partial(self.short_rows, w)))
            if self.queuelib:
                steps.append((f"{tag}: queuelib", partial(self.queuelib_fifo, w)))
        if self.pure:
            steps.append(("pure backend", self.pure_pass))
        return steps

    def _log_step(self, w: Workload, fsync: str, batch: int) -> Callable[[], None]:
        """The sustained append and drain rows of one policy and batch size: the rows the
        targets judge run to the end (TARGET_CAP is a safety stop), the others stop at
        FAST_CAP; read_batch(1) drains for a fixed time, once (fsync="never")."""
        if fsync == "always" and batch == 1:
            return partial(self.log_rows, w, fsync, batch, records=w.slow, cap=SLOW_CAP,
                           regime="time cap", drain_cap=SLOW_CAP)
        if batch == 1:
            judged = fsync == "never"
            return partial(self.log_rows, w, fsync, batch, records=w.records,
                           cap=TARGET_CAP if judged else FAST_CAP,
                           drain_cap=DRAIN1_CAP if judged else None, drain_regime="time cap")
        if (fsync, batch) == ("never", 1000):
            return partial(self.log_rows, w, fsync, batch, records=w.records, cap=TARGET_CAP,
                           drain_cap=TARGET_CAP)
        cap = DURABLE_CAP if (fsync, batch) == ("always", 100) else FAST_CAP
        return partial(self.log_rows, w, fsync, batch, records=w.records, cap=cap,
                       drain_cap=FAST_CAP)

    def short_rows(self, w: Workload) -> None:
        """The short-run rows: a log that never rotates, no sync inside the clock."""
        self.jsonl(w, short=True)
        self.log_rows(w, "never", 1, records=w.short, cap=TARGET_CAP, regime="short run",
                      drain_cap=None, short=True)
        self.log_rows(w, "never", 1000, records=w.short, cap=TARGET_CAP, regime="short run",
                      drain_cap=TARGET_CAP, short=True)

    def run(self) -> None:
        steps = self.plan()
        total = len(steps) * self.reps
        done = 0
        start = time.perf_counter()
        first_rep = 0.0
        with self.counter.installed():
            for rep in range(self.reps):
                for label, step in steps:
                    if label == "pure backend" and not self.pure:
                        continue  # an earlier pass failed; the report says why
                    if self.progress:
                        self._show(rep, done, total, label, time.perf_counter() - start,
                                   first_rep)
                    step()
                    done += 1
                if rep == 0:
                    first_rep = time.perf_counter() - start
        self.elapsed = time.perf_counter() - start
        if self.progress:
            sys.stderr.write(f"bench: {done}/{total} steps done in {self.elapsed:.0f} s\n")
            sys.stderr.flush()

    def _show(self, rep: int, done: int, total: int, label: str, elapsed: float,
              first_rep: float) -> None:
        left = ""
        if first_rep:
            left = f", ~{max(0.0, first_rep * self.reps - elapsed):.0f} s left"
        sys.stderr.write(f"bench: step {done + 1}/{total} (run {rep + 1}/{self.reps}, "
                         f"{elapsed:.0f} s{left}): {label}\n")
        sys.stderr.flush()

    def report(self) -> dict[str, Any]:
        rates = {key: row.rate for key, row in self.rows.items()}
        rows = []
        for row in self.rows.values():
            rate = row.rate
            short = row.regime == "short run"
            if row.op == "drain":
                base = ("short run: " if short else "") + "jsonl read"
            else:
                base = "short run: jsonl append" if short else FSYNC_AT_END
            fill = rates.get((row.size, FILL)) if row.op == "append" and not short else None
            go = rates.get((row.size, "go-original append")) if row.op == "append" else None
            payload = payload_of(row.size)
            rows.append({
                "size": row.size, "payload_bytes": len(payload), "name": row.name,
                "op": row.op, "regime": row.regime, "durability": row.durability,
                "checksum": row.checksum, "records": row.records, "seconds": row.seconds,
                "rotations": row.rotations or None,
                "median_rotations": statistics.median(row.rotations) if row.rotations
                else None,
                "records_per_s": rate, "mb_per_s": rate * len(payload) / 1e6,
                "fsyncs_per_record": row.fsyncs_per_record,
                "vs_jsonl": rate / rates[(row.size, base)],
                "vs_fill": rate / fill if fill else None,
                "vs_go_original": rate / go if go else None,
            })
        targets = [self._target(*t) for t in TARGETS]
        pure = []
        first = self.workloads[0].size
        for name, prow in self.pure_rows.items():
            native = rates[(first, name)]
            pure.append({"row": name, "pure_records_per_s": prow.rate,
                         "native_records_per_s": native, "native_over_pure": native / prow.rate})
        return {
            "backend": impl.NAME, "crc32c": impl.crc32c_impl(), "reps": self.reps,
            "segment_size": self.segment_size, "default_segment_size": SEGMENT_SIZE,
            "rotations_required": ROTATIONS, "thread_seconds": self.thread_seconds,
            "sizes": [{"size": w.size, "payload_bytes": len(w.payload), "records": w.records,
                       "records_per_segment": records_per_segment(w.payload, self.segment_size),
                       "short_records": w.short, "rows": "all" if w.full else "key"}
                      for w in self.workloads],
            "directory": self.directory, "rows": rows, "targets": targets,
            "pure_backend": pure, "pure_records": self.pure_records, "notes": self.notes,
            "seconds": self.elapsed,
            "machine": {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
                        "platform": platform.platform(), "python": platform.python_version()},
        }

    def _target(self, what: str, row_name: str, base: str, goal: float,
                regime: str) -> dict[str, Any]:
        out: dict[str, Any] = {"what": what, "row": row_name, "baseline": base,
                               "target": goal, "ratio": None, "met": None, "why": None}
        row, baseline = self.rows.get(("cadf", row_name)), self.rows.get(("cadf", base))
        if row is None or baseline is None:
            out["why"] = "needs the CADF event's rows (--size all or cadf)"
            return out
        out["ratio"] = row.rate / baseline.rate
        rotations = min(row.rotations) if row.rotations else 0
        seconds = min(row.seconds)
        enough = {"rotations": rotations >= ROTATIONS, "seconds": seconds >= STEADY,
                  "rotations or seconds": rotations >= ROTATIONS or seconds >= STEADY}[regime]
        if impl.NAME == "pure":
            out["why"] = "the targets are for the C core"
        elif self.segment_size != SEGMENT_SIZE:
            out["why"] = f"not the sustained regime: segments of {self.segment_size} bytes"
        elif not enough:
            needs = {"rotations": f"{ROTATIONS} rotations needed",
                     "seconds": f"{STEADY:g} s of steady state needed",
                     "rotations or seconds": f"{ROTATIONS} rotations or {STEADY:g} s needed"}
            out["why"] = (f"not the sustained regime: {rotations} rotations in "
                          f"{seconds:.1f} s inside the clock, {needs[regime]}")
        else:
            out["met"] = out["ratio"] >= goal
        return out


def _pure_child(argv: list[str]) -> int:
    """Child process of the pure-backend pass: one repetition of PURE_ROWS as JSON."""
    directory, size, records = argv[0], argv[1], int(argv[2])
    if impl.NAME != "pure":
        sys.stderr.write("SEGMENTLOG_BACKEND=pure was not honoured\n")
        return 2
    sub = tempfile.mkdtemp(prefix="pure-", dir=directory)
    try:
        bench = Bench(sub, [size], 1, records=records, pure=False)
        w = bench.workloads[0]
        with bench.counter.installed():
            bench.log_rows(w, "never", 1, records=records, cap=TARGET_CAP, regime="short run",
                           drain_cap=None, short=True)
            bench.log_rows(w, "never", 1000, records=records, cap=TARGET_CAP,
                           regime="short run", drain_cap=TARGET_CAP, short=True)
    finally:
        shutil.rmtree(sub, ignore_errors=True)
    out = [{"name": r.name, "op": r.op, "records": r.records[0], "seconds": r.seconds[0],
            "fsyncs": r.fsyncs[0]} for r in bench.rows.values() if r.name in PURE_ROWS]
    sys.stdout.write(json.dumps(out))
    return 0


def _ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}x" if x < 10 else f"{x:,.0f}x"


def _size_title(s: dict[str, Any], segment_size: int) -> str:
    what = ("CADF event" if s["size"] == "cadf" else "records") + f", {s['payload_bytes']} bytes"
    return (f"{what} ({'every row' if s['rows'] == 'all' else 'key rows'}): sustained rows "
            f"append {s['records']:,} records each, {s['records'] / s['records_per_segment']:.1f}"
            f" segments of {segment_size / (1 << 20):g} MiB")


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    seg = result["segment_size"]
    lines = [
        f"segmentlog bench: backend {result['backend']} (CRC32C {result['crc32c']}), median of "
        f"{result['reps']} interleaved runs, {result['seconds']:.0f} s",
        f"disk: {result['directory']} (removed); {m['cpus']} CPUs, load average "
        f"{m['loadavg'][0]:.1f} at the end: ratios hold better than absolute rates",
        f"sustained regime: segments of {seg / (1 << 20):g} MiB (the log's default"
        + ("" if seg == result["default_segment_size"] else ": NOT here") + f"), at least "
        f"{result['rotations_required']} rotations inside each row's clock, the log opened "
        "before it, sync() inside it",
    ]
    header = (f"{'row':50} {'records/s':>11} {'MB/s':>7} {'vs jsonl':>9} {'vs fill':>8} "
              f"{'vs go':>7} {'fsync/rec':>9} {'rot':>4} {'CRC':>3}  durability")
    for s in result["sizes"]:
        lines += ["", _size_title(s, seg)]
        for regime in REGIMES:
            rows = [r for r in result["rows"] if r["size"] == s["size"] and r["regime"] == regime]
            if not rows:
                continue
            lines += ["", f"  [{regime}]", header]
            for r in rows:
                f = r["fsyncs_per_record"]
                fs = "0" if f == 0 else (f"{f:.3f}" if f < 0.1 else f"{f:.2f}")
                rot = r["median_rotations"]
                lines.append(
                    f"{r['name']:50} {r['records_per_s']:11,.0f} {r['mb_per_s']:7.1f} "
                    f"{_ratio(r['vs_jsonl']):>9} {_ratio(r['vs_fill']):>8} "
                    f"{_ratio(r['vs_go_original']):>7} {fs:>9} "
                    f"{'-' if rot is None else f'{rot:g}':>4} "
                    f"{'yes' if r['checksum'] else 'no':>3}  {r['durability']}")
    lines += [
        "", "vs jsonl: append rows against 'jsonl append + fsync at end' (short runs: 'jsonl "
        "append', no fsync), drain rows against 'jsonl read'. vs fill: against the page cache "
        "fill + fsync, the ceiling for appends. Drain = read_batch(batch) + commit. rot: "
        "segment boundaries crossed inside the clock.",
        "", "targets (CADF event, sustained regime; each a ratio of two rows above):"]
    for t in result["targets"]:
        verdict = {True: "met", False: "MISSED", None: f"no verdict: {t['why']}"}[t["met"]]
        lines.append(f"  {t['what']:52} vs {t['baseline']:45} {_ratio(t['ratio']):>7}  (>= "
                     f"{t['target']:g}x)  {verdict}")
    if result["pure_backend"]:
        lines += ["", f"native C core vs pure-Python backend (short runs; the pure rows ran in "
                  f"a child process with SEGMENTLOG_BACKEND=pure, {result['pure_records']} "
                  "records):"]
        for p in result["pure_backend"]:
            lines.append(f"  {p['row']:52} native {p['native_records_per_s']:11,.0f}/s  pure "
                         f"{p['pure_records_per_s']:9,.0f}/s  {_ratio(p['native_over_pure'])}")
    elif result["backend"] == "pure":
        lines += ["", "every row above ran on the pure-Python backend (SEGMENTLOG_BACKEND=pure, "
                  "or the C core is not built)"]
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def from_args(args: Any, directory: str) -> Bench:
    """The run the command line asks for (its defaults: the sustained regime)."""
    sizes = ["cadf", "64", "4096"] if args.size == "all" else [args.size]
    return Bench(directory, sizes, args.reps, records=args.records,
                 thread_seconds=args.threads_seconds or STEADY, progress=not args.quiet)


def main(args: Any) -> int:
    parent = args.dir
    if parent is not None:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            sys.stderr.write(f"segmentlog bench: cannot create --dir {parent}: {exc.strerror}\n")
            return 2
    try:
        directory = tempfile.mkdtemp(prefix="segmentlog-bench-", dir=parent)
    except OSError as exc:
        sys.stderr.write(f"segmentlog bench: cannot write in --dir {parent}: {exc.strerror}\n")
        return 2
    try:
        bench = from_args(args, directory)
        bench.run()
        result = bench.report()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(result))
    return 0
