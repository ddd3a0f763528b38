"""The writer: the active segment, its map windows, the append paths and rotation.

A record is framed straight into the mapped active segment and gets the next sequence
number: without the writer lock through the append cursor (``impl.Cursor``,
csrc/cursor.c) or, with ``fsync="always"`` and the C core, the group committer
(csrc/committer.c); under the lock in every other case. With a policy that does not
write through the map, frames are queued and each sync round's leader frames the queue
into the group buffer and writes it with one pwrite (``flush_group``). When a record does
not fit, the writer rotates to the next segment, which the preparer made ready.

Taking the writer lock closes the fast path and reads its position back
(:class:`WriterLock`); under the lock the writer's fields are the truth. The committer
opens only while every older segment is durable (no sealed segment waits for a sync, no
round of segmentlog.engine.sync runs), so its rounds may declare durable all it wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from segmentlog import _fs
from segmentlog._backend import impl
from segmentlog._format import FRAME_ALIGN, FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, frame_size
from segmentlog.engine.durability import Durability
from segmentlog.engine.maps import END_MARK, POPULATE_WINDOW, ZEROS, Segment
from segmentlog.engine.preparer import Preparer
from segmentlog.engine.reader import Reader
from segmentlog.engine.retention import Retention
from segmentlog.engine.state import LogState
from segmentlog.engine.sync import Sync
from segmentlog.errors import DurabilityError, LogFullError, RecordTooLargeError
from segmentlog.segment import encode_header, open_regular

# The group committer: its group buffer, and the longest its round's leader waits for the
# appenders the previous round woke (FORMAT.md, "Group commit").
COMMIT_BUFFER = 1 << 20
COMMIT_GATHER_NS = 100_000

Payload = bytes | bytearray | memoryview


class Writer:
    """The write position of one log and everything that moves it (fields under the
    writer lock)."""

    def __init__(self, state: LogState, policy: Durability, preparer: Preparer,
                 retention: Retention, sync: Sync, reader: Reader,
                 committer: Any, cursor: Any) -> None:
        self.state = state
        self.policy = policy
        self.preparer = preparer
        self.retention = retention
        self.sync = sync
        sync.writer = reader.writer = self
        self.max_record_size = state.segment_size - SEGMENT_HEADER_SIZE - FRAME_HEADER_SIZE
        self.committer = committer
        self.cursor = cursor
        self.commit_rounds = 0  # the committer's fdatasyncs already in the counters
        self._commit_waiters = False  # it was open since it last sent its waiters back
        self.active: Segment | None = None
        self.write_off = 0
        self.write_window = 0  # append's fast path runs while frames end below this
        self.next_seq = 0
        self._via_map = policy.via_map
        # Without the map: the queued records of [group_start, write_off) of the active
        # segment; the file (and so every reader) has everything before.
        self._pending: list[bytes] = []
        self._group = bytearray(0)
        self._group_view = memoryview(self._group)
        self._group_framer: Any = None
        self.group_start = 0
        self._frame_one: Any = None  # (off, payload, seq) -> new offset
        self._frame_raw: Any = None  # (off, payload, len, seq) -> new offset, < 0 refused
        self._frame_many: Any = None  # (off, payloads, first_seq) -> new offset
        # (payload, len) -> seq, < 0 refused; the facade calls it without the lock.
        self.fast_append: Any = (committer.append if committer
                                 else _refuse if cursor is None else cursor.append)

    # ------------------------------------------------------------------ segments

    def new_segment(self, base: int) -> Segment:
        """Take the prepared segment file for ``base``, name it and map it (lock held)."""
        state = self.state
        path = state.path(base)
        prep, recycled = self.preparer.take()
        fd = open_regular(prep, os.O_RDWR)
        try:
            _fs.fs.pwrite(fd, encode_header(base), 0)
            try:
                self.sync.fsync(fd)  # the header is on disk before the name is
                _fs.fs.rename(prep, path)
                self.sync.fsync_dir(state.directory)  # the name before any record in it
            except OSError as exc:
                # An fsync error is never retried: fail the log here too, or the next
                # append would rotate again as if the disk were fine.
                self.fail(DurabilityError(
                    exc.errno, f"fsync of a new segment of log {state.directory} failed "
                    f"({exc.strerror}); the log accepts no more writes: fix the disk, then "
                    "reopen the log"))
                raise state.failed from exc  # type: ignore[misc]
        except BaseException:
            os.close(fd)
            raise
        state.counters["rotations"] += 1
        self.preparer.wake.set()
        return Segment(path, base, fd, state.segment_size, recycled)

    def start(self) -> None:
        """On open, after recovery: a new segment if none can take records (lock held or
        not yet shared)."""
        if self.active is None:
            self.active = self.new_segment(self.next_seq)
            self.state.segments.append(self.next_seq)
            self.write_off = SEGMENT_HEADER_SIZE
        self.bind_active()

    def mark_end(self) -> None:
        """Zero the frame header after the active segment's last record (lock held).

        A recycled segment still holds a consumed segment's old bytes. Without a zero
        marker after its last record, a reader walking it once sealed (or recovery walking
        it as the last segment) meets them mid-payload and reports them as damage (kept
        in the dead-letter file) or as a torn tail.
        """
        seg = self.active
        if seg is not None:
            n = min(FRAME_HEADER_SIZE, seg.size - self.write_off)
            if n > 0:
                seg.mm[self.write_off : self.write_off + n] = bytes(n)

    def seal_active(self) -> None:
        """Stop writing the active segment; the sync rounds sync and unmap it later."""
        seg = self.active
        self.active = None
        if seg is not None:
            self.sync.seal(seg)

    def readable(self) -> tuple[int | None, int, int]:
        """(base of the active segment, how far a reader may read it, the last sequence
        number written) (lock held)."""
        seg = self.active
        return (None if seg is None else seg.base,
                self.write_off if self._via_map else self.group_start, self.next_seq - 1)

    def fail(self, error: DurabilityError) -> None:
        """Refuse every later write with ``error`` (lock held)."""
        self.write_window = -1
        self.state.failed = error

    def close(self) -> None:
        """The log closes (lock held): the last frames reach the file, marked."""
        if not self.state.failed:
            with contextlib.suppress(DurabilityError):  # recorded in state.failed
                self.flush_group()
        self.mark_end()

    def release(self) -> None:
        self.write_window = -1
        if self.active is not None:
            self.active.close()
            self.active = None

    # ------------------------------------------------------------------ appending

    def settle(self, seq: int) -> int:
        """A record the group committer appended as ``seq`` but could not see durable
        (closed over another segment meanwhile, retired, or its disk failed): wait for it
        here, or raise the DurabilityError its failure left."""
        self.sync.wait_durable(seq)
        return seq

    def append(self, payload: Payload) -> int:
        """append under the lock: every case the fast path refuses. A closed or failed
        log has write_window -1, so the one window check sends it to the slow path too."""
        if type(payload) is not bytes:
            payload = self._coerce(payload)
        n = len(payload)
        lock = self.state.lock
        lock.acquire()  # not "with": acquire/try/finally is cheaper here
        try:
            off = self.write_off
            if off + ((n + 31) & -8) > self.write_window:  # frame_size(n), inlined
                self._advance_window(frame_size(n))
                off = self.write_off
            seq = self.next_seq
            end = self._frame_raw(off, payload, n, seq)
            if end < 0:
                end = self._frame_one(off, payload, seq)  # raises the reason
            self.write_off = end
            self.next_seq = seq + 1
        finally:
            lock.release()
        if self.policy.append_waits:
            self.sync.wait_durable(seq)
        return seq

    def append_batch(self, payloads: Iterable[Payload]) -> int:
        """SegmentLog.append_batch (see there)."""
        given = payloads if type(payloads) is list else list(payloads)
        if self._via_map and given:
            # The common case in two C-speed passes over the list (one join, one array of
            # lengths) and one C call, instead of coercing each payload and summing
            # lengths in Python. bytearray and memoryview payloads are copied by the
            # join, so a caller may reuse them once this returns.
            try:
                src = b"".join(given)
                lens = array("Q", map(len, given))
            except TypeError:
                pass  # not bytes-like: the general path names the problem
            else:
                last = self._append_joined(src, lens)
                if last is not None:
                    return last
        records = [p if type(p) is bytes else self._coerce(p) for p in given]
        if not records:
            raise ValueError("append_batch needs at least one record")
        n = len(records)
        # The exact bytes of the frames, in one C call (not a Python sum of frame sizes).
        size = impl.frames_size(array("Q", map(len, records)))
        state = self.state
        with state.lock:
            if state.closed or state.failed:
                state.raise_unusable()
            # The padded payloads fit max_record_size in all: so does each record.
            if (self.write_off + size <= state.segment_size
                    and size - n * FRAME_HEADER_SIZE <= self.max_record_size):
                # Fast path: the whole batch fits in the active segment.
                if not self._via_map:
                    self._pending.extend(records)  # framed by the round's leader
                    end = self.write_off + size
                else:
                    if self.write_off + size > self.write_window:
                        self._advance_window(size)
                    end = self._frame_many(self.write_off, records, self.next_seq)
                self.write_off = end
                self.next_seq += n
                last = self.next_seq - 1
            else:
                last = self._append_batch_slow(records)
        if self.policy.append_waits:
            self.sync.wait_durable(last)
        return last

    def _append_joined(self, src: bytes, lens: array[int]) -> int | None:
        """append_batch through the map, when the whole batch fits in the active segment;
        None (nothing written) sends the batch to the general path: a batch that needs a
        rotation, a record that may be too large, or lengths that are not byte counts."""
        n, total = len(lens), len(src)
        # Every frame is at most its payload + header + 7 bytes of padding.
        bound = total + n * (FRAME_HEADER_SIZE + FRAME_ALIGN - 1)
        state = self.state
        with state.lock:
            if state.closed or state.failed:
                state.raise_unusable()
            off, seq = self.write_off, self.next_seq
            if off + bound > state.segment_size or total > self.max_record_size:
                return None
            if off + bound > self.write_window:
                self._advance_window(bound)
            seg = self.active
            assert seg is not None
            end = seg.framer.frame_joined(off, src, lens, seq)
            if end < 0:
                return None
            self.write_off = end
            self.next_seq = seq + n
        return seq + n - 1

    def _append_batch_slow(self, records: list[bytes]) -> int:
        """append_batch across windows and segments, all or nothing (lock held)."""
        state = self.state
        sizes = [frame_size(len(p)) for p in records]
        self._reserve_batch(sizes)
        while self.preparer.preparing and self._segments_needed(sizes):
            # A rotation must not wait for the preparer mid-batch: that wait releases the
            # lock, and other appenders would slip their records into the batch. Wait
            # now, while nothing is written, then check the space again.
            self.preparer.cond.wait()
            if state.closed or state.failed:
                state.raise_unusable()
            self._reserve_batch(sizes)
        start_seg, start_off, start_seq = self.active, self.write_off, self.next_seq
        i = 0
        try:
            while i < len(records):
                room = state.segment_size - self.write_off
                j, used = i, 0
                while j < len(records) and used + sizes[j] <= room:
                    used += sizes[j]
                    j += 1
                if j == i:
                    self._make_room(sizes[i])
                    continue
                self._advance_window(used)
                self.write_off = self._frame_many(self.write_off, records[i:j],
                                                  self.next_seq)
                self.next_seq += j - i
                i = j
        except (LogFullError, DurabilityError):
            # A rotation failed (disk full) after part of the batch was framed: erase that
            # part (never acknowledged, never visible: the lock is held) so the batch is
            # all or nothing. Possible while it is all in the segment it started in.
            if self.active is start_seg and start_seg is not None and i:
                start_seg.mm[start_off : self.write_off] = bytes(self.write_off - start_off)
                if not self._via_map:
                    del self._pending[len(self._pending) - (self.next_seq - start_seq):]
                self.write_off, self.next_seq = start_off, start_seq
                # Frames already flushed from the group buffer were zeroed just above.
                self.group_start = min(self.group_start, start_off)
            raise
        return self.next_seq - 1

    def _coerce(self, payload: object) -> bytes:
        if isinstance(payload, bytes | bytearray | memoryview):
            data = bytes(payload)
        else:
            raise TypeError(f"records must be bytes-like, not {type(payload).__name__}; "
                            "encode text first (e.g. str.encode() or orjson.dumps())")
        if len(data) > self.max_record_size:
            self._too_large(len(data))
        return data

    def _too_large(self, length: int) -> None:
        raise RecordTooLargeError(
            f"record of {length} bytes does not fit in a segment (at most "
            f"{self.max_record_size} bytes with segment_size {self.state.segment_size}); "
            "raise segment_size or split the record"
        )

    def _segments_needed(self, sizes: Sequence[int]) -> int:
        """How many new segments ``sizes`` (frame sizes, in order) would open."""
        size = self.state.segment_size
        room, needed = size - self.write_off, 0
        for s in sizes:
            if s > room:
                needed += 1
                room = size - SEGMENT_HEADER_SIZE
            room -= s
        return needed

    def _reserve_batch(self, sizes: Sequence[int]) -> None:
        """Check up front that the whole batch fits (record sizes and max_total_size)."""
        biggest = max(sizes)
        if biggest > self.state.segment_size - SEGMENT_HEADER_SIZE:
            self._too_large(biggest - FRAME_HEADER_SIZE)
        retention = self.retention
        if retention.capacity is not None:
            needed = self._segments_needed(sizes)
            if needed > retention.capacity - 1:
                raise LogFullError(
                    f"a batch needing {needed} new segments can never fit in max_total_size "
                    f"{retention.max_total_size}: split the batch or raise max_total_size"
                )
            if needed:
                retention.wait_for_space(needed)

    # ------------------------------------------------------------------ frames to the file

    def bind_active(self) -> None:
        """Point the append path at the (new) active segment (lock held)."""
        seg = self.active
        assert seg is not None
        if self._via_map:
            self._frame_one, self._frame_many = seg.framer.frame, seg.framer.frame_batch
            self._frame_raw = seg.framer.raw
        else:
            self._frame_one, self._frame_many = self._group_one, self._group_many
            self._frame_raw = self._group_raw
            self.group_start = self.write_off
        self.write_window = 0

    def _group_for(self, end: int) -> Any:
        """The group buffer's framer, the buffer holding file offsets up to ``end``."""
        need = end - self.group_start + END_MARK
        if need > len(self._group):
            if self._group_framer is not None:
                self._group_framer.release()
            self._group_view.release()
            self._group = bytearray(max(need, 2 * len(self._group), 1 << 16))
            self._group_view = memoryview(self._group)
            self._group_framer = impl.Framer(self._group)
        return self._group_framer

    def _group_raw(self, off: int, payload: bytes, length: int, seq: int) -> int:
        self._pending.append(payload)
        return off + ((length + 31) & -8)  # frame_size(length), inlined

    def _group_one(self, off: int, payload: bytes, seq: int) -> int:
        self._pending.append(payload)
        return off + frame_size(len(payload))

    def _group_many(self, off: int, payloads: list[bytes], first_seq: int) -> int:
        self._pending.extend(payloads)
        return off + sum(frame_size(len(p)) for p in payloads)

    def flush_group(self) -> None:
        """Frame the queued records and write them into the active segment (lock held)."""
        seg = self.active
        n = self.write_off - self.group_start
        if self._via_map or seg is None or n <= 0:
            return
        pending, self._pending = self._pending, []
        framed = self._group_for(self.write_off).frame_batch(
            0, pending, self.next_seq - len(pending))
        assert framed == n, (framed, n)
        if seg.recycled:  # a zero marker after the frames (see Segment)
            mark = min(END_MARK, seg.size - self.write_off)
            self._group[n : n + mark] = ZEROS[:mark]
            self._pwrite(self._group_view[: n + mark], self.group_start)
        else:
            self._pwrite(self._group_view[:n], self.group_start)
        self.group_start = self.write_off

    def _pwrite(self, data: memoryview, off: int) -> None:
        """Write into the preallocated segment (never extends it); an error fails the log."""
        seg = self.active
        assert seg is not None
        try:
            while data:
                n = _fs.fs.pwrite(seg.fd, data, off)
                data, off = data[n:], off + n
        except OSError as exc:
            self.fail(DurabilityError(
                exc.errno, f"write to {seg.path} failed ({exc.strerror}); the log accepts no "
                "more writes: fix the disk, then reopen the log"))
            self.state.raise_unusable()

    def _advance_window(self, size: int) -> None:
        """Slow path of append: rotate if the frame does not fit, map the next window of
        the segment for writing (lock held)."""
        state = self.state
        if state.closed or state.failed:
            state.raise_unusable()
        if self.write_off + size > state.segment_size:
            self._make_room(size)
        seg = self.active
        assert seg is not None
        end = self.write_off + size
        if self._via_map and seg.populated < end:
            # The next window: pages fault in as they are written, and those behind are
            # dropped. In a recycled segment, zeros go over its old bytes first.
            upto = min(seg.size, max(end, self.write_off + POPULATE_WINDOW))
            if seg.recycled:
                start = max(seg.populated, self.write_off)
                seg.mm[start:upto] = ZEROS[: upto - start]
            seg.populated = upto
            # What the writer wrote it never touches again: keep resident memory to a
            # few windows, not whole segments.
            seg.unmap_below(self.write_off - POPULATE_WINDOW)
        self.write_window = max(end, seg.populated) if self._via_map else seg.size

    def _make_room(self, size: int) -> None:
        """Rotate to a new segment so a frame of ``size`` bytes fits (lock held)."""
        state = self.state
        if size > state.segment_size - SEGMENT_HEADER_SIZE:
            self._too_large(size - FRAME_HEADER_SIZE)
        self.retention.wait_for_space(1)
        self.preparer.wait_idle()
        if state.closed or state.failed:
            state.raise_unusable()
        self.flush_group()  # the old segment's frames reach its file before it is sealed
        self.mark_end()  # before the next segment's name exists: sealed means marked
        if self.policy.sync_before_rotation and self.active is not None:
            # The old segment's last frames are durable before the next segment's name
            # is: else a crash between them shows those (never acknowledged) records as
            # missing, damage, although nothing acknowledged was lost. Its group commit
            # keeps it nearly clean, so this costs little.
            try:
                self.sync.fsync(self.active.fd)
            except OSError as exc:
                self.sync.fail(exc.errno or errno.EIO)
                state.raise_unusable()
        try:
            try:
                seg = self.new_segment(self.next_seq)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self.retention.reclaim_for_writer():
                    raise
                seg = self.new_segment(self.next_seq)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise LogFullError(
                    f"no space left on the device of {state.directory} for a new segment of "
                    f"{state.segment_size} bytes: free disk space or set max_total_size "
                    "below the free space"
                ) from exc
            raise DurabilityError(exc.errno, f"cannot create a segment in {state.directory}: "
                                  f"{exc.strerror}") from exc
        self.seal_active()
        self.active = seg
        state.segments.append(seg.base)
        self.write_off = SEGMENT_HEADER_SIZE
        self.bind_active()

    # ------------------------------------------------------------------ the fast path

    def fast_close(self) -> None:
        """The lock was just taken: close the fast path, take its state back."""
        committer = self.committer
        if committer is None:
            self.write_off, self.next_seq = self.cursor.close()
            return
        sync = self.sync
        off, self.next_seq, durable_next, rounds, err = committer.close()
        self._commit_waiters = True
        self.write_off = self.group_start = off
        if durable_next - 1 > sync.durable_seq:
            sync.durable_seq = durable_next - 1
        self.state.counters["fsyncs"] += rounds - self.commit_rounds
        self.commit_rounds = rounds
        if err and self.state.failed is None:
            sync.fail(err)

    def fast_open(self) -> bool:
        """The lock is about to be released: open the fast path, if it may run."""
        seg = self.active
        if self.committer is None:
            if self.write_window > 0 and seg is not None:
                return bool(self.cursor.open(seg.framer, self.write_off, self.next_seq,
                                             self.write_window))
            return False
        # The committer may declare durable every record up to the last it wrote, so it
        # runs only while every older record is durable or in its segment's file: no
        # sealed segment waits for a sync and no round of ours is syncing one.
        sync = self.sync
        opened = False
        if (self.write_window > 0 and seg is not None and not sync.syncing
                and not sync.pending and sync.fsync is sync.fsync_default):
            try:
                self.flush_group()  # records queued by the locked path reach the file
            except DurabilityError:
                pass  # recorded in state.failed: stay closed
            else:
                opened = bool(self.committer.open(
                    seg.fd, self._group_for(self.write_off + COMMIT_BUFFER),
                    self.write_off, seg.size, self.next_seq, sync.durable_seq + 1,
                    seg.base + 1, seg.recycled, COMMIT_GATHER_NS))
        if not opened and self._commit_waiters:
            self.committer.retire()  # its waiters settle their records in Python
            self._commit_waiters = False
        return opened


