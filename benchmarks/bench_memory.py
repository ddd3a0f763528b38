"""Peak memory while appending and draining 4 GB through the log (target: RSS < 200 MB).

A producer thread appends the CADF event in batches of 100 while the main thread drains
with read_batch(1000) + commit, until ``--gb`` gigabytes of payload went through. The log
is capped (``max_total_size``, ``block_when_full``) so the disk holds a few segments, not
4 GB. A sampler thread reads /proc/self/status every 20 ms (VmRSS, RssAnon, RssFile);
the peak is the kernel's own high-water mark VmHWM, which catches spikes between samples.
Mapped segment pages count in RSS (RssFile) while resident, so this measures what the
log's mappings really cost, not only the Python heap.

Baseline: the RSS before the log is opened (interpreter + imports). The verdict is on the
absolute peak (stricter than the growth over the baseline); both are printed.

Usage: python benchmarks/bench_memory.py [--gb 4] [--dir PATH] [--fsync never] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)

from segmentlog import SegmentLog
from segmentlog.bench import payload_of

LIMIT_MB = 200.0


def status() -> dict[str, float]:
    """The memory lines of /proc/self/status, in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) / 1024  # kB -> MB (MiB)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=4.0, help="payload gigabytes to push through")
    ap.add_argument("--dir", default=None, help="parent directory (default: system temp)")
    ap.add_argument("--fsync", default="never", choices=["never", "interval", "always"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    payload = payload_of("cadf")
    batch = [payload] * 100
    total = int(args.gb * 1e9 / len(payload))
    total -= total % 100
    directory = tempfile.mkdtemp(prefix="segmentlog-mem-", dir=args.dir)
    base = status()
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.02):
            samples.append(status())

    error: list[BaseException] = []
    drained = 0
    t0 = time.perf_counter()
    try:
        with SegmentLog(directory, segment_size=64 << 20, max_total_size=512 << 20,
                        block_when_full=True, fsync=args.fsync) as log:

            def produce() -> None:
                try:
                    for _ in range(total // 100):
                        log.append_batch(batch)
                except BaseException as exc:  # reported by the main thread
                    error.append(exc)

            threading.Thread(target=sampler, daemon=True).start()
            producer = threading.Thread(target=produce)
            producer.start()
            last_report = t0
            while drained < total and not error:
                b = log.read_batch(1000)
                if not b:
                    time.sleep(0.001)
                    continue
                drained += len(b)
                log.commit(b)
                now = time.perf_counter()
                if not args.json and now - last_report > 1.0:
                    last_report = now
                    s = samples[-1] if samples else status()
                    sys.stderr.write(f"\r{drained * len(payload) / 1e9:5.2f} GB drained, RSS "
                                     f"{s['VmRSS']:6.1f} MB")
            producer.join()
    finally:
        stop.set()
        shutil.rmtree(directory, ignore_errors=True)
    if error:
        raise error[0]
    elapsed = time.perf_counter() - t0
    end = status()
    peak = end["VmHWM"]
    result = {
        "gb": drained * len(payload) / 1e9, "records": drained, "payload_bytes": len(payload),
        "fsync": args.fsync, "seconds": elapsed,
        "mb_per_s": drained * len(payload) / 1e6 / elapsed,
        "baseline_rss_mb": base["VmRSS"], "peak_rss_mb": peak,
        "growth_mb": peak - base["VmRSS"],
        "peak_sampled_anon_mb": max((s["RssAnon"] for s in samples), default=0.0),
        "peak_sampled_file_mb": max((s["RssFile"] for s in samples), default=0.0),
        "samples": len(samples), "limit_mb": LIMIT_MB, "met": peak < LIMIT_MB,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stderr.write("\r" + " " * 50 + "\r")
        print(f"appended and drained {result['gb']:.2f} GB ({drained:,} records of "
              f"{len(payload)} bytes, fsync={args.fsync}) in {elapsed:.1f} s "
              f"({result['mb_per_s']:.0f} MB/s)")
        print(f"RSS before: {base['VmRSS']:.1f} MB; peak (VmHWM): {peak:.1f} MB "
              f"(+{result['growth_mb']:.1f} MB); sampled peaks: anonymous "
              f"{result['peak_sampled_anon_mb']:.1f} MB, file-backed "
              f"{result['peak_sampled_file_mb']:.1f} MB")
        print(f"target: peak RSS < {LIMIT_MB:.0f} MB: {'met' if result['met'] else 'NOT MET'}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
