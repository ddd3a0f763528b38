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
* ``"never"``: the page cache only until ``sync()`` (``close()`` makes nothing durable:
  call ``sync()`` first). A background thread fdatasyncs each sealed segment, so its
  writeback overlaps the appends and ``sync()`` waits for one segment at most.
An fsync error is never retried or ignored: the log refuses every later write with
:class:`DurabilityError` (the page cache may have dropped the data; only a reopen, which
re-reads the disk, tells what survived).

One consumer reads batches in order (``read_batch``), several may be in flight, and
``commit(batch)`` moves the checkpoint past a batch. Segments wholly below a durable
checkpoint are deleted (or recycled as the next segment) by the reclaim thread.
``rewind`` rereads from the last commit.

Recovery on open: the last segment is walked to its end; a torn record at the end (a
crash mid-write) is zeroed and counted, never reported as damage. Damage anywhere else
(a complete frame with a bad checksum, a bad length, a zeroed region, a missing segment)
is skipped: its bytes go to the dead-letter file and reading goes on with the next
sound record. A damaged record is never returned.

Parts (segmentlog.engine), each owning its state: the writer (segments, map windows,
append paths, the fast path), the durability policy (one class per fsync mode), the sync
rounds (group commit), the preparer, the reader, retention (checkpoint, reclaim, space),
recovery, and the state they share (the directory, its segment list, the writer lock,
closed and failed). ``_lock`` (the writer lock) guards the writer side of every part;
``_read_lock`` the reader, and retention's ``checkpoint_lock`` the checkpoint file. Lock
order is ``_read_lock``, ``checkpoint_lock``, ``_lock``.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from segmentlog import _fs, checkpoint
from segmentlog._backend import impl
from segmentlog._format import (
    FRAME_HEADER_SIZE,
    PREPARED_NAME,
    SEGMENT_HEADER_SIZE,
    SEQ_LIMIT,
    SPARE_NAME,
    TMP_SUFFIX,
    parse_segment_name,
)
from segmentlog.engine.damage import DamageKeeper
from segmentlog.engine.durability import POLICIES
from segmentlog.engine.maps import PAGE
from segmentlog.engine.preparer import Preparer
from segmentlog.engine.reader import Batch, Reader
from segmentlog.engine.recovery import Recovery
from segmentlog.engine.retention import Retention
from segmentlog.engine.state import LogState
from segmentlog.engine.sync import Sync
from segmentlog.engine.writer import Writer, WriterLock
from segmentlog.errors import ConfigError, DurabilityError, LogFullError
from segmentlog.segment import (
    prepare_directory,
    refuse_special_files,
    restore_names,
    take_lock,
)

__all__ = ["FSYNC_POLICIES", "Batch", "SegmentLog"]

