"""The writer lock belongs to the process that opened the log, and its error names a live
holder (FORMAT.md, "Recovery rules": one writer process per directory).

flock is shared by every descriptor of one open file description, and fork copies the
descriptor: a forked child kept the lock after its parent was killed, and the error then
named the dead parent. These tests fork for real and kill -9 the holder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest
from test_faults import SEGMENT, run_python

from segmentlog import LogLockedError, SegmentLog

HOLDER_FORKS = """
    import os, sys, time
    from segmentlog import SegmentLog
    log = SegmentLog(sys.argv[1], segment_size=16384)
    log.append(b"from the holder")
    child = os.fork()
    if child == 0:  # the child only sleeps, as a worker forked after opening would
        # After os.fork's at-fork handlers ran; one write() each, so the two processes'
        # lines cannot interleave on the pipe.
        os.write(1, b"child %d\\n" % os.getpid())
        time.sleep(120)
        os._exit(0)
    os.write(1, b"ready %d\\n" % child)
    time.sleep(120)
"""

HOLDER_PASSES_THE_FD = """
    import subprocess, sys, time
    from segmentlog import SegmentLog
    log = SegmentLog(sys.argv[1], segment_size=16384)
    # A program started with the lock's descriptor (as a careless spawner might).
    child = subprocess.Popen(["sleep", "120"], pass_fds=[log._lock_fd])
    print("ready", child.pid, flush=True)
    time.sleep(120)
"""


def _start_holder(code: str, logdir: str) -> tuple[subprocess.Popen[str], int]:
    """Start a holder; its child's pid once both said so (a forked child says "child")."""
    holder = run_python(code, logdir)
    assert holder.stdout is not None
    said = {}
    while "ready" not in said or ("child" not in said and "os.fork" in code):
        line = holder.stdout.readline()
        word, _, pid = line.partition(" ")
        assert pid.strip().isdigit(), (line, said, holder.poll())
        said[word] = int(pid)
    return holder, said["ready"]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_forked_child_does_not_keep_the_lock_after_the_holder_is_killed(logdir: str) -> None:
    holder, child = _start_holder(HOLDER_FORKS, logdir)
    try:
        with pytest.raises(LogLockedError) as info:
            SegmentLog(logdir, segment_size=SEGMENT)
        assert info.value.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)  # reaped: no zombie left holding the pid
        os.kill(child, 0)  # the forked child still runs
        with SegmentLog(logdir, segment_size=SEGMENT) as log:
            assert log.read_batch().records == [b"from the holder"]
    finally:
        _kill(child)
        holder.kill()
        holder.wait(timeout=30)
        for pipe in (holder.stdout, holder.stderr):
            if pipe is not None:
                pipe.close()


def test_lock_error_says_the_holder_is_gone_and_names_the_live_one(logdir: str) -> None:
    holder, child = _start_holder(HOLDER_PASSES_THE_FD, logdir)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)  # reaped: no zombie left holding the pid
        with pytest.raises(LogLockedError) as info:
            SegmentLog(logdir, segment_size=SEGMENT)
        message = str(info.value)
        assert info.value.pid == child
        assert f"process {child}" in message and "gone" in message
        assert str(holder.pid) in message
    finally:
        _kill(child)
        holder.kill()
        holder.wait(timeout=30)
        for pipe in (holder.stdout, holder.stderr):
            if pipe is not None:
                pipe.close()
