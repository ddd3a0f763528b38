"""Faults: a full disk (a real, small tmpfs), failing fsyncs, a second process on the
directory, a killed lock holder, and misuse. Each test names the case it pins.

The disk-full tests mount a 256 KiB tmpfs of their own under the test's temporary
directory (root only: they skip when the mount is refused) and always unmount it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import childenv
import pytest
from hooktools import need_test_hooks
from logtools import reclaimed, segment_files
from threadtools import run_threads

import segmentlog.segment
from segmentlog import (
    ConfigError,
    DurabilityError,
    LogClosedError,
    LogFullError,
    LogLockedError,
    RecordTooLargeError,
    SegmentLog,
)
from segmentlog._backend import impl
from segmentlog._format import parse_segment_name, segment_name

SEGMENT = 16384


# ---------------------------------------------------------------------------- helpers


@pytest.fixture()
def small_fs(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A 256 KiB tmpfs mounted on a fresh directory; unmounted afterwards, always."""
    point = os.path.join(os.fspath(tmp_path), "smallfs")
    os.mkdir(point)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", point],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if os.geteuid() != 0 or "permission" in done.stderr.lower():
            pytest.skip("needs root to mount a small tmpfs")
        pytest.fail(f"mount of a tmpfs failed: {done.stderr.strip()}")
    try:
        yield point
    finally:
        for _ in range(20):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)  # a log's files closing, a killed child's being reaped
        else:
            subprocess.run(["umount", "-l", point], check=False)


