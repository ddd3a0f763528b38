"""What every part of a log shares: the directory, its segment list, the writer lock,
whether the log is closed or failed, and its counters and problems.

``lock`` guards the segment list and every part's writer-side fields; ``read_lock`` the
reader's. Lock order is ``read_lock``, retention's ``checkpoint_lock``, then ``lock``. The
writer lock closes append's fast path while it is held (segmentlog.engine.writer.WriterLock).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from segmentlog._format import segment_name
from segmentlog.errors import DurabilityError, LogClosedError

log = logging.getLogger("segmentlog")


class LogState:
    """The state the parts of one log share (see the module docstring)."""

    def __init__(self, directory: str, segment_size: int, lock: Any) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.lock = lock
        self.read_lock = threading.Lock()
        self.segments: list[int] = []  # bases of the segment files, ascending (under lock)
        self.pinned: int | None = None  # segment the reader is walking (under lock)
        self.closed = False
        self.failed: DurabilityError | None = None
        self.counters = {"torn_tail_bytes": 0, "damaged_regions": 0, "fsyncs": 0,
                         "rotations": 0, "recycled": 0, "reclaim_errors": 0}
        self.problems: list[str] = []
        self.stop = threading.Event()  # the background threads end
        self.threads: list[threading.Thread] = []

    def path(self, base: int) -> str:
        return os.path.join(self.directory, segment_name(base))

    def note(self, message: str) -> None:
        """A problem found in the directory: kept for stats() and logged."""
        self.problems.append(message)
        log.warning("segmentlog %s: %s", self.directory, message)

    def raise_unusable(self) -> None:
        if self.failed is not None:
            raise DurabilityError(self.failed.errno, str(self.failed)) from self.failed
        raise LogClosedError(f"log {self.directory} is closed")

    def check_open(self) -> None:
        if self.closed:
            raise LogClosedError(f"log {self.directory} is closed")

    def start_thread(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(t)
        t.start()
