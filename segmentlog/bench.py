"""``python -m segmentlog bench``: the log against what users would otherwise write, in one run.

Theory: every row appends (and, for read rows, drains) the same records on the same disk
in the same process, so ratios are comparable even on a noisy shared machine; each row is
repeated (interleaved, not back to back) and the median is reported. Baselines:

* ``jsonl``: a plain buffered JSON-lines file, one fsync at the end, no checksum;
* ``go-original``: the Go original's file store, open/append/fsync/close per event.

Needs nothing but the package: no broker, no database, no extra library.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from segmentlog._backend import impl
from segmentlog.log import SegmentLog

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
        "host": {"address": "10.180.0.27"},
    },
    "target": {"typeURI": "service/resources/project", "id": "3f1c2b4a5d6e7f80"},
    "observer": {"typeURI": "service/resources", "name": "limes", "id": "limes"},
}
SIZES = {"64": 64, "cadf": len(orjson.dumps(CADF_EVENT)), "4096": 4096}


def payload_of(size: str) -> bytes:
    if size == "cadf":
        return orjson.dumps(CADF_EVENT)
    n = SIZES[size]
    return (b'{"pad":"' + b"x" * n)[: n - 2] + b'"}'


@dataclass
class Row:
    name: str
    op: str  # "append" or "read"
    durability: str
    records: int
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.records / self.median


class Bench:
    def __init__(self, directory: str, size: str, records: int, reps: int,
                 progress: bool) -> None:
        self.directory, self.size, self.reps = directory, size, reps
        self.records = records
        self.slow = max(200, min(records // 50, 2000))  # rows bound by one fsync per record
        self.payload = payload_of(size)
        self.rows: dict[str, Row] = {}
        self.progress = progress
        self._n = 0

    def fresh(self, name: str) -> str:
        self._n += 1
        path = os.path.join(self.directory, f"{self._n:04d}-{name}")
        return path

    def add(self, name: str, op: str, durability: str, records: int, seconds: float) -> None:
        row = self.rows.setdefault(name, Row(name, op, durability, records, []))
        row.seconds.append(seconds)

    # -- baselines ---------------------------------------------------------------

    def jsonl(self) -> None:
        path = self.fresh("jsonl")
        line = self.payload + b"\n"
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            w = f.write
            for _ in range(self.records):
                w(line)
            f.flush()
            os.fsync(f.fileno())
        t1 = time.perf_counter()
        with open(path, "rb") as f:
            n = 0
            for _ in f:
                n += 1
        t2 = time.perf_counter()
        assert n == self.records
        os.unlink(path)
        self.add("jsonl (buffered, 1 fsync at end)", "append", "end only, no checksum",
                 self.records, t1 - t0)
        self.add("jsonl read line by line", "read", "no checksum", self.records, t2 - t1)

    def go_original(self) -> None:
        path = self.fresh("go")
        line = self.payload + b"\n"
        t0 = time.perf_counter()
        for _ in range(self.slow):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, line)
            os.fsync(fd)
            os.close(fd)
        self.add("go-original (open/write/fsync/close)", "append", "fsync per record",
                 self.slow, time.perf_counter() - t0)
        os.unlink(path)

    # -- segmentlog ----------------------------------------------------------------

    def log_append(self, fsync: str, batch: int, threads: int = 1) -> None:
        durable = {"never": "page cache only", "interval": "fsync every 10 ms",
                   "always": "fsync before return"}[fsync]
        records = self.slow * (threads if threads > 1 else 1) if (
            fsync == "always" and batch == 1) else self.records
        if fsync == "always" and batch > 1:
            records = min(self.records, self.slow * batch // 4)
        path = self.fresh(f"log-{fsync}-{batch}-{threads}")
        payload = self.payload
        with SegmentLog(path, segment_size=64 << 20, fsync=fsync) as log:
            log.sync()  # let the preparer create the next segment before timing
            if threads > 1:
                per = records // threads
                start = threading.Barrier(threads + 1)

                def work() -> None:
                    start.wait()
                    append = log.append
                    for _ in range(per):
                        append(payload)

                pool = [threading.Thread(target=work) for _ in range(threads)]
                for t in pool:
                    t.start()
                start.wait()
                t0 = time.perf_counter()
                for t in pool:
                    t.join()
                records = per * threads
            elif batch == 1:
                append = log.append
                t0 = time.perf_counter()
                for _ in range(records):
                    append(payload)
            else:
                chunk = [payload] * batch
                t0 = time.perf_counter()
                for _ in range(records // batch):
                    log.append_batch(chunk)
                records = records // batch * batch
            if fsync != "never":
                log.sync()
            elapsed = time.perf_counter() - t0
            name = f"segmentlog append fsync={fsync} batch={batch}"
            if threads > 1:
                name += f" threads={threads}"
            self.add(name, "append", durable, records, elapsed)
            if fsync == "never" and batch == 1:
                t0 = time.perf_counter()
                n = 0
                while b := log.read_batch(1000):
                    n += len(b)
                    log.commit(b)
                elapsed = time.perf_counter() - t0
                assert n == records, (n, records)
                self.add("segmentlog read_batch(1000)+commit (CRC checked)", "read",
                         "checksum verified", n, elapsed)
        shutil.rmtree(path)

    def plan(self) -> list[Callable[[], None]]:
        steps: list[Callable[[], None]] = [self.jsonl, self.go_original]
        for fsync in ("never", "interval", "always"):
            for batch in (1, 100, 1000):
                steps.append(lambda f=fsync, b=batch: self.log_append(f, b))  # type: ignore[misc]
        steps.append(lambda: self.log_append("always", 1, threads=16))
        return steps

    def run(self) -> None:
        steps = self.plan()
        total = len(steps) * self.reps
        done = 0
        for _ in range(self.reps):
            for step in steps:
                step()
                done += 1
                if self.progress:
                    sys.stderr.write(f"\rbench: {done}/{total} measurements")
                    sys.stderr.flush()
        if self.progress:
            sys.stderr.write("\r" + " " * 40 + "\r")

    def report(self) -> dict[str, Any]:
        jsonl_w = self.rows["jsonl (buffered, 1 fsync at end)"].rate
        jsonl_r = self.rows["jsonl read line by line"].rate
        go = self.rows["go-original (open/write/fsync/close)"].rate
        out = []
        for row in self.rows.values():
            base = jsonl_r if row.op == "read" else jsonl_w
            out.append({
                "name": row.name, "op": row.op, "durability": row.durability,
                "records": row.records, "records_per_s": row.rate,
                "mb_per_s": row.rate * len(self.payload) / 1e6,
                "vs_jsonl": row.rate / base, "vs_go_original": row.rate / go,
                "seconds": row.seconds,
            })
        return {"payload_bytes": len(self.payload), "backend": impl.NAME,
                "crc32c": impl.crc32c_impl(), "reps": self.reps, "rows": out,
                "directory": self.directory}


def format_table(result: dict[str, Any]) -> str:
    head = (f"segmentlog bench: {result['payload_bytes']}-byte records, backend "
            f"{result['backend']} ({result['crc32c']}), median of {result['reps']} runs, "
            f"on {result['directory']}")
    lines = [head, "",
             f"{'row':58} {'records/s':>11} {'MB/s':>8} {'vs jsonl':>9} {'vs go':>8}  durability"]
    for r in result["rows"]:
        lines.append(f"{r['name']:58} {r['records_per_s']:11,.0f} {r['mb_per_s']:8.1f} "
                     f"{r['vs_jsonl']:8.2f}x {r['vs_go_original']:7.1f}x  {r['durability']}")
    lines.append("")
    lines.append("read rows compare with 'jsonl read line by line'; append rows with the "
                 "buffered jsonl append.")
    return "\n".join(lines)


def main(args: Any) -> int:
    own = args.dir is None
    directory = tempfile.mkdtemp(prefix="segmentlog-bench-") if own else args.dir
    if not own:
        os.makedirs(directory, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="segmentlog-bench-", dir=directory)
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
