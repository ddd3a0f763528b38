"""SegmentLog API: append, batches, reading, committing, reclaiming, limits, group commit."""

from __future__ import annotations

import os
import threading
import time

import pytest
from logtools import (
    SMALL,
    check_intact,
    read_all,
    reclaimed,
    record,
    segment_files,
    write_log,
)
from threadtools import run_threads

import segmentlog
from segmentlog import (
    ConfigError,
    LogClosedError,
    LogFullError,
    RecordTooLargeError,
    SegmentLog,
    checkpoint,
)


def test_append_returns_strictly_increasing_sequence_numbers(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        seqs = [log.append(record(i)) for i in range(50)]
        assert seqs == list(range(50))
        assert log.append_batch([b"a", b"b", b"c"]) == 52


def test_read_batch_returns_records_in_append_order(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        for i in range(200):
            log.append(record(i))
        batch = log.read_batch(max_records=30)
        assert (batch.first_seq, batch.last_seq, len(batch)) == (0, 29, 30)
        check_intact(batch.records, list(range(30)))
        check_intact(read_all(log), list(range(30, 200)))


def test_read_batch_on_empty_log_is_empty(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        batch = log.read_batch()
        assert len(batch) == 0 and not batch and batch.records == []


def test_max_bytes_caps_a_batch_but_returns_at_least_one_record(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        log.append_batch([b"x" * 100] * 10)
        assert len(log.read_batch(max_records=100, max_bytes=250)) == 2
        assert len(log.read_batch(max_records=100, max_bytes=10)) == 1


def test_successive_reads_continue_and_rewind_returns_to_commit(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        for i in range(100):
            log.append(record(i))
        first = log.read_batch(max_records=10)
        second = log.read_batch(max_records=10)
        assert second.first_seq == 10
        log.commit(first)
        log.rewind()
        again = log.read_batch(max_records=10)
        assert again.first_seq == 10 and again.records == second.records


def test_committing_a_later_batch_commits_the_earlier_ones(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="always") as log:
        for i in range(40):
            log.append(record(i))
        log.read_batch(max_records=10)
        second = log.read_batch(max_records=10)
        log.commit(second)
    with SegmentLog(logdir, segment_size=SMALL, fsync="always") as log:
        check_intact(read_all(log), list(range(20, 40)))


def test_uncommitted_records_are_read_again_after_reopen(logdir: str) -> None:
    write_log(logdir, 30)
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert len(log.read_batch(max_records=25)) == 25
    with SegmentLog(logdir, segment_size=SMALL) as log:
        check_intact(read_all(log), list(range(30)))


def test_records_span_many_segments_and_survive_reopen(logdir: str) -> None:
    write_log(logdir, 500)
    assert len(segment_files(logdir)) > 10
    with SegmentLog(logdir, segment_size=SMALL) as log:
        check_intact(read_all(log), list(range(500)))
        assert log.append(b"next") == 500


def test_commit_deletes_or_recycles_consumed_segments(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="always") as log:
        for i in range(500):
            log.append(record(i))
        many = len(segment_files(logdir))
        while batch := log.read_batch(max_records=50):
            log.commit(batch)
        reclaimed(log)
        assert len(segment_files(logdir)) == 1 < many
        assert log.stats()["pending_records"] == 0
        log.append(b"after")
        assert log.read_batch().records == [b"after"]


def test_recycled_segment_never_yields_its_old_records(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        for round_ in range(6):
            for i in range(60):
                log.append(record(round_ * 60 + i))
            out = read_all(log)
            check_intact(out, list(range(round_ * 60, round_ * 60 + 60)))
            log.rewind()
            while batch := log.read_batch(max_records=7):
                log.commit(batch)
            reclaimed(log)  # recycled before the next round's appends need a segment
        assert log.stats()["recycled"] > 0
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert read_all(log) == []


def test_append_batch_is_one_durability_point(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="always") as log:
        before = log.stats()["fsyncs"]
        log.append_batch([record(i) for i in range(100)])
        assert log.stats()["fsyncs"] - before == 1


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_lock_free_appends_race_batches_readers_and_rotations_losing_nothing(
    logdir: str, fsync: str
) -> None:
    """append frames through the cursor (with "always", the group committer) without the
    log's lock (WriterLock); batches, window advances, rotations, sync(), stats() and a
    committing reader all close and reopen it meanwhile (with "always", committer waiters
    then finish in Python, or in its next rounds). Every sequence number handed out holds
    exactly the payload it was returned for, none is skipped or doubled, every one is
    durable when its append returns, and a reopen finds them all."""
    threads, per_thread = 6, 400
    errors: list[BaseException] = []
    given: dict[int, bytes] = {}
    read: list[tuple[int, bytes]] = []
    with SegmentLog(logdir, segment_size=SMALL * 2, fsync=fsync, fsync_interval=0.002,
                    recycle=True) as log:
        done = threading.Event()

        def work(i: int) -> None:
            try:
                if i == threads:  # the consumer
                    while not done.is_set() or log.stats()["pending_records"]:
                        batch = log.read_batch(max_records=50)
                        read.extend(zip(range(batch.first_seq, batch.last_seq + 1),
                                        batch.records, strict=True) if batch else [])
                        if batch:
                            log.commit(batch)
                    return
                for n in range(per_thread):
                    p = f"[{i}:{n}]".encode() * (1 + (n * 7 + i) % 40)
                    if n % 50 == 7:
                        ps = [p + bytes([k]) for k in range(5)]
                        last = log.append_batch(ps)
                        given.update(zip(range(last - 4, last + 1), ps, strict=True))
                    else:
                        seq = log.append(p)
                        given[seq] = p
                        if fsync == "always" and log.stats()["durable_seq"] < seq:
                            errors.append(AssertionError(f"{seq} returned, not durable"))
                    if n % 97 == 0:
                        log.sync()
                        log.stats()
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        def run(i: int) -> None:
            work(i)
            if i < threads:
                finished.append(i)
                if len(finished) == threads:
                    done.set()

        finished: list[int] = []
        run_threads(run, threads + 1)
        assert not errors, errors
        assert sorted(given) == list(range(len(given)))
        assert read == sorted(given.items())
        assert log.stats()["rotations"] > 10
    with SegmentLog(logdir, segment_size=SMALL * 2, fsync="never") as log:
        assert log.stats()["next_seq"] == len(given)
        assert not log.read_batch()  # everything was committed


def test_group_commit_shares_fsyncs_between_threads(logdir: str) -> None:
    threads, per_thread = 16, 40
    with SegmentLog(logdir, segment_size=1 << 20, fsync="always") as log:
        start = threading.Barrier(threads)
        before = log.stats()["fsyncs"]

        def work(_: int) -> None:
            start.wait()
            for _ in range(per_thread):
                log.append(b"x" * 500)

        run_threads(work, threads)
        fsyncs = log.stats()["fsyncs"] - before
        assert log.stats()["durable_seq"] == threads * per_thread - 1
    # Without group commit every append would sync on its own.
    assert fsyncs < threads * per_thread


def test_group_commit_wakes_each_appender_only_when_its_record_is_durable(
    logdir: str,
) -> None:
    """A round's end wakes the followers it covered and one leader for the rest; with
    appenders and sync() callers mixed, every call still returns durable, none hangs."""
    threads, per_thread = 12, 30
    errors: list[BaseException] = []
    with SegmentLog(logdir, segment_size=1 << 20, fsync="always") as log:
        start = threading.Barrier(threads)

        def work(i: int) -> None:
            try:
                start.wait()
                for n in range(per_thread):
                    if i % 4 == 0 and n % 3 == 0:
                        before = log.stats()["next_seq"] - 1
                        log.sync()
                        assert log.stats()["durable_seq"] >= before
                    seq = log.append(b"y" * 200)
                    assert log.stats()["durable_seq"] >= seq
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        run_threads(work, threads)  # an appender never woken would hang here
        assert not errors, errors
        assert log.stats()["durable_seq"] == threads * per_thread - 1


def test_close_wakes_a_sync_waiting_behind_a_slow_fsync(logdir: str) -> None:
    log = SegmentLog(logdir, segment_size=SMALL, fsync="always")
    release, entered = threading.Event(), threading.Event()
    real = log._fsync_fn

    def slow(fd: int) -> None:
        entered.set()
        release.wait(10)
        real(fd)

    log._fsync_fn = slow
    leader = threading.Thread(target=log.append, args=(b"first",))
    leader.start()
    assert entered.wait(10)
    outcome: list[object] = []

    def syncer() -> None:
        try:
            log.sync()
            outcome.append("returned")
        except LogClosedError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=syncer)
    waiter.start()
    deadline = time.monotonic() + 10
    while not log._sync.gates:  # until the sync() waits behind the slow round
        assert time.monotonic() < deadline, "sync() never started waiting"
        time.sleep(0.001)
    closer = threading.Thread(target=log.close)
    closer.start()
    release.set()
    for t in (leader, waiter, closer):
        t.join(10)
        assert not t.is_alive()
    assert len(outcome) == 1
    with SegmentLog(logdir, segment_size=SMALL, fsync="always") as log:
        assert log.read_batch().records == [b"first"]


def test_sync_is_a_barrier_in_every_policy(logdir: str) -> None:
    for policy in ("never", "interval"):
        path = os.path.join(logdir, policy)
        with SegmentLog(path, segment_size=SMALL, fsync=policy) as log:
            seq = log.append(b"x")
            log.sync()
            assert log.stats()["durable_seq"] >= seq


def _recording_fsync(log: SegmentLog, synced: list[str],
                     during: object = None) -> None:
    """Make ``log`` record the name of every file it fdatasyncs (then sync it); call
    ``during()`` first, once, if given."""
    real = log._fsync_fn
    pending = [during] if during is not None else []

    def fsync(fd: int) -> None:
        while pending:
            pending.pop()()  # type: ignore[operator]
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    log._fsync_fn = fsync  # type: ignore[assignment]


@pytest.mark.parametrize("fsync", ["never", "interval"])
def test_sync_covers_every_segment_sealed_since_the_last_one(logdir: str, fsync: str) -> None:
    # fsync="never" used to close a segment at rotation and forget it: a sync() after
    # a rotation synced only the active segment, not the records before it.
    with SegmentLog(logdir, segment_size=SMALL, fsync=fsync, fsync_interval=60) as log:
        log.sync()
        synced: list[str] = []
        _recording_fsync(log, synced)
        for i in range(80):
            log.append(record(i, 300))
        holding = [os.path.basename(p) for p in segment_files(logdir)]
        assert len(holding) >= 3
        log.sync()
        assert set(holding) <= set(synced)


def test_never_policy_without_sync_forgets_consumed_segments(logdir: str) -> None:
    # What a sync() would have to sync stays bounded by the segments still on disk.
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        for i in range(2000):
            log.append(record(i, 300))
            if i % 50 == 49:
                log.commit(log.read_batch(1000))
        reclaimed(log)
        assert len(log._sync.unsynced_bases) <= 2 * len(segment_files(logdir))
        synced: list[str] = []
        _recording_fsync(log, synced)
        log.sync()
        assert set(synced) == {os.path.basename(p) for p in segment_files(logdir)}


def test_sync_survives_a_rotation_while_its_fsync_runs(logdir: str) -> None:
    # With fsync="never" a rotation closes the active segment's descriptor at once; a
    # sync() whose fsync runs meanwhile must not use (or report a failure of) it.
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        log.append(record(0, 300))
        first = os.path.basename(segment_files(logdir)[0])

        def rotate() -> None:
            t = threading.Thread(target=lambda: [log.append(record(i, 300))
                                                 for i in range(1, 80)])
            t.start()
            t.join(10)

        synced: list[str] = []
        _recording_fsync(log, synced, during=rotate)
        log.sync()
        assert first in synced
        assert len(segment_files(logdir)) >= 3
        log.sync()  # the log still works, and syncs what the rotation sealed
        assert set(map(os.path.basename, segment_files(logdir))) <= set(synced)
        assert len(read_all(log)) == 80


def _resident_bytes_of(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def test_sync_unmaps_the_pages_it_writes_back(logdir: str) -> None:
    # Writeback write-protects every written page still mapped writable, with a TLB
    # shootdown each (~1 us per record with fsync="interval"): a sync round unmaps
    # the pages below the write position first, keeping only the page being written.
    with SegmentLog(logdir, segment_size=8 << 20, fsync="interval",
                    fsync_interval=60) as log:
        path = segment_files(logdir)[0]
        for i in range(4000):  # ~1.3 MB: under the window the writer unmaps by itself
            log.append(record(i, 300))
        assert _resident_bytes_of(path) > 1 << 20
        log.sync()
        assert _resident_bytes_of(path) <= 128 << 10  # the page at the write position (and
        # the kernel's fault-around of it), not the megabyte written
        assert read_all(log)[-1] == record(3999, 300)


def test_interval_policy_syncs_in_the_background(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="interval", fsync_interval=0.01) as log:
        seq = log.append(b"x")
        done = threading.Event()
        for _ in range(500):
            if log.stats()["durable_seq"] >= seq:
                done.set()
                break
            done.wait(0.01)
        assert done.is_set()


def test_full_log_raises_and_writes_nothing(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, max_total_size=3 * SMALL, fsync="never") as log:
        appended = 0
        with pytest.raises(LogFullError, match="max_total_size"):
            while True:
                log.append(record(appended, 200))
                appended += 1
        with pytest.raises(LogFullError):
            log.append_batch([b"y" * 200] * 40)
        assert log.stats()["next_seq"] == appended
        assert read_all(log) == [record(i, 200) for i in range(appended)]


def test_full_log_accepts_again_after_commit(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, max_total_size=3 * SMALL, fsync="never") as log:
        with pytest.raises(LogFullError):
            while True:
                log.append(b"z" * 200)
        while batch := log.read_batch(max_records=5):
            log.commit(batch)
        log.append(b"z" * 200)


@pytest.mark.parametrize("recycle", [True, False])
@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_block_when_full_waits_for_the_consumer(logdir: str, fsync: str,
                                                recycle: bool) -> None:
    """A writer kept waiting for room by a full log, and a consumer committing as it
    reads: the reclaim thread frees (recycles or deletes) ~30 segments under both, and
    every record arrives once, in order."""
    with SegmentLog(logdir, segment_size=SMALL, max_total_size=3 * SMALL, fsync=fsync,
                    block_when_full=True, full_timeout=30, recycle=recycle) as log:
        total = 1000
        writer = threading.Thread(target=lambda: [log.append(record(i, 200))
                                                  for i in range(total)])
        writer.start()
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < total and time.monotonic() < deadline:
            batch = log.read_batch(max_records=10)
            got.extend(batch.records)
            if batch:
                log.commit(batch)
        writer.join(30)
        assert got == [record(i, 200) for i in range(total)]
        reclaimed(log)
        stats = log.stats()
        assert stats["reclaim_errors"] == 0
        assert stats["disk_bytes"] <= 3 * SMALL
        assert (stats["recycled"] > 0) == recycle


def test_block_when_full_times_out_with_log_full_error(logdir: str) -> None:
    log = SegmentLog(logdir, segment_size=SMALL, max_total_size=2 * SMALL, fsync="never",
                     block_when_full=True, full_timeout=0.05)
    with log, pytest.raises(LogFullError, match="stayed full"):
        while True:
            log.append(b"q" * 500)


def test_record_too_large_writes_nothing(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        with pytest.raises(RecordTooLargeError, match="segment_size"):
            log.append(b"x" * SMALL)
        with pytest.raises(RecordTooLargeError):
            log.append_batch([b"ok", b"x" * SMALL])
        assert log.stats()["next_seq"] == 0
        biggest = log.max_record_size
        assert log.append(b"m" * biggest) == 0
        assert log.read_batch().records == [b"m" * biggest]


def test_bytearray_and_memoryview_are_accepted_and_str_is_not(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        log.append(bytearray(b"ba"))
        log.append(memoryview(b"mv"))
        with pytest.raises(TypeError, match="bytes-like"):
            log.append("text")  # type: ignore[arg-type]
        assert log.read_batch().records == [b"ba", b"mv"]


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_append_batch_takes_any_bytes_like_and_keeps_what_it_was_given(
    logdir: str, fsync: str
) -> None:
    """append_batch's fast path joins the payloads: a bytearray changed after the call,
    a memoryview whose len() counts 4-byte items, or a generator must all come out as
    the bytes they were at the call; a str anywhere writes nothing."""
    ints = memoryview(bytes(range(12))).cast("i")  # len() 3, 12 bytes
    reused = bytearray(b"first")
    with SegmentLog(logdir, segment_size=SMALL, fsync=fsync) as log:
        log.append_batch([b"a", reused, memoryview(b"bc")])
        reused[:] = b"later"
        log.append_batch([ints, b"d"])
        log.append_batch(p for p in (b"e", b"f"))
        with pytest.raises(TypeError, match="bytes-like"):
            log.append_batch([b"g", "text"])  # type: ignore[list-item]
        assert log.read_batch().records == [
            b"a", b"first", b"bc", bytes(range(12)), b"d", b"e", b"f"]
        assert log.stats()["next_seq"] == 7


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"segment_size": 5000}, "segment_size"),
        ({"segment_size": 4096}, "segment_size"),
        ({"fsync": "sometimes"}, "fsync"),
        ({"fsync_interval": 0}, "fsync_interval"),
        ({"fsync_interval": float("inf")}, "fsync_interval"),  # once killed the flusher
        ({"fsync_interval": float("nan")}, "fsync_interval"),
        ({"full_timeout": float("nan")}, "full_timeout"),
        ({"full_timeout": "5"}, "full_timeout"),
        ({"full_timeout": -1}, "full_timeout"),
        ({"max_total_size": SMALL}, "max_total_size"),
        ({"max_total_size": -1}, "max_total_size"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(
    logdir: str, kwargs: dict[str, object], word: str
) -> None:
    with pytest.raises(ConfigError, match=word) as info:
        SegmentLog(logdir, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_use_after_close_raises_and_double_close_is_fine(logdir: str, fsync: str) -> None:
    log = SegmentLog(logdir, segment_size=SMALL, fsync=fsync)
    log.append(b"x")
    batch = log.read_batch()
    log.close()
    log.close()
    for call in (lambda: log.append(b"y"), lambda: log.append_batch([b"y"]), log.read_batch,
                 lambda: log.commit(batch), log.sync, log.rewind):
        with pytest.raises(LogClosedError):
            call()


def test_repr_tells_the_next_sequence_number_and_never_blocks(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        for _ in range(5):
            log.append(b"x")  # through the cursor: the log's own field lags until locked
        assert repr(log) == f"<SegmentLog {logdir!r} next_seq=5>"
        with log._lock:  # held (here by this thread): repr must not wait for it
            assert "next_seq>=" in repr(log)
    assert repr(log).endswith(" closed>")


def test_second_open_in_the_same_process_is_locked(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL):
        with pytest.raises(segmentlog.LogLockedError, match=str(os.getpid())) as info:
            SegmentLog(logdir, segment_size=SMALL)
        assert info.value.pid == os.getpid()
    SegmentLog(logdir, segment_size=SMALL).close()


def test_stats_report_pending_records_and_disk_use(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, max_total_size=100 * SMALL,
                    fsync="never") as log:
        for i in range(100):
            log.append(record(i))
        log.commit(log.read_batch(max_records=40))
        stats = log.stats()
        assert stats["pending_records"] == 60
        assert stats["pending_bytes"] > 0
        assert stats["disk_bytes"] >= stats["segments"] * SMALL
        assert 0 < stats["fill_ratio"] <= 1
        assert stats["backend"] == segmentlog.backend


def test_files_are_private(logdir: str) -> None:
    write_log(logdir, 10)
    assert os.stat(logdir).st_mode & 0o777 == 0o700
    for name in os.listdir(logdir):
        assert os.stat(os.path.join(logdir, name)).st_mode & 0o077 == 0, name


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_segments_are_preallocated_not_sparse(logdir: str, fsync: str) -> None:
    """Each policy prepares segments its own way (zeros + fdatasync, reserved + read
    through, zeros in the page cache): all are fully reserved and read as zeros past the
    last record."""
    with SegmentLog(logdir, segment_size=SMALL, fsync=fsync) as log:
        for i in range(200):
            log.append(record(i))
        end = log.stats()["write_offset"]
    paths = segment_files(logdir)
    assert len(paths) > 2
    for path in paths:
        st = os.stat(path)
        assert st.st_size == SMALL
        assert st.st_blocks * 512 >= st.st_size
    with open(paths[-1], "rb") as f:
        assert f.read()[end:] == bytes(SMALL - end)


def test_full_timeout_inf_waits_like_none(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, full_timeout=float("inf")) as log:
        assert log.full_timeout is None


def test_checkpoint_beyond_the_sequence_limit_is_not_trusted(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL) as log:
        log.append(b"a")
    checkpoint.write(logdir, (1 << 64) - 3, durable=True)
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert log.read_batch().records == [b"a"]  # read again, never skipped
        assert log.append(b"b") == 1
