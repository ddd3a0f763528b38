"""The preparer: the next segment file, made ready off the append path.

A background thread keeps one file ready (``next.prep``): a consumed segment kept for
reuse (``spare.prep``) renamed, or a new file reserved and prepared as the durability
policy wants (zero-filled and synced, or read through once). Rotation takes it, so it
costs a header write, two fsyncs and a rename.

Reading a file through ("warm") only puts clean zero pages in the page cache ahead of
the writer, which would otherwise fault them in itself: the file is ready once reserved,
and the thread reads it through afterwards, while a rotation may already be writing it.
So rotation never waits for the read.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from segmentlog import _fs
from segmentlog._format import PREPARED_NAME, SPARE_NAME
from segmentlog.engine.durability import Durability
from segmentlog.engine.state import LogState, log
from segmentlog.segment import open_regular, reserve_and_zero

WARM_CHUNK = 1 << 20  # bytes the thread reads per call while warming a file


class Preparer:
    """The prepared and the spare segment file of one log (fields under the lock)."""

    def __init__(self, state: LogState, policy: Durability, recycle: bool) -> None:
        self.state = state
        self.policy = policy
        self.recycle_consumed = recycle
        self.cond = threading.Condition(state.lock)  # preparing ended
        self.prepared = False  # next.prep exists and is ready
        self.preparing = False  # the thread is writing next.prep
        self.spare = False  # spare.prep (a consumed segment kept for reuse) exists
        self.recycled = False  # next.prep is a recycled segment (not zeros)
        self.wake = threading.Event()
        # Whether the directory may hold no more files (retention's capacity).
        self.at_capacity: Callable[[], bool] = lambda: False
        # Descriptors of files made by take() itself, for the thread to read through.
        self._to_warm: list[int] = []
        self.warming = False  # the thread is reading a file through (see warm)
        self._prep = os.path.join(state.directory, PREPARED_NAME)
        self._spare = os.path.join(state.directory, SPARE_NAME)

    @property
    def files(self) -> int:
        """Files of the directory this part holds (for disk_bytes)."""
        return self.prepared + self.spare

    def reserve(self, path: str) -> None:
        """Create a new segment file at ``path``, prepared as the policy wants (but not
        read through: see ``warm``)."""
        p = self.policy
        reserve_and_zero(path, self.state.segment_size, zero_fill=p.zero_fill,
                         sync=p.sync_prepared)

    def _warm_handed(self) -> None:
        """Read through the files take() made itself (thread, lock not held)."""
        with self.state.lock:
            fds, self._to_warm = self._to_warm, []
        for fd in fds:
            self._warm_and_close(fd)

    def _warm_and_close(self, fd: int) -> None:
        self.warming = True
        try:
            self.warm(fd)
        except OSError as exc:  # only a loss of speed
            log.warning("segmentlog %s: could not read a new segment through: %s",
                        self.state.directory, exc)
        finally:
            self.warming = False
            os.close(fd)

    @property
    def idle(self) -> bool:
        """Nothing being prepared or read through, nor waiting to be (for benchmarks:
        the state of a log open a while)."""
        return not (self.preparing or self.warming or self._to_warm or self.wake.is_set())

    def warm(self, fd: int) -> None:
        """Read the reserved file ``fd`` through once, so its clean zero pages wait in
        the page cache (policy.warm); the writer may be writing it already (pages it
        wrote are only read). Stops early when the log closes."""
        chunk, done, size = bytearray(WARM_CHUNK), 0, self.state.segment_size
        while done < size and not self.state.stop.is_set():
            n = os.preadv(fd, [chunk], done)
            if n <= 0:
                break
            done += n

    def take(self) -> tuple[str, bool]:
        """The prepared file for a new segment, made now if the thread has none ready
        (lock held, not preparing): its path, and whether it is a recycled segment. The
        caller wakes the thread once it has renamed the file."""
        if not self.prepared:
            if self.spare:
                _fs.fs.rename(self._spare, self._prep)
                self.spare = False
                self.recycled = True
            else:
                self.reserve(self._prep)
                self.recycled = False
                if self.policy.warm:
                    # The thread reads it through while the writer starts on it.
                    with contextlib.suppress(OSError):
                        self._to_warm.append(open_regular(self._prep, os.O_RDONLY))
        self.prepared = False
        return self._prep, self.recycled

    def recycle(self, path: str) -> bool:
        """Keep consumed segment ``path`` as the next or the spare file (lock held); False
        if neither place is free (the caller deletes it). Its old records keep their
        lower sequence numbers, so they can never read as new ones."""
        if not self.recycle_consumed or self.state.closed:
            return False
        if not (self.prepared or self.preparing):
            _fs.fs.rename(path, self._prep)
            self.prepared = self.recycled = True
        elif not self.spare:
            _fs.fs.rename(path, self._spare)
            self.spare = True
        else:
            return False
        self.state.counters["recycled"] += 1
        return True

    def wait_idle(self) -> None:
        """Let the thread finish the file it is writing (lock held)."""
        while self.preparing:
            self.cond.wait()

    def loop(self) -> None:
        """The thread: keep one segment file ready, then read through what needs it (the
        next file first reserved: a rotation needs it, while the writer can make the
        pages of the file it writes itself)."""
        state = self.state
        self.wake.set()
        while True:
            self.wake.wait()
            self.wake.clear()
            if state.stop.is_set():
                return
            fd = self._prepare_next()
            self._warm_handed()
            if fd >= 0:
                self._warm_and_close(fd)

    def _prepare_next(self) -> int:
        """Make next.prep if it is missing (thread): a descriptor of it if it wants
        reading through, else -1."""
        state = self.state
        with state.lock:
            if self.prepared or self.preparing or state.closed:
                return -1
            if self.spare:
                # A consumed segment kept for reuse: no bytes to write at all.
                _fs.fs.rename(self._spare, self._prep)
                self.spare, self.prepared, self.recycled = False, True, True
                return -1
            if self.at_capacity():
                return -1
            self.preparing = True
        ok, fd = False, -1
        try:
            self.reserve(self._prep)
            ok = True
            if self.policy.warm:
                # Opened before the file is handed over: a rotation may rename it.
                fd = open_regular(self._prep, os.O_RDONLY)
        except OSError as exc:
            # Not fatal here: rotation will try again and report the error itself.
            log.warning("segmentlog %s: could not prepare the next segment: %s",
                        state.directory, exc)
        finally:
            with state.lock:
                self.preparing = False
                self.prepared = ok
                self.recycled = False
                self.cond.notify_all()
        return fd

    def stop(self) -> None:
        self.wake.set()
        self.cond.notify_all()  # lock held

    def release(self) -> None:
        """The log is closed and the thread has ended (or never ran)."""
        fds, self._to_warm = self._to_warm, []
        for fd in fds:
            os.close(fd)
