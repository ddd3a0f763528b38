"""The broker is away, the log fills to its cap, then one consumer drains it while appends go on.

What a service buffering through an outage lives through, on the log alone (no broker,
no publishing: the drain rate is the log's own ceiling; ``--drain-rate`` paces it like
a broker would):

1. **fill**: nobody consumes. The CADF event is appended in batches of ``--batch`` (the
   Auditor's delivery thread writes what it holds with one ``write_many``) until the log
   refuses a batch: ``max_total_size`` (``--gib``, 4 GiB) is reached.
2. **drain**: one consumer thread reads ``read_batch(--drain-batch)`` + ``commit`` from
   the oldest record, while an appender thread goes on appending ``--rate`` events a
   second (a batch every 10 ms; a batch the full log refuses is retried 10 ms later, as
   the Auditor's ``record()`` would block). The phase ends when the consumer has read
   everything, the backlog included.
3. **live**: ``--after`` seconds more of both, the consumer caught up.

The log has the default segment size and the file store's default durability
(``fsync="always"``: each batch is on disk when its append returns; ``--fsync`` changes
it). A sampler thread reads ``/proc/self/status`` every second (VmRSS, RssAnon,
RssFile: mapped segment pages count while resident) and ``log.stats()``; each sample
is printed as it is taken. The peak is the kernel's high-water mark (VmHWM), which also
catches spikes between samples. Target: peak RSS < 200 MB.

Everything is written below one temporary directory (``--dir``: its parent), removed at
the end, even on error or Ctrl-C.

Usage: python benchmarks/bench_outage.py [--gib 4] [--fsync always|interval|never]
       [--rate 10000] [--drain-rate 0] [--after 3] [--dir PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)
from bench_memory import LIMIT_MB, status

from segmentlog import SegmentLog
from segmentlog.bench import SEGMENT_SIZE, payload_of
from segmentlog.errors import LogFullError

TICK = 0.01  # seconds between two appends of the drain phase


@dataclass
class Counts:
    """Records appended and drained so far (each written by one thread only)."""

    appended: int = 0
    drained: int = 0
    refused: int = 0  # batches the full log refused during the drain (retried)
    phase: str = "fill"


class Sampler:
    """Every second: rates since the last sample, backlog, disk, RSS; printed at once."""

    def __init__(self, log: SegmentLog, counts: Counts, quiet: bool) -> None:
        self.log, self.counts, self.quiet = log, counts, quiet
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self._last = (self.t0, 0, 0)
        self._lock = threading.Lock()  # the main thread takes a sample at each phase's end
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        if not self.quiet:
            print(f"{'t s':>5} {'phase':6} {'append/s':>10} {'drain/s':>10} {'backlog':>10} "
                  f"{'disk GiB':>8} {'RSS MB':>7} {'anon':>6} {'file':>6}", flush=True)
        self.thread.start()

    def take(self) -> None:
        with self._lock:
            self._take()

    def _take(self) -> None:
        now = time.perf_counter()
        c = self.counts
        appended, drained = c.appended, c.drained
        t_last, a_last, d_last = self._last
        dt = max(now - t_last, 1e-9)
        stats = self.log.stats()
        mem = status()
        sample = {
            "t": now - self.t0, "phase": c.phase,
            "append_per_s": (appended - a_last) / dt, "drain_per_s": (drained - d_last) / dt,
            "appended": appended, "drained": drained,
            "backlog": stats["pending_records"], "disk_bytes": stats["disk_bytes"],
            "rss_mb": mem["VmRSS"], "anon_mb": mem["RssAnon"], "file_mb": mem["RssFile"],
        }
        self._last = (now, appended, drained)
        self.samples.append(sample)
        if not self.quiet:
            print(f"{sample['t']:5.1f} {c.phase:6} {sample['append_per_s']:10,.0f} "
                  f"{sample['drain_per_s']:10,.0f} {sample['backlog']:10,} "
                  f"{sample['disk_bytes'] / (1 << 30):8.2f} {sample['rss_mb']:7.1f} "
                  f"{sample['anon_mb']:6.1f} {sample['file_mb']:6.1f}", flush=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self.take()


def fill(log: SegmentLog, counts: Counts, batch: list[bytes]) -> None:
    """Append until the log refuses a batch (max_total_size)."""
    append_batch = log.append_batch
    n = len(batch)
    while True:
        try:
            append_batch(batch)
        except LogFullError:
            return
        counts.appended += n


def steady_appender(log: SegmentLog, counts: Counts, payload: bytes, rate: int,
                    stop: threading.Event, error: list[BaseException]) -> None:
    """``rate`` records a second, a batch every TICK; a refused batch is retried."""
    per_tick = max(1, round(rate * TICK))
    batch = [payload] * per_tick
    next_at = time.perf_counter()
    try:
        while not stop.is_set():
            try:
                log.append_batch(batch)
                counts.appended += per_tick
            except LogFullError:
                counts.refused += 1
            next_at += TICK
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    except BaseException as exc:  # reported by the main thread
        error.append(exc)


def consumer(log: SegmentLog, counts: Counts, size: int, drain_rate: int,
             caught_up: threading.Event, stop: threading.Event,
             error: list[BaseException]) -> None:
    """read_batch + commit from the oldest record; ``caught_up`` once nothing is left to
    read after the backlog (the records of the fill) went through."""
    backlog = counts.appended
    t0 = time.perf_counter()
    try:
        while not stop.is_set():
            b = log.read_batch(size)
            if not b:
                if counts.drained >= backlog:
                    caught_up.set()
                time.sleep(0.001)
                continue
            counts.drained += len(b)
            log.commit(b)
            if drain_rate:
                ahead = counts.drained / drain_rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    except BaseException as exc:  # reported by the main thread
        error.append(exc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=4.0, help="max_total_size in GiB (default 4)")
    ap.add_argument("--fsync", default="always", choices=["always", "interval", "never"],
                    help="the log's policy (default: the file store's, always)")
    ap.add_argument("--batch", type=int, default=1000,
                    help="records per append_batch while the log fills (default 1000)")
    ap.add_argument("--rate", type=int, default=10_000,
                    help="records a second appended while the consumer drains (default 10000)")
    ap.add_argument("--drain-batch", type=int, default=1000,
                    help="read_batch size of the consumer (default 1000)")
    ap.add_argument("--drain-rate", type=int, default=0,
                    help="most records a second the consumer drains, like a broker "
                    "(default 0: as fast as the log goes)")
    ap.add_argument("--after", type=float, default=3.0,
                    help="seconds both go on once the consumer caught up (default 3)")
    ap.add_argument("--dir", default=None, help="parent directory (default: system temp)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)
    for name in ("batch", "rate", "drain_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.drain_rate < 0 or not 0 <= args.after < float("inf"):
        ap.error("--drain-rate and --after must be >= 0")
    max_total = int(args.gib * (1 << 30)) // SEGMENT_SIZE * SEGMENT_SIZE
    if max_total < 2 * SEGMENT_SIZE:
        ap.error(f"--gib must hold two segments of {SEGMENT_SIZE >> 20} MiB")

    payload = payload_of("cadf")
    directory = tempfile.mkdtemp(prefix="segmentlog-outage-", dir=args.dir)
    base = status()
    counts = Counts()
    error: list[BaseException] = []
    stop, caught_up = threading.Event(), threading.Event()
    times: dict[str, float] = {}
    try:
        with SegmentLog(directory, max_total_size=max_total, fsync=args.fsync) as log:
            sampler = Sampler(log, counts, args.json)
            sampler.start()
            t0 = time.perf_counter()
            fill(log, counts, [payload] * args.batch)
            times["fill"] = time.perf_counter() - t0
            filled = counts.appended
            filled_disk = log.stats()["disk_bytes"]
            sampler.take()
            counts.phase = "drain"
            threads = [
                threading.Thread(target=steady_appender, name="appender",
                                 args=(log, counts, payload, args.rate, stop, error)),
                threading.Thread(target=consumer, name="consumer",
                                 args=(log, counts, args.drain_batch, args.drain_rate,
                                       caught_up, stop, error)),
            ]
            t1 = time.perf_counter()
            at_drain = (counts.appended, counts.drained)
            for t in threads:
                t.start()
            while not caught_up.wait(0.1) and not error:
                pass
            times["drain"] = time.perf_counter() - t1
            at_live = (counts.appended, counts.drained)
            sampler.take()
            counts.phase = "live"
            t2 = time.perf_counter()
            while time.perf_counter() - t2 < args.after and not error:
                time.sleep(0.05)
            times["live"] = time.perf_counter() - t2
            at_end = (counts.appended, counts.drained)
            stop.set()
            for t in threads:
                t.join()
            sampler.take()
            sampler.stop.set()
            sampler.thread.join()
    finally:
        stop.set()
        shutil.rmtree(directory, ignore_errors=True)
    if error:
        raise error[0]
    end = status()
    samples = sampler.samples
    peak = end["VmHWM"]
    result = {
        "fsync": args.fsync, "segment_size": SEGMENT_SIZE, "max_total_size": max_total,
        "payload_bytes": len(payload), "fill_batch": args.batch, "rate": args.rate,
        "drain_batch": args.drain_batch, "drain_rate": args.drain_rate,
        "filled_records": filled, "filled_disk_bytes": filled_disk,
        "fill_seconds": times["fill"], "fill_per_s": filled / times["fill"],
        "drain_seconds": times["drain"],
        "drain_per_s": (at_live[1] - at_drain[1]) / times["drain"],
        "append_per_s_while_draining": (at_live[0] - at_drain[0]) / times["drain"],
        "live_seconds": times["live"],
        "live_append_per_s": (at_end[0] - at_live[0]) / max(times["live"], 1e-9),
        "live_drain_per_s": (at_end[1] - at_live[1]) / max(times["live"], 1e-9),
        "refused_batches": counts.refused,
        "appended": counts.appended, "drained": counts.drained,
        "baseline_rss_mb": base["VmRSS"], "peak_rss_mb": peak,
        "peak_sampled_rss_mb": max(s["rss_mb"] for s in samples),
        "peak_sampled_anon_mb": max(s["anon_mb"] for s in samples),
        "peak_sampled_file_mb": max(s["file_mb"] for s in samples),
        "limit_mb": LIMIT_MB, "met": peak < LIMIT_MB, "loadavg": list(os.getloadavg()),
        "samples": samples,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        mb = len(payload) / 1e6
        print(f"fill: {filled:,} records ({filled_disk / (1 << 30):.2f} GiB of segments, "
              f"fsync={args.fsync}, batches of {args.batch}) in {times['fill']:.1f} s: "
              f"{result['fill_per_s']:,.0f} records/s ({result['fill_per_s'] * mb:.0f} MB/s)")
        print(f"drain: caught up in {times['drain']:.1f} s, draining "
              f"{result['drain_per_s']:,.0f} records/s (read_batch({args.drain_batch}) + "
              f"commit) while appending {result['append_per_s_while_draining']:,.0f}/s "
              f"(asked: {args.rate:,}/s; {counts.refused} batches refused while full, "
              f"retried)")
        print(f"live: {times['live']:.1f} s, appending {result['live_append_per_s']:,.0f}/s, "
              f"draining {result['live_drain_per_s']:,.0f}/s")
        print(f"RSS before: {base['VmRSS']:.1f} MB; peak (VmHWM): {peak:.1f} MB; sampled "
              f"peaks: RSS {result['peak_sampled_rss_mb']:.1f}, anonymous "
              f"{result['peak_sampled_anon_mb']:.1f}, file-backed "
              f"{result['peak_sampled_file_mb']:.1f} MB; load average "
              f"{result['loadavg'][0]:.1f}")
        print(f"target: peak RSS < {LIMIT_MB:.0f} MB: {'met' if result['met'] else 'MISSED'}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