def fill_disk(path: str) -> int:
    """Write ``path`` until the file system is full; return the bytes it took."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        while True:
            written += os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return written


def wait_for_prepared(log: SegmentLog) -> None:
    """Let the background thread finish preparing the next segment (a steady state)."""
    deadline = time.monotonic() + 10
    while True:
        stats = log.stats()
        if stats["disk_bytes"] > stats["segments"] * stats["segment_size"]:
            return
        assert time.monotonic() < deadline, "the next segment was never prepared"
        time.sleep(0.01)


def assert_segments_sound(directory: str, segment_size: int) -> None:
    """Every segment file has exactly segment_size bytes, all of them allocated: never
    sparse (a write through the map could then SIGBUS on a full disk), never extended.
    (Not next.prep: the background thread may be creating it, or removing it after its
    own ENOSPC, at any moment; it is checked once it becomes a segment.)"""
    for name in os.listdir(directory):
        if parse_segment_name(name) is None:
            continue
        st = os.stat(os.path.join(directory, name))
        assert st.st_size == segment_size, f"{name} is {st.st_size} bytes"
        assert st.st_blocks * 512 >= st.st_size, f"{name} is sparse ({st.st_blocks} blocks)"


def record(i: int, size: int = 1000) -> bytes:
    stem = f"<{i}>".encode()
    return (stem * (size // len(stem) + 1))[:size]


def read_all(log: SegmentLog) -> list[bytes]:
    out: list[bytes] = []
    while batch := log.read_batch(max_records=100):
        out.extend(batch.records)
    return out


def fill_log_until_full(log: SegmentLog, first: int = 0) -> list[bytes]:
    """Append 1000-byte records until the disk refuses a new segment; return them."""
    acked: list[bytes] = []
    with pytest.raises(LogFullError) as info:
        for i in range(first, first + 10_000):
            rec = record(i)
            log.append(rec)
            acked.append(rec)
    message = str(info.value)
    assert log.directory in message and "space" in message, message
    return acked


# ---------------------------------------------------------------------------- disk full


def test_open_on_a_full_disk_raises_log_full_error_naming_the_directory(small_fs: str) -> None:
    filler = os.path.join(small_fs, "filler")
    fill_disk(filler)
    directory = os.path.join(small_fs, "log")
    with pytest.raises(LogFullError) as info:
        SegmentLog(directory, segment_size=SEGMENT)
    assert directory in str(info.value) and "space" in str(info.value)


def open_after_full_disk(small_fs: str) -> None:
    filler = os.path.join(small_fs, "filler")
    directory = os.path.join(small_fs, "log")
    fill_disk(filler)
    with pytest.raises(LogFullError):
        SegmentLog(directory, segment_size=SEGMENT)
    os.unlink(filler)
    with SegmentLog(directory, segment_size=SEGMENT) as log:  # the lock was released
        assert log.append(b"after") == 0
        assert read_all(log) == [b"after"]


def test_open_that_failed_on_a_full_disk_releases_the_lock(small_fs: str) -> None:
    open_after_full_disk(small_fs)


def test_open_without_room_for_a_segment_raises_log_full_error_and_releases_the_lock(
    small_fs: str,
) -> None:
    filler = os.path.join(small_fs, "filler")
    directory = os.path.join(small_fs, "log")
    os.mkdir(directory)
    size = fill_disk(filler)
    os.truncate(filler, size - 2 * 4096)  # room for the lock and checkpoint, not a segment
    with pytest.raises(LogFullError) as info:
        SegmentLog(directory, segment_size=SEGMENT)
    assert directory in str(info.value)
    assert not any(parse_segment_name(n) is not None for n in os.listdir(directory))
    os.unlink(filler)
    with SegmentLog(directory, segment_size=SEGMENT) as log:
        assert log.append(b"after") == 0
        assert read_all(log) == [b"after"]
        assert_segments_sound(directory, SEGMENT)


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_rotation_on_a_full_disk_raises_log_full_error_and_loses_nothing(
    small_fs: str, fsync: str
) -> None:
    directory = os.path.join(small_fs, "log")
    filler = os.path.join(small_fs, "filler")
    with SegmentLog(directory, segment_size=SEGMENT, fsync=fsync) as log:
        wait_for_prepared(log)
        fill_disk(filler)
        acked = fill_log_until_full(log)
        assert len(acked) > 2 * (SEGMENT // 1100), "the prepared segment was used"
        assert log.stats()["next_seq"] == len(acked)  # the refused record was not written
        assert_segments_sound(directory, SEGMENT)
        with pytest.raises(LogFullError):  # still full: refused again, cleanly
            log.append(record(-1))
        assert read_all(log) == acked
    # Space comes back: the log takes records again, and kept every earlier one.
    os.unlink(filler)
    with SegmentLog(directory, segment_size=SEGMENT, fsync=fsync) as log:
        more = [record(i) for i in range(len(acked), len(acked) + 40)]
        for rec in more:
            log.append(rec)
        assert read_all(log) == acked + more
        assert log.stats()["damaged_regions"] == 0
        assert_segments_sound(directory, SEGMENT)


def test_batch_cut_short_by_a_full_disk_writes_none_of_it(small_fs: str) -> None:
    """append_batch is all or nothing: here its first records fit in the active segment
    and the rotation for the rest finds the disk full."""
    directory = os.path.join(small_fs, "log")
    filler = os.path.join(small_fs, "filler")
    frame = 1032  # a 1000-byte record's frame
    with SegmentLog(directory, segment_size=SEGMENT, fsync="always") as log:
        wait_for_prepared(log)
        fill_disk(filler)
        acked: list[bytes] = []
        # Into the prepared segment (that rotation needs no space), until two records fit.
        while log.stats()["segments"] < 2 or SEGMENT - log.stats()["write_offset"] >= 3 * frame:
            acked.append(record(len(acked)))
            log.append(acked[-1])
        assert (SEGMENT - log.stats()["write_offset"]) // frame == 2
        with pytest.raises(LogFullError):
            log.append_batch([record(-i) for i in range(1, 6)])
        assert log.stats()["next_seq"] == len(acked), "part of a refused batch was written"
        assert read_all(log) == acked
        two = [record(-10), record(-11)]
        assert log.append_batch(two) == len(acked) + 1  # what fits still goes in
        acked.extend(two)
    os.unlink(filler)
    with SegmentLog(directory, segment_size=SEGMENT) as log:
        assert read_all(log) == acked
        assert log.stats()["damaged_regions"] == 0


def test_commit_on_a_full_disk_reclaims_space_so_appends_resume(small_fs: str) -> None:
    directory = os.path.join(small_fs, "log")
    with SegmentLog(directory, segment_size=SEGMENT, fsync="always") as log:
        wait_for_prepared(log)
        fill_disk(os.path.join(small_fs, "filler"))
        acked = fill_log_until_full(log)
        batch = log.read_batch(max_records=len(acked))
        assert batch.records == acked
        log.commit(batch)  # consumed: its segments are recycled, no new space needed
        more = [record(i) for i in range(len(acked), len(acked) + 20)]
        for rec in more:
            log.append(rec)
        assert read_all(log) == more
        assert_segments_sound(directory, SEGMENT)


def _append_in_thread(log: SegmentLog, first: int, n: int,
                      ) -> tuple[threading.Thread, list[object]]:
    """Append records ``first`` .. ``first + n - 1`` one by one in a started thread; its
    outcome list gets "appended", or the exception that stopped it."""
    outcome: list[object] = []

    def appender() -> None:
        try:
            for i in range(first, first + n):
                log.append(record(i))
            outcome.append("appended")
        except BaseException as exc:  # reported by the caller
            outcome.append(exc)

    writer = threading.Thread(target=appender)
    writer.start()
    return writer, outcome


def test_consumed_segments_are_deleted_outside_the_lock_and_count_until_gone(
    logdir: str,
) -> None:
    """With recycle=False a commit deletes consumed segments: each is renamed to *.tmp
    under the lock and unlinked after it, so appenders never wait for the unlink. Until
    it is gone it still counts against max_total_size: an append that needs its space
    waits for it (with block_when_full=False too) rather than failing as full."""
    seg = 8192
    log = SegmentLog(logdir, segment_size=seg, max_total_size=4 * seg, fsync="never",
                     recycle=False)
    unlinking, release = threading.Event(), threading.Event()
    real = log._retention.unlink

    def slow_unlink(path: str) -> None:
        assert path.endswith(".tmp") and os.path.exists(path)
        assert parse_segment_name(os.path.basename(path)[:-4]) is not None
        unlinking.set()
        release.wait(30)
        real(path)

    log._retention.unlink = slow_unlink
    acked = []
    with pytest.raises(LogFullError):
        while True:
            acked.append(log.append(record(len(acked))))
    batch = log.read_batch(max_records=len(acked))
    committer = threading.Thread(target=log.commit, args=(batch,))
    committer.start()
    assert unlinking.wait(30)
    # The segment being unlinked is not a segment any more, but still takes its space.
    names = os.listdir(logdir)
    assert any(n.endswith(".seg.tmp") for n in names)
    assert log.stats()["disk_bytes"] <= 4 * seg
    writer, outcome = _append_in_thread(log, len(acked), 12)  # a rotation or two
    writer.join(0.3)
    assert outcome == [], outcome  # waiting for the space being freed: neither full nor over
    release.set()
    committer.join(30)
    writer.join(30)
    assert outcome == ["appended"]
    # The appender needed only the first freed file; the reclaim thread unlinks the rest
    # after commit() returned, and then nothing of them is left.
    reclaimed(log)
    assert not any(n.endswith(".tmp") for n in os.listdir(logdir))
    assert read_all(log) == [record(i) for i in range(len(acked), len(acked) + 12)]
    log.close()


def _hold_reclaim(log: SegmentLog) -> tuple[threading.Event, threading.Event]:
    """Make the log's reclaim thread stop before its first fsync until released: returns
    (it is held, release it)."""
    held, release = threading.Event(), threading.Event()
    real = log._retention.make_durable

    def held_make_durable() -> None:
        held.set()
        assert release.wait(30)
        real()

    log._retention.make_durable = held_make_durable  # type: ignore[method-assign]
    return held, release


def test_commit_returns_and_reading_goes_on_while_the_reclaim_fsyncs(logdir: str) -> None:
    """The reclaim's fsyncs (the durable checkpoint, the directory) run in the log's
    reclaim thread: a commit returns, and the reader reads and commits on, while they
    wait. The consumed segments go once they are done."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="never")
    try:
        log.append_batch([record(i) for i in range(400)])
        many = len(segment_files(logdir))
        held, release = _hold_reclaim(log)
        log.commit(log.read_batch(max_records=200))
        assert held.wait(30)
        got = []
        while batch := log.read_batch(max_records=50):  # the reclaim thread is stuck
            got += batch.records
            log.commit(batch)
        assert got == [record(i) for i in range(200, 400)]
        assert len(segment_files(logdir)) == many  # nothing reclaimed yet
        release.set()
        reclaimed(log)
        assert len(segment_files(logdir)) == 1 < many
        assert log.stats()["reclaim_errors"] == 0
    finally:
        release.set()
        log.close()
    with SegmentLog(logdir, segment_size=SEGMENT) as log:
        assert read_all(log) == []


