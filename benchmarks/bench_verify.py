"""How fast is ``segmentlog verify``? GB/s of segment data, against a plain read of it.

Writes a log of CADF-sized records (default 512 MiB in 64 MiB segments), then, with the
files in the page cache, measures in the same run and on the same bytes:

* ``read``: a ``cat``-like sequential read of every segment file into a 1 MiB buffer
  (the baseline: no verifier can be faster than reading the bytes);
* ``verify-native``: ``segmentlog.examine.inspect`` (what ``verify`` runs) with the C core;
* ``verify-pure``: the same with the pure-Python backend, on the first segment only
  (it checksums a byte at a time).

Each row is repeated (interleaved) and the median reported as GB/s (10^9 bytes/s) of
segment file bytes, and as a ratio to ``read``. The issue asks for >= 1 GB/s native.
Each verify row runs in a child process so that each backend is chosen by
SEGMENTLOG_BACKEND as a user would, and times only the inspection itself.

Usage: python benchmarks/bench_verify.py [--dir PATH] [--mib 512] [--reps 5] [--json]
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
import time

SEGMENT = 64 << 20


def write_log(directory: str, mib: int) -> None:
    from segmentlog import SegmentLog
    from segmentlog.bench import payload_of

    payload = payload_of("cadf")
    batch = [payload] * 1000
    target = (mib << 20) - SEGMENT // 2  # fill the last segment about half
    with SegmentLog(directory, segment_size=SEGMENT, fsync="never") as log:
        written = 0
        while written < target:
            log.append_batch(batch)
            written += len(batch) * (len(payload) + 24 + 6)


def segment_paths(directory: str, limit: int | None = None) -> list[str]:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".seg"))
    return [os.path.join(directory, n) for n in names[:limit]]


def plain_read(paths: list[str]) -> tuple[float, int]:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            while n := os.readv(fd, [view]):
                total += n
        finally:
            os.close(fd)
    return time.perf_counter() - t0, total


def child(backend: str, directory: str, limit: int | None) -> None:
    """Time one inspection (in a child process with SEGMENTLOG_BACKEND set)."""
    from segmentlog import backend as live
    from segmentlog.examine import inspect

    assert live == backend, (live, backend)
    if limit is not None:
        # Verify a directory holding only the first ``limit`` segments (hard links).
        sub = tempfile.mkdtemp(dir=directory)
        for path in segment_paths(directory, limit):
            os.link(path, os.path.join(sub, os.path.basename(path)))
        shutil.copy(os.path.join(directory, "checkpoint"), sub)
        directory = sub
    try:
        t0 = time.perf_counter()
        report = inspect(directory)
        elapsed = time.perf_counter() - t0
    finally:
        if limit is not None:
            shutil.rmtree(directory)
    assert report.ok, [p.to_json() for p in report.all_problems()]
    print(json.dumps({"seconds": elapsed, "bytes": sum(s.size for s in report.segments),
                      "records": report.records}))


def run_child(backend: str, directory: str, limit: int | None) -> tuple[float, int]:
    env = dict(os.environ, SEGMENTLOG_BACKEND=backend)
    cmd = [sys.executable, __file__, "--child", backend, "--dir", directory]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    return data["seconds"], data["bytes"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="parent directory (default: temp)")
    ap.add_argument("--mib", type=int, default=512, help="log size in MiB (default 512)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (median shown)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dir, args.limit)
        return 0

    parent = tempfile.mkdtemp(prefix="segmentlog-bench-verify-", dir=args.dir)
    directory = os.path.join(parent, "log")
    try:
        write_log(directory, args.mib)
        paths = segment_paths(directory)
        plain_read(paths)  # warm the page cache
        rows: dict[str, list[float]] = {"read": [], "verify-native": [], "verify-pure": []}
        sizes: dict[str, int] = {}
        for _ in range(args.reps):
            t, n = plain_read(paths)
            rows["read"].append(n / t / 1e9)
            sizes["read"] = n
            t, n = run_child("native", directory, None)
            rows["verify-native"].append(n / t / 1e9)
            sizes["verify-native"] = n
        for _ in range(min(args.reps, 2)):
            t, n = run_child("pure", directory, 1)
            rows["verify-pure"].append(n / t / 1e9)
            sizes["verify-pure"] = n
        read = statistics.median(rows["read"])
        result = {
            name: {"gb_per_s": statistics.median(v), "ratio_to_read":
                   statistics.median(v) / read, "bytes": sizes[name], "reps": len(v)}
            for name, v in rows.items()
        }
        result["meets_1_gb_per_s"] = {"native": result["verify-native"]["gb_per_s"] >= 1.0}
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'row':16} {'GB/s':>8} {'x read':>8} {'bytes':>12}")
        for name in ("read", "verify-native", "verify-pure"):
            r = result[name]
            print(f"{name:16} {r['gb_per_s']:8.3f} {r['ratio_to_read']:8.3f} {r['bytes']:>12}")
        print(f"native verify >= 1 GB/s: {result['meets_1_gb_per_s']['native']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
