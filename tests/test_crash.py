"""kill -9 loops: a child appends (and maybe consumes) with fsync="always" and is killed
at random moments; the parent reopens the log after every kill and checks it.

Checked after every round:
* every acknowledged record at or after the checkpoint is present, at its sequence
  number, byte for byte (an acknowledgement is a promise: fsync="always");
* every record read back is one the child wrote (each names itself, see crash_child.py),
  each thread's records appear in the order it wrote them with none missing in between,
  and a record seen after an earlier round is still there, unchanged;
* sequence numbers are contiguous from the checkpoint;
* a process crash never shows up as damage: no damaged region, no dead-letter file (a
  torn record at the end of the last segment is a crash and may be counted);
* the checkpoint is never behind a commit that returned, nor ahead of one that started.
Between rounds the parent commits part of the log, so segments are deleted and recycled
while the crashes go on.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import childenv
import pytest
from crash_child import parse, spec

from segmentlog import SegmentLog, backend

NATIVE = backend == "native"
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_child.py")
# Small segments: a round rotates through several, and commits recycle them.
SEGMENT = (64 if NATIVE else 16) << 10


@dataclass
class Journal:
    """What the child reported before it was killed."""

    ready: bool = False
    acked: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (tid, n)
    commits_started: list[int] = field(default_factory=list)
    commits_done: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_journal(path: str) -> Journal:
    j = Journal()
    with open(path, "rb") as f:
        data = f.read()
    for raw in data.split(b"\n")[:-1]:  # a last line without "\n" was cut by the kill
        kind, *rest = raw.decode().split(" ", 1)
        if kind == "R":
            j.ready = True
        elif kind == "A":
            first, last, tid, n0 = map(int, rest[0].split())
            for i, seq in enumerate(range(first, last + 1)):
                j.acked[seq] = (tid, n0 + i)
        elif kind == "c":
            j.commits_started.append(int(rest[0]))
        elif kind == "C":
            j.commits_done.append(int(rest[0]))
        elif kind == "X":
            j.errors.append(rest[0])
        else:
            raise AssertionError(f"unknown journal line {raw!r}")
    return j


def run_child(directory: str, journal: str, round_no: int, threads: int, consume: bool,
              fsync: str, rng: random.Random) -> Journal:
    """Start a child, kill it with SIGKILL at a random moment, return its journal."""
    env = dict(os.environ, PYTHONPATH=childenv.pythonpath())
    open(journal, "wb").close()
    child = subprocess.Popen(
        [sys.executable, CHILD, directory, journal, str(round_no), str(threads), str(SEGMENT),
         "1" if consume else "0", fsync],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        if rng.random() < 0.15:
            # Early: maybe while it opens the log (recovery, torn-tail zeroing, first segment).
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            deadline = time.monotonic() + 30
            while not read_journal(journal).ready:
                assert child.poll() is None, (
                    f"child exited with {child.returncode} before opening the log: "
                    f"{child.stderr.read().decode() if child.stderr else ''}")
                assert time.monotonic() < deadline, "child did not open the log in 30 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.01, 0.5 if NATIVE else 0.4))
        assert child.poll() is None, (
            f"child exited with {child.returncode} before the kill: "
            f"{child.stderr.read().decode() if child.stderr else ''}")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    j = read_journal(journal)
    assert not j.errors, j.errors
    return j


class Checker:
    """The parent's knowledge of the log across rounds, and the checks of one reopen."""

    def __init__(self, directory: str, fsync: str = "always") -> None:
        self.directory = directory
        # With fsync="always" each commit writes a durable checkpoint before it returns;
        # otherwise checkpoints follow lazily (<= 50 ms): after a kill the checkpoint may
        # be any of the child's commits, or the parent's last one (records again, never
        # lost).
        self.lazy_checkpoints = fsync != "always"
        self.known: dict[int, bytes] = {}  # records seen (or acknowledged) at seq >= committed
        self.committed = 0  # the parent's last commit
        self.horizon = 0  # the next sequence number after everything seen so far
        self.rounds_with_torn_tail = 0

    def check_round(self, round_no: int, threads: int, journal: Journal,
                    rng: random.Random) -> None:
        single = threads == 1
        for seq, (tid, n) in journal.acked.items():
            assert seq >= self.horizon, f"round {round_no}: acked seq {seq} reused"
            self.known[seq] = spec(round_no, tid, n, single)
        low = max([self.committed, *journal.commits_done])
        if self.lazy_checkpoints:
            low = self.committed
        high = max([self.committed, *journal.commits_started])

        with SegmentLog(self.directory, segment_size=SEGMENT, fsync="always") as log:
            stats = log.stats()
            start = stats["committed_seq"]
            assert low <= start <= high, (
                f"round {round_no}: checkpoint {start} outside [{low}, {high}] "
                f"(last finished commit, last started commit)")
            records: list[bytes] = []
            while batch := log.read_batch(max_records=rng.randint(50, 400)):
                assert batch.first_seq == start + len(records), "sequence numbers skip"
                assert batch.last_seq == batch.first_seq + len(batch) - 1
                records.extend(batch.records)
            end = start + len(records)
            assert log.stats()["next_seq"] == end

            # Acknowledged (and earlier seen) records at or after the checkpoint: all there.
            for seq, payload in self.known.items():
                if seq >= start:
                    assert seq < end, (f"round {round_no}: record {seq} is lost (the log "
                                       f"ends at {end}, checkpoint {start})")
                    assert records[seq - start] == payload, (
                        f"round {round_no}: record {seq} changed")
            # New records: each one the child wrote, in each thread's order, none skipped.
            next_n: dict[int, int] = {}
            for seq in range(max(start, self.horizon), end):
                payload = records[seq - start]
                if payload == b"":
                    assert single, f"round {round_no}: empty record {seq} with {threads} threads"
                    if 0 in next_n or start <= self.horizon:
                        n = next_n.get(0, 0)
                        assert spec(round_no, 0, n, single) == b"", (
                            f"round {round_no}: record {seq} is empty, expected "
                            f"record {n} of the thread")
                        next_n[0] = n + 1
                    continue
                ident = parse(payload)
                assert ident is not None, f"round {round_no}: garbage record {seq}: " \
                    f"{payload[:40]!r}"
                r, tid, n, alone = ident
                assert (r, alone) == (round_no, single) and 0 <= tid < threads, (round_no, seq,
                                                                                 ident)
                assert payload == spec(r, tid, n, single), f"record {seq} is corrupt"
                if tid in next_n or start <= self.horizon:
                    # Nothing of this round was committed before it, so each thread's
                    # records start at 0 and follow each other.
                    assert n == next_n.get(tid, 0), (
                        f"round {round_no}: thread {tid} record {n} at seq {seq}, expected "
                        f"{next_n.get(tid, 0)}")
                next_n[tid] = n + 1

            after = log.stats()
            assert after["damaged_regions"] == 0, after["problems"]
            assert not os.path.exists(os.path.join(self.directory, "deadletter.jsonl"))
            if stats["torn_tail_bytes"]:
                self.rounds_with_torn_tail += 1

            self.known = {s: p for s, p in zip(range(start, end), records, strict=True)}
            self.horizon = end
            # Consume part of it, so the next rounds run over deleted and recycled segments.
            log.rewind()
            take = int(len(records) * rng.uniform(0.2, 1.0))
            if take:
                batch = log.read_batch(max_records=take)
                assert len(batch) == take
                log.commit(batch)
                self.committed = batch.last_seq + 1
            else:
                self.committed = start
        self.known = {s: p for s, p in self.known.items() if s >= self.committed}