def test_an_appender_short_of_space_waits_for_a_pending_reclaim(logdir: str) -> None:
    """A full log whose consumer committed: the space comes once the reclaim thread has
    made the checkpoint durable, so an append (block_when_full=False too) waits for it
    instead of failing as full."""
    seg = 8192
    log = SegmentLog(logdir, segment_size=seg, max_total_size=4 * seg, fsync="never")
    try:
        acked = []
        with pytest.raises(LogFullError):
            while True:
                acked.append(log.append(record(len(acked))))
        held, release = _hold_reclaim(log)
        log.commit(log.read_batch(max_records=len(acked)))
        assert held.wait(30)
        writer, outcome = _append_in_thread(log, len(acked), 12)  # a rotation or two
        writer.join(0.3)
        assert outcome == [], outcome  # neither full nor over the limit: waiting
        release.set()
        writer.join(30)
        assert outcome == ["appended"]
        assert read_all(log) == [record(i) for i in range(len(acked), len(acked) + 12)]
    finally:
        release.set()
        log.close()


def test_a_failed_reclaim_frees_nothing_loses_nothing_and_the_next_commit_retries(
    logdir: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The reclaim thread's durable checkpoint fails (EIO): no segment is deleted, the
    failure is counted and logged, the log stays usable, and the next commit's reclaim
    frees the space."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="never")
    try:
        log.append_batch([record(i) for i in range(400)])
        many = len(segment_files(logdir))
        real = log._retention.make_durable
        calls = 0

        def failing_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError(errno.EIO, "injected fsync failure")
            real()

        log._retention.make_durable = failing_once  # type: ignore[method-assign]
        log.commit(log.read_batch(max_records=200))
        reclaimed(log)
        assert calls == 1
        assert log.stats()["reclaim_errors"] == 1
        assert len(segment_files(logdir)) == many  # nothing deleted
        assert "could not reclaim consumed segments" in caplog.text
        assert "injected fsync failure" in caplog.text
        rest = read_all(log)
        assert rest == [record(i) for i in range(200, 400)]
        log.rewind()
        log.commit(log.read_batch(max_records=200))
        reclaimed(log)
        assert calls == 2
        assert len(segment_files(logdir)) == 1 < many
    finally:
        log.close()


def test_close_finishes_the_reclaim_a_last_commit_left(logdir: str) -> None:
    """commit() then close() at once: close waits for the reclaim thread, so the
    consumed segments are gone (no *.tmp left) and a reopen reads nothing again."""
    for fsync in ("never", "interval", "always"):
        log = SegmentLog(logdir, segment_size=SEGMENT, fsync=fsync, recycle=False)
        log.append_batch([record(i) for i in range(300)])
        log.commit(log.read_batch(max_records=300))
        log.close()
        names = os.listdir(logdir)
        assert not any(n.endswith(".tmp") for n in names), names
        assert len(segment_files(logdir)) == 1, names
        with SegmentLog(logdir, segment_size=SEGMENT) as log:
            assert read_all(log) == []


def test_a_segment_left_half_deleted_by_a_crash_is_removed_on_open(logdir: str) -> None:
    """A commit renamed a consumed segment to *.tmp and the process died before the
    unlink: the next open deletes it and reads on from the checkpoint."""
    with SegmentLog(logdir, segment_size=SEGMENT, fsync="always") as log:
        log.append_batch([record(i) for i in range(40)])
        log.commit(log.read_batch(max_records=20))
    # Records 0-19 are consumed: their first segment is gone. Put it back as the
    # rename left it (its bytes: a live segment's, as good as any).
    segments = sorted(n for n in os.listdir(logdir) if parse_segment_name(n) is not None)
    assert parse_segment_name(segments[0]) not in (None, 0)
    doomed = os.path.join(logdir, segment_name(0))
    with open(os.path.join(logdir, segments[0]), "rb") as src, open(doomed + ".tmp", "wb") as f:
        f.write(src.read())
    with SegmentLog(logdir, segment_size=SEGMENT, fsync="never") as log:
        assert not os.path.exists(doomed + ".tmp")
        assert read_all(log) == [record(i) for i in range(20, 40)]


# ---------------------------------------------------------------------------- fsync failure


def failing_fsync(after: int = 0) -> Callable[[int], None]:
    """An fsync that works ``after`` times, then fails with EIO every time."""
    calls = [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] > after:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fdatasync(fd)

    return fsync


def assert_refuses_writes(log: SegmentLog) -> None:
    before = log.stats()["next_seq"]
    for call in (lambda: log.append(b"late"), lambda: log.append_batch([b"late", b"r"]),
                 log.sync):
        with pytest.raises(DurabilityError) as info:
            call()
        assert isinstance(info.value, OSError) and info.value.errno == errno.EIO
        assert log.directory in str(info.value)
    assert log.stats()["next_seq"] == before, "a refused write was written anyway"


def test_fsync_failure_fails_the_append_and_every_later_write(logdir: str) -> None:
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="always")
    durable = [record(i, 100) for i in range(5)]
    for rec in durable:
        log.append(rec)
    log._fsync_fn = failing_fsync()  # type: ignore[assignment]
    with pytest.raises(DurabilityError) as info:
        log.append(b"not durable")
    assert info.value.errno == errno.EIO and logdir in str(info.value)
    assert "reopen" in str(info.value)  # the message says what to do
    assert_refuses_writes(log)
    log.close()  # still releases everything
    log.close()
    with SegmentLog(logdir, segment_size=SEGMENT) as again:
        rest = read_all(again)
        # Durable records are all there; the failed one may be (it reached the page cache).
        assert rest[:5] == durable and rest[5:] in ([], [b"not durable"])
        assert again.append(b"next") == len(rest)


