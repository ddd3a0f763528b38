"""Retention: the checkpoint, reclaiming consumed segments, and the space limit.

``commit`` moves the checkpoint; segments wholly below a durable checkpoint are deleted
or recycled (the preparer takes them as the next segment). The reclaim runs in a thread
of its own (``reclaim_loop``), so the consumer never waits for its fsyncs: it makes the
checkpoint durable, recycles a consumed segment or renames it to ``*.tmp``, fsyncs the
directory and unlinks the ``*.tmp``. Until then the segment counts against
``max_total_size``, and an appender short of space waits for the reclaim (``pending``).
With ``max_total_size`` the directory holds at most ``capacity`` segment files: a
rotation waits for (or refuses for lack of) space. Fields under the lock unless said
otherwise; the checkpoint file and its fields under ``checkpoint_lock``. Lock order:
the read lock, ``checkpoint_lock``, the lock.
"""

from __future__ import annotations

import threading
import time

from segmentlog import _fs, checkpoint
from segmentlog._format import TMP_SUFFIX
from segmentlog.engine.durability import Durability
from segmentlog.engine.preparer import Preparer
from segmentlog.engine.reader import Reader
from segmentlog.engine.state import LogState, log
from segmentlog.errors import LogFullError
from segmentlog.segment import fsync_dir

# Without durable_commits the checkpoint is rewritten at most this often (a rename costs
# milliseconds on ext4); a commit not yet written is re-delivered after a crash, never lost.
CHECKPOINT_INTERVAL = 0.05


