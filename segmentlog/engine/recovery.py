"""Recovery on open: where the records end, so the next record goes there.

FORMAT.md, "Recovery rules", 3: the last segment is walked to its end; a torn record at
the end (a crash mid-write) is zeroed and counted, never reported as damage. A last
segment that holds no record and is not a sound segment of this log is set aside (its
bytes kept), and the one before it is examined instead: its name must not decide the
next sequence number. New records never take a number that a segment before the last
one already holds.
"""

from __future__ import annotations

import os
from typing import Any

from segmentlog import _fs
from segmentlog._backend import impl
from segmentlog._format import (
    FRAME_ALIGN,
    FRAME_HEADER_SIZE,
    FRAME_MARKER,
    SEGMENT_HEADER_SIZE,
    segment_name,
)
from segmentlog.engine.damage import DamageKeeper
from segmentlog.engine.maps import PAGE, Segment
from segmentlog.engine.state import LogState, log
from segmentlog.engine.writer import Writer
from segmentlog.segment import fsync_dir, header_problem, open_regular, quarantine_name
from segmentlog.walk import NO_LIMIT_SEQ, Damage, torn_extent, walk

_MARKER = FRAME_MARKER.to_bytes(4, "little")


class Recovery:
    """Finds the end of one log's records and hands the writer its active segment."""

    def __init__(self, state: LogState, writer: Writer, damage: DamageKeeper) -> None:
        self.state = state
        self.writer = writer
        self.damage = damage
        self.header_problem: str | None = None  # of the last segment

    def recover(self) -> None:
        """Find where the records end (FORMAT.md, "Recovery rules", 3)."""
        segments, writer = self.state.segments, self.writer
        count = None
        while segments:
            base = segments[-1]
            count = self._recover_segment(base)
            if count is not None:
                break
            self._set_aside(base, "holds no readable record")
        if len(segments) < 2:
            return
        before = segments[-2]
        if count and writer.active is None:
            return  # read as it is, new records after it (_recover_segment)
        if count and not self.header_problem:
            return  # its first record is numbered by its name: nothing below is newer
        # The last segment holds no record, or its header does not match its name: the
        # segment before it may already hold its numbers (a stray or copied file under a
        # name inside that segment's range; a rotation leaves an empty segment only right
        # after the previous one's last record).
        prev = self._walk_file(before)
        if prev > writer.next_seq:
            self.state.note(f"segment {segment_name(segments[-1])} starts inside the records "
                            f"of {segment_name(before)} (up to {prev - 1}): new records start "
                            f"at {prev} in a new segment")
            writer.seal_active()
            writer.next_seq = prev

    def _recover_segment(self, base: int) -> int | None:
        """Walk the last segment ``base``; make it the active one (its torn tail zeroed)
        or, if it cannot take new records, leave the writer without an active segment
        (a new one after it). Returns how many records it holds, None if it holds none
        and is not a sound segment of this log (the caller sets it aside)."""
        state, writer = self.state, self.writer
        path = state.path(base)
        fd = open_regular(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        if size != state.segment_size or size < 2 * PAGE:
            os.close(fd)
            return self._odd_last_segment(path, base, size)
        seg = Segment(path, base, fd, size)
        problem = header_problem(seg.mm[:SEGMENT_HEADER_SIZE], base)
        self.header_problem = problem
        w = walk(seg.mm, SEGMENT_HEADER_SIZE, size, base, max_records=NO_LIMIT_SEQ,
                 base=base, collect=False)
        if problem and not w.count:
            seg.close()
            return None
        if problem:
            state.counters["damaged_regions"] += 1
            state.note(f"segment {path} header: {problem}; reading it by its name's base")
        self.damage.keep(seg.mm, base, w.damages)
        end = w.end
        writer.active, writer.write_off, writer.next_seq = seg, end, w.next_seq
        if w.stop == "torn" and (w.torn_kind == "bad_seq" or _sound_frame_in(
                seg.mm, end + FRAME_ALIGN, size, base, w.next_seq - 1)):
            # Sound frames numbered below the expected one after the last record (intact
            # records that a forged or misdirected run of frames numbered ahead cut off):
            # not a write cut short. Keep their bytes (dead-letter) and leave them in
            # place: new records go to a new segment.
            tail = len(bytes(seg.mm[end:size]).rstrip(b"\0"))
            self.damage.keep(seg.mm, base, [Damage(end, tail, "bad_seq", w.next_seq,
                                                   w.next_seq)])
            writer.seal_active()
        elif w.stop == "torn":
            # A record cut short by a crash: its bytes end the log. Zero them so the next
            # append starts on clean space (counted, not damage: it was never acknowledged).
            torn = torn_extent(seg.mm, end, size)
            seg.mm[end : end + torn] = bytes(torn)
            seg.mm.flush()
            state.counters["torn_tail_bytes"] += torn
            log.info("segmentlog %s: truncated a torn record of %d bytes at offset %d",
                     path, torn, end)
        return w.count

    def _walk_file(self, base: int) -> int:
        """The sequence number after the records of segment ``base`` (read, not mapped)."""
        with os.fdopen(open_regular(self.state.path(base), os.O_RDONLY), "rb") as f:
            data = f.read()
        return walk(data, SEGMENT_HEADER_SIZE, len(data), base, max_records=NO_LIMIT_SEQ,
                    base=base, collect=False).next_seq

    def _set_aside(self, base: int, why: str) -> None:
        """Rename segment ``base`` to ``NAME.seg.damaged``: its bytes are kept for
        inspection (verify reports it) and the log no longer reads it."""
        directory = self.state.directory
        name = segment_name(base)
        aside = quarantine_name(directory, name)
        _fs.fs.rename(os.path.join(directory, name), os.path.join(directory, aside))
        fsync_dir(directory)
        self.state.segments.remove(base)
        self.state.note(f"segment {name} {why}: kept as {aside}")

    def _odd_last_segment(self, path: str, base: int, size: int) -> int | None:
        """The last segment has the wrong size (damage, or another segment_size setting):
        keep it for reading and start a new segment after its records. None if it holds
        no record (the caller sets it aside)."""
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
            data = f.read()
        w = walk(data, SEGMENT_HEADER_SIZE, len(data), base, max_records=NO_LIMIT_SEQ,
                 base=base, collect=False)
        self.header_problem = header_problem(data[:SEGMENT_HEADER_SIZE], base)
        if w.count == 0:
            return None
        self.state.note(f"segment {path} is {size} bytes, not segment_size "
                        f"{self.state.segment_size}: it is read as it is and new records go "
                        "to a new segment")
        self.writer.next_seq = w.next_seq
        return w.count


def _sound_frame_in(buf: Any, start: int, limit: int, lo: int, hi: int) -> bool:
    """Whether a sound frame numbered ``lo``..``hi`` starts at an aligned offset in
    [start, limit) of ``buf`` (a map: searched in place). Recovery only: it may read a
    whole segment."""
    pos = start + (-start % FRAME_ALIGN)
    while lo <= hi:
        pos = buf.find(_MARKER, pos, limit)
        if pos < 0:
            return False
        if pos % FRAME_ALIGN == 0 and pos + FRAME_HEADER_SIZE <= limit:
            seq = int.from_bytes(buf[pos + 8 : pos + 16], "little")
            if lo <= seq <= hi and impl.scan(buf, pos, limit, seq, 1, None).count:
                return True
        pos += 1
    return False
