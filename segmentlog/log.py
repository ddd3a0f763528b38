"""SegmentLog: a durable, append-only log of byte records in preallocated, mapped segments.

Theory of operation
-------------------
A record is framed (FORMAT.md) straight into the mapped active segment and gets the
next sequence number: with ``fsync="never"``/``"interval"`` by one C call through the
append cursor, without the log's lock (see Locks). When it does not fit, the writer
rotates to the next segment, which a background thread prepared in advance (space
reserved, then zero-filled or read through into the page cache, or a consumed segment
recycled), so rotation costs a header write, two fsyncs and a rename once per segment.

Durability (``fsync``):
* ``"always"``: ``append`` returns once the record is on disk. Appenders share fsyncs
  (group commit). With the C core, ``append`` is one call into the group committer
  (csrc/committer.c): it frames the record into the group buffer and waits, with the
  GIL released; the first waiter that finds no round running leads one (waits briefly
  for the others, pwrites the buffer, fdatasyncs) and wakes them all. Everything else
  (batches, rotation, the pure-Python backend) takes the Python group commit: an append
  queues its record under the lock; one waiting appender becomes the leader, frames and
  pwrites the queue (one C call, one syscall), syncs with the lock released, and wakes
  the appenders it covered, one after the other.
* ``"interval"``: a background thread syncs every ``fsync_interval`` seconds.
* ``"never"``: the page cache only; ``sync()`` is the only fsync (``close()`` makes
  nothing durable: call ``sync()`` first).
An fsync error is never retried or ignored: the log refuses every later write with
:class:`DurabilityError` (the page cache may have dropped the data; only a reopen, which
re-reads the disk, tells what survived).

One consumer reads batches in order (``read_batch``), several may be in flight, and
``commit(batch)`` moves the checkpoint past a batch. Segments wholly below a durable
checkpoint are deleted (or recycled as the next segment). ``rewind`` rereads from the
last commit.

Recovery on open: the last segment is walked to its end; a torn record at the end (a
crash mid-write) is zeroed and counted, never reported as damage. Damage anywhere else
(a complete frame with a bad checksum, a bad length, a zeroed region, a missing segment)
is skipped: its bytes go to the dead-letter file and reading goes on with the next
sound record. A damaged record is never returned.

Locks: ``_lock`` guards the writer state and the segment list (appenders, rotation,
group commit, reclaiming); ``_read_lock`` guards the reader state. ``append`` frames
without it while the active window has room: through the cursor (``impl.Cursor``,
csrc/cursor.c, its own spin lock held for one frame) or, with ``fsync="always"``, the
group committer (its own mutex). Taking ``_lock`` closes that fast path and reads its
position back (``_WriterLock``; the committer first ends its round and writes its
buffer): under ``_lock`` the writer fields are the truth, whoever holds it. The
committer opens only while every older segment is durable (no sealed segment waits for
a sync, no Python round runs), so its rounds may declare durable all it wrote. The reader takes
``_lock`` only briefly to learn how far the active segment is written. Lock order is
``_read_lock`` then ``_lock``.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import logging
import math
import mmap
import os
import threading
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

from segmentlog import _fs, checkpoint, deadletter
from segmentlog._backend import impl
from segmentlog._format import (
    FRAME_ALIGN,
    FRAME_HEADER_SIZE,
    FRAME_MARKER,
    PREPARED_NAME,
    SEGMENT_HEADER_SIZE,
    SEQ_LIMIT,
    SPARE_NAME,
    TMP_SUFFIX,
    frame_size,
    parse_segment_name,
    segment_name,
)
from segmentlog.errors import (
    ConfigError,
    DurabilityError,
    LogClosedError,
    LogFullError,
    RecordTooLargeError,
)
from segmentlog.segment import (
    encode_header,
    fsync_dir,
    header_problem,
    open_regular,
    prepare_directory,
    quarantine_name,
    refuse_special_files,
    reserve_and_zero,
    restore_names,
    take_lock,
)
from segmentlog.walk import NO_LIMIT_SEQ, Damage, torn_extent, walk

log = logging.getLogger("segmentlog")

FSYNC_POLICIES = ("always", "interval", "never")
_PAGE = mmap.PAGESIZE
_LOCATE_CHUNK = 1 << 16
# Pages are mapped ahead of the reader (and, without fsync="always", of the writer) in
# windows of this size with one madvise(MADV_POPULATE_*) call, instead of one page fault
# per 4 KiB page: scanning a mapped 64 MiB segment ran 2.6x faster here (0.49 against
# 1.30 GB/s, measured while writing this; writes through the map 2x with POPULATE_WRITE).
_POPULATE_WINDOW = 4 << 20
_MAP_STEP = _POPULATE_WINDOW // 4  # the reader maps and unmaps in steps of this or more
_ZEROS = memoryview(bytes(_POPULATE_WINDOW + (64 << 10)))
_END_MARK = 8  # zero bytes after the last frame in a recycled segment (a zero marker)
_MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL and we stop asking
_MADV_POPULATE_WRITE = 23
# Without fsync="always" the checkpoint is rewritten at most this often (a rename costs
# milliseconds on ext4); a commit not yet written is re-delivered after a crash, never lost.
_CHECKPOINT_INTERVAL = 0.05
_GATHER_ROUNDS = 4  # at most this many yields before a group fsync (see _sync_round)
# The group committer (csrc/committer.c): its group buffer, and the longest its round's
# leader waits for the appenders the previous round woke (FORMAT.md, "Group commit").
_COMMIT_BUFFER = 1 << 20
_COMMIT_GATHER_NS = 100_000
_SETTLE = impl.COMMIT_SETTLE  # append's fast path: SETTLE - seq, appended as seq (_settle)
_NEVER = 1 << 64  # above every sequence number: a follower no round covers (sync())
_MARKER = FRAME_MARKER.to_bytes(4, "little")


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


def _populate(mm: Any, start: int, end: int, advice: int) -> bool:
    """Map pages [start, end) of ``mm`` in one call; False if the kernel cannot."""
    start -= start % _PAGE
    try:
        mm.madvise(advice, start, end - start)
    except (OSError, ValueError):
        return False
    return True


class _Map:
    """A mapped segment file whose user unmaps the pages it is done with."""

    __slots__ = ("dropped", "mm")
    dropped: int  # pages below this offset are unmapped
    mm: Any

    def unmap_below(self, end: int, step: int = 0) -> None:
        """Unmap the pages below ``end`` (``MADV_DONTNEED``) once at least ``step`` bytes
        more than last time are due. Safe for shared file mappings: the data stays in
        the page cache (dirty pages stay dirty and are written back as usual); a later
        access maps them again. They stop counting as this process's memory, and
        writeback finds no writable mapping of them to write-protect (no TLB
        shootdown per page, see _sync_round)."""
        end -= end % _PAGE
        if end > self.dropped and end - self.dropped >= step:
            with contextlib.suppress(OSError, ValueError):
                self.mm.madvise(mmap.MADV_DONTNEED, self.dropped, end - self.dropped)
            self.dropped = end


class _Segment(_Map):
    """One mapped segment file (the writer's view, read-write)."""

    __slots__ = ("base", "fd", "framer", "path", "populated", "recycled", "size")

    def __init__(self, path: str, base: int, fd: int, size: int,
                 recycled: bool = False) -> None:
        self.path, self.base, self.fd, self.size = path, base, fd, size
        # A recycled segment holds a consumed segment's old bytes after the write
        # position; the writer keeps zeros just ahead of it, so every walk of it (a
        # reader's, or recovery's after a crash) ends on a zero marker, not on old bytes.
        self.recycled = recycled
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.framer = impl.Framer(self.mm)
        self.populated = 0  # pages below this offset are mapped for writing
        self.dropped = 0  # pages below this offset are unmapped (unmap_below)

    def close(self) -> None:
        self.framer.release()
        self.mm.close()
        os.close(self.fd)


class _ReadView(_Map):
    """The reader's read-only map of one segment."""

    __slots__ = ("base", "populated", "size")

    def __init__(self, path: str, base: int) -> None:
        self.base = base
        self.populated = 0  # pages below this offset are mapped (MADV_POPULATE_READ)
        self.dropped = 0  # pages below this offset are unmapped (unmap_below)
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            # An empty file cannot be mapped; it reads as a segment without records.
            self.mm: Any = (mmap.mmap(f.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ)
                            if self.size else b"")

    def close(self) -> None:
        if self.size:
            self.mm.close()


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class SegmentLog:
    """A durable append-only log in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_size: int = 64 << 20,
        max_total_size: int | None = None,
        fsync: str = "always",
        fsync_interval: float = 0.01,
        *,
        block_when_full: bool = False,
        full_timeout: float | None = None,
        recycle: bool = True,
    ) -> None:
        self.directory = os.fspath(directory)
        segment_size = _check_positive_int("segment_size", segment_size, 2 * _PAGE)
        if segment_size % _PAGE:
            raise ConfigError(
                f"segment_size must be a multiple of the page size {_PAGE}, got "
                f"{segment_size}; round it to {segment_size // _PAGE * _PAGE or _PAGE}"
            )
        if segment_size >= 1 << 40:
            raise ConfigError(f"segment_size {segment_size} is too large (limit 1 TiB)")
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if (not isinstance(fsync_interval, int | float) or isinstance(fsync_interval, bool)
                or not 0 < fsync_interval < math.inf):
            raise ConfigError(f"fsync_interval must be a finite number of seconds > 0, got "
                              f"{fsync_interval!r}")
        self._capacity: int | None = None
        if max_total_size is not None and max_total_size != 0:
            max_total_size = _check_positive_int("max_total_size", max_total_size)
            self._capacity = max_total_size // segment_size
            if self._capacity < 2:
                raise ConfigError(
                    f"max_total_size {max_total_size} must hold at least two segments of "
                    f"segment_size {segment_size}: raise it to {2 * segment_size} or more, "
                    "or lower segment_size"
                )
        if full_timeout is not None and (
                not isinstance(full_timeout, int | float) or isinstance(full_timeout, bool)
                or not full_timeout >= 0):
            raise ConfigError(f"full_timeout must be a number of seconds >= 0 (inf: wait for "
                              f"ever) or None, got {full_timeout!r}")
        self.segment_size = segment_size
        self.max_total_size = max_total_size or None
        self.fsync = fsync
        self.fsync_interval = float(fsync_interval)
        self.block_when_full = block_when_full
        # inf waits for ever, as None does (a timed wait cannot take an infinite timeout).
        self.full_timeout = None if full_timeout == math.inf else full_timeout
        self.recycle = recycle
        self.max_record_size = segment_size - SEGMENT_HEADER_SIZE - FRAME_HEADER_SIZE

        # Holding the lock closes append's fast path (_WriterLock): the cursor, or with
        # fsync="always" the group committer (None in pure Python: a plain lock), so the
        # writer state below is the truth under it.
        self._always = fsync == "always"
        self._committer: Any = impl.new_committer() if self._always else None
        self._cursor: Any = None if self._always else impl.Cursor()
        self._commit_rounds = 0  # the committer's fdatasyncs already in _counters
        self._commit_waiters = False  # it was open since it last sent its waiters back
        self._writer_lock = (_WriterLock(self) if self._cursor or self._committer
                             else None)
        self._lock: Any = cast(Any, self._writer_lock or threading.Lock())
        self._sync_cond = threading.Condition(self._lock)
        self._space_cond = threading.Condition(self._lock)
        self._prep_cond = threading.Condition(self._lock)
        self._read_lock = threading.Lock()
        self._closed = False
        self._failed: DurabilityError | None = None
        self._fsync_default = _fs.DEFAULT.fdatasync  # see _fsync_fn
        self._fsync_hook = _fs.fs.fdatasync  # the seam's (a replaced one closes the committer)
        self._fsync_dir_fn = fsync_dir  # likewise
        self._unlink_fn = _fs.fs.unlink  # likewise (consumed segments, outside the lock)

        # writer state (under _lock)
        self._segments: list[int] = []  # bases of the segment files, ascending
        self._active: _Segment | None = None
        self._write_off = 0
        self._write_window = 0  # append's fast path runs while frames end below this
        # Map each window for writing ahead of the writer (MADV_POPULATE_WRITE) with
        # fsync="never" only. With "interval" every fdatasync cleans (write-protects) the
        # pages again, so the pages it pre-dirtied faulted a second time and their zeros
        # were written to disk for nothing: 0.072 -> 0.029 faults and 2.4 -> 1.8 us per
        # append without it (FORMAT.md). Windows still advance, to drop pages behind.
        self._populate_write = fsync == "never"
        # How frames reach the active segment: through the map, or with fsync="always"
        # by pwrite from the group buffer (FORMAT.md, "Writing and preparing segments").
        self._via_map = fsync != "always"
        # fsync="always": an append only queues its payload (no C call, no syscall, so the
        # GIL stays put); the leader of each group fsync frames the queue into the group
        # buffer with one C call and writes it with one pwrite (under the lock) before
        # the fdatasync. The queue holds the records of [_group_start, _write_off) of
        # the active segment; the file (and so every reader) has everything before.
        self._pending: list[bytes] = []
        self._group = bytearray(0)
        self._group_view = memoryview(self._group)
        self._group_framer: Any = None
        self._group_start = 0
        self._frame_one: Any = None  # (off, payload, seq) -> new offset
        self._frame_raw: Any = None  # (off, payload, len, seq) -> new offset, < 0 refused
        self._fast_append: Any = (  # (payload, len) -> seq, < 0 refused
            self._committer.append if self._committer
            else _refuse if self._cursor is None else self._cursor.append)
        # New segments are prepared off the append path (FORMAT.md, "Writing and
        # preparing segments"): zero-filled and fdatasynced with fsync="always" (cheaper
        # fdatasyncs of records later); zero-filled in the page cache with "never"
        # (mapping a window then finds its pages ready). With "interval" only reserved,
        # then read through once ("warm"): its pages wait in the page cache as clean
        # zero pages, which no fdatasync writes (dirty zeros, the first fdatasync would
        # write the whole segment): one at a time 0.47-0.61 -> 0.76-1.31 M appends/s.
        self._warm = fsync == "interval"  # else zero-filled
        self._frame_many: Any = None  # (off, payloads, first_seq) -> new offset
        # Followers waiting for a group fsync: (the sequence number each waits for, the
        # locked Lock the leader releases); see _wait_durable and _open_gates.
        self._gates: list[tuple[int, threading.Lock]] = []
        self._chain: collections.deque[threading.Lock] = collections.deque()
        self._durable_committed = 0  # checkpoint known durable (under _lock)
        self._pinned: int | None = None  # segment the reader is walking (under _lock)
        self._waited_last_round = False
        self._next_seq = 0
        self._durable_seq = -1  # last sequence number known to be on disk
        self._syncing = False
        self._unsynced: list[_Segment] = []  # sealed segments with data not yet synced
        # fsync="never": rotation unmaps and closes a sealed segment at once (no flusher
        # would); the next sync() opens it again by name to sync it (_sync_round).
        self._unsynced_bases: list[int] = []
        self._prepared = False  # next.prep exists and is ready
        self._preparing = False  # the preparer is writing next.prep
        self._spare = False  # spare.prep (a consumed segment kept for reuse) exists
        # Consumed segments renamed to *.tmp, being unlinked outside the lock (an unlink
        # of a 64 MiB segment took ~19 ms here: no appender should wait for it). They
        # still count against max_total_size until they are gone.
        self._deleting = 0
        self._prep_recycled = False  # next.prep is a recycled segment (not zeros)
        self._counters = {"torn_tail_bytes": 0, "damaged_regions": 0, "fsyncs": 0,
                          "rotations": 0, "recycled": 0}
        self._problems: list[str] = []
        self._header_problem: str | None = None  # of the last segment (recovery)

        # reader state (under _read_lock)
        self._view: _ReadView | None = None
        self._read_seq = 0
        self._read_off = SEGMENT_HEADER_SIZE
        self._walk_seqs: tuple[Any, Any] = (0, 0)  # first, last record of the last walk
        self._committed_seq = 0
        self._checkpoint_durable = True
        self._checkpoint_seq = 0  # the position the checkpoint file holds
        self._checkpoint_time = 0.0
        self._deadletter_keys: set[tuple[str, int]] = set()
        self._noted_headers: set[int] = set()  # segments whose bad header was reported

        self._lock_fd = -1
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._wake_prep = threading.Event()
        try:
            self._open()
        except OSError as exc:
            self._release_all()
            if exc.errno == errno.ENOSPC and not isinstance(exc, DurabilityError):
                raise LogFullError(
                    f"no space left on the device of {self.directory} to open the log (it "
                    f"needs a lock file and a segment of {self.segment_size} bytes): free "
                    "disk space"
                ) from exc
            raise
        except BaseException:
            self._release_all()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        prepare_directory(self.directory)
        refuse_special_files(self.directory)  # before anything is opened or changed
        self._take_lock()
        names = os.listdir(self.directory)
        for name in names:
            if name.endswith(TMP_SUFFIX) or name in (PREPARED_NAME, SPARE_NAME):
                # A checkpoint being written or a segment being prepared when the last
                # process stopped: neither holds records, both are made again.
                _fs.fs.unlink(os.path.join(self.directory, name))
        names = restore_names(self.directory, names, self._note)
        self._segments = sorted(b for b in map(parse_segment_name, names) if b is not None)
        self._deadletter_keys = deadletter.known_keys(self.directory)

        committed, problem = checkpoint.read(self.directory)
        if committed is not None and committed >= SEQ_LIMIT:
            committed, problem = None, "checkpoint_beyond_limit"
        first = self._segments[0] if self._segments else 0
        if problem == "checkpoint_missing" and self._segments:
            self._note(f"no checkpoint: every record from sequence {first} will be read again")
        elif problem not in (None, "checkpoint_missing"):
            self._note(f"checkpoint damaged ({problem}): every record from sequence {first} "
                       "will be read again (re-delivery is safer than loss)")
        if committed is None or committed < first:
            # Missing/damaged, or older than the oldest segment (segments below a
            # checkpoint are deleted only after it is durable, so an older one is only
            # left by fsync="never"): start at the oldest record still present.
            committed = first

        if self._segments:
            self._recover_last_segment()
        if committed > self._next_seq:
            # The checkpoint is ahead of the data (the tail was lost with fsync="never").
            # New records must get numbers above it, or they would count as consumed.
            self._note(f"checkpoint {committed} is beyond the last record "
                       f"{self._next_seq - 1}: new records start at {committed}")
            self._seal_active()
            self._next_seq = committed
        if self._active is None:
            self._active = self._new_segment(self._next_seq)
            self._segments.append(self._next_seq)
            self._write_off = SEGMENT_HEADER_SIZE
        self._bind_active()
        if problem == "checkpoint_missing":
            # A new log starts with a checkpoint, so a missing one later means damage.
            checkpoint.write(self.directory, committed, durable=True)
        # The records found here may still be only in the page cache (a process killed,
        # or closed with fsync="never"): none counts as durable until the next sync round
        # has synced its segment (the older ones by name), before sync() returns or the
        # group committer opens.
        active = self._active.base if self._active is not None else None
        self._durable_seq = min(self._next_seq, self._segments[0] if self._segments
                                else self._next_seq) - 1
        sealed = {seg.base for seg in self._unsynced} | set(self._unsynced_bases)
        self._unsynced_bases += [b for b in self._segments if b not in sealed and b != active]
        self._committed_seq = self._checkpoint_seq = self._durable_committed = committed
        self._seek(committed)

        self._start_thread(self._prepare_loop, "segmentlog-prepare")
        if self.fsync == "interval":
            self._start_thread(self._flush_loop, "segmentlog-flush")

    def _take_lock(self) -> None:
        self._lock_fd = take_lock(self.directory)

    def _note(self, message: str) -> None:
        self._problems.append(message)
        log.warning("segmentlog %s: %s", self.directory, message)

    def _recover_last_segment(self) -> None:
        """Find where the records end: the next record goes there (FORMAT.md, "Recovery
        rules", 3). A last segment that holds no record and is not a sound segment of this
        log is set aside (its bytes kept), and the one before it is examined instead: its
        name must not decide the next sequence number. New records never take a number
        that a segment before the last one already holds."""
        while self._segments:
            base = self._segments[-1]
            count = self._recover_segment(base)
            if count is not None:
                break
            self._set_aside(base, "holds no readable record")
        if len(self._segments) < 2:
            return
        before = self._segments[-2]
        if count and self._active is None:
            return  # read as it is, new records after it (_recover_segment)
        if count and not self._header_problem:
            return  # its first record is numbered by its name: nothing below is newer
        # The last segment holds no record, or its header does not match its name: the
        # segment before it may already hold its numbers (a stray or copied file under a
        # name inside that segment's range; a rotation leaves an empty segment only right
        # after the previous one's last record).
        prev = self._walk_file(before)
        if prev > self._next_seq:
            self._note(f"segment {segment_name(self._segments[-1])} starts inside the records "
                       f"of {segment_name(before)} (up to {prev - 1}): new records start at "
                       f"{prev} in a new segment")
            self._seal_active()
            self._next_seq = prev

    def _recover_segment(self, base: int) -> int | None:
        """Walk the last segment ``base``; make it the active one (its torn tail zeroed)
        or, if it cannot take new records, leave ``_active`` None for a new segment after
        it. Returns how many records it holds, None if it holds none and is not a sound
        segment of this log (the caller sets it aside)."""
        path = os.path.join(self.directory, segment_name(base))
        fd = open_regular(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        if size != self.segment_size or size < 2 * _PAGE:
            os.close(fd)
            return self._handle_odd_last_segment(path, base, size)
        seg = _Segment(path, base, fd, size)
        problem = header_problem(seg.mm[:SEGMENT_HEADER_SIZE], base)
        self._header_problem = problem
        w = walk(seg.mm, SEGMENT_HEADER_SIZE, size, base, max_records=NO_LIMIT_SEQ,
                 base=base, collect=False)
        if problem and not w.count:
            seg.close()
            return None
        if problem:
            self._counters["damaged_regions"] += 1
            self._note(f"segment {path} header: {problem}; reading it by its name's base")
        self._keep_damage(seg.mm, base, w.damages)
        end = w.end
        self._active, self._write_off, self._next_seq = seg, end, w.next_seq
        if w.stop == "torn" and (w.torn_kind == "bad_seq" or _sound_frame_in(
                seg.mm, end + FRAME_ALIGN, size, base, w.next_seq - 1)):
            # Sound frames numbered below the expected one after the last record (intact
            # records that a forged or misdirected run of frames numbered ahead cut off):
            # not a write cut short. Keep their bytes (dead-letter) and leave them in
            # place: new records go to a new segment.
            tail = len(bytes(seg.mm[end:size]).rstrip(b"\0"))
            self._keep_damage(seg.mm, base, [Damage(end, tail, "bad_seq", w.next_seq,
                                                    w.next_seq)])
            self._seal_active()
        elif w.stop == "torn":
            # A record cut short by a crash: its bytes end the log. Zero them so the next
            # append starts on clean space (counted, not damage: it was never acknowledged).
            torn = torn_extent(seg.mm, end, size)
            seg.mm[end : end + torn] = bytes(torn)
            seg.mm.flush()
            self._counters["torn_tail_bytes"] += torn
            log.info("segmentlog %s: truncated a torn record of %d bytes at offset %d",
                     path, torn, end)
        return w.count

    def _walk_file(self, base: int) -> int:
        """The sequence number after the records of segment ``base`` (read, not mapped)."""
        path = os.path.join(self.directory, segment_name(base))
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
            data = f.read()
        return walk(data, SEGMENT_HEADER_SIZE, len(data), base, max_records=NO_LIMIT_SEQ,
                    base=base, collect=False).next_seq

    def _set_aside(self, base: int, why: str) -> None:
        """Rename segment ``base`` to ``NAME.seg.damaged``: its bytes are kept for
        inspection (verify reports it) and the log no longer reads it."""
        name = segment_name(base)
        aside = quarantine_name(self.directory, name)
        _fs.fs.rename(os.path.join(self.directory, name), os.path.join(self.directory, aside))
        fsync_dir(self.directory)
        self._segments.remove(base)
        self._note(f"segment {name} {why}: kept as {aside}")

    def _handle_odd_last_segment(self, path: str, base: int, size: int) -> int | None:
        """The last segment has the wrong size (damage, or another segment_size setting):
        keep it for reading and start a new segment after its records. None if it holds
        no record (the caller sets it aside)."""
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
            data = f.read()
        w = walk(data, SEGMENT_HEADER_SIZE, len(data), base, max_records=NO_LIMIT_SEQ,
                 base=base, collect=False)
        self._header_problem = header_problem(data[:SEGMENT_HEADER_SIZE], base)
        if w.count == 0:
            return None
        self._note(f"segment {path} is {size} bytes, not segment_size {self.segment_size}: "
                   "it is read as it is and new records go to a new segment")
        self._next_seq = w.next_seq
        return w.count

    def _new_segment(self, base: int) -> _Segment:
        """Create (or take the prepared) segment file for ``base`` and map it."""
        path = os.path.join(self.directory, segment_name(base))
        prep = os.path.join(self.directory, PREPARED_NAME)
        if not self._prepared:
            if self._spare:
                _fs.fs.rename(os.path.join(self.directory, SPARE_NAME), prep)
                self._spare = False
                self._prep_recycled = True
            else:
                self._reserve(prep)
                self._prep_recycled = False
        self._prepared = False
        recycled = self._prep_recycled
        fd = open_regular(prep, os.O_RDWR)
        try:
            _fs.fs.pwrite(fd, encode_header(base), 0)
            try:
                self._fsync_fn(fd)  # the header is on disk before the name is
                _fs.fs.rename(prep, path)
                self._fsync_dir_fn(self.directory)  # the name before any record in it
            except OSError as exc:
                # An fsync error is never retried (module docstring): fail the log here
                # too, or the next append would rotate again as if the disk were fine.
                self._write_window = -1
                self._failed = DurabilityError(
                    exc.errno, f"fsync of a new segment of log {self.directory} failed "
                    f"({exc.strerror}); the log accepts no more writes: fix the disk, then "
                    "reopen the log")
                raise self._failed from exc
        except BaseException:
            os.close(fd)
            raise
        self._counters["rotations"] += 1
        self._wake_prep.set()
        return _Segment(path, base, fd, self.segment_size, recycled)

    def _reserve(self, path: str) -> None:
        """Create a new segment file at ``path``, prepared as this policy wants (see
        ``_warm`` in __init__)."""
        reserve_and_zero(path, self.segment_size, zero_fill=not self._warm,
                         sync=self._always, warm=self._warm)

    def _mark_end(self) -> None:
        """Zero the frame header after the active segment's last record (lock held).

        A recycled segment still holds a consumed segment's old bytes. Without a zero
        marker after its last record, a reader walking it once sealed (or recovery walking
        it as the last segment) meets them mid-payload and reports them as damage (kept
        in the dead-letter file) or as a torn tail.
        """
        seg = self._active
        if seg is not None:
            n = min(FRAME_HEADER_SIZE, seg.size - self._write_off)
            if n > 0:
                seg.mm[self._write_off : self._write_off + n] = bytes(n)

    def _seal_active(self) -> None:
        """Stop writing the active segment; it is synced (if needed) and unmapped later."""
        seg = self._active
        self._active = None
        if seg is None:
            return
        if self.fsync == "never":
            seg.close()
            self._unsynced_bases.append(seg.base)
            if len(self._unsynced_bases) > 2 * len(self._segments):
                # Without sync() calls: forget the consumed ones, keep the list bounded.
                live = set(self._segments)
                self._unsynced_bases = [b for b in self._unsynced_bases if b in live]
        else:
            self._unsynced.append(seg)

    # ------------------------------------------------------------------ writing

    @property
    def _fsync_fn(self) -> Any:
        """fdatasync of the log's segments; fault-injection tests replace it. While it is
        replaced the group committer stays closed: its fdatasyncs would bypass it."""
        return self._fsync_hook

    @_fsync_fn.setter
    def _fsync_fn(self, fn: Any) -> None:
        with self._lock:  # closes the committer; releasing reopens it only for the default
            self._fsync_hook = fn

    def _settle(self, seq: int) -> int:
        """A record the group committer appended as ``seq`` but could not see durable
        (closed over another segment meanwhile, retired, or its disk failed): wait for it
        here, or raise the DurabilityError its failure left."""
        self._wait_durable(seq)
        return seq

    def append(self, payload: bytes | bytearray | memoryview) -> int:
        """Append one record; return its sequence number (durable on return with
        ``fsync="always"``)."""
        # The hot path: one C call frames the record through the cursor (with
        # fsync="always", the group committer), without the lock (_WriterLock). It
        # refuses (< 0) when closed: while the lock is held, at the end of the window or
        # segment, for a closed or failed log.
        if type(payload) is bytes:
            seq: int = self._fast_append(payload, len(payload))
            if seq >= 0:
                return seq
            if seq <= _SETTLE:  # the committer appended it, not durable yet (_settle)
                return self._settle(_SETTLE - seq)
        return self._append_locked(payload)

    def _append_locked(self, payload: bytes | bytearray | memoryview) -> int:
        """append under the lock: every case the cursor refuses. A closed or failed log
        has _write_window -1, so the one window check sends it to the slow path too."""
        if type(payload) is not bytes:
            payload = self._coerce(payload)
        n = len(payload)
        lock = self._lock
        lock.acquire()  # not "with": acquire/try/finally costs ~120 ns less here
        try:
            off = self._write_off
            if off + ((n + 31) & -8) > self._write_window:  # frame_size(n), inlined
                self._advance_window(frame_size(n))
                off = self._write_off
            seq = self._next_seq
            end = self._frame_raw(off, payload, n, seq)
            if end < 0:
                end = self._frame_one(off, payload, seq)  # raises the reason
            self._write_off = end
            self._next_seq = seq + 1
        finally:
            lock.release()
        if self._always:
            self._wait_durable(seq)
        return seq

    def append_batch(self, payloads: Iterable[bytes | bytearray | memoryview]) -> int:
        """Append records in order with one durability point; return the last sequence
        number. All or nothing: a full log or a too-large record writes none of them."""
        given = payloads if type(payloads) is list else list(payloads)
        if self._via_map and given:
            # The common case in two C-speed passes over the list (one join, one array of
            # lengths) and one C call; ~0.15 us a record less than coercing each payload
            # and summing lengths in Python. bytearray and memoryview payloads are copied
            # by the join, so a caller may reuse them once this returns.
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
        # The exact bytes of the frames, in one C call (a Python sum of frame sizes cost
        # ~0.3 us a record: a quarter of a durable batch of 100's CPU).
        size = impl.frames_size(array("Q", map(len, records)))
        with self._lock:
            if self._closed or self._failed:
                self._raise_unusable()
            # The padded payloads fit max_record_size in all: so does each record.
            if (self._write_off + size <= self.segment_size
                    and size - n * FRAME_HEADER_SIZE <= self.max_record_size):
                # Fast path: the whole batch fits in the active segment.
                if not self._via_map:
                    self._pending.extend(records)  # framed by the round's leader
                    end = self._write_off + size
                else:
                    if self._write_off + size > self._write_window:
                        self._advance_window(size)
                    end = self._frame_many(self._write_off, records, self._next_seq)
                self._write_off = end
                self._next_seq += n
                last = self._next_seq - 1
            else:
                last = self._append_batch_slow(records)
        if self._always:
            self._wait_durable(last)
        return last

    def _append_joined(self, src: bytes, lens: array[int]) -> int | None:
        """append_batch through the map, when the whole batch fits in the active segment;
        None (nothing written) sends the batch to the general path: a batch that needs a
        rotation, a record that may be too large, or lengths that are not byte counts."""
        n, total = len(lens), len(src)
        # Every frame is at most its payload + header + 7 bytes of padding.
        bound = total + n * (FRAME_HEADER_SIZE + FRAME_ALIGN - 1)
        with self._lock:
            if self._closed or self._failed:
                self._raise_unusable()
            off, seq = self._write_off, self._next_seq
            if off + bound > self.segment_size or total > self.max_record_size:
                return None
            if off + bound > self._write_window:
                self._advance_window(bound)
            seg = self._active
            assert seg is not None
            end = seg.framer.frame_joined(off, src, lens, seq)
            if end < 0:
                return None
            self._write_off = end
            self._next_seq = seq + n
        return seq + n - 1

    def _append_batch_slow(self, records: list[bytes]) -> int:
        """append_batch across windows and segments, all or nothing (lock held)."""
        sizes = [frame_size(len(p)) for p in records]
        self._reserve_batch(sizes)
        while self._preparing and self._segments_needed(sizes):
            # A rotation must not wait for the preparer mid-batch: that wait releases the
            # lock, and other appenders would slip their records into the batch. Wait
            # now, while nothing is written, then check the space again.
            self._prep_cond.wait()
            if self._closed or self._failed:
                self._raise_unusable()
            self._reserve_batch(sizes)
        start_seg, start_off, start_seq = self._active, self._write_off, self._next_seq
        i = 0
        try:
            while i < len(records):
                room = self.segment_size - self._write_off
                j, used = i, 0
                while j < len(records) and used + sizes[j] <= room:
                    used += sizes[j]
                    j += 1
                if j == i:
                    self._make_room(sizes[i])
                    continue
                self._advance_window(used)
                self._write_off = self._frame_many(self._write_off, records[i:j],
                                                   self._next_seq)
                self._next_seq += j - i
                i = j
        except (LogFullError, DurabilityError):
            # A rotation failed (disk full) after part of the batch was framed: erase that
            # part (never acknowledged, never visible: the lock is held) so the batch is
            # all or nothing. Possible while it is all in the segment it started in.
            if self._active is start_seg and start_seg is not None and i:
                start_seg.mm[start_off : self._write_off] = bytes(self._write_off - start_off)
                if not self._via_map:
                    del self._pending[len(self._pending) - (self._next_seq - start_seq):]
                self._write_off, self._next_seq = start_off, start_seq
                # Frames already flushed from the group buffer were zeroed just above.
                self._group_start = min(self._group_start, start_off)
            raise
        return self._next_seq - 1

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
            f"{self.max_record_size} bytes with segment_size {self.segment_size}); "
            "raise segment_size or split the record"
        )

    def _raise_unusable(self) -> None:
        if self._failed is not None:
            raise DurabilityError(self._failed.errno, str(self._failed)) from self._failed
        raise LogClosedError(f"log {self.directory} is closed")

    def _segments_needed(self, sizes: Sequence[int]) -> int:
        """How many new segments ``sizes`` (frame sizes, in order) would open."""
        room, needed = self.segment_size - self._write_off, 0
        for s in sizes:
            if s > room:
                needed += 1
                room = self.segment_size - SEGMENT_HEADER_SIZE
            room -= s
        return needed

    def _reserve_batch(self, sizes: Sequence[int]) -> None:
        """Check up front that the whole batch fits (record sizes and max_total_size)."""
        biggest = max(sizes)
        if biggest > self.segment_size - SEGMENT_HEADER_SIZE:
            self._too_large(biggest - FRAME_HEADER_SIZE)
        if self._capacity is not None:
            needed = self._segments_needed(sizes)
            if needed > self._capacity - 1:
                raise LogFullError(
                    f"a batch needing {needed} new segments can never fit in max_total_size "
                    f"{self.max_total_size}: split the batch or raise max_total_size"
                )
            if needed:
                self._wait_for_space(needed)

    def _bind_active(self) -> None:
        """Point the append path at the (new) active segment (lock held)."""
        seg = self._active
        assert seg is not None
        if self._via_map:
            self._frame_one, self._frame_many = seg.framer.frame, seg.framer.frame_batch
            self._frame_raw = seg.framer.raw
        else:
            self._frame_one, self._frame_many = self._group_one, self._group_many
            self._frame_raw = self._group_raw
            self._group_start = self._write_off
        self._write_window = 0

    def _group_for(self, end: int) -> Any:
        """The group buffer's framer, the buffer holding file offsets up to ``end``."""
        need = end - self._group_start + _END_MARK
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

    def _flush_group(self) -> None:
        """Frame the queued records and write them into the active segment (lock held)."""
        seg = self._active
        n = self._write_off - self._group_start
        if self._via_map or seg is None or n <= 0:
            return
        pending, self._pending = self._pending, []
        framed = self._group_for(self._write_off).frame_batch(
            0, pending, self._next_seq - len(pending))
        assert framed == n, (framed, n)
        if seg.recycled:  # a zero marker after the frames (see _Segment)
            mark = min(_END_MARK, seg.size - self._write_off)
            self._group[n : n + mark] = _ZEROS[:mark]
            self._pwrite(self._group_view[: n + mark], self._group_start)
        else:
            self._pwrite(self._group_view[:n], self._group_start)
        self._group_start = self._write_off

    def _pwrite(self, data: memoryview, off: int) -> None:
        """Write into the preallocated segment (never extends it); an error fails the log."""
        seg = self._active
        assert seg is not None
        try:
            while data:
                n = _fs.fs.pwrite(seg.fd, data, off)
                data, off = data[n:], off + n
        except OSError as exc:
            self._write_window = -1
            self._failed = DurabilityError(
                exc.errno, f"write to {seg.path} failed ({exc.strerror}); the log accepts no "
                "more writes: fix the disk, then reopen the log")
            self._raise_unusable()

    def _advance_window(self, size: int) -> None:
        """Slow path of append: rotate if the frame does not fit, map the next window of
        the segment for writing (lock held)."""
        if self._closed or self._failed:
            self._raise_unusable()
        if self._write_off + size > self.segment_size:
            self._make_room(size)
        seg = self._active
        assert seg is not None
        end = self._write_off + size
        if self._via_map and seg.populated < end:
            # Map the next window for writing in one call (without fsync="always" only:
            # pre-dirtied pages would be written by the fdatasync a durable append waits
            # for). In a recycled segment, write zeros over its old bytes instead, which
            # maps the pages too.
            upto = min(seg.size, max(end, self._write_off + _POPULATE_WINDOW))
            mapped = False
            if seg.recycled:
                start = max(seg.populated, self._write_off)
                seg.mm[start:upto] = _ZEROS[: upto - start]
                mapped = True
            elif self._populate_write:
                mapped = _populate(seg.mm, seg.populated, upto, _MADV_POPULATE_WRITE)
                self._populate_write = mapped  # an old kernel: fault pages one by one
            elif self.fsync == "interval":
                mapped = True  # pages fault in as they are written; only the drop below
            if mapped:
                seg.populated = upto
                # What the writer wrote it never touches again: keep resident memory to
                # a few windows, not whole segments.
                seg.unmap_below(self._write_off - _POPULATE_WINDOW)
            else:
                seg.populated = seg.size
        self._write_window = max(end, seg.populated) if self._via_map else seg.size

    def _make_room(self, size: int) -> None:
        """Rotate to a new segment so a frame of ``size`` bytes fits (lock held)."""
        if size > self.segment_size - SEGMENT_HEADER_SIZE:
            self._too_large(size - FRAME_HEADER_SIZE)
        self._wait_for_space(1)
        while self._preparing:  # let the preparer finish the file it is writing
            self._prep_cond.wait()
        if self._closed or self._failed:
            self._raise_unusable()
        self._flush_group()  # the old segment's frames reach its file before it is sealed
        self._mark_end()  # before the next segment's name exists: sealed means marked
        if self._always and self._active is not None:
            # The old segment's last frames are durable before the next segment's name
            # is: else a crash between them shows those (never acknowledged) records as
            # missing, damage, although nothing acknowledged was lost. Its group commit
            # keeps it nearly clean, so this costs little. (With "interval" the tail may
            # hold a whole interval of writes: not synced here, under the lock.)
            try:
                self._fsync_fn(self._active.fd)
            except OSError as exc:
                self._fail_fsync(exc.errno or errno.EIO)
                self._raise_unusable()
        try:
            try:
                seg = self._new_segment(self._next_seq)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self._reclaim_for_writer():
                    raise
                seg = self._new_segment(self._next_seq)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise LogFullError(
                    f"no space left on the device of {self.directory} for a new segment of "
                    f"{self.segment_size} bytes: free disk space or set max_total_size below "
                    "the free space"
                ) from exc
            raise DurabilityError(exc.errno, f"cannot create a segment in {self.directory}: "
                                  f"{exc.strerror}") from exc
        self._seal_active()
        self._active = seg
        self._segments.append(seg.base)
        self._write_off = SEGMENT_HEADER_SIZE
        self._bind_active()

    def _wait_for_space(self, needed: int) -> None:
        if self._capacity is None:
            return
        deadline = None
        while len(self._segments) + self._deleting + needed > self._capacity:
            if self._reclaim_for_writer():
                continue
            if self._deleting:
                self._space_cond.wait()  # the consumer is unlinking: space is coming
                continue
            if not self.block_when_full:
                raise LogFullError(
                    f"log {self.directory} is full: {len(self._segments)} segments of "
                    f"{self.segment_size} bytes reach max_total_size {self.max_total_size}; "
                    "consume and commit records, or raise max_total_size"
                )
            if self.full_timeout is not None:
                deadline = deadline or time.monotonic() + self.full_timeout
                left = deadline - time.monotonic()
                if left <= 0 or not self._space_cond.wait(left):
                    if len(self._segments) + self._deleting + needed <= self._capacity:
                        break
                    raise LogFullError(
                        f"log {self.directory} stayed full for {self.full_timeout} s "
                        f"(max_total_size {self.max_total_size}); the consumer is not "
                        "committing fast enough"
                    )
            else:
                self._space_cond.wait()
            if self._closed or self._failed:
                self._raise_unusable()

    # ------------------------------------------------------------------ durability

    def sync(self) -> None:
        """Durability barrier: everything appended before the call is on disk on return."""
        with self._lock:
            if self._closed or self._failed:
                self._raise_unusable()
            target = self._next_seq - 1
            unsynced = bool(self._unsynced or self._unsynced_bases)
        if target > self._durable_seq or unsynced:
            self._wait_durable(target, force=True)

    def _wait_durable(self, seq: int, force: bool = False) -> None:
        """Return once ``seq`` is durable, leading a group fsync if nobody else is.

        A follower waits on a gate of its own (a locked Lock the round's leader releases),
        not on a Condition of ``_lock``: woken, it checks ``_durable_seq`` (which only grows)
        without re-taking ``_lock``, so the appenders a round covers do not queue up on
        that lock one after the other to learn they are done. A round's end wakes only
        the followers it made durable, plus one follower of the next round to lead it:
        the others sleep on (measured with 16 appending threads: context switches, not
        Python, were most of the time; FORMAT.md, "Writing and preparing segments").
        And it wakes them one after the other, not all at once (``_chain``): each woken
        follower wakes the next, so they take the GIL in turn instead of all waking to
        find it held and sleeping again on it.
        """
        self._lock.acquire()
        try:
            while self._durable_seq < seq or force:
                if self._failed or self._closed:
                    self._raise_unusable()
                if self._syncing:
                    gate = threading.Lock()
                    gate.acquire()
                    self._gates.append((_NEVER if force else seq, gate))
                    self._lock.release()
                    gate.acquire()  # released when the round in progress ends
                    self._wake_next()
                    if self._durable_seq >= seq and not force:
                        return  # _lock is not held here: skip the finally's release
                    self._lock.acquire()
                    continue
                force = False
                self._sync_round()
            if self._gates and not self._syncing:
                # Durable without a round of ours (the committer's rounds made it so, read
                # back when the lock was taken): this may be the follower a round woke to
                # lead the next one. Wake the followers that are durable too, and one to
                # lead for the rest, or they would sleep with no round to wake them.
                self._open_gates(self._durable_seq)
        except BaseException:
            self._lock.release()
            raise
        self._lock.release()

    def _sync_round(self) -> None:
        """One group fsync of everything written so far (lock held; released meanwhile)."""
        self._syncing = True
        # Gather: appenders woken by the previous round are about to append again. Give
        # them the lock (and the GIL) while they keep coming, so this fsync covers them
        # too instead of leaving them for the next round. Costs ~1 us when alone.
        for _ in range(_GATHER_ROUNDS if self._gates or self._waited_last_round else 0):
            seen = self._next_seq
            self._lock.release()
            time.sleep(0)
            self._lock.acquire()
            if self._next_seq == seen:
                break
        try:
            self._flush_group()
        except DurabilityError:
            self._syncing = False
            self._open_gates()
            raise
        target = self._next_seq - 1
        self._waited_last_round = bool(self._gates)
        sealed, self._unsynced = self._unsynced, []
        closed, self._unsynced_bases = self._unsynced_bases, []
        active = self._active
        written = self._write_off
        if active is not None and self.fsync == "never":
            # A rotation while the lock is released below closes the active segment's
            # descriptor at once in this mode: sync it through a descriptor of our own.
            closed.append(active.base)
        error: OSError | None = None
        self._lock.release()
        if self._via_map:
            # Unmap what the writer has written before the fdatasync writes it back.
            # Writeback write-protects every page it cleans in every mapping that can
            # write it, with a TLB shootdown (an interrupt of the appending CPU) per
            # page: ~1 per 8 records, ~1 us per record with fsync="interval" (FORMAT.md).
            # Pages below the write position are never written again; the partial page
            # at it stays mapped. Sealed segments stay mapped until closed after this
            # round; with "never" a rotation may close the active one meanwhile, and
            # unmap_below then does nothing (the GIL orders it against that close).
            for seg in sealed:
                seg.unmap_below(seg.size)
            if active is not None:
                active.unmap_below(written)
        try:
            for seg in sealed:
                self._fsync_fn(seg.fd)
            for base in closed:
                self._fsync_closed(base)
            if active is not None and self.fsync != "never":
                self._fsync_fn(active.fd)
        except OSError as exc:
            error = exc
        finally:
            self._lock.acquire()
            self._syncing = False
            self._counters["fsyncs"] += 1
        if error is not None:
            self._fail_fsync(error.errno or errno.EIO)
            self._unsynced = sealed + self._unsynced
            self._unsynced_bases = closed + self._unsynced_bases
            self._open_gates()
            self._raise_unusable()
        for seg in sealed:
            seg.close()
        if target > self._durable_seq:
            self._durable_seq = target
        self._open_gates(target)

    def _fail_fsync(self, err: int) -> None:
        """An fsync failed: refuse every later write (lock held)."""
        self._write_window = -1
        self._failed = DurabilityError(
            err,
            f"fsync of log {self.directory} failed ({os.strerror(err)}); records since the "
            "last successful sync may be lost, so the log accepts no more writes: "
            "fix the disk, then reopen the log",
        )

    def _fast_close(self) -> None:
        """The lock was just taken: close the fast path, take its state back."""
        committer = self._committer
        if committer is None:
            self._write_off, self._next_seq = self._cursor.close()
            return
        off, self._next_seq, durable_next, rounds, err = committer.close()
        self._commit_waiters = True
        self._write_off = self._group_start = off
        if durable_next - 1 > self._durable_seq:
            self._durable_seq = durable_next - 1
        self._counters["fsyncs"] += rounds - self._commit_rounds
        self._commit_rounds = rounds
        if err and self._failed is None:
            self._fail_fsync(err)

    def _fast_open(self) -> bool:
        """The lock is about to be released: open the fast path, if it may run."""
        seg = self._active
        if self._committer is None:
            if self._write_window > 0 and seg is not None:
                return bool(self._cursor.open(seg.framer, self._write_off, self._next_seq,
                                              self._write_window))
            return False
        # The committer may declare durable every record up to the last it wrote, so it
        # runs only while every older record is durable or in its segment's file: no
        # sealed segment waits for a sync and no round of ours is syncing one.
        opened = False
        if (self._write_window > 0 and seg is not None and not self._syncing
                and not self._unsynced and not self._unsynced_bases
                and self._fsync_hook is self._fsync_default):
            try:
                self._flush_group()  # records queued by the locked path reach the file
            except DurabilityError:
                pass  # recorded in _failed: stay closed
            else:
                opened = bool(self._committer.open(
                    seg.fd, self._group_for(self._write_off + _COMMIT_BUFFER),
                    self._write_off, seg.size, self._next_seq, self._durable_seq + 1,
                    seg.base + 1, seg.recycled, _COMMIT_GATHER_NS))
        if not opened and self._commit_waiters:
            self._committer.retire()  # its waiters settle their records in Python
            self._commit_waiters = False
        return opened

    def _fsync_closed(self, base: int) -> None:
        """fdatasync the segment file of ``base`` by name (lock not held); one consumed
        and deleted meanwhile holds nothing left to keep. (Names are never reused.)"""
        try:
            fd = open_regular(os.path.join(self.directory, segment_name(base)), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            self._fsync_fn(fd)
        finally:
            os.close(fd)

    def _open_gates(self, durable: int = _NEVER) -> None:
        """Wake the followers whose records are durable up to ``durable``, then one of
        the others to lead the next round, in turn through ``_chain`` (lock held). By
        default (an error, or close) every follower, at once."""
        woken: list[threading.Lock] = []
        later: list[tuple[int, threading.Lock]] = []
        for seq, gate in self._gates:
            if seq <= durable:
                woken.append(gate)
            else:
                later.append((seq, gate))
        if later:
            woken.append(later.pop(0)[1])  # last: by then the others have appended again
        self._gates = later
        self._chain.extend(woken)
        if durable == _NEVER:
            while self._chain:
                self._wake_next()
        else:
            self._wake_next()
        self._sync_cond.notify_all()

    def _wake_next(self) -> None:
        """Release the next gate of ``_chain``, if any (with or without the lock: a deque
        pops atomically, and each gate is in it once)."""
        try:
            gate = self._chain.popleft()
        except IndexError:
            return
        gate.release()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            if (self._checkpoint_seq != self._committed_seq
                    and time.monotonic() - self._checkpoint_time >= _CHECKPOINT_INTERVAL):
                with self._read_lock:
                    if not self._closed and self._checkpoint_seq != self._committed_seq:
                        try:
                            self._write_checkpoint(durable=True)
                        except OSError as exc:
                            log.warning("segmentlog %s: checkpoint write failed: %s",
                                        self.directory, exc)
            with self._lock:
                if self._closed or self._failed:
                    return
                if (self._durable_seq >= self._next_seq - 1 and not self._unsynced
                        and not self._unsynced_bases):
                    continue
                if self._syncing:
                    continue
                try:
                    self._sync_round()
                except DurabilityError:
                    log.error("segmentlog %s: background fsync failed; the log refuses "
                              "writes until reopened", self.directory)
                    return

    # ------------------------------------------------------------------ preparing segments

    def _start_thread(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _prepare_loop(self) -> None:
        """Keep one zero-filled segment file ready, off the append path."""
        prep = os.path.join(self.directory, PREPARED_NAME)
        self._wake_prep.set()
        while True:
            self._wake_prep.wait()
            self._wake_prep.clear()
            if self._stop.is_set():
                return
            with self._lock:
                if self._prepared or self._preparing or self._closed:
                    continue
                if self._spare:
                    # A consumed segment kept for reuse: no bytes to write at all.
                    _fs.fs.rename(os.path.join(self.directory, SPARE_NAME), prep)
                    self._spare, self._prepared, self._prep_recycled = False, True, True
                    continue
                files = len(self._segments) + self._spare + self._deleting
                if self._capacity is not None and files >= self._capacity:
                    continue
                self._preparing = True
            ok = False
            try:
                self._reserve(prep)
                ok = True
            except OSError as exc:
                # Not fatal here: rotation will try again and report the error itself.
                log.warning("segmentlog %s: could not prepare the next segment: %s",
                            self.directory, exc)
            finally:
                with self._lock:
                    self._preparing = False
                    self._prepared = ok
                    self._prep_recycled = False
                    self._prep_cond.notify_all()

    # ------------------------------------------------------------------ reading

    def read_batch(self, max_records: int = 1000, max_bytes: int | None = None) -> Batch:
        """The next records after the previous read (not after the last commit), in order.

        An empty batch means nothing more is written yet. ``max_bytes`` caps the payload
        bytes of a batch, but a batch always holds at least one record when one exists.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        with self._read_lock:
            self._check_open()
            records: list[bytes] = []
            first = last = self._read_seq
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
                return Batch([], self._read_seq, self._read_seq - 1, self._read_seq)
            return Batch(records, first, last, self._read_seq)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.directory} is closed")

    def _segment_after(self, base: int) -> int | None:
        with self._lock:
            i = bisect.bisect_right(self._segments, base)
            return self._segments[i] if i < len(self._segments) else None

    def _read_some(self, out: list[bytes], want: int, budget: int | None,
                   stop_seq: int = NO_LIMIT_SEQ) -> tuple[int, bool]:
        """Read up to ``want`` records (and ``budget`` payload bytes, none numbered
        ``stop_seq`` or above) of the current segment into ``out``; return (payload bytes
        read, whether the batch may go on in the next segment). Only the first record of a
        batch may exceed the budget. ``_walk_seqs`` holds the numbers of the first and last
        record read."""
        view = self._view
        if view is None:
            return 0, False
        with self._lock:
            if view.base not in self._segments:
                stale = True  # reclaimed by the writer (_reclaim_for_writer) meanwhile
            else:
                stale = False
                self._pinned = view.base
                active = self._active is not None and self._active.base == view.base
                limit = (self._write_off if self._via_map else self._group_start) if active \
                    else view.size
                last_written = self._next_seq - 1
                i = bisect.bisect_right(self._segments, view.base)
                next_base = None if active or i == len(self._segments) else self._segments[i]
        if stale:
            # Everything in it was committed, so the read position is past it: find the
            # segment that holds the read position.
            self._seek(self._read_seq)
            return 0, self._view is not None and self._view.base != view.base
        try:
            return self._read_pinned(view, out, want, budget, active, limit, last_written,
                                     next_base, stop_seq)
        finally:
            self._pinned = None

    def _read_pinned(self, view: _ReadView, out: list[bytes], want: int,
                     budget: int | None, active: bool, limit: int,
                     last_written: int, next_base: int | None,
                     stop_seq: int) -> tuple[int, bool]:
        # Map a window ahead of the reader in one call, and unmap what lies a window
        # behind it, each in steps of at least a quarter window: one read_batch(1) used
        # to make two madvise calls (the second over everything read): 18 -> 14.5 us.
        # Records written after the last step (a reader keeping up with the writer)
        # fault in as they are read.
        upto = min(limit, self._read_off + _POPULATE_WINDOW)
        if view.populated >= 0 and upto - view.populated >= _MAP_STEP:
            view.populated = upto if _populate(view.mm, view.populated, upto,
                                               _MADV_POPULATE_READ) else -1
        view.unmap_below(self._read_off - _POPULATE_WINDOW, _MAP_STEP)
        w = walk(
            view.mm, self._read_off, limit, self._read_seq, max_records=want, max_bytes=budget,
            end_seq=next_base, max_seq=last_written if active else (
                NO_LIMIT_SEQ if next_base is None else next_base - 1), want_seqs=False,
            stop_seq=stop_seq,
        )
        mm = view.mm
        if out and budget is not None and w.nbytes > budget:
            # scan() always accepts one record; past the first of a batch that is one too
            # many: leave it for the next batch.
            self._read_off = w.offsets[0] - FRAME_HEADER_SIZE
            self._read_seq = w.first_seq  # type: ignore[assignment]
            return 0, False
        out.extend(impl.payloads(mm, w.offsets, w.lengths))
        if w.count:
            self._walk_seqs = (w.first_seq, w.last_seq)
        if w.damages:
            self._keep_damage(mm, view.base, w.damages)
        if w.stop == "torn" and not active:
            # Unsound bytes up to the end of a sealed segment: damage, kept and skipped.
            tail = bytes(mm[w.end : view.size]).rstrip(b"\0")
            damage = Damage(w.end, len(tail), w.torn_kind or "torn", w.next_seq,
                            next_base if next_base is not None else w.next_seq)
            self._keep_damage(mm, view.base, [damage])
        self._read_off, self._read_seq = w.end, w.next_seq
        if w.stop == "max" or active:
            return w.nbytes, False
        if next_base is None:
            # The last segment, no longer active (its writer was closed): nothing after it.
            return w.nbytes, False
        if w.next_seq < next_base:
            self._count_missing(view.base, w.next_seq, next_base)
        self._open_view(next_base)
        self._read_seq = max(self._read_seq, next_base) if w.next_seq > next_base else next_base
        return w.nbytes, True

    def _count_missing(self, base: int, first: int, resume: int) -> None:
        key = (segment_name(base), -first)
        if key in self._deadletter_keys:
            return
        self._deadletter_keys.add(key)
        self._counters["damaged_regions"] += 1
        self._note(f"records {first}..{resume - 1} are missing after segment "
                   f"{segment_name(base)} (damaged or deleted)")

    def _keep_damage(self, buf: Any, base: int, damages: Sequence[Damage]) -> None:
        """Move the bytes of damaged regions to the dead-letter file (once each)."""
        name = segment_name(base)
        entries = []
        for d in damages:
            if (name, d.offset) in self._deadletter_keys:
                continue
            self._deadletter_keys.add((name, d.offset))
            self._counters["damaged_regions"] += 1
            entries.append({
                "segment": name, "offset": d.offset, "kind": d.kind,
                "first_missing_seq": d.first_missing_seq, "resume_seq": d.resume_seq,
                "raw": bytes(buf[d.offset : d.offset + d.length]),
            })
            log.error("segmentlog %s: damaged record(s) in %s at offset %d (%s): sequence "
                      "%d..%d skipped, bytes kept in %s", self.directory, name, d.offset,
                      d.kind, d.first_missing_seq, d.resume_seq - 1,
                      deadletter.path_of(self.directory))
        deadletter.append(self.directory, entries)

    def _open_view(self, base: int | None) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None
        if base is None:
            return
        path = os.path.join(self.directory, segment_name(base))
        self._view = _ReadView(path, base)
        self._read_off = SEGMENT_HEADER_SIZE
        problem = header_problem(self._view.mm[:SEGMENT_HEADER_SIZE], base)
        if problem and base not in self._noted_headers:
            self._noted_headers.add(base)
            self._note(f"segment {path} header: {problem}; reading it by its name's base")

    def _seek(self, seq: int) -> None:
        """Put the read position at record ``seq`` (or the first record after it)."""
        with self._lock:
            i = bisect.bisect_right(self._segments, seq) - 1
            base = self._segments[max(i, 0)]
        self._open_view(base)
        self._read_seq = max(seq, base)
        if seq <= base:
            self._read_seq = base
            return
        self._read_seq = base
        while self._read_seq < seq:
            # Walk by sequence number up to seq: damaged records below it are skipped (and
            # kept in the dead-letter file) without taking intact records above it along.
            batch: list[bytes] = []
            _, more = self._read_some(batch, _LOCATE_CHUNK, None, stop_seq=seq)
            if not more and not batch:
                break
        # Past seq only when the records from seq on were damaged: reading resumes at the
        # next sound record.

    def commit(self, batch: Batch) -> None:
        """Mark every record up to the end of ``batch`` consumed and reclaim space."""
        if not isinstance(batch, Batch):
            raise TypeError(f"commit takes a Batch from read_batch, not {type(batch).__name__}")
        with self._read_lock:
            self._check_open()
            if not batch.records or batch._end_seq <= self._committed_seq:
                return
            if batch._end_seq > self._read_seq:
                raise ValueError(
                    f"batch ends at {batch._end_seq} beyond the read position "
                    f"{self._read_seq}: commit only batches read since the last rewind"
                )
            self._committed_seq = batch._end_seq
            if self.fsync == "always":
                self._write_checkpoint(durable=True)
            elif time.monotonic() - self._checkpoint_time >= _CHECKPOINT_INTERVAL:
                self._write_checkpoint(durable=False)
            self._reclaim()

    def _write_checkpoint(self, durable: bool) -> None:
        """Persist the committed position (read lock held)."""
        checkpoint.write(self.directory, self._committed_seq, durable)
        self._checkpoint_seq = self._committed_seq
        self._checkpoint_durable = durable
        self._checkpoint_time = time.monotonic()
        if durable:
            with self._lock:
                self._durable_committed = self._committed_seq

    def _reclaim(self) -> None:
        """Delete (or recycle) segments whose records are all below the checkpoint."""
        with self._lock:
            dead = []
            for i in range(len(self._segments) - 1):
                if self._segments[i + 1] <= self._committed_seq:
                    dead.append(self._segments[i])
                else:
                    break
            if not dead:
                return
        if self._checkpoint_seq != self._committed_seq:
            self._write_checkpoint(durable=True)
        elif not self._checkpoint_durable:
            checkpoint.make_durable(self.directory)
            self._checkpoint_durable = True
            with self._lock:
                self._durable_committed = self._checkpoint_seq
        if self._view is not None and self._view.base in dead:
            self._open_view(self._segment_after(dead[-1]))
        doomed = []
        for base in dead:
            with self._lock:
                if base in self._segments:  # the writer may have recycled it meanwhile
                    doomed += self._dispose(base, defer=True)
        fsync_dir(self.directory)
        for path in doomed:
            try:
                self._unlink_fn(path)  # a crash before this leaves a *.tmp, removed on open
            except OSError as exc:
                log.warning("segmentlog %s: could not delete consumed segment %s: %s",
                            self.directory, path, exc)
            finally:
                with self._lock:
                    self._deleting -= 1
                    self._space_cond.notify_all()
        with self._lock:
            self._space_cond.notify_all()

    def _dispose(self, base: int, defer: bool = False) -> list[str]:
        """Recycle or delete consumed segment ``base`` (lock held; the caller fsyncs the
        directory). With ``defer``, a segment to delete is only renamed to ``*.tmp``
        and counted in ``_deleting``; the caller unlinks the returned path after
        releasing the lock, then decrements ``_deleting``."""
        path = os.path.join(self.directory, segment_name(base))
        doomed: list[str] = []
        if self.recycle and not self._closed and not (self._prepared or self._preparing):
            # A consumed segment becomes the next one: its blocks are already written and
            # likely cached. Its old records keep their (lower) sequence numbers, so they
            # can never read as new ones.
            _fs.fs.rename(path, os.path.join(self.directory, PREPARED_NAME))
            self._prepared = self._prep_recycled = True
            self._counters["recycled"] += 1
        elif self.recycle and not self._closed and not self._spare:
            _fs.fs.rename(path, os.path.join(self.directory, SPARE_NAME))
            self._spare = True
            self._counters["recycled"] += 1
        elif defer:
            _fs.fs.rename(path, path + TMP_SUFFIX)
            self._deleting += 1
            doomed.append(path + TMP_SUFFIX)
        else:
            _fs.fs.unlink(path)
        self._segments.remove(base)
        return doomed

    def _reclaim_for_writer(self) -> bool:
        """Out of space at rotation: free segments the consumer already committed durably
        (commit reclaims only what was sealed at that time). Lock held. Skips the segment
        the reader is walking; the reader notices a segment gone and seeks again."""
        dead = [b for i, b in enumerate(self._segments[:-1])
                if self._segments[i + 1] <= self._durable_committed and b != self._pinned]
        for base in dead:
            self._dispose(base)
        if dead:
            fsync_dir(self.directory)
        return bool(dead)

    def rewind(self) -> None:
        """Move the read position back to the last commit (after a failed delivery)."""
        with self._read_lock:
            self._check_open()
            self._seek(self._committed_seq)

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; cheap enough to call every few seconds."""
        with self._lock:
            segments = len(self._segments)
            prepared = self._prepared
            next_seq = self._next_seq
            data = {
                "directory": self.directory,
                "backend": impl.NAME,
                "fsync": self.fsync,
                "next_seq": next_seq,
                "durable_seq": self._durable_seq,
                "segments": segments,
                "segment_size": self.segment_size,
                "disk_bytes": (segments + prepared + self._spare + self._deleting)
                * self.segment_size,
                "max_total_size": self.max_total_size,
                "write_offset": self._write_off,
                **self._counters,
            }
        data["committed_seq"] = self._committed_seq
        data["read_seq"] = self._read_seq
        data["pending_records"] = max(0, next_seq - self._committed_seq)
        data["pending_bytes"] = self._pending_bytes()
        data["fill_ratio"] = (data["disk_bytes"] / self.max_total_size
                              if self.max_total_size else None)
        data["problems"] = list(self._problems)
        return data

    def _pending_bytes(self) -> int:
        """Frame bytes between the read position's segment and the write position (an
        upper bound: sealed segments count in full)."""
        with self._lock:
            if self._active is None:
                return 0
            sealed = sum(1 for b in self._segments if b < self._active.base
                         and (self._view is None or b >= self._view.base))
            used = self._write_off - SEGMENT_HEADER_SIZE
        full = self.segment_size - SEGMENT_HEADER_SIZE
        pending = sealed * full + used
        if self._view is not None:
            pending -= self._read_off - SEGMENT_HEADER_SIZE
        return max(0, pending)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Sync (unless ``fsync="never"``), unmap everything and release the lock.
        Closing twice is allowed."""
        with self._read_lock:
            if not self._closed and self._checkpoint_seq != self._committed_seq:
                try:
                    self._write_checkpoint(durable=self.fsync != "never")
                except OSError as exc:
                    log.error("segmentlog %s: could not write the checkpoint at close (%s); "
                              "records since the last one will be read again",
                              self.directory, exc)
        with self._read_lock, self._lock:
            if self._closed:
                return
            if not self._failed:
                with contextlib.suppress(DurabilityError):  # recorded in _failed
                    self._flush_group()
            self._mark_end()
            if self.fsync != "never" and not self._failed:
                while self._syncing:
                    self._sync_cond.wait()
                # An fsync error is recorded in _failed; closing still releases everything.
                with contextlib.suppress(DurabilityError):
                    self._sync_round()
            self._closed = True
            self._write_window = -1
            self._stop.set()
            self._wake_prep.set()
            self._open_gates()  # a sync() still waiting: the log is closed
            self._space_cond.notify_all()
            self._prep_cond.notify_all()
        for t in self._threads:
            t.join()
        self._release_all()

    def _release_all(self) -> None:
        self._closed = True
        self._write_window = -1
        self._stop.set()
        self._wake_prep.set()
        for seg in self._unsynced:
            seg.close()
        self._unsynced = []
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never blocks (a repr inside a locked region must not deadlock): without the
        # lock, next_seq may lag the cursor by the appends since it was last taken.
        if self._lock.acquire(blocking=False):
            try:
                state = "closed" if self._closed else f"next_seq={self._next_seq}"
            finally:
                self._lock.release()
        else:
            state = "closed" if self._closed else f"next_seq>={self._next_seq}"
        return f"<SegmentLog {self.directory!r} {state}>"


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


def _refuse(payload: bytes, length: int) -> int:
    """append's fast path with fsync="always": every append queues under the lock."""
    return -1


class _WriterLock:
    """The log's lock when append has a fast path: holding it closes that path.

    append frames records through the cursor (impl.Cursor, csrc/cursor.c) or, with
    fsync="always", the group committer (csrc/committer.c) without this lock. Taking the
    lock closes the fast path (an append in progress finishes first; a committer's round
    in progress ends and its group is written) and reads its position back into the log's
    fields (``_fast_close``), so under the lock the log's own fields are the truth and
    nothing else writes the segment. Releasing reopens it over the active segment when it
    may run (``_fast_open``: none while closed, failed or between segments). Conditions
    on this lock release and re-take it through these same methods.
    """

    __slots__ = ("_log", "_mutex", "_open")

    def __init__(self, owner: SegmentLog) -> None:
        self._mutex = threading.Lock()
        self._log = owner
        self._open = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._mutex.acquire(blocking, timeout):
            return False
        if self._open:
            self._open = False
            self._log._fast_close()
        return True

    def release(self) -> None:
        try:
            self._open = self._log._fast_open()
        finally:  # never leave the lock held (an error opening leaves the path closed)
            self._mutex.release()

    def locked(self) -> bool:
        return self._mutex.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
