"""The file store beyond the conformance suite: permissions, corrupt records, faults,
the mapping of the original's parameters onto the segment log."""

from __future__ import annotations

import base64
import errno
import os
import stat
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from logtools import flip_bit, frames, segment_files
from prometheus_client import CollectorRegistry

from segmentlog import SegmentLog
from segmentlog.errors import (
    BackingStoreError,
    BackingStoreFull,
    ConfigError,
    RecordTooLargeError,
)
from segmentlog.store import BackingStore, FileStore, create_backing_store
from segmentlog.store.file import JSON_DEADLETTER_NAME

SMALL = 8192


def ev(i: int) -> dict[str, Any]:
    return {"id": f"event-{i}", "seq": i, "action": "create", "outcome": "success"}


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def drain(store: BackingStore) -> list[int]:
    out: list[int] = []
    while True:
        events, commit = store.read_batch()
        if commit is None:
            return out
        out.extend(e["seq"] for e in events)
        commit()


def errors(reg: CollectorRegistry, operation: str) -> float | None:
    return reg.get_sample_value(
        "audittools_backing_store_errors_total", {"store": "file", "operation": operation}
    )


# -- permissions ----------------------------------------------------------------------------


def test_new_directory_is_0700_and_every_file_0600(tmp_path: Any) -> None:
    d = str(tmp_path / "nested" / "audit")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        store.write_many([ev(i) for i in range(50)])  # several segments
        drain(store)
        own = store.log.directory  # this process's log inside the shared directory
        paths = [d, os.path.dirname(own), own] + [
            os.path.join(where, n) for where in (d, own) for n in os.listdir(where)]
        assert any(p.endswith(".seg") for p in paths)
        for path in paths:
            assert mode(path) & 0o077 == 0, path
    assert mode(d) == 0o700