class Retention:
    """What is consumed, what the checkpoint says, and what may be deleted."""

    def __init__(self, state: LogState, policy: Durability, preparer: Preparer,
                 reader: Reader, capacity: int | None, max_total_size: int | None,
                 block_when_full: bool, full_timeout: float | None) -> None:
        self.state = state
        self.policy = policy
        self.preparer = preparer
        self.reader = reader
        self.capacity = capacity  # segment files max_total_size allows (None: no limit)
        self.max_total_size = max_total_size
        self.block_when_full = block_when_full
        self.full_timeout = full_timeout
        self.cond = threading.Condition(state.lock)  # space was freed, or a reclaim ended
        self.wake = threading.Condition(state.lock)  # the reclaim thread has work
        # Consumed segments renamed to *.tmp, being unlinked outside the lock (no
        # appender waits for the unlink of a large file). They still count against
        # max_total_size until they are gone.
        self.deleting = 0
        self.wanted = False  # a commit left segments to reclaim; the thread has not begun
        self.reclaiming = False  # the thread is reclaiming
        self.stopping = False  # the thread ends once nothing is wanted
        self.durable_committed = 0  # checkpoint known durable
        self.committed_seq = 0  # moved under the read lock; read anywhere (an int)
        # Under checkpoint_lock:
        self.checkpoint_lock = threading.Lock()
        self.checkpoint_seq = 0  # the position the checkpoint file holds
        self.checkpoint_durable = True
        self.checkpoint_time = 0.0
        self.unlink = _fs.fs.unlink  # fault-injection tests replace it
        preparer.at_capacity = self.at_capacity

    def start(self, committed: int) -> None:
        """The position the checkpoint file holds on open."""
        self.committed_seq = self.checkpoint_seq = self.durable_committed = committed

    def at_capacity(self) -> bool:
        """The directory may hold no more segment files (lock held)."""
        files = len(self.state.segments) + self.preparer.spare + self.deleting
        return self.capacity is not None and files >= self.capacity

    def commit(self, end_seq: int) -> None:
        """Every record below ``end_seq`` is consumed (read lock held)."""
        self.committed_seq = end_seq
        if self.policy.durable_commits:
            with self.checkpoint_lock:
                self.write_checkpoint(durable=True)
        elif (time.monotonic() - self.checkpoint_time >= CHECKPOINT_INTERVAL
              # The reclaim thread may be writing it: it holds this commit or an older
              # one, and the next commit tries again.
              and self.checkpoint_lock.acquire(blocking=False)):
            try:
                self.write_checkpoint(durable=False)
            finally:
                self.checkpoint_lock.release()
        state = self.state
        with state.lock:
            dead = self._dead(end_seq)
            if dead:
                self.wanted = True
                self.wake.notify()
        if dead:
            # The reader never reads a consumed segment again: its map moves on now, so
            # the reclaim thread never takes a segment from under the reader.
            self.reader.leave(dead)

    def _dead(self, below: int) -> list[int]:
        """Segments whose records are all below ``below`` (lock held)."""
        segments = self.state.segments
        dead = []
        for i in range(len(segments) - 1):
            if segments[i + 1] > below:
                break
            dead.append(segments[i])
        return dead

    def _reclaimable(self) -> list[int]:
        """Segments below the durable checkpoint, but the one the reader walks (lock
        held)."""
        return [b for b in self._dead(self.durable_committed) if b != self.state.pinned]

    def write_checkpoint(self, durable: bool) -> None:
        """Persist the committed position (checkpoint_lock held)."""
        seq = self.committed_seq
        checkpoint.write(self.state.directory, seq, durable)
        self.checkpoint_seq = seq
        self.checkpoint_durable = durable
        self.checkpoint_time = time.monotonic()
        if durable:
            self._durable(seq)

    def make_durable(self) -> None:
        """The committed position in a durable checkpoint (checkpoint_lock held)."""
        if self.checkpoint_seq != self.committed_seq:
            self.write_checkpoint(durable=True)
        elif not self.checkpoint_durable:
            checkpoint.make_durable(self.state.directory)
            self.checkpoint_durable = True
            self._durable(self.checkpoint_seq)

    def _durable(self, seq: int) -> None:
        """The checkpoint file holds ``seq`` durably (checkpoint_lock held)."""
        with self.state.lock:
            self.durable_committed = seq

    def checkpoint_if_due(self) -> None:
        """The background thread: a commit not yet in the checkpoint file, made durable."""
        if (self.checkpoint_seq == self.committed_seq
                or time.monotonic() - self.checkpoint_time < CHECKPOINT_INTERVAL):
            return
        state = self.state
        with self.checkpoint_lock:
            if not state.closed and self.checkpoint_seq != self.committed_seq:
                try:
                    self.write_checkpoint(durable=True)
                except OSError as exc:
                    log.warning("segmentlog %s: checkpoint write failed: %s",
                                state.directory, exc)

    def close(self) -> None:
        """The log closes: the last commit into the checkpoint file (read lock held)."""
        if self.state.closed:
            return
        with self.checkpoint_lock:
            if self.checkpoint_seq == self.committed_seq:
                return
            try:
                self.write_checkpoint(durable=self.policy.sync_on_close)
            except OSError as exc:
                log.error("segmentlog %s: could not write the checkpoint at close (%s); "
                          "records since the last one will be read again",
                          self.state.directory, exc)

    def reclaim_loop(self) -> None:
        """The reclaim thread: free what commits left consumed (``wanted``), until
        ``stop``. A failed reclaim frees nothing, is logged, and the next commit tries
        again; consumed records are never read again either way."""
        state = self.state
        while True:
            with state.lock:
                while not self.wanted and not self.stopping:
                    self.wake.wait()
                if not self.wanted:
                    return
                self.wanted = False
                self.reclaiming = True
            try:
                self.reclaim()
            except Exception as exc:  # the thread lives on: the next commit tries again
                with state.lock:
                    state.counters["reclaim_errors"] += 1
                log.warning("segmentlog %s: could not reclaim consumed segments (%s); "
                            "the next commit tries again", state.directory, exc,
                            exc_info=not isinstance(exc, OSError))
            finally:
                with state.lock:
                    self.reclaiming = False
                    self.cond.notify_all()

    def reclaim(self) -> None:
        """Delete (or recycle) the segments whose records are all below the checkpoint,
        once it is durable (the reclaim thread)."""
        state = self.state
        with self.checkpoint_lock:
            self.make_durable()
        doomed: list[str] = []
        try:
            with state.lock:
                for base in self._reclaimable():
                    doomed += self.dispose(base, defer=True)
            fsync_dir(state.directory)
        finally:
            for path in doomed:
                try:
                    self.unlink(path)
                except OSError as exc:
                    log.warning("segmentlog %s: could not delete consumed segment %s: %s",
                                state.directory, path, exc)
                finally:
                    with state.lock:
                        self.deleting -= 1
                        self.cond.notify_all()

    @property
    def pending(self) -> bool:
        """A reclaim is wanted or running: space may come (lock held)."""
        return self.wanted or self.reclaiming or self.deleting > 0

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until no reclaim is wanted or running; False if ``timeout`` passed."""
        with self.state.lock:
            return self.cond.wait_for(lambda: not self.pending, timeout)

    def stop(self) -> None:
        """The reclaim thread ends once it has done what is wanted (lock held)."""
        self.stopping = True
        self.wake.notify_all()

    def dispose(self, base: int, defer: bool = False) -> list[str]:
        """Recycle or delete consumed segment ``base`` (lock held; the caller fsyncs the
        directory). With ``defer``, a segment to delete is only renamed to ``*.tmp``
        and counted in ``deleting``; the caller unlinks the returned path outside the
        lock and then decrements ``deleting``."""
        path = self.state.path(base)
        doomed: list[str] = []
        if self.preparer.recycle(path):
            pass
        elif defer:
            _fs.fs.rename(path, path + TMP_SUFFIX)
            self.deleting += 1
            doomed.append(path + TMP_SUFFIX)
        else:
            _fs.fs.unlink(path)
        self.state.segments.remove(base)
        return doomed

    def reclaim_for_writer(self) -> bool:
        """Out of space at rotation: free segments the consumer already committed durably
        (commit reclaims only what was sealed at that time). Lock held. Skips the segment
        the reader is walking; the reader notices a segment gone and seeks again."""
        dead = self._reclaimable()
        for base in dead:
            self.dispose(base)
        if dead:
            fsync_dir(self.state.directory)
        return bool(dead)

    def wait_for_space(self, needed: int) -> None:
        """Wait until ``needed`` more segment files fit (lock held), or raise LogFullError."""
        if self.capacity is None:
            return
        state = self.state
        deadline = None
        while len(state.segments) + self.deleting + needed > self.capacity:
            if self.reclaim_for_writer():
                continue
            if self.pending:
                self.cond.wait()  # the reclaim thread is at work: space may come
                continue
            if not self.block_when_full:
                raise LogFullError(
                    f"log {state.directory} is full: {len(state.segments)} segments of "
                    f"{state.segment_size} bytes reach max_total_size {self.max_total_size}; "
                    "consume and commit records, or raise max_total_size"
                )
            if self.full_timeout is not None:
                deadline = deadline or time.monotonic() + self.full_timeout
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    if len(state.segments) + self.deleting + needed <= self.capacity:
                        break
                    raise LogFullError(
                        f"log {state.directory} stayed full for {self.full_timeout} s "
                        f"(max_total_size {self.max_total_size}); the consumer is not "
                        "committing fast enough"
                    )
            else:
                self.cond.wait()
            if state.closed or state.failed:
                state.raise_unusable()
