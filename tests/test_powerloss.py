"""Power loss: every acknowledged record survives every crash state (tests/powerloss.py).

Workloads under each fsync policy (appends, batches, sync, rotation, reads, commits with
recycling and with deletion, a reopen, a damaged record dead-lettered, appender threads)
run under the recording file system; then every crash state of the run, conservative
and ALICE-like, is reopened with a real SegmentLog and checked. The layer's own tests
show it catches a broken durability rule, and pin its model on small hand-made runs.

``SEGMENTLOG_POWERLOSS_LONG=<n>``: the exhaustive mode, ``n`` seeds of longer workloads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import powerloss as pl
import pytest

from segmentlog import SegmentLog, _fs, checkpoint
from segmentlog._format import frame_size

SEGMENT = 16384
LONG = int(os.environ.get("SEGMENTLOG_POWERLOSS_LONG", "0") or 0)
SEEDS = range(1, LONG + 1) if LONG else [1]
STEPS = 1500 if LONG else 200
ALICE_EVERY = 1 if LONG else 4  # ALICE-like states at every n-th crash point

SCENARIOS = {
    # consumed segments recycled (renamed to next.prep / spare.prep)
    "recycle": {},
    # consumed segments deleted (renamed to *.tmp, unlinked), and reclaimed by the writer
    # when max_total_size (two segments) is reached
    "delete": {"recycle": False, "max_total_size": 2 * SEGMENT},
    # a record damaged on the disk, dead-lettered; the log closed and reopened midway
    "damage": {"damage": True, "reopen_at": STEPS // 5},
    # three appender threads (group commit with fsync="always") while one consumes
    "threads": {"threads": 3},
}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Crash states make the log warn (missing checkpoint, lost tails): expected here."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _verify(tmp_path: Any, w: pl.Workload, alice: int = ALICE_EVERY) -> tuple[int, list[str]]:
    rec = pl.run(os.path.join(tmp_path, "log"), w)
    return pl.verify(rec, w, os.path.join(tmp_path, "scratch"), alice=alice)


# ---------------------------------------------------------------------- the workloads


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_every_acknowledged_record_survives_every_crash_state(
    tmp_path: Any, fsync: str, scenario: str, seed: int
) -> None:
    w = pl.Workload(fsync=fsync, seed=seed, steps=STEPS, segment_size=SEGMENT,
                    **SCENARIOS[scenario])
    states, problems = _verify(tmp_path, w)
    assert states > 20, "the run left too few crash states to mean anything"
    assert not problems, "\n".join(problems[:10])


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_a_second_crash_during_or_after_recovery_loses_nothing(
    tmp_path: Any, fsync: str
) -> None:
    """Crash states of a first run (torn writes, half-done renames among them) are the
    start of a second run, recorded from its open on: recovery's own writes (torn tails
    zeroed, leftovers deleted, a checkpoint written, a segment started past a checkpoint
    ahead of the data) must survive a crash as well, and so must every record the first
    reopen returned."""
    first = pl.Workload(fsync=fsync, seed=7, steps=STEPS, segment_size=SEGMENT,
                        damage=True)
    rec = pl.run(os.path.join(tmp_path, "first"), first)
    scratch = os.path.join(tmp_path, "scratch")
    problems = []
    for i, start in enumerate(pl.starts(rec, first, scratch, 6 if LONG else 2)):
        second = dataclasses.replace(first, seed=100 + i, steps=STEPS // 2, damage=False,
                                     start=start)
        rec2 = pl.run(os.path.join(tmp_path, f"second-{i}"), second)
        _, found = pl.verify(rec2, second, scratch, alice=ALICE_EVERY)
        problems += [f"from {start.origin}: {p}" for p in found]
    assert not problems, "\n".join(problems[:10])


@pytest.mark.parametrize("recycle", [True, False])
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_segments_the_writer_reclaims_at_max_total_size_survive_power_loss(
    tmp_path: Any, fsync: str, recycle: bool
) -> None:
    """The writer's own reclaiming (max_total_size reached at rotation: a segment below
    the durable checkpoint that commit could not free, as it was still being written)
    deletes or recycles only what the durable checkpoint covers, at every crash point."""
    d = os.path.join(tmp_path, "log")
    os.makedirs(d)
    rec = pl.Recorder(d)
    w = pl.Workload(fsync=fsync, seed=0, segment_size=SEGMENT, recycle=recycle,
                    max_total_size=2 * SEGMENT)
    reclaimed = 0
    with _fs.installed(rec):
        log = SegmentLog(d, segment_size=SEGMENT, fsync=fsync, recycle=recycle,
                         max_total_size=2 * SEGMENT)
        real = log._retention.reclaim_for_writer

        def counting() -> bool:
            nonlocal reclaimed
            freed = real()
            reclaimed += freed
            return freed

        log._retention.reclaim_for_writer = counting  # type: ignore[method-assign]
        record = bytes(1000)
        n = 0

        def append() -> None:
            nonlocal n
            data = b"%06d|" % n + record
            seq = log.append(data)
            rec.mark("appended", (seq, [data]))
            n += 1

        for _ in range(3):
            # Fill the active segment up to its last frame, commit everything while it
            # is still active, then write on through two more rotations.
            while log.stats()["write_offset"] + frame_size(6 + len(record)) <= SEGMENT:
                append()
            while batch := log.read_batch(max_records=1000):
                rec.mark("commit", batch.last_seq + 1)
                log.commit(batch)
            if fsync != "always":
                log.close()  # the checkpoint is written (durable with "interval")
                log = SegmentLog(d, segment_size=SEGMENT, fsync=fsync, recycle=recycle,
                                 max_total_size=2 * SEGMENT)
                real = log._retention.reclaim_for_writer
                log._retention.reclaim_for_writer = counting  # type: ignore[method-assign]
            for _ in range(20):
                append()
            log.sync()
            rec.mark("acked", n - 1)
        log.close()
    _, problems = pl.verify(rec, w, os.path.join(tmp_path, "scratch"), alice=1)
    assert reclaimed, "the writer never reclaimed a segment"
    assert not problems, "\n".join(problems[:10])


# ---------------------------------------------------------------------- regressions


def test_a_new_deadletter_file_survives_power_loss_once_the_reader_moved_past(
    tmp_path: Any,
) -> None:
    """deadletter.append fsynced the file but not the directory when it created it: a
    power loss then took the file's name, and with it every entry, though the reader had
    already moved past the damage (and a commit may delete the segment holding it)."""
    w = pl.Workload(fsync="always", seed=3, steps=120, segment_size=SEGMENT, damage=True)
    rec = pl.run(os.path.join(tmp_path, "log"), w)
    assert any(e[:2] == ("mark", "deadletter") for e in rec.events), "no damage was read"
    _, problems = pl.verify(rec, w, os.path.join(tmp_path, "scratch"), alice=0)
    assert not [p for p in problems if "dead-letter entries lost" in p], problems[:3]


@pytest.mark.parametrize("sealed", [False, True])
def test_sync_after_a_reopen_makes_the_records_found_at_open_durable(
    tmp_path: Any, sealed: bool
) -> None:
    """Records found at open are "appended before" a later sync(): on disk on its return.
    ``sealed``: they fill a segment and more, and a new record is appended before the
    sync (its fsync covers the active segment only)."""
    d = os.path.join(tmp_path, "log")
    os.makedirs(d)
    rec = pl.Recorder(d)
    count = 60 if sealed else 10  # 60 fill more than one segment
    with _fs.installed(rec):
        log = SegmentLog(d, segment_size=SEGMENT, fsync="never")
        for i in range(count):
            log.append(b"record %d " % i + bytes(300))
        log.close()  # with "never" closing makes nothing durable
        log = SegmentLog(d, segment_size=SEGMENT, fsync="never")
        if sealed:
            log.append(b"after the reopen")
            count += 1
        log.sync()  # "everything appended before the call is on disk on return"
        log.close()
    state = list(pl.crash_states(rec))[-1]
    got = pl.reopen(state.files, os.path.join(tmp_path, "scratch"), SEGMENT, "never")
    assert got.error is None
    assert sum(len(records) for _, _, records in got.batches) == count


# ---------------------------------------------------------------------- the layer catches


def test_layer_catches_records_in_a_segment_whose_name_was_never_made_durable(
    tmp_path: Any,
) -> None:
    """Without the directory fsync after a new segment's rename, its records are
    acknowledged in a file a power loss removes: the layer must say so."""
    def no_dir_fsync(log: SegmentLog, rec: pl.Recorder) -> None:
        log._sync.fsync_dir = lambda path: None  # type: ignore[assignment]

    w = pl.Workload(fsync="always", seed=2, steps=150, segment_size=SEGMENT,
                    tamper=no_dir_fsync)
    _, problems = _verify(tmp_path, w, alice=0)
    assert any("acknowledged records lost" in p for p in problems), problems[:3]


def test_layer_catches_a_sync_that_skips_sealed_segments(tmp_path: Any) -> None:
    """sync() must fdatasync every sealed segment with unsynced records, not only the
    active one."""
    def active_only(log: SegmentLog, rec: pl.Recorder) -> None:
        def fsync(fd: int) -> None:
            if log._writer.active is not None and fd == log._writer.active.fd:
                rec.fdatasync(fd)

        log._fsync_fn = fsync  # type: ignore[assignment]

    w = pl.Workload(fsync="interval", seed=2, steps=200, segment_size=SEGMENT,
                    tamper=active_only)
    _, problems = _verify(tmp_path, w, alice=0)
    assert any("acknowledged records lost" in p for p in problems), problems[:3]


def test_layer_catches_a_segment_deleted_before_the_checkpoint_past_it_is_durable(
    tmp_path: Any,
) -> None:
    """The rule "checkpoint durable before a consumed segment is deleted", broken on
    purpose: the durable checkpoint write is moved after the deletion. A crash in between
    leaves the old checkpoint pointing into records that are gone."""
    def late_checkpoint(log: SegmentLog, rec: pl.Recorder) -> None:
        write = log._retention.write_checkpoint
        unlink = log._retention.unlink

        def deferred(durable: bool) -> None:
            if not durable:
                write(durable)
                return
            # Pretend it is durable now; the unlink below writes it.
            retention = log._retention
            retention.checkpoint_seq, retention.checkpoint_durable = retention.committed_seq, True
            with log._lock:
                log._retention.durable_committed = log._retention.committed_seq

        def unlink_then_checkpoint(path: str) -> None:
            unlink(path)
            write(True)

        log._retention.write_checkpoint = deferred  # type: ignore[method-assign]
        log._retention.unlink = unlink_then_checkpoint

    w = pl.Workload(fsync="always", seed=2, steps=300, segment_size=SEGMENT,
                    recycle=False, tamper=late_checkpoint)
    _, problems = _verify(tmp_path, w, alice=0)
    assert any("acknowledged records lost" in p and "checkpoint" in p for p in problems), \
        problems[:3]


# ---------------------------------------------------------------------- the model


def _files(rec: pl.Recorder, index: int | None = None) -> dict[str, bytes]:
    states = [s for s in pl.crash_states(rec) if index is None or s.index <= index]
    return states[-1].files


def _open(path: str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    return _fs.fs.open(path, flags, 0o600)


def test_model_unsynced_data_and_unsynced_names_are_lost(tmp_path: Any) -> None:
    d = os.fspath(tmp_path)
    rec = pl.Recorder(d)
    with _fs.installed(rec):
        fd = _open(os.path.join(d, "a"))
        _fs.fs.pwrite(fd, b"synced", 0)
        _fs.fs.fdatasync(fd)
        _fs.fs.pwrite(fd, b"SYNCED, then more", 0)
        os.close(fd)
        assert _files(rec) == {}, "a name never made durable is not there"
        _fs.fs.fsync_dir(d)
        assert _files(rec) == {"a": b"synced"}, "only what the fdatasync saw"
        fd = _open(os.path.join(d, "b"))
        _fs.fs.posix_fallocate(fd, 0, 4096)
        os.close(fd)
        _fs.fs.fsync_dir(d)
        assert _files(rec)["b"] == b"", "reserved but never synced: empty"
        _fs.fs.rename(os.path.join(d, "a"), os.path.join(d, "c"))
        _fs.fs.unlink(os.path.join(d, "b"))
        assert set(_files(rec)) == {"a", "b"}, "rename and unlink not yet durable"
        _fs.fs.fsync_dir(d)
        assert _files(rec) == {"c": b"synced"}, "the content follows the file, not the name"


def test_model_alice_variants_cover_metadata_prefixes_and_torn_writes(tmp_path: Any) -> None:
    d = os.fspath(tmp_path)
    rec = pl.Recorder(d)
    with _fs.installed(rec):
        fd = _open(os.path.join(d, "log.txt"))
        _fs.fs.write(fd, b"0123456789")
        _fs.fs.fdatasync(fd)
        _fs.fs.fsync_dir(d)
        _fs.fs.write(fd, b"abcdefgh")
        os.close(fd)
        fd = _open(os.path.join(d, "t"))
        _fs.fs.rename(os.path.join(d, "t"), os.path.join(d, "u"))
        os.close(fd)
    last = [s for s in pl.crash_states(rec, alice=1) if s.index == len(rec.events)]
    by_variant = {s.variant: s.files for s in last}
    assert by_variant["conservative"] == {"log.txt": b"0123456789"}
    assert by_variant["meta[:1]"] == {"log.txt": b"0123456789", "t": b""}
    assert by_variant["meta[:2]"] == {"log.txt": b"0123456789", "u": b""}
    assert by_variant["data-all"]["log.txt"] == b"0123456789abcdefgh"
    assert by_variant["data-half"]["log.txt"] == b"0123456789abcd"
    assert by_variant["data-sizes"]["log.txt"] == b"0123456789" + bytes(8)


def test_seam_default_calls_the_os_function_when_it_runs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shim on os (the benchmark's fsync counter) sees the seam's calls, and the
    default fdatasync is one object, so a log can tell it from a replacement."""
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    fd = _fs.fs.open(os.path.join(tmp_path, "f"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _fs.fs.fdatasync(fd)
    finally:
        os.close(fd)
    assert calls == [fd]
    assert _fs.fs is _fs.DEFAULT and _fs.fs.fdatasync is _fs.DEFAULT.fdatasync


def test_layer_notices_a_directory_change_made_past_the_seam(tmp_path: Any) -> None:
    d = os.fspath(tmp_path)
    rec = pl.Recorder(d)
    with _fs.installed(rec):
        os.close(_open(os.path.join(d, "a")))
        rec.check_directory()
        os.rename(os.path.join(d, "a"), os.path.join(d, "b"))  # not through the seam
    with pytest.raises(pl.SeamBypassed, match=r"\['b'\] the seam never saw made"):
        rec.check_directory()


def test_a_log_opened_under_a_replaced_seam_fdatasyncs_every_record_through_it(
    tmp_path: Any,
) -> None:
    """The C group committer's fdatasyncs would pass the seam by: a log opened under a
    replaced seam keeps it closed, so each durable append is one recorded sync."""
    d = os.path.join(tmp_path, "log")
    os.makedirs(d)
    rec = pl.Recorder(d)
    with _fs.installed(rec):
        log = SegmentLog(d, segment_size=SEGMENT, fsync="always")
        segment = rec.live["00000000000000000000.seg"]

        def syncs() -> int:  # of the segment (the preparer syncs next.prep meanwhile)
            return sum(e[0] == "sync" and e[1] == segment for e in rec.events)

        before = syncs()
        for i in range(20):
            log.append(b"record %d" % i)
        after = syncs()
        log.close()
    assert after - before == 20
    assert not rec.errors


def test_checkpoint_write_goes_through_the_seam(tmp_path: Any) -> None:
    d = os.fspath(tmp_path)
    rec = pl.Recorder(d)
    with _fs.installed(rec):
        checkpoint.write(d, 42, durable=True)
    assert [e[0] for e in rec.events] == ["create", "write", "sync", "rename", "dirsync"]
    assert checkpoint.decode(_files(rec)["checkpoint"]) == (42, None)


def test_a_durable_rotation_makes_the_old_segments_tail_durable_before_the_new_name(
        tmp_path: Any) -> None:
    """fsync="always", a batch spanning a rotation: the new segment's name became durable
    before the old segment's last frames, and a crash in between reported those
    never-acknowledged records as missing (damage) though nothing acknowledged was lost."""
    fsync = "always"
    d = os.path.join(tmp_path, "log")
    os.makedirs(d)
    rec = pl.Recorder(d)
    with _fs.installed(rec):
        log = SegmentLog(d, segment_size=SEGMENT, fsync=fsync)
        log.append_batch([b"%d" % i + bytes(300) for i in range(80)])  # > one segment
        log.close()
    first = "00000000000000000000.seg"
    fid = rec.live[first]
    with open(os.path.join(d, first), "rb") as f:
        final = f.read().rstrip(b"\0")
    rotation = next(i for i, e in enumerate(rec.events)
                    if e[0] == "rename" and e[1] == "next.prep" and e[2] != first)
    synced = [e[2] for e in rec.events[:rotation] if e[0] == "sync" and e[1] == fid]
    assert synced and synced[-1].rstrip(b"\0") == final
