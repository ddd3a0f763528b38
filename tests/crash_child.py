"""The child of the kill -9 loop (tests/test_crash.py): appends (and maybe consumes) until
it is killed, writing what was acknowledged to a journal the parent reads afterwards.

Usage: python crash_child.py DIR JOURNAL ROUND THREADS SEGMENT_SIZE CONSUME FSYNC

Every record is self-describing: ``spec(round, tid, n, single)`` gives its exact bytes, so the
parent can check any record it reads back, acknowledged or not. Thread ``tid`` of round
``round`` appends its records ``n = 0, 1, 2, ...`` in order (alone or in batches); with
one thread, some records are empty (their identity then follows from their position).

Journal lines (each written with one ``os.write`` to an ``O_APPEND`` file, after the call
it reports returned, so a line is never a promise the log did not make):
  ``R``                       the log is open
  ``A first last tid n0``     append/append_batch returned: records n0.. of thread tid
                              are sequence numbers first..last
  ``c end``                   the consumer is about to commit up to ``end`` (exclusive)
  ``C end``                   that commit returned
  ``X message``               the consumer read something wrong
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import time
from typing import Any

MAX_FILL = 2000
MAX_RUN_SECONDS = 60.0  # a child whose parent died stops on its own


def spec(round_no: int, tid: int, n: int, single: bool) -> bytes:
    """The exact payload of record ``n`` of thread ``tid`` in round ``round_no``."""
    key = f"{round_no}.{tid}.{n}.{int(single)}".encode()
    digest = hashlib.blake2b(key, digest_size=32).digest()
    size = int.from_bytes(digest[:4], "little") % (MAX_FILL + 1)
    if single and digest[4] < 16:
        return b""  # about one record in 16 is empty when the thread is alone
    head = b"<" + key + b">"
    return head + (digest * (size // len(digest) + 1))[:size]


def parse(payload: bytes) -> tuple[int, int, int, bool] | None:
    """(round, tid, n, single) named by a non-empty payload, or None if it names nothing."""
    if not payload.startswith(b"<"):
        return None
    end = payload.find(b">")
    try:
        r, t, n, single = (int(x) for x in payload[1:end].split(b"."))
    except ValueError:
        return None
    return r, t, n, bool(single)


class Journal:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())


def appender(log: object, journal: Journal, round_no: int, tid: int, single: bool,
             stop: threading.Event) -> None:
    from segmentlog import SegmentLog

    assert isinstance(log, SegmentLog)
    rng = random.Random(f"{round_no}.{tid}")
    n = 0
    while not stop.is_set():
        count = 1 if rng.random() < 0.5 else rng.randint(1, 8)
        payloads = [spec(round_no, tid, n + i, single) for i in range(count)]
        if count == 1 and rng.random() < 0.7:
            last = log.append(payloads[0])
        else:
            last = log.append_batch(payloads)
        journal.write(f"A {last - count + 1} {last} {tid} {n}")
        n += count


def consumer(log: object, journal: Journal, round_no: int, stop: threading.Event) -> None:
    """Read batches, check each record names itself correctly, commit most of them."""
    from segmentlog import SegmentLog

    assert isinstance(log, SegmentLog)
    rng = random.Random(f"consumer.{round_no}")
    while not stop.is_set():
        batch = log.read_batch(max_records=rng.randint(1, 40))
        if not batch:
            time.sleep(0.001)
            continue
        for seq, payload in enumerate(batch.records, batch.first_seq):
            ident = parse(payload)
            want = b"" if ident is None else spec(*ident)
            if payload and want != payload:
                pairs = zip(payload, want, strict=False)
                diff = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
                journal.write(f"X bad record {seq} (batch {batch.first_seq}..{batch.last_seq}):"
                              f" {len(payload)} bytes, expected {len(want)}, first difference "
                              f"at {diff}: {payload[:24]!r}")
        if rng.random() < 0.8:
            end = batch.last_seq + 1
            journal.write(f"c {end}")
            log.commit(batch)
            journal.write(f"C {end}")
        elif rng.random() < 0.3:
            log.rewind()


def guarded(journal: Journal, target: Any, *args: object) -> None:
    """Run a worker; an exception is reported in the journal and ends the process, so the
    parent sees it (a silently dead thread would look like a slow one)."""
    try:
        target(*args)
    except BaseException as exc:
        journal.write(f"X {threading.current_thread().name} raised {exc!r}")
        os._exit(4)


def main() -> int:
    directory, journal_path, round_s, threads_s, segment_s, consume_s, fsync = sys.argv[1:8]
    round_no, threads, segment_size = int(round_s), int(threads_s), int(segment_s)
    from segmentlog import SegmentLog

    journal = Journal(journal_path)
    log = SegmentLog(directory, segment_size=segment_size, fsync=fsync)
    journal.write("R")
    stop = threading.Event()
    single = threads == 1
    workers = [
        threading.Thread(target=guarded, name=f"appender-{t}", daemon=True,
                         args=(journal, appender, log, journal, round_no, t, single, stop))
        for t in range(threads)
    ]
    if consume_s == "1":
        workers.append(threading.Thread(target=guarded, name="consumer", daemon=True,
                                        args=(journal, consumer, log, journal, round_no,
                                              stop)))
    for w in workers:
        w.start()
    time.sleep(MAX_RUN_SECONDS)  # the parent kills us long before this
    stop.set()
    for w in workers:
        w.join()
    log.close()
    return 3  # reaching here means the parent never killed us


if __name__ == "__main__":
    sys.exit(main())
