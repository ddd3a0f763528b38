"""How should the next segment be prepared? Measures the choices FORMAT.md documents.

For each way of preparing a 64 MiB segment file, writes 514-byte records through a
shared mmap and fdatasyncs after every 8 records (a group-commit round), reporting the
median fdatasync latency and the write rate (through the map, or pwrite: ``--via``):

* ``fallocate``: posix_fallocate only (unwritten extents: each sync also converts them);
* ``zero-filled``: posix_fallocate, then zeros written and synced (what segmentlog does
  for a new segment, in the background);
* ``recycled``: a consumed segment reused (written extents, pages likely cached).

Usage: python benchmarks/bench_prepare.py [--dir PATH] [--size-mib 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import tempfile
import time

RECORD = b"x" * 512 + b"\n\n"


def prepare(path: str, size: int, how: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, size)
    if how in ("zero-filled", "recycled"):
        chunk = (b"r" if how == "recycled" else b"\0") * (1 << 20)
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk, off)
        os.fdatasync(fd)
    os.close(fd)


def measure(path: str, size: int, records: int, via: str) -> dict[str, float]:
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, size)
    lat = []
    off = 0
    t_copy = 0.0
    for i in range(records):
        t0 = time.perf_counter()
        if via == "mmap":
            mm[off : off + len(RECORD)] = RECORD
        else:
            os.pwrite(fd, RECORD, off)
        t_copy += time.perf_counter() - t0
        off += len(RECORD)
        if i % 8 == 7:
            t0 = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t0)
    mm.close()
    os.close(fd)
    return {"fdatasync_p50_us": statistics.median(lat) * 1e6,
            "fdatasync_p90_us": statistics.quantiles(lat, n=10)[-1] * 1e6,
            "first_touch_mb_s": records * len(RECORD) / t_copy / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--via", choices=["mmap", "pwrite"], default="pwrite",
                    help="how records are written (segmentlog: pwrite with fsync=always)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = args.size_mib << 20
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for _ in range(args.reps):
            for how in ("fallocate", "zero-filled", "recycled"):
                path = os.path.join(d, how)
                prepare(path, size, how)
                results.setdefault(how, []).append(measure(path, size, args.records, args.via))
                os.unlink(path)
    summary = {how: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
               for how, runs in results.items()}
    base = summary["fallocate"]["fdatasync_p50_us"]
    for how in summary:
        summary[how]["p50_vs_fallocate"] = summary[how]["fdatasync_p50_us"] / base
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"records written with {args.via}, fdatasync every 8 records")
    print(f"{'preparation':12} {'fdatasync p50':>14} {'p90':>10} {'vs fallocate':>13} "
          f"{'write rate':>12}")
    for how, s in summary.items():
        print(f"{how:12} {s['fdatasync_p50_us']:11.0f} us {s['fdatasync_p90_us']:7.0f} us "
              f"{s['p50_vs_fallocate']:12.2f}x {s['first_touch_mb_s']:8.0f} MB/s")


if __name__ == "__main__":
    main()
