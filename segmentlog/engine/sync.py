"""Group commit: the sync rounds that make written records durable.

Appenders share fsyncs. One waiting appender leads a round (writes the group buffer,
fdatasyncs with the lock released) and wakes those it covered. With the C core and
``fsync="always"`` most rounds run inside the committer instead (segmentlog.engine.writer);
a round here covers everything else (batches, rotation, the pure-Python backend, sync()).

With ``fsync="never"`` a writeback thread fdatasyncs each sealed segment as soon as it
is sealed (``ahead_loop``), so the disk writes it while the appenders fill the next one
and ``sync()`` finds it clean; nothing counts as durable before a round says so.

An fsync error is never retried or ignored: the log refuses every later write with
:class:`DurabilityError` (the page cache may have dropped the data; only a reopen, which
re-reads the disk, tells what survived). The writeback thread's errors too: the kernel
reports a writeback error once, to the first fsync after it, so a later round would not
see it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import queue
import threading
import time
from typing import Protocol

from segmentlog import _fs
from segmentlog.engine.durability import Durability
from segmentlog.engine.maps import Segment
from segmentlog.engine.state import LogState, log
from segmentlog.errors import DurabilityError
from segmentlog.segment import fsync_dir, open_regular

GATHER_ROUNDS = 4  # at most this many yields before a group fsync (see _round)
NEVER = 1 << 64  # above every sequence number: a follower no round covers (sync())


class Written(Protocol):
    """What the sync rounds need of the writer."""

    active: Segment | None
    write_off: int
    next_seq: int

    def flush_group(self) -> None: ...

    def fail(self, error: DurabilityError) -> None: ...


class Sync:
    """The sync rounds of one log: who waits for what, and what is durable.

    A follower waits on a gate of its own (a locked Lock the round's leader releases),
    not on a Condition of the lock: woken, it checks ``durable_seq`` (which only grows)
    without re-taking the lock, so the appenders a round covers do not queue up on that
    lock one after the other to learn they are done. A round's end wakes only the
    followers it made durable, plus one follower of the next round to lead it; and it
    wakes them one after the other (``_chain``): each woken follower wakes the next, so
    they take the GIL in turn instead of all waking to find it held.
    """

    def __init__(self, state: LogState, policy: Durability) -> None:
        self.state = state
        self.policy = policy
        self.writer: Written  # set by the writer
        self.cond = threading.Condition(state.lock)  # a round ended
        self.durable_seq = -1  # last sequence number known to be on disk
        self.syncing = False
        self.unsynced: list[Segment] = []  # sealed segments with data not yet synced
        # Sealed segments already closed (closes_sealed, or found on open): synced by name.
        self.unsynced_bases: list[int] = []
        # Followers waiting for a round: (the sequence number each waits for, the locked
        # Lock the leader releases); see wait_durable and open_gates.
        self.gates: list[tuple[int, threading.Lock]] = []
        self._chain: collections.deque[threading.Lock] = collections.deque()
        self._waited_last_round = False
        self.fsync_default = _fs.DEFAULT.fdatasync
        # fdatasync of the log's segments, and fsync of its directory: fault-injection
        # tests replace them. While the first is replaced the group committer stays
        # closed: its fdatasyncs would bypass it.
        self.fsync = _fs.fs.fdatasync
        self.fsync_dir = fsync_dir
        # Bases of sealed segments for the writeback thread (ahead_loop).
        self._ahead: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    @property
    def pending(self) -> bool:
        """Sealed segments wait for a round (lock held)."""
        return bool(self.unsynced or self.unsynced_bases)

    def seal(self, seg: Segment) -> None:
        """The writer stopped writing ``seg``: sync it in the next round (lock held)."""
        if not self.policy.closes_sealed:
            self.unsynced.append(seg)
            return
        seg.close()  # unmapped before its writeback (see round)
        self.unsynced_bases.append(seg.base)
        if self.policy.sync_sealed_ahead:
            self._ahead.put(seg.base)
        segments = self.state.segments
        if len(self.unsynced_bases) > 2 * len(segments):
            # Without sync() calls: forget the consumed ones, keep the list bounded.
            live = set(segments)
            self.unsynced_bases = [b for b in self.unsynced_bases if b in live]

    def barrier(self) -> None:
        """sync(): everything appended before the call is on disk on return."""
        state = self.state
        with state.lock:
            if state.closed or state.failed:
                state.raise_unusable()
            target = self.writer.next_seq - 1
            pending = self.pending
        if target > self.durable_seq or pending:
            self.wait_durable(target, force=True)

    def wait_durable(self, seq: int, force: bool = False) -> None:
        """Return once ``seq`` is durable, leading a round if nobody else is (see the
        class docstring); ``force``: lead or wait for a round that starts after the call."""
        state = self.state
        lock = state.lock
        lock.acquire()
        try:
            while self.durable_seq < seq or force:
                if state.failed or state.closed:
                    state.raise_unusable()
                if self.syncing:
                    gate = threading.Lock()
                    gate.acquire()
                    self.gates.append((NEVER if force else seq, gate))
                    lock.release()
                    gate.acquire()  # released when the round in progress ends
                    self.wake_next()
                    if self.durable_seq >= seq and not force:
                        return  # the lock is not held here: skip the finally's release
                    lock.acquire()
                    continue
                force = False
                self.round()
            if self.gates and not self.syncing:
                # Durable without a round of ours (the committer's rounds made it so, read
                # back when the lock was taken): this may be the follower a round woke to
                # lead the next one. Wake the followers that are durable too, and one to
                # lead for the rest, or they would sleep with no round to wake them.
                self.open_gates(self.durable_seq)
        except BaseException:
            lock.release()
            raise
        lock.release()

    def round(self) -> None:
        """One group fsync of everything written so far (lock held; released meanwhile)."""
        state, writer, lock = self.state, self.writer, self.state.lock
        self.syncing = True
        # Gather: appenders woken by the previous round are about to append again. Give
        # them the lock (and the GIL) while they keep coming, so this fsync covers them
        # too instead of leaving them for the next round.
        for _ in range(GATHER_ROUNDS if self.gates or self._waited_last_round else 0):
            seen = writer.next_seq
            lock.release()
            time.sleep(0)
            lock.acquire()
            if writer.next_seq == seen:
                break
        try:
            writer.flush_group()
        except DurabilityError:
            self.syncing = False
            self.open_gates()
            raise
        target = writer.next_seq - 1
        self._waited_last_round = bool(self.gates)
        sealed, self.unsynced = self.unsynced, []
        closed, self.unsynced_bases = self.unsynced_bases, []
        active = writer.active
        written = writer.write_off
        if active is not None and self.policy.closes_sealed:
            # A rotation while the lock is released below closes the active segment's
            # descriptor at once in this mode: sync it through a descriptor of our own.
            closed.append(active.base)
        error: OSError | None = None
        lock.release()
        if self.policy.via_map:
            # Unmap what the writer has written before the fdatasync writes it back.
            # Writeback write-protects every page it cleans in every mapping that can
            # write it, with a TLB shootdown (an interrupt of the appending CPU) per
            # page. Pages below the write position are never written again; the partial
            # page at it stays mapped. Sealed segments stay mapped until closed after
            # this round; with closes_sealed a rotation may close the active one
            # meanwhile, and unmap_below then does nothing (the GIL orders it).
            for seg in sealed:
                seg.unmap_below(seg.size)
            if active is not None:
                active.unmap_below(written)
        try:
            for seg in sealed:
                self.fsync(seg.fd)
            for base in closed:
                self._fsync_closed(base)
            if active is not None and not self.policy.closes_sealed:
                self.fsync(active.fd)
        except OSError as exc:
            error = exc
        finally:
            lock.acquire()
            self.syncing = False
            state.counters["fsyncs"] += 1
        if error is not None:
            self.fail(error.errno or errno.EIO)
            self.unsynced = sealed + self.unsynced
            self.unsynced_bases = closed + self.unsynced_bases
            self.open_gates()
            state.raise_unusable()
        for seg in sealed:
            seg.close()
        if target > self.durable_seq:
            self.durable_seq = target
        self.open_gates(target)

    def ahead_loop(self) -> None:
        """The writeback thread (``policy.sync_sealed_ahead``): fdatasync by name each
        sealed segment handed over by ``seal``, then drop it from the segments the next
        round syncs; until ``stop_ahead``. Once the log is closing the rest are skipped:
        ``close()`` makes nothing durable in this mode."""
        state = self.state
        while (base := self._ahead.get()) is not None:
            if state.stop.is_set():
                continue
            try:
                self._fsync_closed(base)
            except OSError as exc:
                with state.lock:
                    if not (state.failed or state.closed):
                        self.fail(exc.errno or errno.EIO)
                log.error("segmentlog %s: fsync of sealed segment %d failed (%s); the log "
                          "refuses writes until reopened", state.directory, base, exc.strerror)
                continue
            with state.lock:
                state.counters["fsyncs"] += 1
                # A round that took the list already syncs it again: harmless.
                with contextlib.suppress(ValueError):
                    self.unsynced_bases.remove(base)

    def stop_ahead(self) -> None:
        """The writeback thread ends once it has taken what it was given."""
        self._ahead.put(None)

    def background_round(self) -> bool:
        """One round of the background thread if anything waits for one; False once the
        log is closed or failed (the thread ends)."""
        state = self.state
        with state.lock:
            if state.closed or state.failed:
                return False
            if (self.syncing or (self.durable_seq >= self.writer.next_seq - 1
                    and not self.pending)):
                return True
            try:
                self.round()
            except DurabilityError:
                log.error("segmentlog %s: background fsync failed; the log refuses writes "
                          "until reopened", state.directory)
                return False
        return True

    def fail(self, err: int) -> None:
        """An fsync failed: refuse every later write (lock held)."""
        self.writer.fail(DurabilityError(
            err,
            f"fsync of log {self.state.directory} failed ({os.strerror(err)}); records since "
            "the last successful sync may be lost, so the log accepts no more writes: "
            "fix the disk, then reopen the log",
        ))

    def _fsync_closed(self, base: int) -> None:
        """fdatasync the segment file of ``base`` by name (lock not held); one consumed
        and deleted meanwhile holds nothing left to keep. (Names are never reused.)"""
        try:
            fd = open_regular(self.state.path(base), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def open_gates(self, durable: int = NEVER) -> None:
        """Wake the followers whose records are durable up to ``durable``, then one of
        the others to lead the next round, in turn through ``_chain`` (lock held). By
        default (an error, or close) every follower, at once."""
        woken: list[threading.Lock] = []
        later: list[tuple[int, threading.Lock]] = []
        for seq, gate in self.gates:
            if seq <= durable:
                woken.append(gate)
            else:
                later.append((seq, gate))
        if later:
            woken.append(later.pop(0)[1])  # last: by then the others have appended again
        self.gates = later
        self._chain.extend(woken)
        if durable == NEVER:
            while self._chain:
                self.wake_next()
        else:
            self.wake_next()
        self.cond.notify_all()

    def wake_next(self) -> None:
        """Release the next gate of ``_chain``, if any (with or without the lock: a deque
        pops atomically, and each gate is in it once)."""
        try:
            gate = self._chain.popleft()
        except IndexError:
            return
        gate.release()

    def close(self) -> None:
        """The log closes: a last round unless the policy keeps none (lock held)."""
        if self.policy.sync_on_close and not self.state.failed:
            while self.syncing:
                self.cond.wait()
            # An fsync error is recorded in state.failed; closing still releases everything.
            with contextlib.suppress(DurabilityError):
                self.round()

    def release(self) -> None:
        for seg in self.unsynced:
            seg.close()
        self.unsynced = []