FSYNC_POLICIES = tuple(POLICIES)


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
        segment_size = _check_positive_int("segment_size", segment_size, 2 * PAGE)
        if segment_size % PAGE:
            raise ConfigError(
                f"segment_size must be a multiple of the page size {PAGE}, got "
                f"{segment_size}; round it to {segment_size // PAGE * PAGE or PAGE}"
            )
        if segment_size >= 1 << 40:
            raise ConfigError(f"segment_size {segment_size} is too large (limit 1 TiB)")
        if fsync not in POLICIES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if (not isinstance(fsync_interval, int | float) or isinstance(fsync_interval, bool)
                or not 0 < fsync_interval < math.inf):
            raise ConfigError(f"fsync_interval must be a finite number of seconds > 0, got "
                              f"{fsync_interval!r}")
        capacity: int | None = None
        if max_total_size is not None and max_total_size != 0:
            max_total_size = _check_positive_int("max_total_size", max_total_size)
            capacity = max_total_size // segment_size
            if capacity < 2:
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

        policy = POLICIES[fsync]()
        # The committer hands the writer the records it could not see durable (settle).
        committer, cursor = policy.fast_path(lambda seq: self._writer.settle(seq))
        # Holding the lock closes append's fast path (WriterLock); without one (pure
        # Python, fsync="always") a plain lock.
        lock: Any = WriterLock() if committer or cursor else threading.Lock()
        state = self._state = LogState(self.directory, segment_size, lock)
        self._lock = lock
        self._read_lock = state.read_lock
        self._damage = DamageKeeper(state)
        self._preparer = Preparer(state, policy, recycle)
        self._reader = Reader(state, self._damage)
        self._retention = Retention(state, policy, self._preparer, self._reader, capacity,
                                    self.max_total_size, block_when_full, self.full_timeout)
        self._sync = Sync(state, policy)
        self._writer = writer = Writer(state, policy, self._preparer, self._retention,
                                       self._sync, self._reader, committer, cursor)
        if isinstance(lock, WriterLock):
            lock.writer = writer
        self._committer = committer
        self._fast_append = writer.fast_append
        self._lock_fd = -1
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

    def _open(self) -> None:
        state, writer, sync = self._state, self._writer, self._sync
        prepare_directory(self.directory)
        refuse_special_files(self.directory)  # before anything is opened or changed
        self._lock_fd = take_lock(self.directory)
        names = os.listdir(self.directory)
        for name in names:
            if name.endswith(TMP_SUFFIX) or name in (PREPARED_NAME, SPARE_NAME):
                # A checkpoint being written or a segment being prepared when the last
                # process stopped: neither holds records, both are made again.
                _fs.fs.unlink(os.path.join(self.directory, name))
        names = restore_names(self.directory, names, state.note)
        state.segments = sorted(b for b in map(parse_segment_name, names) if b is not None)
        self._damage.load()

        committed, problem = checkpoint.read(self.directory)
        if committed is not None and committed >= SEQ_LIMIT:
            committed, problem = None, "checkpoint_beyond_limit"
        first = state.segments[0] if state.segments else 0
        if problem == "checkpoint_missing" and state.segments:
            state.note(f"no checkpoint: every record from sequence {first} will be read again")
        elif problem not in (None, "checkpoint_missing"):
            state.note(f"checkpoint damaged ({problem}): every record from sequence {first} "
                       "will be read again (re-delivery is safer than loss)")
        if committed is None or committed < first:
            # Missing/damaged, or older than the oldest segment (segments below a
            # checkpoint are deleted only after it is durable, so an older one is only
            # left by fsync="never"): start at the oldest record still present.
            committed = first

        Recovery(state, writer, self._damage).recover()
        if committed > writer.next_seq:
            # The checkpoint is ahead of the data (the tail was lost with fsync="never").
            # New records must get numbers above it, or they would count as consumed.
            state.note(f"checkpoint {committed} is beyond the last record "
                       f"{writer.next_seq - 1}: new records start at {committed}")
            writer.seal_active()
            writer.next_seq = committed
        writer.start()
        if problem == "checkpoint_missing":
            # A new log starts with a checkpoint, so a missing one later means damage.
            checkpoint.write(self.directory, committed, durable=True)
        # The records found here may still be only in the page cache (a process killed,
        # or closed with fsync="never"): none counts as durable until the next sync round
        # has synced its segment (the older ones by name), before sync() returns or the
        # group committer opens.
        active = writer.active.base if writer.active is not None else None
        sync.durable_seq = min(writer.next_seq, state.segments[0]) - 1
        sealed = {seg.base for seg in sync.unsynced} | set(sync.unsynced_bases)
        sync.unsynced_bases += [b for b in state.segments if b not in sealed and b != active]
        self._retention.start(committed)
        self._reader.seek(committed)

        state.start_thread(self._preparer.loop, "segmentlog-prepare")
        state.start_thread(self._retention.reclaim_loop, "segmentlog-reclaim")
        if sync.policy.background_sync:
            state.start_thread(self._sync_loop, "segmentlog-flush")
        if sync.policy.sync_sealed_ahead:
            state.start_thread(sync.ahead_loop, "segmentlog-writeback")

    def _sync_loop(self) -> None:
        """fsync="interval": the checkpoint and a sync round every fsync_interval."""
        while not self._state.stop.wait(self.fsync_interval):
            self._retention.checkpoint_if_due()
            if not self._sync.background_round():
                return

    # ------------------------------------------------------------------ writing

    def append(self, payload: bytes | bytearray | memoryview) -> int:
        """Append one record; return its sequence number (durable on return with
        ``fsync="always"``)."""
        # The hot path: one C call frames the record through the cursor (with
        # fsync="always", the group committer), without the lock (WriterLock). It
        # refuses (< 0) when closed: while the lock is held, at the end of the window or
        # segment, for a closed or failed log.
        if type(payload) is bytes:
            seq: int = self._fast_append(payload, len(payload))
            if seq >= 0:
                return seq
        return self._writer.append(payload)

    def append_batch(self, payloads: Iterable[bytes | bytearray | memoryview]) -> int:
        """Append records in order with one durability point; return the last sequence
        number. All or nothing: a full log or a too-large record writes none of them."""
        return self._writer.append_batch(payloads)

    def sync(self) -> None:
        """Durability barrier: everything appended before the call is on disk on return."""
        self._sync.barrier()

    # ------------------------------------------------------------------ reading

    def read_batch(self, max_records: int = 1000, max_bytes: int | None = None) -> Batch:
        """The next records after the previous read (not after the last commit), in order.

        An empty batch means nothing more is written yet. ``max_bytes`` caps the payload
        bytes of a batch, but a batch always holds at least one record when one exists.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        with self._read_lock:
            self._state.check_open()
            return self._reader.read_batch(max_records, max_bytes)

    def commit(self, batch: Batch) -> None:
        """Mark every record up to the end of ``batch`` consumed. The segments it consumed
        are freed by the log's reclaim thread, after it returns (FORMAT.md)."""
        if not isinstance(batch, Batch):
            raise TypeError(f"commit takes a Batch from read_batch, not {type(batch).__name__}")
        with self._read_lock:
            self._state.check_open()
            if not batch.records or batch._end_seq <= self._retention.committed_seq:
                return
            if batch._end_seq > self._reader.read_seq:
                raise ValueError(
                    f"batch ends at {batch._end_seq} beyond the read position "
                    f"{self._reader.read_seq}: commit only batches read since the last rewind"
                )
            self._retention.commit(batch._end_seq)

    def wait_for_reclaim(self, timeout: float | None = None) -> bool:
        """Wait until the segments the commits so far consumed are freed (``commit``
        hands them to the log's reclaim thread and returns); False if ``timeout``
        seconds passed first. Appends short of space wait for that thread themselves."""
        return self._retention.settle(timeout)

    def rewind(self) -> None:
        """Move the read position back to the last commit (after a failed delivery)."""
        with self._read_lock:
            self._state.check_open()
            self._reader.seek(self._retention.committed_seq)

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; cheap enough to call every few seconds."""
        state, writer, reader = self._state, self._writer, self._reader
        with self._lock:
            segments = len(state.segments)
            next_seq = writer.next_seq
            files = segments + self._preparer.files + self._retention.deleting
            data: dict[str, Any] = {
                "directory": self.directory,
                "backend": impl.NAME,
                "fsync": self.fsync,
                "next_seq": next_seq,
                "durable_seq": self._sync.durable_seq,
                "segments": segments,
                "segment_size": self.segment_size,
                "disk_bytes": files * self.segment_size,
                "max_total_size": self.max_total_size,
                "write_offset": writer.write_off,
                **state.counters,
            }
            # Frame bytes between the read position's segment and the write position (an
            # upper bound: sealed segments count in full).
            pending = 0
            if writer.active is not None:
                view = reader.view
                sealed = sum(1 for b in state.segments if b < writer.active.base
                             and (view is None or b >= view.base))
                pending = (sealed * (self.segment_size - SEGMENT_HEADER_SIZE)
                           + writer.write_off - SEGMENT_HEADER_SIZE)
                if view is not None:
                    pending -= reader.read_off - SEGMENT_HEADER_SIZE
        committed = self._retention.committed_seq
        data["committed_seq"] = committed
        data["read_seq"] = reader.read_seq
        data["pending_records"] = max(0, next_seq - committed)
        data["pending_bytes"] = max(0, pending)
        data["fill_ratio"] = (data["disk_bytes"] / self.max_total_size
                              if self.max_total_size else None)
        data["problems"] = list(state.problems)
        return data

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def _fsync_fn(self) -> Any:
        """fdatasync of the log's segments: the fault-injection seam of the tests."""
        return self._sync.fsync

    @_fsync_fn.setter
    def _fsync_fn(self, fn: Any) -> None:
        with self._lock:  # closes the committer; releasing reopens it only for the default
            self._sync.fsync = fn

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Sync (unless ``fsync="never"``), unmap everything and release the lock.
        Closing twice is allowed."""
        state = self._state
        with self._read_lock:
            self._retention.close()
        with self._read_lock, self._lock:
            if state.closed:
                return
            self._writer.close()
            self._sync.close()
            state.closed = True
            self._writer.write_window = -1
            state.stop.set()
            self._preparer.stop()
            self._retention.stop()  # after the reclaims that commits left
            self._sync.stop_ahead()
            self._sync.open_gates()  # a sync() still waiting: the log is closed
            self._retention.cond.notify_all()
        for t in state.threads:
            t.join()
        self._release_all()

    def _release_all(self) -> None:
        state = self._state
        state.closed = True
        state.stop.set()
        self._preparer.wake.set()
        with state.lock:
            self._retention.stop()  # stopping twice does no harm
        self._sync.stop_ahead()
        self._writer.release()
        self._preparer.release()
        self._sync.release()
        self._reader.close()
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
                closed, next_seq = self._state.closed, self._writer.next_seq
                state = "closed" if closed else f"next_seq={next_seq}"
            finally:
                self._lock.release()
        else:
            closed, next_seq = self._state.closed, self._writer.next_seq
            state = "closed" if closed else f"next_seq>={next_seq}"
        return f"<SegmentLog {self.directory!r} {state}>"