def test_existing_open_directory_is_tightened_to_0700(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    os.mkdir(d, 0o755)
    os.chmod(d, 0o755)
    FileStore(d, registry=CollectorRegistry()).close()
    assert mode(d) == 0o700


def test_json_dead_letter_file_is_0600(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(b"not json")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        assert store.read_batch() == ([], None)
    assert mode(os.path.join(d, JSON_DEADLETTER_NAME)) == 0o600


# -- corrupt records --------------------------------------------------------------------------


def test_record_that_is_not_json_is_dead_lettered_and_the_store_keeps_working(
    tmp_path: Any,
) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(orjson.dumps(ev(0)))
        log.append(b"{torn json")  # passes its checksum, is not JSON
        log.append(b"[1, 2]")  # JSON, but not an event
        log.append(orjson.dumps(ev(3)))
    reg = CollectorRegistry()
    with FileStore(d, max_file_size=SMALL, registry=reg) as store:
        # The drain's encoded read dead-letters them as read_batch does, and hands over
        # the stored bytes of the sound ones.
        bodies, _, _ = store.read_encoded_up_to(10)
        assert bodies == [orjson.dumps(ev(0)), orjson.dumps(ev(3))]
        events, _ = store.read_batch()
        assert [e["seq"] for e in events] == [0, 3]
        store.read_batch()  # read again without commit: dead-lettered once only
        assert errors(reg, "read_unmarshal") == 6  # counted per read, kept once
        store.write(ev(4))
        assert drain(store) == [0, 3, 4]
    with open(os.path.join(d, JSON_DEADLETTER_NAME), "rb") as f:
        lines = [orjson.loads(x) for x in f]
    assert [(x["seq"], x["segment"]) for x in lines] == [
        (1, "00000000000000000000.seg"), (2, "00000000000000000000.seg")]
    assert base64.b64decode(lines[0]["raw_base64"]) == b"{torn json"
    assert lines[0]["reason"].startswith("invalid JSON")
    assert lines[1]["reason"] == "not a JSON object"
    assert base64.b64decode(lines[1]["raw_base64"]) == b"[1, 2]"


def test_a_foreign_segment_named_file_does_not_crash_the_drain_of_a_record_not_json(
    tmp_path: Any,
) -> None:
    # Issue 15: "notes.seg" (not the log's: not 20 digits) made the dead-letter step
    # raise a raw ValueError, and the read had already moved past the batch: the next
    # read found nothing although the good record was still pending.
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(b"not json at all")
        log.append(orjson.dumps(ev(1)))
    with open(os.path.join(d, "notes.seg"), "wb") as f:
        f.write(b"operator's notes, not JSON\n")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        bodies, ids, commit = store.read_encoded_up_to(10)
        assert (bodies, ids) == ([orjson.dumps(ev(1))], ["event-1"])
        assert commit is not None
        commit()
        assert store.pending() == 0
    with open(os.path.join(d, JSON_DEADLETTER_NAME), "rb") as f:
        [entry] = [orjson.loads(x) for x in f]
    assert (entry["seq"], entry["segment"]) == (0, "00000000000000000000.seg")
    assert base64.b64decode(entry["raw_base64"]) == b"not json at all"
    with open(os.path.join(d, "notes.seg"), "rb") as f:
        assert f.read() == b"operator's notes, not JSON\n"  # not ours: left alone


def test_a_read_that_fails_while_dead_lettering_skips_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(b"not json")
        log.append(orjson.dumps(ev(1)))
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        real_open = os.open

        def no_dead_letter_file(path: Any, *args: Any, **kw: Any) -> int:
            if str(path).endswith(JSON_DEADLETTER_NAME):
                raise OSError(errno.EROFS, "Read-only file system", path)
            return real_open(path, *args, **kw)

        monkeypatch.setattr(os, "open", no_dead_letter_file)
        with pytest.raises(BackingStoreError, match="read failed"):
            store.read_batch()
        monkeypatch.undo()
        # Read again from the same records: the bad one is kept (not taken for "kept
        # already" because the failed attempt had noted it), the good one read.
        events, commit = store.read_batch()
        assert [e["seq"] for e in events] == [1]
        assert commit is not None
    with open(os.path.join(d, JSON_DEADLETTER_NAME), "rb") as f:
        [entry] = [orjson.loads(x) for x in f]
    assert base64.b64decode(entry["raw_base64"]) == b"not json"


def test_a_symlinked_json_dead_letter_file_is_not_followed(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(b"not json")
        log.append(orjson.dumps(ev(1)))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious\n")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        # Placed while the store runs (at open it is refused: test_special_files).
        os.symlink(target, os.path.join(d, JSON_DEADLETTER_NAME))
        with pytest.raises(BackingStoreError, match=JSON_DEADLETTER_NAME):
            store.read_batch()
        os.unlink(os.path.join(d, JSON_DEADLETTER_NAME))
        events, _ = store.read_batch()  # moved away: kept in a new file, read goes on
        assert [e["seq"] for e in events] == [1]
    assert target.read_bytes() == b"precious\n"


def test_a_fifo_named_like_the_json_dead_letter_file_does_not_hang_the_store(
    tmp_path: Any,
) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(b"not json")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store, \
            pytest.raises(BackingStoreError, match="not a regular file"):
        # Placed while the store runs: opening it to append would block forever.
        os.mkfifo(os.path.join(d, JSON_DEADLETTER_NAME))
        store.read_batch()


def test_dead_lettered_record_is_not_kept_twice_after_a_restart(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(b"nope")
        log.append(orjson.dumps(ev(1)))
    for _ in range(2):  # read, crash before commit, read again
        with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
            events, _ = store.read_batch()
            assert [e["seq"] for e in events] == [1]
    with open(os.path.join(d, JSON_DEADLETTER_NAME), "rb") as f:
        assert len(f.readlines()) == 1


def test_batch_of_only_unparseable_records_is_consumed_and_reading_goes_on(
    tmp_path: Any,
) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append_batch([b"x", b"y", b"z"])
        log.append(orjson.dumps(ev(3)))
    with FileStore(d, max_file_size=SMALL, batch_size=3, registry=CollectorRegistry()) as s:
        assert drain(s) == [3]
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as s:
        assert s.read_batch() == ([], None)


def test_pending_leaves_out_dead_lettered_records_also_after_a_restart(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    with SegmentLog(d, segment_size=SMALL) as log:
        log.append(orjson.dumps(ev(0)))
        log.append(b"{torn json")
        log.append(b"[1, 2]")
        log.append(orjson.dumps(ev(3)))
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        assert store.pending() == 4  # not read yet: the store cannot know (documented)
        events, _ = store.read_batch()
        assert [e["seq"] for e in events] == [0, 3]
        assert store.pending() == 2  # the two bad records are in the dead-letter file
        # closed without commit: the batch is read again after the restart
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        assert store.pending() == 2  # known from deadletter-json.jsonl before any read
        events, commit = store.read_batch()
        assert commit is not None
        commit()
        assert store.pending() == 0
        store.write(ev(4))
        assert store.pending() == 1


def test_record_failing_its_checksum_is_skipped_kept_and_counted(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as store:
        store.write_many([ev(i) for i in range(4)])
        own = store.log.directory
    (seg,) = segment_files(own)  # left in the directory: its events are pending
    offset, seq, length = frames(seg)[1]
    assert seq == 1
    flip_bit(seg, offset + 24 + length // 2)  # a bit inside record 1's payload
    reg = CollectorRegistry()
    with FileStore(d, max_file_size=SMALL, registry=reg) as store:
        assert drain(store) == [0, 2, 3]
        store.update_metrics()
        assert errors(reg, "read_corrupt") == 1
        store.update_metrics()
        assert errors(reg, "read_corrupt") == 1  # a delta, not the total again
        assert store.log.directory == own  # the free log was claimed, not a new one
    assert os.path.exists(os.path.join(own, "deadletter.jsonl"))


# -- faults --------------------------------------------------------------------------------


def test_full_log_is_backing_store_full_and_an_fsync_failure_is_not(tmp_path: Any) -> None:
    reg = CollectorRegistry()
    store = FileStore(str(tmp_path / "a"), max_file_size=SMALL, max_total_size=2 * SMALL,
                      registry=reg)
    with pytest.raises(BackingStoreFull, match="max_total_size"):
        for i in range(1000):
            store.write(ev(i))
    store.close()

    store = FileStore(str(tmp_path / "b"), registry=reg, name="b")

    def broken_fsync(fd: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    store.log._fsync_fn = broken_fsync  # the log's fault hook
    with pytest.raises(BackingStoreError) as info:
        store.write(ev(0))
    assert not isinstance(info.value, BackingStoreFull)
    assert reg.get_sample_value(
        "audittools_backing_store_errors_total", {"store": "b", "operation": "write"}) == 1
    store.close()


def test_second_store_on_the_same_directory_gets_a_log_of_its_own(tmp_path: Any) -> None:
    # Issue 16: workers share one configuration; LogLockedError refused the second.
    d = str(tmp_path / "audit")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as a, \
            FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as b:
        assert a.log.directory != b.log.directory
        a.write(ev(1))
        b.write(ev(2))
        assert drain(a) == [1] and drain(b) == [2]


def test_unwritable_directory_is_a_backing_store_error_naming_it(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BackingStoreError, match="file"):
        FileStore(str(blocker / "audit"), registry=CollectorRegistry())


# -- parameters ------------------------------------------------------------------------------


def test_max_file_size_is_rounded_up_to_whole_pages(tmp_path: Any) -> None:
    store = create_backing_store(
        f'{{"type":"file","params":{{"directory":"{tmp_path / "a"}","max_file_size":1000}}}}',
        registry=CollectorRegistry(),
    )
    assert isinstance(store, FileStore)
    assert store.log.segment_size == 2 * os.sysconf("SC_PAGE_SIZE")
    store.close()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_every_fsync_policy_stores_and_reopens(tmp_path: Any, fsync: str) -> None:
    d = str(tmp_path / "audit")
    with FileStore(d, fsync=fsync, registry=CollectorRegistry()) as store:
        assert store.log.fsync == fsync
        store.write(ev(0))
        store.write_many([ev(1), ev(2)])
    with FileStore(d, fsync=fsync, registry=CollectorRegistry()) as store:
        assert drain(store) == [0, 1, 2]


def test_metrics_report_bytes_files_and_events(tmp_path: Any) -> None:
    reg = CollectorRegistry()
    d = str(tmp_path / "a")
    with FileStore(d, max_file_size=SMALL, registry=reg) as store:
        store.write_many([ev(i) for i in range(300)])  # several segments
        store.update_metrics()
        get = reg.get_sample_value
        assert get("audittools_backing_store_events", {"store": "file"}) == 300
        files = get("audittools_backing_store_files_count", {"store": "file"})
        size = get("audittools_backing_store_size_bytes", {"store": "file"})
        segments = len(segment_files(store.log.directory))
        assert segments >= 3
        # Segments, plus the next one if the background preparer had made it already.
        assert files is not None and segments <= files <= segments + 1
        assert size == files * SMALL  # bytes on disk: segments are preallocated
        drain(store)
        store.update_metrics()
        assert get("audittools_backing_store_events", {"store": "file"}) == 0
        # Consumed segments are reclaimed: recycled at once, or unlinked by the log's
        # reclaim thread (counted until they are gone).
        deadline = time.monotonic() + 30
        while True:
            store.update_metrics()
            after = get("audittools_backing_store_files_count", {"store": "file"})
            assert after is not None
            if after < files or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert after < files


def test_event_larger_than_a_segment_is_refused_naming_max_file_size(tmp_path: Any) -> None:
    with FileStore(str(tmp_path / "a"), max_file_size=SMALL, registry=CollectorRegistry()) as s:
        with pytest.raises(RecordTooLargeError, match="max_file_size"):
            s.write({"blob": "x" * SMALL})
        with pytest.raises(RecordTooLargeError, match="max_file_size"):
            s.write_many([ev(0), {"blob": "x" * SMALL}])
        assert s.read_batch() == ([], None)  # neither the event nor its batch-mates


# -- limits the Auditor reads (Rules 7 and 8 of base.py) --------------------------------------


def test_max_event_size_is_a_segments_payload_and_one_byte_more_is_refused(
    tmp_path: Any,
) -> None:
    with FileStore(str(tmp_path / "a"), max_file_size=SMALL, registry=CollectorRegistry()) as s:
        limit = s.max_event_size
        assert limit == s.log.max_record_size
        skeleton = len(orjson.dumps({"x": ""}))
        s.write({"x": "a" * (limit - skeleton)})
        with pytest.raises(RecordTooLargeError):
            s.write({"x": "a" * (limit - skeleton + 1)})


@pytest.mark.parametrize("size", [10, 500, 3000])
def test_room_is_a_lower_bound_of_the_events_that_still_fit(tmp_path: Any, size: int) -> None:
    with FileStore(str(tmp_path / "a"), max_file_size=SMALL, max_total_size=4 * SMALL,
                   registry=CollectorRegistry()) as s:
        event = {"x": "a" * (size - len(orjson.dumps({"x": ""})))}
        assert len(orjson.dumps(event)) == size
        room = s.room(size)
        assert room > 0
        s.write_many([event] * room)  # every event room() promised fits
        assert s.room(size) == 0 or s.room(size) < room
        written = room
        while True:  # and it erred low, not high
            try:
                s.write(event)
            except BackingStoreFull:
                break
            written += 1
        assert s.room(size) == 0
        assert written >= room


def test_the_base_store_does_not_know_its_limits() -> None:
    class Custom(BackingStore):
        def write(self, event: Any) -> None: ...
        def read_batch(self, max_events: int | None = None) -> Any:
            return [], None
        def close(self) -> None: ...

    assert Custom().max_event_size is None
    assert Custom().room(100) is None


@pytest.mark.parametrize("interval", [float("inf"), float("nan"), 0, -1, "0.5", True])
def test_fsync_interval_must_be_a_finite_number_of_seconds(tmp_path: Any, interval: Any) -> None:
    # inf was passed on to the log, whose flush thread then died (issue 15).
    with pytest.raises(ConfigError, match="fsync_interval"):
        FileStore(str(tmp_path / "a"), fsync="interval", fsync_interval=interval,
                  registry=CollectorRegistry())


# -- many processes (issue 16) ------------------------------------------------------------


def test_a_closed_stores_backlog_is_adopted_and_its_log_removed(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as live:
        gone = FileStore(d, max_file_size=SMALL, registry=CollectorRegistry())
        gone.write_many([ev(i) for i in range(5)])
        left = gone.log.directory
        gone.close()  # could not deliver: its log stays for another process
        assert os.path.isdir(left)
        live.write(ev(100))
        assert live.adopt() == 5
        assert live.pending() == 6
        assert drain(live) == [0, 1, 2, 3, 4, 100]  # adopted first, in recorded order
        assert not os.path.exists(left)  # delivered, then removed: churn does not grow it


def test_a_killed_processes_backlog_is_adopted(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    child = (
        "import sys, orjson\n"
        "from prometheus_client import CollectorRegistry\n"
        "from segmentlog.store import FileStore\n"
        f"s = FileStore({d!r}, max_file_size={SMALL}, registry=CollectorRegistry())\n"
        "s.write_many([{'seq': i} for i in range(20)])\n"
        "print(s.log.directory, flush=True)\n"
        "sys.stdin.read()\n"
    )
    with FileStore(d, max_file_size=SMALL, registry=CollectorRegistry()) as live:
        proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            assert live.adopt() == 0  # alive: its log is its own
        finally:
            proc.kill()
            proc.communicate()
        assert live.adopt() == 20
        assert drain(live) == list(range(20))


def test_a_store_made_before_fork_gives_the_child_a_log_of_its_own(tmp_path: Any) -> None:
    d = str(tmp_path / "audit")
    store = FileStore(d, max_file_size=SMALL, registry=CollectorRegistry())
    store.write(ev(1))  # recorded before the fork: the parent's to deliver
    parent_log = store.log.directory
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, report where, leave without delivering
        code = 1
        try:
            store.write(ev(2))
            os.write(w, store.log.directory.encode())
            store.close()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child_log = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_log != parent_log
    try:
        assert drain(store) == [1]  # the parent's log holds only its own event
        assert store.adopt() == 1  # the child's, left behind when it closed
        assert drain(store) == [2]
    finally:
        store.close()