def _every_waiter_meets_the_failure(log: SegmentLog, logdir: str,
                                    after_ack: Callable[[int, int], None]) -> None:
    """Twelve appenders; an fsync fails mid-run (``after_ack(thread, n)`` may inject it).
    Each appender either got its record acknowledged before the failure or raises the
    DurabilityError: no waiter is left asleep, none is told a record is durable that the
    failed fsync did not cover, and every acknowledged record is intact after a reopen."""
    acked: list[tuple[int, bytes]] = []
    failed: list[BaseException] = []
    start = threading.Barrier(12)

    def work(i: int) -> None:
        start.wait()
        try:
            for n in range(200):
                rec = record(i * 1000 + n, 100)
                acked.append((log.append(rec), rec))
                after_ack(i, n)
        except DurabilityError as exc:
            failed.append(exc)

    run_threads(work, 12)  # a waiter never woken would hang here
    assert len(failed) == 12, "every appender must meet the failure"
    assert all(exc.errno == errno.EIO for exc in failed)  # type: ignore[attr-defined]
    durable = log.stats()["durable_seq"]
    assert acked and max(seq for seq, _ in acked) <= durable, (
        "a record was acknowledged past the last successful sync")
    log.close()
    with SegmentLog(logdir, segment_size=1 << 20) as again:
        back = read_all(again)
    for seq, rec in acked:  # every acknowledged record, intact, at its sequence number
        assert back[seq] == rec