def crash_loop(directory: str, rounds: int, consume: bool, seed: int,
               fsync: str = "always", threads_from: tuple[int, ...] = (1, 1, 2, 3)) -> Checker:
    rng = random.Random(seed)
    checker = Checker(directory, fsync)
    journal = os.path.join(os.path.dirname(directory), "journal")
    acked_total = 0
    for round_no in range(rounds):
        threads = rng.choice(threads_from)
        j = run_child(directory, journal, round_no, threads, consume, fsync, rng)
        acked_total += len(j.acked)
        checker.check_round(round_no, threads, j, rng)
    assert acked_total > rounds, "the children acknowledged almost nothing: the test is void"
    return checker


@pytest.mark.slow
def test_kill9_during_appends_loses_no_acknowledged_record(logdir: str) -> None:
    crash_loop(logdir, rounds=25 if NATIVE else 10, consume=False, seed=7)


@pytest.mark.slow
def test_kill9_while_consuming_keeps_every_uncommitted_record(logdir: str) -> None:
    """The child also reads and commits (checkpoint rename and segment recycling race the
    kill): records after the checkpoint survive; records may be delivered again."""
    crash_loop(logdir, rounds=20 if NATIVE else 8, consume=True, seed=11)


@pytest.mark.slow
def test_kill9_with_many_durable_appenders_while_consuming(logdir: str) -> None:
    """8-16 appending threads: with the C core their appends wait in the group committer
    (csrc/committer.c) with the GIL released, its rounds racing rotations (the small
    segments fill within a round), a committing reader and the kill; every acknowledged
    record survives, in each thread's order."""
    crash_loop(logdir, rounds=20 if NATIVE else 6, consume=True, seed=17,
               threads_from=(8, 12, 16))


@pytest.mark.slow
def test_kill9_loses_no_returned_append_even_without_fsync(logdir: str) -> None:
    """A process crash leaves the page cache alone: with fsync="never" too, every append
    that returned survives. Frames go through the map here (not pwrite), so a kill can
    cut one in the middle: the torn tail must be dropped, never returned."""
    crash_loop(logdir, rounds=15 if NATIVE else 6, consume=False, seed=5, fsync="never")


@pytest.mark.slow
def test_kill9_with_fsync_interval_while_consuming_keeps_every_returned_append(
    logdir: str,
) -> None:
    """fsync="interval": appends through the cursor (no lock), segments prepared by
    reading them through, a background fsync and lazy checkpoints, all racing the kill:
    every append that returned survives, records after the checkpoint are kept."""
    crash_loop(logdir, rounds=15 if NATIVE else 6, consume=True, seed=13, fsync="interval")
