"""The reader: batches of records in order, from a read position that only it moves.

It walks one segment at a time through a read-only map (:class:`ReadView`), from the
read position up to what the writer has written, and on into the next segment. Damage is
skipped: its bytes go to the dead-letter file and reading goes on with the next sound
record; a damaged record is never returned. Its fields are under the read lock; it takes
the writer lock only briefly to learn how far the active segment is written.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Protocol

from segmentlog._backend import impl
from segmentlog._format import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE
from segmentlog.engine.damage import DamageKeeper
from segmentlog.engine.maps import (
    MADV_POPULATE_READ,
    MAP_STEP,
    POPULATE_WINDOW,
    ReadView,
    populate,
)
from segmentlog.engine.state import LogState
from segmentlog.segment import header_problem
from segmentlog.walk import NO_LIMIT_SEQ, Damage, walk

LOCATE_CHUNK = 1 << 16  # records a seek walks per step


@dataclass(frozen=True)
class Batch:
    """Records read together, in append order, and where reading stopped after them."""

    records: list[bytes]
    first_seq: int
    last_seq: int
    _end_seq: int = field(default=0, repr=False)  # the first sequence number after the batch

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Any:
        return iter(self.records)

    def __bool__(self) -> bool:
        return bool(self.records)


class Written(Protocol):
    """What the reader needs of the writer."""

    def readable(self) -> tuple[int | None, int, int]: ...


class Reader:
    """The read position of one log and the map it reads through."""

    def __init__(self, state: LogState, damage: DamageKeeper) -> None:
        self.state = state
        self.damage = damage
        self.writer: Written  # set by the writer
        self.view: ReadView | None = None
        self.read_seq = 0
        self.read_off = SEGMENT_HEADER_SIZE
        self._walk_seqs: tuple[Any, Any] = (0, 0)  # first, last record of the last walk
        self._noted_headers: set[int] = set()  # segments whose bad header was reported

    def read_batch(self, max_records: int, max_bytes: int | None) -> Batch:
        """The next records after the previous read (read lock held)."""
        records: list[bytes] = []
        first = last = self.read_seq
        budget = max_bytes
        while len(records) < max_records:
            had = len(records)
            got, more = self._read_some(records, max_records - len(records), budget)
            if len(records) > had:
                # Numbers of records read, not of the read position: damage may lie
                # before the first record or after the last (a Batch never names a
                # number whose record is not in it).
                if not had:
                    first = self._walk_seqs[0]
                last = self._walk_seqs[1]
            if budget is not None:
                budget -= got
            # An exhausted budget ends the batch once it holds a record (a batch
            # holds at least one): max_bytes=0 at a segment boundary reads on.
            if not more or (budget is not None and budget <= 0 and records):
                break
        if not records:
            return Batch([], self.read_seq, self.read_seq - 1, self.read_seq)
        return Batch(records, first, last, self.read_seq)

    def segment_after(self, base: int) -> int | None:
        with self.state.lock:
            segments = self.state.segments
            i = bisect.bisect_right(segments, base)
            return segments[i] if i < len(segments) else None

    def _read_some(self, out: list[bytes], want: int, budget: int | None,
                   stop_seq: int = NO_LIMIT_SEQ) -> tuple[int, bool]:
        """Read up to ``want`` records (and ``budget`` payload bytes, none numbered
        ``stop_seq`` or above) of the current segment into ``out``; return (payload bytes
        read, whether the batch may go on in the next segment). Only the first record of a
        batch may exceed the budget. ``_walk_seqs`` holds the numbers of the first and last
        record read."""
        view = self.view
        if view is None:
            return 0, False
        state = self.state
        with state.lock:
            segments = state.segments
            if view.base not in segments:
                stale = True  # reclaimed by the writer (reclaim_for_writer) meanwhile
            else:
                stale = False
                state.pinned = view.base
                active_base, written, last_written = self.writer.readable()
                active = active_base == view.base
                limit = written if active else view.size
                i = bisect.bisect_right(segments, view.base)
                next_base = None if active or i == len(segments) else segments[i]
        if stale:
            # Everything in it was committed, so the read position is past it: find the
            # segment that holds the read position.
            self.seek(self.read_seq)
            return 0, self.view is not None and self.view.base != view.base
        try:
            return self._read_pinned(view, out, want, budget, active, limit, last_written,
                                     next_base, stop_seq)
        finally:
            state.pinned = None

    def _read_pinned(self, view: ReadView, out: list[bytes], want: int,
                     budget: int | None, active: bool, limit: int,
                     last_written: int, next_base: int | None,
                     stop_seq: int) -> tuple[int, bool]:
        # Map a window ahead of the reader in one call, and unmap what lies a window
        # behind it, each a window at a time (fewer, larger madvise calls: quarter
        # windows were slower, benchmarks/README.md "Sustained appends"). Records past
        # the last step (a batch crossing it, or a reader keeping up with the writer)
        # fault in as they are read.
        upto = min(limit, self.read_off + POPULATE_WINDOW)
        if view.populated >= 0 and upto - view.populated >= MAP_STEP:
            view.populated = upto if populate(view.mm, view.populated, upto,
                                              MADV_POPULATE_READ) else -1
        view.unmap_below(self.read_off - POPULATE_WINDOW, MAP_STEP)
        w = walk(
            view.mm, self.read_off, limit, self.read_seq, max_records=want, max_bytes=budget,
            end_seq=next_base, max_seq=last_written if active else (
                NO_LIMIT_SEQ if next_base is None else next_base - 1), want_seqs=False,
            stop_seq=stop_seq,
        )
        mm = view.mm
        if out and budget is not None and w.nbytes > budget:
            # scan() always accepts one record; past the first of a batch that is one too
            # many: leave it for the next batch.
            self.read_off = w.offsets[0] - FRAME_HEADER_SIZE
            self.read_seq = w.first_seq  # type: ignore[assignment]
            return 0, False
        out.extend(impl.payloads(mm, w.offsets, w.lengths))
        if w.count:
            self._walk_seqs = (w.first_seq, w.last_seq)
        if w.damages:
            self.damage.keep(mm, view.base, w.damages)
        if w.stop == "torn" and not active:
            # Unsound bytes up to the end of a sealed segment: damage, kept and skipped.
            tail = bytes(mm[w.end : view.size]).rstrip(b"\0")
            damage = Damage(w.end, len(tail), w.torn_kind or "torn", w.next_seq,
                            next_base if next_base is not None else w.next_seq)
            self.damage.keep(mm, view.base, [damage])
        self.read_off, self.read_seq = w.end, w.next_seq
        if w.stop == "max" or active:
            return w.nbytes, False
        if next_base is None:
            # The last segment, no longer active (its writer was closed): nothing after it.
            return w.nbytes, False
        if w.next_seq < next_base:
            self.damage.missing(view.base, w.next_seq, next_base)
        self.open_view(next_base)
        self.read_seq = max(self.read_seq, next_base) if w.next_seq > next_base else next_base
        return w.nbytes, True

    def open_view(self, base: int | None) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None
        if base is None:
            return
        path = self.state.path(base)
        self.view = ReadView(path, base)
        self.read_off = SEGMENT_HEADER_SIZE
        problem = header_problem(self.view.mm[:SEGMENT_HEADER_SIZE], base)
        if problem and base not in self._noted_headers:
            self._noted_headers.add(base)
            self.state.note(f"segment {path} header: {problem}; reading it by its name's base")

    def seek(self, seq: int) -> None:
        """Put the read position at record ``seq`` (or the first record after it)."""
        with self.state.lock:
            segments = self.state.segments
            base = segments[max(bisect.bisect_right(segments, seq) - 1, 0)]
        self.open_view(base)
        self.read_seq = base
        while self.read_seq < seq:
            # Walk by sequence number up to seq: damaged records below it are skipped (and
            # kept in the dead-letter file) without taking intact records above it along.
            batch: list[bytes] = []
            _, more = self._read_some(batch, LOCATE_CHUNK, None, stop_seq=seq)
            if not more and not batch:
                break
        # Past seq only when the records from seq on were damaged: reading resumes at the
        # next sound record.

    def leave(self, dead: list[int]) -> None:
        """Segments ``dead`` are about to be reclaimed: stop reading through them."""
        if self.view is not None and self.view.base in dead:
            self.open_view(self.segment_after(dead[-1]))

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None