def _refuse(payload: bytes, length: int) -> int:
    """append's fast path without cursor or committer: every append takes the lock."""
    return -1


class WriterLock:
    """The log's lock: holding it closes append's fast path.

    append frames records through the cursor (impl.Cursor, csrc/cursor.c) or, with
    fsync="always", the group committer (csrc/committer.c) without this lock. Taking the
    lock closes the fast path (an append in progress finishes first; a committer's round
    in progress ends and its group is written) and reads its position back into the
    writer's fields (``Writer.fast_close``), so under the lock the writer's own fields are
    the truth and nothing else writes the segment. Releasing reopens it over the active
    segment when it may run (``Writer.fast_open``: none while closed, failed or between
    segments). Conditions on this lock release and re-take it through these same methods.
    """

    __slots__ = ("_mutex", "_open", "writer")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.writer: Writer | None = None  # bound once the writer exists
        self._open = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._mutex.acquire(blocking, timeout):
            return False
        if self._open:
            self._open = False
            self.writer.fast_close()  # type: ignore[union-attr]
        return True

    def release(self) -> None:
        try:
            writer = self.writer
            self._open = writer is not None and writer.fast_open()
        finally:  # never leave the lock held (an error opening leaves the path closed)
            self._mutex.release()

    def locked(self) -> bool:
        return self._mutex.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
