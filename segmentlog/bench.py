"""``python -m segmentlog bench``: the log beside what users would otherwise write, in one run.

Theory of operation
-------------------
Every row appends (and, for drain rows, reads back and commits) the same record on the
same disk in the same process, so its ratio to a baseline holds even on a busy machine:
the rows of one repetition run one after another, repetitions are interleaved (row A,
B, C, A, B, C, ...) rather than back to back, and the table shows the median rate. Each
row runs ``--records`` records or a time cap, whichever comes first (rows bound by one
fsync per record get fewer records), so the default run stays under a minute on any disk.

Baselines, all in this process:

* ``jsonl append``: a buffered JSON-lines file (write, flush, close; no checksum): what
  a service writes when it does not use a log. Its clock stops before the file's one
  fsync: its durability is the page cache, as with ``fsync=never``, so the two compare
  like with like; ``jsonl append + fsync at end`` is the same run with that fsync.
* ``jsonl read``: the same file read back line by line (the drain baseline).
* ``go-original append``: the Go original's file store, open/append/fsync/close per event.
* ``queuelib FifoDiskQueue``: only when ``queuelib`` is importable (``segmentlog[bench]``).

Durability columns are measured, not claimed: ``fsync/rec`` counts the calls to
``os.fsync`` and ``os.fdatasync`` made while a row ran (a counting shim installed for the
run; every sync of the log and of the baselines goes through these two functions, except
the C group committer's fdatasyncs, which the log counts and the row adds) divided by the
records of the row. ``CRC`` says whether every record
carries a checksum that is verified when it is read.

The native/pure ratio runs the same append and drain rows in a child process started
with ``SEGMENTLOG_BACKEND=pure`` (the backend is chosen once per process), with fewer
records, and divides the rates measured here by the child's.

Needs nothing but the package: no broker, no database, no extra library. Everything is
written below one temporary directory, removed afterwards even on error or Ctrl-C.
"""

from __future__ import annotations

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
from typing import Any

import orjson

from segmentlog._backend import impl
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
SIZE_CHOICES = ("64", "cadf", "4096")
POLICIES = ("never", "interval", "always")
BATCHES = (1, 100, 1000)
THREADS = 16
SEGMENT_SIZE = 64 << 20  # the log's default; smaller for short runs (Bench.segment_size)

FAST_CAP = 3.0  # seconds: a row stops early on a very slow disk
SLOW_CAP = 0.6  # seconds: rows bound by an fsync per record or per small batch
THREAD_CAP = 1.0

# The engine's targets, each a ratio of two rows measured in this run. They are
# stated for the CADF event; for other sizes the ratios are shown without a verdict.
TARGETS: list[tuple[str, str, str, float]] = [
    ("append fsync=never, one record at a time", "segmentlog append fsync=never batch=1",
     "jsonl append", 1.0),
    ("append fsync=never, one record at a time", "segmentlog append fsync=never batch=1",
     "queuelib FifoDiskQueue push", 2.0),
    ("append_batch of 1000, fsync=never", "segmentlog append fsync=never batch=1000",
     "jsonl append", 3.0),
    ("read_batch(1000) + commit, CRC verified", "segmentlog drain fsync=never batch=1000",
     "jsonl read", 1.0),
    (f"fsync=always, {THREADS} threads one record each",
     f"segmentlog append fsync=always batch=1 threads={THREADS}", "go-original append", 8.0),
    ("fsync=always, append_batch of 100", "segmentlog append fsync=always batch=100",
     "go-original append", 50.0),
]
# Rows the child process measures with the pure-Python backend.
PURE_ROWS = ("segmentlog append fsync=never batch=1", "segmentlog append fsync=never batch=1000",
             "segmentlog drain fsync=never batch=1000")


