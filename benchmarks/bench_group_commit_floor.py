"""The 16-thread durable-append target against a plain group commit in C.

The engine issue asks ``fsync="always"`` with 16 threads appending one record each to
reach >= 8x the Go original's open/write/fsync/close per event. This measures, in one
run with the cases interleaved, a textbook group commit written in C with pthreads
(``group_commit_floor.c``: no Python, no GIL; a mutex and a condition broadcast; the
leader optionally waits ``--gathers`` microseconds for followers before its pwrite and
fdatasync), beside SegmentLog and the Go baseline. It was written as the machine's
floor when SegmentLog's group commit was in Python; SegmentLog's committer
(csrc/committer.c: adaptive gather, waiters released without the mutex) now runs above
it, so it is a reference point, not a bound. Each rate is the median of ``--reps``;
every ratio divides two rates of this run.

Usage: python benchmarks/bench_group_commit_floor.py [--dir PATH] [--threads 16]
       [--seconds 2] [--reps 3] [--gathers 0,25,50,100] [--json]
Needs a C compiler (``cc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)
import orjson

from segmentlog import SegmentLog
from segmentlog.bench import CADF_EVENT

HERE = os.path.dirname(os.path.abspath(__file__))
PAYLOAD = orjson.dumps(CADF_EVENT)
FRAME = 24 + ((len(PAYLOAD) + 7) & ~7)  # what one record takes in a segment


def go_original(path: str, seconds: float) -> float:
    """The Go original's write per event: open, append one line, fsync, close."""
    line = PAYLOAD + b"\n"
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line)
        os.fsync(fd)
        os.close(fd)
        n += 1
    return n / (time.perf_counter() - t0)


def segmentlog_threads(path: str, threads: int, seconds: float) -> float:
    done = [0] * threads
    with SegmentLog(path, fsync="always") as log:
        log.append(PAYLOAD)
        time.sleep(0.5)  # the preparer makes the next segment: not part of the rate
        start, stop = threading.Barrier(threads + 1), threading.Event()

        def work(i: int) -> None:
            append, k = log.append, 0
            start.wait()
            while not stop.is_set():
                append(PAYLOAD)
                k += 1
            done[i] = k

        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in pool:
            t.join()
        return sum(done) / (time.perf_counter() - t0)


def c_group_commit(binary: str, path: str, threads: int, gather_us: int,
                   seconds: float) -> float:
    out = subprocess.run([binary, path, str(threads), str(gather_us), str(seconds),
                          str(FRAME)], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.split()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="directory on the disk to measure")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gathers", default="0,25,50,100",
                    help="microseconds the C leader waits for followers, comma-separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gathers = [int(g) for g in args.gathers.split(",")]
    base = tempfile.mkdtemp(prefix="segmentlog-floor-", dir=args.dir)
    try:
        binary = os.path.join(base, "group_commit_floor")
        cc = os.environ.get("CC", "cc")
        try:
            subprocess.run([cc, "-O2", "-pthread", "-o", binary,
                            os.path.join(HERE, "group_commit_floor.c")], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"bench_group_commit_floor: cannot compile group_commit_floor.c with {cc!r} "
                  f"({exc}); install a C compiler or set CC", file=sys.stderr)
            return 2
        data = os.path.join(base, "data")

        def fresh(name: str) -> str:
            shutil.rmtree(data, ignore_errors=True)
            os.makedirs(data)
            return os.path.join(data, name)

        t, s = args.threads, args.seconds
        cases: list[tuple[str, Callable[[], float]]] = [
            ("go-original, 1 thread (Python)", lambda: go_original(fresh("go"), s)),
            ("C pwrite+fdatasync per record, 1 thread",
             lambda: c_group_commit(binary, fresh("c1"), 1, 0, s)),
            *[(f"C group commit, {t} threads, gather {g} us",
               lambda g=g: c_group_commit(binary, fresh("c"), t, g, s)) for g in gathers],
            (f"segmentlog fsync=always, {t} threads",
             lambda: segmentlog_threads(fresh("log"), t, s)),
        ]
        rates: dict[str, list[float]] = {name: [] for name, _ in cases}
        for _ in range(args.reps):
            for name, run in cases:
                rates[name].append(run())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {name: statistics.median(r) for name, r in rates.items()}
    go = med["go-original, 1 thread (Python)"]
    if args.json:
        print(json.dumps({"median_records_per_s": med, "runs": rates,
                          "ratio_to_go": {k: v / go for k, v in med.items()}}, indent=2))
        return 0
    print(f"durable appends of {len(PAYLOAD)}-byte records ({FRAME} bytes framed), "
          f"median of {args.reps} interleaved {s:g}-second runs")
    for name, rate in med.items():
        print(f"  {name:<48} {rate:>10,.0f} records/s  {rate / go:5.2f}x go-original")
    best_c = max(med[k] for k in med if k.startswith("C group commit"))
    ours = med[f"segmentlog fsync=always, {t} threads"]
    print(f"\nthe engine's target is 8x go-original; the best plain C group commit here "
          f"reaches {best_c / go:.2f}x, segmentlog {ours / go:.2f}x ({ours / best_c:.2f}x it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
