"""LogPool: one directory, a log per process, backlogs of gone processes handed over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from logtools import SMALL, read_all, record, seq_of

from segmentlog import SegmentLog
from segmentlog.pool import LOGS_DIR, LogPool

OPTS = {"segment_size": SMALL, "fsync": "never"}


def pool(directory: str) -> LogPool:
    return LogPool(directory, **OPTS)


def logs_in(directory: str) -> list[str]:
    return sorted(os.listdir(os.path.join(directory, LOGS_DIR)))


def test_each_claim_gets_a_log_of_its_own(logdir: str) -> None:
    # Three writers with one configuration: none is refused (LogLockedError before).
    logs = [pool(logdir).claim() for _ in range(3)]
    try:
        assert len({log.directory for log in logs}) == 3
        for i, log in enumerate(logs):
            log.append(record(i))
    finally:
        for log in logs:
            log.close()
    assert len(logs_in(logdir)) == 3


def test_a_free_log_is_claimed_before_a_new_one_and_its_backlog_continues(
        logdir: str) -> None:
    with pool(logdir).claim() as log:
        for seq in range(5):
            log.append(record(seq))
        first = log.directory
    with pool(logdir).claim() as log:
        assert log.directory == first
        log.append(record(5))
        assert [seq_of(p) for p in read_all(log)] == list(range(6))
    assert len(logs_in(logdir)) == 1


def test_retire_removes_an_empty_log_and_keeps_one_with_records(logdir: str) -> None:
    p = pool(logdir)
    drained, pending = p.claim(), p.claim()
    drained.append(b"x")
    drained.commit(drained.read_batch())
    pending.append(b"y")
    assert p.retire(drained) is True
    assert p.retire(pending) is False
    assert logs_in(logdir) == [os.path.basename(pending.directory)]


def test_churn_does_not_grow_the_directory(logdir: str) -> None:
    p = pool(logdir)
    for i in range(50):  # recycled workers: each records, delivers, exits
        log = p.claim()
        log.append(record(i))
        log.commit(log.read_batch())
        p.retire(log)
    assert logs_in(logdir) == []


def test_adopt_hands_over_logs_of_gone_processes_and_removes_empty_ones(
        logdir: str) -> None:
    p = pool(logdir)
    mine = p.claim()
    gone_with_records, gone_empty = p.claim(), p.claim()
    gone_with_records.append(b"left behind")
    gone_with_records.close()
    gone_empty.close()
    adopted = p.adopt()
    try:
        assert [a.directory for a in adopted] == [gone_with_records.directory]
        assert adopted[0].read_batch().records == [b"left behind"]
    finally:
        for log in adopted:
            log.close()
        mine.close()
    assert os.path.basename(gone_empty.directory) not in logs_in(logdir)


def test_a_busy_log_is_never_adopted(logdir: str) -> None:
    p = pool(logdir)
    busy = p.claim()
    try:
        busy.append(b"mine")
        assert p.adopt() == []
    finally:
        busy.close()


def test_a_log_at_the_top_of_the_directory_is_one_of_the_pool(logdir: str) -> None:
    # A directory written by a plain SegmentLog (or before the pool): its records are
    # claimed like any other backlog, never left behind.
    with SegmentLog(logdir, **OPTS) as log:
        log.append(b"old")
    with pool(logdir).claim() as log:
        assert log.directory == logdir
        assert read_all(log) == [b"old"]


def test_a_log_with_kept_damage_keeps_its_dead_letter_file(logdir: str) -> None:
    p = pool(logdir)
    log = p.claim()
    with open(os.path.join(log.directory, "deadletter.jsonl"), "w") as f:
        f.write('{"kept": true}\n')
    assert p.retire(log)
    assert os.path.exists(os.path.join(log.directory, "deadletter.jsonl"))
    assert not [n for n in os.listdir(log.directory) if n.endswith(".seg")]


def test_the_backlog_of_a_killed_process_is_adopted_in_order(logdir: str) -> None:
    child = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from logtools import record
        from segmentlog.pool import LogPool
        log = LogPool(sys.argv[1], segment_size={SMALL}, fsync="always").claim()
        for seq in range(300):
            log.append(record(seq))
        print(log.directory, flush=True)
        sys.stdin.read()  # killed here, holding its log
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, logdir], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        where = proc.stdout.readline().strip()  # type: ignore[union-attr]
        p = pool(logdir)
        assert p.adopt() == []  # alive: its log is its own
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    adopted = p.adopt()
    assert [a.directory for a in adopted] == [where]
    log = adopted[0]
    out = read_all(log)
    assert [seq_of(x) for x in out] == list(range(300))
    assert out == [record(s) for s in range(300)]
    batch = log.read_batch()
    log.rewind()
    log.commit(log.read_batch(max_records=1000))
    assert not batch
    assert p.retire(log)
    assert logs_in(logdir) == []


def _claim_and_report(directory: str, barrier: object, queue: object) -> None:
    log = LogPool(directory, **OPTS).claim()
    log.append(b"x")
    queue.put(log.directory)  # type: ignore[attr-defined]
    barrier.wait()  # type: ignore[attr-defined]  # hold it until every process has one
    log.close()


def test_processes_claiming_at_once_get_distinct_logs(logdir: str) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_and_report, args=(logdir, barrier, queue))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    got = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(set(got)) == 4


def test_a_log_that_refuses_to_open_is_left_for_the_operator_not_a_stop(logdir: str) -> None:
    p = pool(logdir)
    broken = p.claim()
    broken.append(b"kept")
    broken.close()
    os.chmod(os.path.join(broken.directory, "lock"), 0)  # e.g. a permission gone wrong
    try:
        if os.geteuid() == 0:
            # root ignores modes: break it another way (a directory under a log's file name)
            os.chmod(os.path.join(broken.directory, "lock"), 0o600)
            os.unlink(os.path.join(broken.directory, "lock"))
            os.mkdir(os.path.join(broken.directory, "lock"))
        with p.claim() as log:
            assert log.directory != broken.directory
        assert broken.directory in p.unopenable
        assert any(n.endswith(".seg") for n in os.listdir(broken.directory))
    finally:
        lock = os.path.join(broken.directory, "lock")
        if os.path.isdir(lock):
            os.rmdir(lock)


def test_a_removed_log_keeps_a_segment_it_set_aside(logdir: str) -> None:
    p = pool(logdir)
    log = p.claim()
    aside = os.path.join(log.directory, "00000000000000000777.seg.damaged")
    with open(aside, "wb") as f:
        f.write(b"bytes kept for the operator")
    assert p.retire(log)
    assert os.path.exists(aside)
    assert not [n for n in os.listdir(log.directory) if n.endswith(".seg")]