def payload_of(size: str) -> bytes:
    """The record every row writes: the CADF event, or JSON padded to 64 or 4096 bytes."""
    if size == "cadf":
        return orjson.dumps(CADF_EVENT)
    n = int(size)
    return b'{"pad":"' + b"x" * (n - 10) + b'"}'


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
    name: str
    op: str  # "append" or "drain"
    durability: str
    checksum: bool
    records: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    fsyncs: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(n / s for n, s in zip(self.records, self.seconds, strict=True))

    @property
    def fsyncs_per_record(self) -> float:
        return statistics.median(f / n for f, n in zip(self.fsyncs, self.records, strict=True))


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


class Bench:
    def __init__(self, directory: str, size: str, records: int, reps: int,
                 progress: bool = False, pure: bool = True) -> None:
        self.directory, self.size, self.reps = directory, size, reps
        self.records = records
        # Rows bound by an fsync per record: enough records to time, few enough to finish.
        self.slow = max(50, min(records // 100, 1000))
        self.payload = payload_of(size)
        # The default segment size, unless a row's records fill far less than one: then
        # the smallest power of two >= 4 MiB that holds twice a row, so a quick run does
        # not spend its time zero-filling 64 MiB files it never uses.
        need = 2 * records * (len(self.payload) + 32)
        self.segment_size = min(SEGMENT_SIZE, max(4 << 20, 1 << (need - 1).bit_length()))
        self.rows: dict[str, Row] = {}
        self.progress = progress
        self.pure = pure and impl.NAME != "pure"
        self.pure_records = max(200, min(records // 20, 5000))
        self.pure_rows: dict[str, Row] = {}
        self.counter = FsyncCounter()
        self.notes: list[str] = []
        self._n = 0
        try:
            import queuelib  # noqa: F401
            self.queuelib = True
        except ImportError:
            self.queuelib = False

    def fresh(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.directory, f"{self._n:04d}-{name}")

    def add(self, name: str, op: str, durability: str, checksum: bool, records: int,
            seconds: float, fsyncs: int) -> None:
        row = self.rows.setdefault(name, Row(name, op, durability, checksum))
        row.records.append(records)
        row.seconds.append(max(seconds, 1e-9))
        row.fsyncs.append(fsyncs)

    # -- baselines ---------------------------------------------------------------------

    def jsonl(self) -> None:
        path = self.fresh("jsonl")
        line = self.payload + b"\n"
        f0 = self.counter.calls
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            w = f.write
            for _ in range(self.records):
                w(line)
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
        if n != self.records:
            raise RuntimeError(f"jsonl baseline read {n} lines, wrote {self.records}")
        os.unlink(path)
        # Without the fsync: write, flush and close, as a plain buffered file.
        self.add("jsonl append", "append", "page cache only (lost on power loss)", False,
                 self.records, (t_written - t0) + (t_closed - t_synced), 0)
        self.add("jsonl append + fsync at end", "append", "on disk at the end only", False,
                 self.records, t_closed - t0, fsyncs)
        self.add("jsonl read", "drain", "no commit, no checksum", False, n, t_read - t_closed, 0)

    def go_original(self) -> None:
        path = self.fresh("go")
        line = self.payload + b"\n"
        f0 = self.counter.calls
        t0 = time.perf_counter()
        deadline = t0 + SLOW_CAP
        n = 0
        while n < self.slow and (n < 20 or time.perf_counter() < deadline):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, line)
            os.fsync(fd)
            os.close(fd)
            n += 1
        self.add("go-original append", "append", "on disk at return, fsync per record",
                 False, n, time.perf_counter() - t0, self.counter.calls - f0)
        os.unlink(path)

    def queuelib_fifo(self) -> None:
        from queuelib import FifoDiskQueue  # type: ignore[import-not-found,unused-ignore]

        path = self.fresh("queuelib")
        q = FifoDiskQueue(path)
        payload, n = self.payload, self.records
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
        self.add("queuelib FifoDiskQueue push", "append", "page cache only (lost on power loss)",
                 False, n, t1 - t0, f1 - f0)
        self.add("queuelib FifoDiskQueue pop", "drain", "no commit, no checksum", False, got,
                 t2 - t1, f2 - f1)

    # -- segmentlog ------------------------------------------------------------------

    def fsyncs(self, log: SegmentLog) -> int:
        """fsync calls so far: the counter's, plus the C group committer's fdatasyncs
        (csrc/committer.c calls fdatasync itself, unseen by the counter)."""
        log.stats()  # takes the log's lock: the committer hands its count back
        return self.counter.calls + log._writer.commit_rounds

    def log_rows(self, fsync: str, batch: int, records: int | None = None) -> None:
        """Append ``records`` one by one (batch 1) or with append_batch, then drain them
        with read_batch(batch) + commit."""
        slow = fsync == "always"
        if records is None:
            records = self.records
            if slow:
                records = min(records, self.slow * batch)
        records = max(records, batch)  # at least one call
        cap = SLOW_CAP if slow else FAST_CAP
        path = self.fresh(f"log-{fsync}-{batch}")
        payload = self.payload
        with SegmentLog(path, segment_size=self.segment_size, fsync=fsync) as log:
            _settle(log)
            f0 = self.fsyncs(log)
            n = 0
            t0 = time.perf_counter()
            deadline = t0 + cap
            if batch == 1:
                append = log.append
                while n < records:
                    for _ in range(min(64 if not slow else 1, records - n)):
                        append(payload)
                        n += 1
                    if time.perf_counter() > deadline and n >= 20:
                        break
            else:
                chunk = [payload] * batch
                append_batch = log.append_batch
                while n + batch <= records:
                    append_batch(chunk)
                    n += batch
                    if time.perf_counter() > deadline and n >= 20:
                        break
            if fsync == "interval":
                log.sync()  # the records are durable when the clock stops, as with "always"
            elapsed = time.perf_counter() - t0
            self.add(f"segmentlog append fsync={fsync} batch={batch}", "append",
                     _durability(fsync, batch, "append"), True, n, elapsed,
                     self.fsyncs(log) - f0)
            f0 = self.fsyncs(log)
            got = 0
            t0 = time.perf_counter()
            read_batch, commit = log.read_batch, log.commit
            while b := read_batch(batch):
                got += len(b)
                commit(b)
                # A drain of fsync="always" commits durably: cap it like its appends.
                if slow and got >= 20 and time.perf_counter() - t0 > SLOW_CAP:
                    break
            elapsed = time.perf_counter() - t0
            if got != n and not slow:
                raise RuntimeError(f"drained {got} records of {n} appended")
            self.add(f"segmentlog drain fsync={fsync} batch={batch}", "drain",
                     _durability(fsync, batch, "drain"), True, got, elapsed,
                     self.fsyncs(log) - f0)
        shutil.rmtree(path)

    def log_threads(self) -> None:
        path = self.fresh("log-threads")
        payload = self.payload
        per = self.slow
        done = [0] * THREADS
        with SegmentLog(path, segment_size=self.segment_size, fsync="always") as log:
            _settle(log)
            start = threading.Barrier(THREADS + 1)
            stop = threading.Event()

            def work(i: int) -> None:
                start.wait()
                append = log.append
                for k in range(per):
                    if stop.is_set():
                        break
                    append(payload)
                    done[i] = k + 1

            pool = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
            for t in pool:
                t.start()
            f0 = self.fsyncs(log)
            start.wait()
            t0 = time.perf_counter()
            deadline = t0 + THREAD_CAP
            for t in pool:
                t.join(max(0.0, deadline - time.perf_counter()))
            stop.set()
            for t in pool:
                t.join()
            elapsed = time.perf_counter() - t0
            self.add(f"segmentlog append fsync=always batch=1 threads={THREADS}", "append",
                     "on disk at return, group fsync", True, sum(done), elapsed,
                     self.fsyncs(log) - f0)
        shutil.rmtree(path)

    def pure_pass(self) -> None:
        """The PURE_ROWS with the pure-Python backend, in a child process."""
        code = ("import sys; from segmentlog.bench import _pure_child; "
                "sys.exit(_pure_child(sys.argv[1:]))")
        env = dict(os.environ, SEGMENTLOG_BACKEND="pure")
        out = subprocess.run(
            [sys.executable, "-c", code, self.directory, self.size, str(self.pure_records)],
            env=env, capture_output=True, check=False, timeout=120,
        )
        if out.returncode != 0:
            self.pure = False
            self.notes.append("pure-backend pass failed: "
                              + out.stderr.decode(errors="replace").strip()[-300:])
            return
        for r in json.loads(out.stdout):
            row = self.pure_rows.setdefault(r["name"], Row(r["name"], r["op"], "", True))
            row.records.append(r["records"])
            row.seconds.append(r["seconds"])
            row.fsyncs.append(r["fsyncs"])

    # -- the run ---------------------------------------------------------------------

    def plan(self) -> list[tuple[str, Callable[[], None]]]:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("jsonl", self.jsonl), ("go-original", self.go_original)]
        if self.queuelib:
            steps.append(("queuelib", self.queuelib_fifo))
        for fsync in POLICIES:
            for batch in BATCHES:
                steps.append((f"fsync={fsync} batch={batch}",
                              lambda f=fsync, b=batch: self.log_rows(f, b)))  # type: ignore[misc]
        steps.append((f"{THREADS} threads", self.log_threads))
        if self.pure:
            steps.append(("pure backend", self.pure_pass))
        return steps

    def run(self) -> None:
        steps = self.plan()
        total = len(steps) * self.reps
        done = 0
        with self.counter.installed():
            for rep in range(self.reps):
                for label, step in steps:
                    if self.progress:
                        sys.stderr.write(f"\rbench: run {rep + 1}/{self.reps}, "
                                         f"{done}/{total} steps: {label:<24}")
                        sys.stderr.flush()
                    if label == "pure backend" and not self.pure:
                        continue  # an earlier pass failed; the report says why
                    step()
                    done += 1
        if self.progress:
            sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()

    def report(self) -> dict[str, Any]:
        rates = {name: row.rate for name, row in self.rows.items()}
        jsonl_w, jsonl_r = rates["jsonl append"], rates["jsonl read"]
        go = rates["go-original append"]
        mb = len(self.payload) / 1e6
        rows = []
        for row in self.rows.values():
            rate = row.rate
            rows.append({
                "name": row.name, "op": row.op, "durability": row.durability,
                "checksum": row.checksum, "records": row.records, "seconds": row.seconds,
                "records_per_s": rate, "mb_per_s": rate * mb,
                "fsyncs_per_record": row.fsyncs_per_record,
                "vs_jsonl": rate / (jsonl_r if row.op == "drain" else jsonl_w),
                "vs_go_original": rate / go if row.op == "append" else None,
            })
        targets = []
        for what, row_name, base, goal in TARGETS:
            if row_name not in rates or base not in rates:
                targets.append({"what": what, "row": row_name, "baseline": base,
                                "target": goal, "ratio": None, "met": None,
                                "why": f"{base.split()[0]} is not installed "
                                       "(pip install 'segmentlog[bench]')"})
                continue
            ratio = rates[row_name] / rates[base]
            targets.append({"what": what, "row": row_name, "baseline": base, "target": goal,
                            "ratio": ratio, "met": ratio >= goal
                            if self.size == "cadf" and impl.NAME != "pure" else None})
        pure = []
        for name, prow in self.pure_rows.items():
            pure.append({"row": name, "pure_records_per_s": prow.rate,
                         "native_records_per_s": rates[name],
                         "native_over_pure": rates[name] / prow.rate})
        load = os.getloadavg()
        return {
            "payload_bytes": len(self.payload), "size": self.size, "backend": impl.NAME,
            "crc32c": impl.crc32c_impl(), "reps": self.reps, "records": self.records,
            "slow_records": self.slow,
            "segment_size": self.segment_size, "directory": self.directory, "rows": rows,
            "targets": targets, "pure_backend": pure, "pure_records": self.pure_records,
            "notes": self.notes,
            "machine": {"cpus": os.cpu_count(), "loadavg": list(load),
                        "platform": platform.platform(),
                        "python": platform.python_version()},
        }


def _settle(log: SegmentLog, timeout: float = 10.0) -> None:
    """Wait until the background preparer has the next segment ready, so its zero-fill
    (64 MiB of writes and an fsync) does not land inside a timed row."""
    deadline = time.monotonic() + timeout
    size = log.stats()["segment_size"]
    while log.stats()["disk_bytes"] < 2 * size and time.monotonic() < deadline:
        time.sleep(0.005)
    log.sync()


def _pure_child(argv: list[str]) -> int:
    """Child process of the pure-backend pass: one repetition of PURE_ROWS as JSON."""
    directory, size, records = argv[0], argv[1], int(argv[2])
    if impl.NAME != "pure":
        sys.stderr.write("SEGMENTLOG_BACKEND=pure was not honoured\n")
        return 2
    sub = tempfile.mkdtemp(prefix="pure-", dir=directory)
    try:
        bench = Bench(sub, size, records, 1, pure=False)
        with bench.counter.installed():
            bench.log_rows("never", 1, records)
            bench.log_rows("never", 1000, records)
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


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"segmentlog bench: {result['payload_bytes']}-byte records ({result['size']}), backend "
        f"{result['backend']} (CRC32C {result['crc32c']}), median of {result['reps']} "
        f"interleaved runs",
        f"disk: {result['directory']} (removed), segments of "
        f"{result['segment_size'] >> 20} MiB; {m['cpus']} CPUs, load average "
        f"{m['loadavg'][0]:.1f} at the end: ratios hold better than absolute rates", "",
        f"{'row':48} {'records/s':>11} {'MB/s':>7} {'vs jsonl':>9} {'vs go':>7} "
        f"{'fsync/rec':>9} {'CRC':>3}  durability",
    ]
    for r in result["rows"]:
        f = r["fsyncs_per_record"]
        fs = "0" if f == 0 else (f"{f:.3f}" if f < 0.1 else f"{f:.2f}")
        lines.append(
            f"{r['name']:48} {r['records_per_s']:11,.0f} {r['mb_per_s']:7.1f} "
            f"{_ratio(r['vs_jsonl']):>9} {_ratio(r['vs_go_original']):>7} {fs:>9} "
            f"{'yes' if r['checksum'] else 'no':>3}  {r['durability']}")
    lines += ["", "vs jsonl: append rows against 'jsonl append', drain rows against 'jsonl read'. "
              "Drain = read_batch(batch) + commit.", "",
              "targets (each a ratio of two rows above):"]
    for t in result["targets"]:
        if t["ratio"] is None:
            lines.append(f"  {t['what']:44} vs {t['baseline']:28} {'-':>7}  (>= "
                         f"{t['target']:g}x)  n/a: {t['why']}")
            continue
        verdict = {True: "met", False: "NOT MET",
                   None: "(targets are for the C core, --size cadf)"}[t["met"]]
        lines.append(f"  {t['what']:44} vs {t['baseline']:28} {_ratio(t['ratio']):>7}  (>= "
                     f"{t['target']:g}x)  {verdict}")
    if result["pure_backend"]:
        lines += ["", f"native C core vs pure-Python backend (the pure rows ran in a child "
                  f"process with SEGMENTLOG_BACKEND=pure, {result['pure_records']} records):"]
        for p in result["pure_backend"]:
            lines.append(f"  {p['row']:46} native {p['native_records_per_s']:11,.0f}/s  pure "
                         f"{p['pure_records_per_s']:9,.0f}/s  {_ratio(p['native_over_pure'])}")
    elif result["backend"] == "pure":
        lines += ["", "every row above ran on the pure-Python backend (SEGMENTLOG_BACKEND=pure, "
                  "or the C core is not built)"]
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


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
        bench = Bench(directory, args.size, args.records, args.reps,
                      progress=sys.stderr.isatty() and not args.json)
        bench.run()
        result = bench.report()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(result))
    return 0
