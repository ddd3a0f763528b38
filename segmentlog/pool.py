"""LogPool: one directory shared by any number of processes, a segment log each.

Theory of operation
-------------------
Services run N worker processes (gunicorn, uwsgi, Celery, multiprocessing) with one
configuration, and a segment log has one writer. The pool gives every process a log of
its own inside the shared directory and hands the logs of processes that are gone to a
live one (FORMAT.md, "Shared directory")::

    <directory>/pool.lock        flock held only while logs are claimed, created or removed
    <directory>/logs/<name>/     one SegmentLog each (its own lock, segments, checkpoint)

Rule 1: a log's own writer lock (SegmentLog's flock on ``<name>/lock``) says whether a
live process has it. The kernel drops it when its process dies, however it dies (exit,
SIGKILL, OOM kill), so "free" needs no heartbeat and no pid guessing.
Rule 2: every change to the set of logs (claiming, creating, removing) holds
``pool.lock``: a log is never removed while another process is claiming it, and two
processes never claim the same log (the second finds its lock taken).
Rule 3: ``claim()`` takes a free log before it makes a new one: a process that replaces
a dead one continues its backlog (delivered first, in the order recorded) and worker
churn does not grow the directory.
Rule 4: ``adopt()`` opens the free logs left by processes that died while this one runs,
for draining; ``retire()`` closes a log and removes it when nothing is pending, so the
disk its segments reserve is given back. A log that holds anything else (a dead-letter
file, a segment set aside) keeps its directory and those files: damaged bytes are never
deleted.
Rule 5: a directory that holds a log at its top (made before the pool existed, or by a
plain SegmentLog) is one more log of the pool: its records are claimed and delivered
like any other's.

The pool never reads or writes records; it only decides which process owns which log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from segmentlog._format import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    PREPARED_NAME,
    SPARE_NAME,
    TMP_SUFFIX,
    parse_segment_name,
)
from segmentlog.errors import ConfigError, CorruptionError, LogLockedError
from segmentlog.log import SegmentLog
from segmentlog.segment import DIR_MODE, FILE_MODE, fsync_dir

log = logging.getLogger("segmentlog")

POOL_LOCK_NAME = "pool.lock"
LOGS_DIR = "logs"

_guard = threading.Lock()  # no fork while this process holds a pool.lock (see _at_fork)


def _before_fork() -> None:
    _guard.acquire()


def _after_fork() -> None:
    _guard.release()


# A child forked while a thread held pool.lock would inherit that flock (one open file
# description) and keep it for its whole life: no fork in the middle of a pool change.
os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                    after_in_child=_after_fork)


def _is_log_name(name: str) -> bool:
    return name.startswith("log-") and name[4:].replace("-", "").isalnum()


class LogPool:
    """The logs of every process configured with ``directory`` (module docstring).

    ``log_options`` are SegmentLog's keyword arguments, used for every log it opens.
    """

    def __init__(self, directory: str | os.PathLike[str], **log_options: Any) -> None:
        self.directory = os.fspath(directory)
        self.log_options = log_options
        self._logs_dir = os.path.join(self.directory, LOGS_DIR)
        self.unopenable: dict[str, str] = {}  # logs skipped because they refuse to open

    # ------------------------------------------------------------------ public

    def claim(self) -> SegmentLog:
        """This process's own log: a free one (a gone process's backlog, continued) or
        a new one."""
        with self._locked():
            for path in self._candidates():
                log = self._try_open(path)
                if log is not None:
                    return log
            return self._create()

    def adopt(self) -> list[SegmentLog]:
        """Open the free logs that hold records (left by processes that are gone) for
        the caller to drain and then ``retire``; free logs with nothing pending are
        removed on the way (Rule 4)."""
        adopted = []
        with self._locked():
            for path in self._candidates():
                if not any(parse_segment_name(n) is not None for n in os.listdir(path)):
                    continue  # no records (a removed log's kept files): nothing to open
                log = self._try_open(path)
                if log is None:
                    continue
                if log.stats()["pending_records"]:
                    adopted.append(log)
                else:
                    self._remove(log)
        return adopted

    def retire(self, log: SegmentLog) -> bool:
        """Close ``log``; remove it if nothing is pending. Returns whether it was removed
        (False: its records wait in the directory for another process to claim)."""
        with self._locked():
            if log.closed or log.stats()["pending_records"]:
                log.close()
                return False
            self._remove(log)
            return True

    def log_paths(self) -> list[str]:
        """The directory of every log in the pool, the top one (Rule 5) first."""
        return list(self._candidates())

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with _guard:
            try:
                os.makedirs(self._logs_dir, mode=DIR_MODE, exist_ok=True)
            except FileExistsError as exc:
                raise ConfigError(f"{self._logs_dir} exists and is not a directory: move "
                                  "it away, the pool keeps its logs there") from exc
            path = os.path.join(self.directory, POOL_LOCK_NAME)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         FILE_MODE)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ConfigError(f"{path} is not a regular file: remove it")
                fcntl.flock(fd, fcntl.LOCK_EX)  # held briefly by whoever changes the set
                yield
            finally:
                os.close(fd)

    def _candidates(self) -> Iterator[str]:
        """Directories holding a log: the top one if it has segments, then logs/<name>
        oldest first (names start with their creation time)."""
        names = os.listdir(self.directory)
        if any(parse_segment_name(n) is not None for n in names):
            yield self.directory
        with os.scandir(self._logs_dir) as it:
            subdirs = sorted(e.name for e in it
                             if _is_log_name(e.name) and e.is_dir(follow_symlinks=False))
        for name in subdirs:
            yield os.path.join(self._logs_dir, name)

    def _try_open(self, path: str) -> SegmentLog | None:
        try:
            return SegmentLog(path, **self.log_options)
        except LogLockedError:
            return None  # a live process has it (Rule 1)
        except (CorruptionError, OSError) as exc:
            # A log that refuses to open (a special file under one of its names, a
            # permission) stays as it is for the operator (verify names it); this process
            # takes another one, so one bad log never stops a service from recording.
            if path not in self.unopenable:
                self.unopenable[path] = str(exc)
                log.error("segmentlog pool %s: cannot open the log %s (%s); left as it is, "
                          "run 'python -m segmentlog verify %s'", self.directory, path, exc,
                          path)
            return None

    def _create(self) -> SegmentLog:
        while True:
            name = f"log-{time.time_ns():016x}-{os.getpid()}"
            path = os.path.join(self._logs_dir, name)
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                continue  # the clock did not move on since this process's last one
            fsync_dir(self._logs_dir)
            return SegmentLog(path, **self.log_options)

    def _remove(self, log: SegmentLog) -> None:
        """Close ``log`` (nothing pending) and give its space back (pool.lock held): its
        segments (consumed records only), checkpoint and prepared files go. Any other
        file (a dead-letter file, a segment set aside, a foreign file) is kept, and so
        is the directory then: damaged bytes are never deleted."""
        path = log.directory
        log.close()
        names = os.listdir(path)
        kept = [n for n in names if not _disposable(n)]
        for name in names:
            if _disposable(name) and name != LOCK_NAME:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, name))
        if path == self.directory or kept:
            fsync_dir(path)
            return
        shutil.rmtree(path, ignore_errors=True)
        fsync_dir(self._logs_dir)


def _disposable(name: str) -> bool:
    """A file of a log with nothing pending that holds nothing to keep."""
    return (parse_segment_name(name) is not None or name.endswith(TMP_SUFFIX)
            or name in (CHECKPOINT_NAME, LOCK_NAME, PREPARED_NAME, SPARE_NAME))


__all__ = ["LOGS_DIR", "POOL_LOCK_NAME", "LogPool"]
