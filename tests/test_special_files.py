"""Names the log owns that are not regular files, symlinks, and the directory's mode.

FORMAT.md, "Directory": every name the log owns (segments, ``checkpoint``,
``deadletter.jsonl``, ``lock``, ``next.prep``, ``spare.prep``, ``*.tmp``,
``NAME.seg.moving``) must be a regular file; so must the file store's JSON dead-letter
file. The log opens nothing else (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``):
it refuses to open with a ``CorruptionError`` naming the path and the fix, ``verify``
reports ``special_file`` (damage, exit 1), ``repair`` changes nothing and says what to
do; nothing hangs on a FIFO and no symlink is followed for a write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from logtools import SMALL, flip_bit, frames, segment_files, write_log
from prometheus_client import CollectorRegistry
from test_cli import N, damage, logcopy, pristine, readable, run, verify

from segmentlog import SegmentLog
from segmentlog.errors import CorruptionError
from segmentlog.store.file import JSON_DEADLETTER_NAME, FileStore

__all__ = ["logcopy", "pristine"]  # fixtures shared with test_cli


@contextlib.contextmanager
def no_hang(seconds: float = 10.0) -> Iterator[None]:
    """Fail (instead of hanging the run) when the body blocks, e.g. opening a FIFO."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"blocked for {seconds} s (opened a FIFO?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _fifo(path: str) -> None:
    os.mkfifo(path, 0o600)


def _directory(path: str) -> None:
    os.mkdir(path)


def _dangling_symlink(path: str) -> None:
    os.symlink(path + ".nowhere", path)


def _symlink_to_a_file(path: str) -> None:
    target = path + ".target"
    if os.path.exists(path):
        os.rename(path, target)  # the link points at the real file's bytes
    else:
        with open(target, "wb") as f:
            f.write(b"x" * 64)
    os.symlink(os.path.basename(target), path)


MAKERS: dict[str, Callable[[str], None]] = {
    "fifo": _fifo, "directory": _directory, "dangling_symlink": _dangling_symlink,
    "symlink_to_a_file": _symlink_to_a_file,
}


def _names(directory: str) -> dict[str, str]:
    last = os.path.basename(segment_files(directory)[-1])
    middle = os.path.basename(segment_files(directory)[1])
    return {"last_segment": last, "middle_segment": middle,
            "new_segment": "00000000000099999999.seg", "checkpoint": "checkpoint",
            "deadletter": "deadletter.jsonl", "lock": "lock", "prepared": "next.prep",
            "tmp": "checkpoint.tmp", "moving": "00000000000000000099.seg.moving"}


def make_special(directory: str, which: str, how: str) -> str:
    name = _names(directory)[which]
    path = os.path.join(directory, name)
    if how != "symlink_to_a_file" and os.path.lexists(path):
        os.unlink(path)
    MAKERS[how](path)
    return name


WHICH = ["last_segment", "middle_segment", "new_segment", "checkpoint", "deadletter", "lock",
         "prepared", "tmp", "moving"]


@pytest.mark.parametrize("how", sorted(MAKERS))
@pytest.mark.parametrize("which", WHICH)
def test_special_file_under_a_log_name_is_refused_clearly_and_never_hangs(
        capsys: pytest.CaptureFixture[str], logcopy: str, which: str, how: str) -> None:
    readable(logcopy)  # a dead-letter file and a lock file exist, as in a used log
    name = make_special(logcopy, which, how)
    path = os.path.join(logcopy, name)
    before = snapshot_special(logcopy)
    with no_hang():
        with pytest.raises(CorruptionError) as info:
            SegmentLog(logcopy, segment_size=SMALL)
        assert path in str(info.value) and "remove or rename it" in str(info.value)
        assert info.value.kind == "special_file" and info.value.path == path

        rc, report = verify(capsys, logcopy)
        assert rc == 1
        assert ("special_file", name) in {(p["kind"], p["segment"]) for p in damage(report)}
        rc, _, err = run(capsys, "stats", logcopy)
        assert rc == 0 and err == ""
        rc, out, err = run(capsys, "dump", logcopy)
        assert rc == 1 and err == "" and "special_file: a " in out
        rc, out, err = run(capsys, "repair", logcopy)
    if which == "lock":
        # repair is a writer: it cannot take a lock it will not open.
        assert rc == 2 and path in err and "Traceback" not in err
    else:
        assert rc == 1 and err == "" and name in out and "remove or rename it" in out
    assert snapshot_special(logcopy) == before  # nothing changed, nothing followed


def snapshot_special(directory: str) -> dict[str, Any]:
    """Each regular file's content hash; each other entry's type and inode (never opened)."""
    out: dict[str, Any] = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        else:
            out[name] = (stat.S_IFMT(st.st_mode), st.st_ino)
    return out


def test_removing_the_special_file_lets_the_log_open_again(logcopy: str) -> None:
    gone = {s for _, s, _ in frames(segment_files(logcopy)[1])}
    name = make_special(logcopy, "middle_segment", "fifo")
    with pytest.raises(CorruptionError):
        SegmentLog(logcopy, segment_size=SMALL)
    os.unlink(os.path.join(logcopy, name))
    assert readable(logcopy) == [s for s in range(N) if s not in gone]


def test_lock_symlink_target_is_never_truncated(logdir: str, tmp_path: os.PathLike[str]) -> None:
    write_log(logdir, 10)
    target = os.path.join(os.fspath(tmp_path), "precious")
    with open(target, "wb") as f:
        f.write(b"precious bytes\n" * 100)
    os.unlink(os.path.join(logdir, "lock"))
    os.symlink(target, os.path.join(logdir, "lock"))
    with pytest.raises(CorruptionError, match="lock"):
        SegmentLog(logdir, segment_size=SMALL)
    with open(target, "rb") as f:
        assert f.read() == b"precious bytes\n" * 100


def test_deadletter_symlink_target_gets_no_damaged_bytes(
        logcopy: str, tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(os.fspath(tmp_path), "precious")
    with open(target, "wb") as f:
        f.write(b"precious\n")
    os.symlink(target, os.path.join(logcopy, "deadletter.jsonl"))
    seg = segment_files(logcopy)[1]
    flip_bit(seg, frames(seg)[1][0] + 30)  # damage the reader would keep
    with pytest.raises(CorruptionError, match=r"deadletter\.jsonl"):
        readable(logcopy)
    with open(target, "rb") as f:
        assert f.read() == b"precious\n"


def test_log_tightens_an_existing_open_directory_like_the_file_store(logdir: str) -> None:
    os.mkdir(logdir)
    os.chmod(logdir, 0o777)
    SegmentLog(logdir, segment_size=SMALL).close()
    assert stat.S_IMODE(os.stat(logdir).st_mode) == 0o700


@pytest.mark.parametrize("how", ["fifo", "dangling_symlink", "symlink_to_a_file"])
def test_file_store_json_dead_letter_file_must_be_a_regular_file(
        logdir: str, how: str) -> None:
    with SegmentLog(logdir) as log:  # a log at the top: the store takes it (pool Rule 5)
        log.append(b"{}")
    path = os.path.join(logdir, JSON_DEADLETTER_NAME)
    MAKERS[how](path)
    with no_hang(), pytest.raises(CorruptionError, match="remove or rename it"):
        FileStore(logdir, registry=CollectorRegistry())
