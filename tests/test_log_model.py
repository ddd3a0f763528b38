"""Property test: random operation sequences on SegmentLog against a simple in-memory model.

The model is a list of records (index = sequence number), the committed index, the read
index, and the segment layout (base sequence and write offset of each segment, computed
from the frame sizes of FORMAT.md), which is what makes LogFullError predictable: a write
is refused when the segments it would open plus the segments still holding uncommitted
records exceed ``max_total_size // segment_size``. A commit reclaims the segments sealed
before it; a rotation over the limit reclaims those sealed after it, once the commit is
durable: exactly predictable with fsync="always" (every commit is durable at once),
bounded otherwise. Either way the writer may only ever reclaim fully committed segments.

Invariants checked after every step: read_batch returns exactly the model's next records
(a greedy prefix under max_records / max_bytes) with the right first_seq / last_seq;
sequence numbers are contiguous and strictly increasing; after a reopen reading restarts
at the last commit; stats() agrees with the model (pending records, next sequence,
committed sequence, number of segments).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from logtools import reclaimed

from segmentlog import Batch, LogFullError, RecordTooLargeError, SegmentLog, backend
from segmentlog._format import SEGMENT_HEADER_SIZE, frame_size, parse_segment_name

SEGMENT = 8192  # two pages: a handful of records per segment, so rotation is frequent
MAX_RECORD = SEGMENT - SEGMENT_HEADER_SIZE - 24

NATIVE = backend == "native"
# The pure backend checksums a byte at a time; keep its run to a few seconds.
# SEGMENTLOG_MODEL_EXAMPLES raises the count for a thorough run by hand.
EXAMPLES = int(os.environ.get("SEGMENTLOG_MODEL_EXAMPLES", 0)) or (60 if NATIVE else 30)
STEPS = 50 if NATIVE else 35


def payload(tag: int, size: int) -> bytes:
    """Distinct, deterministic content: a mix-up of two records is always visible."""
    stem = f"[{tag}:{size}]".encode()
    return (stem * (size // len(stem) + 1))[:size]


sizes = st.one_of(
    st.integers(0, 40),
    st.integers(0, 1500),
    st.integers(2500, 4000),  # two or three of these fill a segment
    st.sampled_from([MAX_RECORD, MAX_RECORD - 7, MAX_RECORD + 1]),  # the largest; one too many
)


def _segment_bases(directory: str) -> set[int]:
    return {b for b in map(parse_segment_name, os.listdir(directory)) if b is not None}


def _segment_bytes(directory: str) -> int:
    """Bytes of segment files (and the prepared next one) actually in ``directory``."""
    total = 0
    for name in os.listdir(directory):
        if name.endswith(".seg") or name in ("next.prep", "spare.prep"):
            # A rotation may rename it between listdir and stat: counted by its new name.
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(directory, name))
    return total


class _Model:
    """What the log must contain: records, commit and read positions, segment layout."""

    def __init__(self, capacity: int | None) -> None:
        self.records: list[bytes] = []
        self.committed = 0
        self.read = 0
        self.capacity = capacity
        self.segments: list[list[int]] = [[0, SEGMENT_HEADER_SIZE]]  # [base, write offset]

    def dead(self) -> int:
        """How many leading segments hold only committed records (none is the last)."""
        n = 0
        while n + 1 < len(self.segments) and self.segments[n + 1][0] <= self.committed:
            n += 1
        return n

    def plan(self, payloads: list[bytes], exact: bool) -> tuple[str, list[list[int]], int]:
        """(outcome, the segment layout after writing ``payloads`` if it is accepted, before
        any reclaiming, how many leading segments the writer reclaims first).

        Outcome "ok", "too_large", "full", or "either" when it depends on how much of the
        commit is durable yet (only fsync="always" makes every commit durable at once).
        A rotation over the limit first reclaims segments below the durable checkpoint
        that were sealed after the commit (commit reclaims only what was sealed then).
        """
        frames = [frame_size(len(p)) for p in payloads]
        if max(frames) > SEGMENT - SEGMENT_HEADER_SIZE:
            return "too_large", self.segments, 0
        segs = [list(s) for s in self.segments]
        seq = len(self.records)
        needed = 0
        for size in frames:
            if segs[-1][1] + size > SEGMENT:
                segs.append([seq, SEGMENT_HEADER_SIZE])
                needed += 1
            segs[-1][1] += size
            seq += 1
        if self.capacity is None or len(segs) <= self.capacity:
            return "ok", segs, 0
        if needed > self.capacity - 1:
            return "full", self.segments, 0  # can never fit: refused before reclaiming
        dead = self.dead()
        if len(segs) - dead > self.capacity:
            return "full", self.segments, dead
        return ("ok" if exact else "either"), segs, dead
    def expected_batch(self, max_records: int, max_bytes: int | None) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        for rec in self.records[self.read :]:
            if len(out) == max_records:
                break
            if out and max_bytes is not None and total + len(rec) > max_bytes:
                break
            out.append(rec)
            total += len(rec)
        return out

    def reclaim(self) -> None:
        while len(self.segments) > 1 and self.segments[1][0] <= self.committed:
            del self.segments[0]


class LogMachine(RuleBasedStateMachine):
    fsync = "never"

    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="segmentlog-model-")
        self.dir = os.path.join(self.tmp, "log")
        self.log: SegmentLog | None = None
        self.model: _Model | None = None
        self.tag = 0
        self.kwargs: dict[str, object] = {}

    @initialize(capacity=st.sampled_from([None, None, 2, 3, 5]))
    def open_log(self, capacity: int | None) -> None:
        self.kwargs = {
            "segment_size": SEGMENT,
            "fsync": self.fsync,
            "max_total_size": None if capacity is None else capacity * SEGMENT + 100,
        }
        self.log = SegmentLog(self.dir, **self.kwargs)  # type: ignore[arg-type]
        self.model = _Model(capacity)

    def _write(self, payloads: list[bytes], batch: bool) -> None:
        assert self.log is not None and self.model is not None
        m = self.model
        exact = self.fsync == "always"
        outcome, segs, dead = m.plan(payloads, exact)
        before = self.log.stats()["next_seq"]
        old = m.segments
        try:
            last = self.log.append_batch(payloads) if batch else self.log.append(payloads[0])
        except RecordTooLargeError as exc:
            assert outcome == "too_large", f"unexpected RecordTooLargeError: {exc}"
            assert "segment_size" in str(exc)
            accepted = False
        except LogFullError as exc:
            assert outcome in ("full", "either"), f"unexpected LogFullError: {exc}"
            assert "max_total_size" in str(exc)
            accepted = False
        else:
            assert outcome in ("ok", "either"), f"expected {outcome}, the write was accepted"
            m.records.extend(payloads)
            assert last == len(m.records) - 1
            accepted = True
        if not accepted:
            # Refused: all or nothing, so not one record of it was written.
            assert self.log.stats()["next_seq"] == before == len(m.records)
        # Which segments the writer reclaimed: only dead ones (all records committed), and
        # with fsync="always" exactly the dead ones the model names.
        on_disk = _segment_bases(self.dir)
        layout = segs if accepted else old
        kept = [s for s in layout if s[0] in on_disk]
        gone = [s[0] for s in layout if s[0] not in on_disk]
        assert gone == [s[0] for s in old[: len(gone)]] and len(gone) <= m.dead(), (
            f"the writer reclaimed {gone}, but only {old[: m.dead()]} hold nothing but "
            f"committed records (committed {m.committed})")
        if exact:
            assert len(gone) == dead, f"reclaimed {gone}, expected the first {dead} of {old}"
        m.segments = kept

    @rule(size=sizes)
    def append(self, size: int) -> None:
        self.tag += 1
        self._write([payload(self.tag, size)], batch=False)

    @rule(batch_sizes=st.lists(sizes, min_size=1, max_size=8))
    def append_batch(self, batch_sizes: list[int]) -> None:
        payloads = []
        for size in batch_sizes:
            self.tag += 1
            payloads.append(payload(self.tag, size))
        self._write(payloads, batch=True)

    @rule(target=batches, max_records=st.integers(1, 12),
          max_bytes=st.one_of(st.none(), st.integers(0, 6000)))
    def read_batch(self, max_records: int, max_bytes: int | None) -> Batch:
        assert self.log is not None and self.model is not None
        m = self.model
        got = self.log.read_batch(max_records=max_records, max_bytes=max_bytes)
        want = m.expected_batch(max_records, max_bytes)
        assert got.records == want, (
            f"read_batch({max_records}, {max_bytes}) at {m.read}: got "
            f"{[len(r) for r in got.records]} wanted {[len(r) for r in want]}"
        )
        assert len(got) == len(want)
        assert got.first_seq == m.read
        assert got.last_seq == m.read + len(want) - 1
        m.read += len(want)
        return got

    @rule(batch=consumes(batches))
    def commit(self, batch: Batch) -> None:
        assert self.log is not None and self.model is not None
        m = self.model
        end = batch.last_seq + 1
        if not batch.records or end <= m.committed:
            self.log.commit(batch)  # already consumed: a no-op
            return
        if end > m.read:
            # Read before a rewind (or reopen) and not read again since: refused.
            with pytest.raises(ValueError, match="read position"):
                self.log.commit(batch)
            return
        self.log.commit(batch)
        reclaimed(self.log)  # the reclaim thread frees what the commit consumed
        m.committed = end
        m.reclaim()

    @rule()
    def rewind(self) -> None:
        assert self.log is not None and self.model is not None
        self.log.rewind()
        self.model.read = self.model.committed

    @rule()
    def sync(self) -> None:
        assert self.log is not None
        self.log.sync()

    @rule()
    def reopen(self) -> None:
        assert self.log is not None and self.model is not None
        self.log.close()
        self.log = SegmentLog(self.dir, **self.kwargs)  # type: ignore[arg-type]
        self.model.read = self.model.committed  # a new reader starts at the last commit

    @invariant()
    def agrees_with_model(self) -> None:
        if self.log is None or self.model is None:
            return
        m = self.model
        s = self.log.stats()
        assert s["next_seq"] == len(m.records)
        assert s["committed_seq"] == m.committed
        assert s["read_seq"] == m.read
        assert s["pending_records"] == len(m.records) - m.committed
        assert s["segments"] == len(m.segments), (s["segments"], m.segments)
        # Nothing here damages a file: any damage or torn tail is the engine's own doing.
        assert s["damaged_regions"] == 0 and s["torn_tail_bytes"] == 0, s["problems"]
        assert not os.path.exists(os.path.join(self.dir, "deadletter.jsonl"))
        if m.capacity is not None:
            assert s["disk_bytes"] <= m.capacity * SEGMENT
            on_disk = _segment_bytes(self.dir)
            assert on_disk <= m.capacity * SEGMENT, f"{on_disk} bytes on disk, limit " \
                f"{m.capacity * SEGMENT}: {sorted(os.listdir(self.dir))}"

    def teardown(self) -> None:
        try:
            if self.log is not None:
                self.log.close()
                if self.model is not None:
                    # Everything not committed is still there, byte for byte, in order.
                    with SegmentLog(self.dir, **self.kwargs) as log:  # type: ignore[arg-type]
                        rest: list[bytes] = []
                        while batch := log.read_batch(max_records=500):
                            assert batch.first_seq == self.model.committed + len(rest)
                            rest.extend(batch.records)
                        assert rest == self.model.records[self.model.committed :]
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class LogMachineFsyncAlways(LogMachine):
    fsync = "always"


class LogMachineFsyncInterval(LogMachine):
    fsync = "interval"  # the background flush thread races rotation, sealing and close


_settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    # No "explain" phase: it traces every line, which makes the pure backend's CRC crawl.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestLogAgainstModelFsyncNever = LogMachine.TestCase
TestLogAgainstModelFsyncNever.settings = _settings
TestLogAgainstModelFsyncAlways = LogMachineFsyncAlways.TestCase
TestLogAgainstModelFsyncAlways.settings = _settings
TestLogAgainstModelFsyncInterval = LogMachineFsyncInterval.TestCase
TestLogAgainstModelFsyncInterval.settings = _settings


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_recycled_segment_old_bytes_are_never_damage_nor_torn_tail(logdir: str,
                                                                    fsync: str) -> None:
    """Regression (found by the machine above): a recycled segment keeps a consumed
    segment's bytes; new frames that end mid-way through an old payload used to make
    readers report the old bytes as damage (dead-letter entries) once the segment was
    sealed, and recovery count them as a torn tail after a clean close."""
    kwargs: dict[str, object] = {"segment_size": SEGMENT, "fsync": fsync}
    written: list[bytes] = []
    with SegmentLog(logdir, **kwargs) as log:  # type: ignore[arg-type]
        for i in range(8):  # old records fill their segments: no zero byte after them
            written.append(payload(i, MAX_RECORD))
            log.append(written[-1])
        log.commit(log.read_batch(max_records=len(written)))
        reclaimed(log)  # the consumed segments wait to be recycled by the appends below
        committed = len(written)
        for i in range(40, 200):  # new ones: other sizes, so frame boundaries differ
            written.append(payload(i, 37 + i % 300))
            log.append(written[-1])
        assert log.stats()["recycled"] > 0, "no segment was recycled: the test is void"
        rest: list[bytes] = []
        while batch := log.read_batch(max_records=7):
            rest.extend(batch.records)
        assert rest == written[committed:]
        assert log.stats()["damaged_regions"] == 0, log.stats()["problems"]
    with SegmentLog(logdir, **kwargs) as log:  # type: ignore[arg-type]
        stats = log.stats()
        assert stats["torn_tail_bytes"] == 0 and stats["damaged_regions"] == 0
        rest = []
        while batch := log.read_batch(max_records=50):
            rest.extend(batch.records)
        assert rest == written[committed:]
    assert not os.path.exists(os.path.join(logdir, "deadletter.jsonl"))


def test_max_bytes_zero_at_a_segment_boundary_still_returns_a_record(logdir: str) -> None:
    """Regression (found by the machine above): with the read position at the end of a
    segment, a zero budget ended the batch before it held a record, and read_batch
    returned an empty batch ("nothing written yet") although a record was there."""
    with SegmentLog(logdir, segment_size=SEGMENT, fsync="never") as log:
        for _ in range(4):
            log.append(b"")
        log.append(payload(1, MAX_RECORD))  # does not fit after them: a new segment
        assert log.stats()["segments"] == 2
        assert len(log.read_batch(max_records=4)) == 4
        batch = log.read_batch(max_records=1, max_bytes=0)
        assert batch.records == [payload(1, MAX_RECORD)] and batch.first_seq == 4