def test_fsync_failure_under_concurrent_appenders_reaches_every_waiter(logdir: str) -> None:
    """The Python group commit (the fault hook keeps the committer closed): appenders
    covered by the failing round and appenders queued for a later one."""
    log = SegmentLog(logdir, segment_size=1 << 20, fsync="always")
    log._fsync_fn = failing_fsync(after=40)  # type: ignore[assignment]
    _every_waiter_meets_the_failure(log, logdir, lambda i, n: None)


def _committer(log: SegmentLog) -> object:
    """The log's group committer (csrc/committer.c), opened by one locked append; skip
    where there is none (the pure-Python backend: its own group commit is tested above)."""
    if log._committer is None:
        pytest.skip("no C group committer with this backend")
    log.append(b"opens it")  # the first append takes the locked path, then it opens
    return log._committer


def test_committer_fsync_failure_fails_the_append_and_every_later_write(logdir: str) -> None:
    """The group committer fdatasyncs in C, past the _fsync_fn hook: its own test hook
    fails the next one. The append it was for raises, the log refuses every later write,
    and what was durable before is all there after a reopen."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="always")
    committer = _committer(log)
    need_test_hooks(impl)  # fail_next_fsync: the C core's test build only (SL_TESTING)
    durable = [b"opens it"] + [record(i, 100) for i in range(5)]
    for rec in durable[1:]:
        log.append(rec)
    committer.fail_next_fsync(errno.EIO)  # type: ignore[attr-defined]
    with pytest.raises(DurabilityError) as info:
        log.append(b"not durable")
    assert info.value.errno == errno.EIO and logdir in str(info.value)
    assert "reopen" in str(info.value)
    assert log.stats()["durable_seq"] == len(durable) - 1
    assert_refuses_writes(log)
    log.close()
    with SegmentLog(logdir, segment_size=SEGMENT) as again:
        rest = read_all(again)
        assert rest[:6] == durable and rest[6:] in ([], [b"not durable"])


def test_committer_fsync_failure_under_concurrent_appenders_reaches_every_waiter(
    logdir: str,
) -> None:
    """The same in the committer's rounds: one of its fdatasyncs fails mid-run."""
    log = SegmentLog(logdir, segment_size=1 << 20, fsync="always")
    committer = _committer(log)
    need_test_hooks(impl)  # fail_next_fsync: the C core's test build only (SL_TESTING)

    def inject(i: int, n: int) -> None:
        if i == 0 and n == 20:
            committer.fail_next_fsync(errno.EIO)  # type: ignore[attr-defined]

    _every_waiter_meets_the_failure(log, logdir, inject)


def test_replacing_the_fsync_hook_closes_the_committer(logdir: str) -> None:
    """The fault tests above replace _fsync_fn; the committer's fdatasyncs would bypass
    it, so it stays closed while the hook is not the default (every fsync then goes
    through the hook) and opens again once it is."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="always")
    _committer(log)
    seen: list[int] = []
    real = log._fsync_fn

    def counting(fd: int) -> None:
        seen.append(fd)
        real(fd)

    log._fsync_fn = counting  # type: ignore[assignment]
    for i in range(5):
        log.append(record(i, 50))
    assert len(seen) == 5, "an fsync bypassed the hook"
    log._fsync_fn = real  # type: ignore[assignment]
    rounds = log.stats()["fsyncs"]
    for i in range(5):
        log.append(record(i, 50))
    assert log.stats()["fsyncs"] == rounds + 5 and len(seen) == 5
    log.close()


def test_fsync_failure_in_append_batch_and_sync(logdir: str) -> None:
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="never")
    log.append_batch([b"a", b"b"])
    log.sync()
    log._fsync_fn = failing_fsync()  # type: ignore[assignment]
    log.append(b"c")  # fsync="never": nothing synced yet
    with pytest.raises(DurabilityError):
        log.sync()
    assert_refuses_writes(log)
    log.close()
    with SegmentLog(logdir, segment_size=SEGMENT) as again:
        assert read_all(again)[:2] == [b"a", b"b"]


def fsync_failing_for(name: str) -> Callable[[int], None]:
    """An fdatasync that fails with EIO for the file named ``name`` only."""

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fdatasync(fd)

    return fsync


def test_fsync_failure_of_a_segment_sealed_before_sync_fails_the_log(logdir: str) -> None:
    """fsync="never": a sync() syncs by name the sealed segments no writeback reached
    (here: found on open); an error there is an fsync error like any other, though the
    active segment syncs."""
    with SegmentLog(logdir, segment_size=SEGMENT, fsync="never") as log:
        while len(segment_files(logdir)) < 2:
            log.append(record(log.stats()["next_seq"], 500))
    sealed = os.path.basename(segment_files(logdir)[0])
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="never")
    log._fsync_fn = fsync_failing_for(sealed)  # type: ignore[assignment]
    with pytest.raises(DurabilityError):
        log.sync()
    assert_refuses_writes(log)
    log.close()


def test_sealed_segment_is_synced_by_the_writeback_thread_without_sync(
        logdir: str) -> None:
    """fsync="never": a sealed segment is fdatasynced in the background as soon as it is
    sealed, so sync() later finds it clean; no sync() is called here."""
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        os.fdatasync(fd)

    with SegmentLog(logdir, segment_size=SEGMENT, fsync="never") as log:
        log._fsync_fn = fsync  # type: ignore[assignment]
        first = os.path.basename(segment_files(logdir)[0])
        while len(segment_files(logdir)) < 3:
            log.append(record(log.stats()["next_seq"], 500))
        second = os.path.basename(segment_files(logdir)[1])
        deadline = time.monotonic() + 10
        while not {first, second} <= set(synced):
            assert time.monotonic() < deadline, f"sealed segments never synced: {synced}"
            time.sleep(0.01)
        assert log.stats()["durable_seq"] == -1, "a background sync made nothing durable"


def test_fsync_failure_in_the_writeback_thread_fails_the_log(logdir: str) -> None:
    """The writeback thread's fdatasync of a sealed segment fails: the kernel reports a
    writeback error once, so the thread fails the log itself (no sync() would see it)."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="never")
    log._fsync_fn = fsync_failing_for(os.path.basename(segment_files(logdir)[0]))  # type: ignore[assignment]
    deadline = time.monotonic() + 10
    with pytest.raises(DurabilityError):
        while True:
            log.append(record(log.stats()["next_seq"], 500))
            if len(segment_files(logdir)) > 1:
                assert time.monotonic() < deadline, "the writeback error never failed the log"
                time.sleep(0.001)
    assert_refuses_writes(log)
    log.close()


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_fsync_failure_of_a_new_segment_fails_the_log(logdir: str, fsync: str) -> None:
    """The rotation fsyncs the new segment's header: an error there is an fsync error
    like any other, never retried: the log refuses every later write, even if the disk
    seems to work again (the failing fsync here fails once only)."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync=fsync)
    acked: list[bytes] = []
    while log.stats()["write_offset"] + 1032 <= SEGMENT:
        rec = record(len(acked))
        log.append(rec)
        acked.append(rec)
    log.sync()
    calls = [0]

    def fail_once(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fdatasync(fd)

    log._fsync_fn = fail_once  # type: ignore[assignment]
    with pytest.raises(DurabilityError) as info:
        log.append(record(len(acked)))  # needs a new segment
    assert logdir in str(info.value)
    assert calls[0] == 1
    assert_refuses_writes(log)
    log.close()
    with SegmentLog(logdir, segment_size=SEGMENT) as again:
        assert read_all(again) == acked


def test_directory_fsync_failure_at_rotation_fails_the_log(logdir: str) -> None:
    """The new segment's name must be durable before a record in it is acknowledged:
    an error fsyncing the directory is an fsync error like any other."""
    log = SegmentLog(logdir, segment_size=SEGMENT, fsync="always")
    acked: list[bytes] = []
    while log.stats()["write_offset"] + 1032 <= SEGMENT:
        acked.append(record(len(acked)))
        log.append(acked[-1])

    def failing_dir_fsync(path: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    log._sync.fsync_dir = failing_dir_fsync  # type: ignore[assignment]
    with pytest.raises(DurabilityError) as info:
        log.append(record(len(acked)))  # needs a new segment
    assert logdir in str(info.value)
    assert_refuses_writes(log)
    log.close()
    with SegmentLog(logdir, segment_size=SEGMENT) as again:
        assert read_all(again) == acked


# ---------------------------------------------------------------------------- slow disk


def test_append_batch_stays_contiguous_while_a_rotation_waits_for_the_preparer(
    logdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (found by the kill -9 loop): a batch that rotated while the background
    thread was still preparing the next segment waited with the lock released, and other
    appenders' records landed in the middle of the batch."""
    real = segmentlog.segment.reserve_and_zero

    def slow_disk(path: str, size: int, *args: object, **kwargs: object) -> None:
        time.sleep(0.03)
        real(path, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("segmentlog.engine.preparer.reserve_and_zero", slow_disk)
    with SegmentLog(logdir, segment_size=8192, fsync="never") as log:
        stop = threading.Event()

        def single() -> None:
            while not stop.is_set():
                log.append(b"s")

        other = threading.Thread(target=single)
        other.start()
        try:
            spans = []
            for i in range(12):
                last = log.append_batch([record(1000 * i + k) for k in range(10)])
                spans.append(range(last - 9, last + 1))
        finally:
            stop.set()
            other.join()
        got = read_all(log)
        for i, span in enumerate(spans):
            assert [got[s] for s in span] == [record(1000 * i + k) for k in range(10)], (
                f"batch {i} is not contiguous at {span.start}..{span.stop - 1}")
        assert log.stats()["rotations"] > 12


def test_rotation_never_waits_for_the_read_through_of_the_next_segment(
    logdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync="never": a new segment is ready once reserved; reading it through only puts
    its zero pages in the page cache, so the writer takes it while that read still runs
    (here it never ends until the appends are done) and loses nothing."""
    from segmentlog.engine.preparer import Preparer

    release = threading.Event()
    started = threading.Event()

    def stuck_warm(self: Preparer, fd: int) -> None:
        started.set()
        release.wait()

    monkeypatch.setattr(Preparer, "warm", stuck_warm)
    records = [record(i, 500) for i in range(100)]
    try:
        with SegmentLog(logdir, segment_size=SEGMENT, fsync="never") as log:

            def append_all() -> None:
                for r in records:
                    log.append(r)

            worker = threading.Thread(target=append_all)
            worker.start()
            worker.join(timeout=30)
            assert not worker.is_alive(), "a rotation waited for the read-through"
            assert started.is_set()
            assert log.stats()["rotations"] >= 2
            release.set()
            assert read_all(log) == records
    finally:
        release.set()


# ---------------------------------------------------------------------------- locking


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=childenv.pythonpath())
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


TRY_OPEN = """
    import sys
    from segmentlog import LogLockedError, SegmentLog
    try:
        SegmentLog(sys.argv[1], segment_size=16384).close()
    except LogLockedError as exc:
        print("locked", exc.pid, exc, sep="|")
    else:
        print("opened")
"""


def test_second_process_gets_log_locked_error_naming_the_holder_pid(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SEGMENT) as log:
        log.append(b"x")
        out, err = run_python(TRY_OPEN, logdir).communicate(timeout=60)
        assert out.startswith("locked|"), (out, err)
        _, pid, message = out.strip().split("|", 2)
        assert pid == str(os.getpid())
        assert str(os.getpid()) in message and logdir in message
    out, err = run_python(TRY_OPEN, logdir).communicate(timeout=60)  # released at close
    assert out.strip() == "opened", (out, err)


def test_lock_of_a_killed_process_is_released(logdir: str) -> None:
    holder = run_python("""
        import sys, time
        from segmentlog import SegmentLog
        log = SegmentLog(sys.argv[1], segment_size=16384)
        log.append(b"from the holder")
        print("ready", flush=True)
        time.sleep(60)
    """, logdir)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready", holder.stderr
        with pytest.raises(LogLockedError) as info:
            SegmentLog(logdir, segment_size=SEGMENT)
        assert info.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    with SegmentLog(logdir, segment_size=SEGMENT) as log:  # the kernel dropped the flock
        assert read_all(log) == [b"from the holder"]
        with open(os.path.join(logdir, "lock")) as f:
            assert f.read().strip() == str(os.getpid())


# ---------------------------------------------------------------------------- misuse


def test_every_call_after_close_raises_log_closed_error(logdir: str) -> None:
    log = SegmentLog(logdir, segment_size=SEGMENT)
    log.append(b"x")
    batch = log.read_batch()
    log.close()
    log.close()  # twice is fine
    assert log.closed
    for call in (lambda: log.append(b"y"), lambda: log.append_batch([b"y"]),
                 log.read_batch, lambda: log.commit(batch), log.sync, log.rewind):
        with pytest.raises(LogClosedError, match="closed") as info:
            call()
        assert logdir in str(info.value)


def test_str_payloads_raise_type_error_and_write_nothing(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SEGMENT) as log:
        with pytest.raises(TypeError, match="encode"):
            log.append("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            log.append_batch([b"ok", "text"])  # type: ignore[list-item]
        assert log.stats()["next_seq"] == 0 and not log.read_batch()


def test_record_too_large_names_the_limit_and_writes_nothing(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SEGMENT) as log:
        biggest = log.max_record_size
        assert biggest == SEGMENT - 32 - 24
        for too_big in (bytes(biggest + 1), bytearray(biggest + 1)):
            with pytest.raises(RecordTooLargeError, match="segment_size") as info:
                log.append(too_big)
            assert str(biggest) in str(info.value)
        with pytest.raises(RecordTooLargeError):
            log.append_batch([b"small", bytes(biggest + 1)])
        assert log.stats()["next_seq"] == 0
        assert log.append(bytes(biggest)) == 0  # the largest fits exactly
        assert [len(r) for r in read_all(log)] == [biggest]


@pytest.mark.parametrize(("kwargs", "setting"), [
    ({"segment_size": 3 * 4096 + 100}, "segment_size"),
    ({"segment_size": 4096}, "segment_size"),
    ({"segment_size": SEGMENT, "fsync": "sometimes"}, "fsync"),
    ({"segment_size": SEGMENT, "max_total_size": 2 * SEGMENT - 1}, "max_total_size"),
    ({"segment_size": SEGMENT, "fsync_interval": 0}, "fsync_interval"),
])
def test_bad_settings_raise_config_error_naming_the_setting_and_create_nothing(
    logdir: str, kwargs: dict[str, object], setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting) as info:
        SegmentLog(logdir, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert not os.path.exists(logdir)
