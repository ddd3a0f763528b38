"""The durability policies: one class per ``fsync`` mode.

The parts of a log ask the log's policy instead of testing the mode's name: adding a
mode is a subclass here. What each mode promises is in segmentlog.log's docstring and
FORMAT.md ("Writing and preparing segments"); the measurements behind the choices are in
benchmarks/README.md ("Design measurements").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from segmentlog._backend import impl


class Durability:
    """What one fsync mode does at each step (read by the writer, the preparer, the sync
    rounds and retention)."""

    name: ClassVar[str]
    # Frames reach the active segment through its map; else they are queued, framed into
    # the group buffer by each sync round's leader and written with one pwrite.
    via_map: ClassVar[bool] = True
    # How the preparer makes a new segment file: reserved (posix_fallocate) and read
    # through once ("warm": clean zero pages wait in the page cache, so the writer's
    # pages are ready and no zeros are ever written back), or zero-filled and
    # fdatasynced, so that later fdatasyncs of records write into blocks already written
    # (no unwritten extents to convert on each one). Zero-filling without the fdatasync
    # dirtied every page twice and let writeback write the zeros: the slowest choice in
    # a long run (benchmarks/README.md, "Sustained appends").
    warm: ClassVar[bool] = True
    zero_fill: ClassVar[bool] = False
    sync_prepared: ClassVar[bool] = False
    # append() returns once its record is durable (group commit).
    append_waits: ClassVar[bool] = False
    # The old segment's last frames are durable before the next segment's name is.
    sync_before_rotation: ClassVar[bool] = False
    # A sealed segment is unmapped and closed at once (no background sync would reach
    # it); the next sync round opens it again by name. Its rounds sync the active
    # segment the same way (a rotation meanwhile closes its descriptor).
    closes_sealed: ClassVar[bool] = False
    # Every commit writes a durable checkpoint (else at most every CHECKPOINT_INTERVAL).
    durable_commits: ClassVar[bool] = False
    # close() syncs what was written, and writes its checkpoint durably.
    sync_on_close: ClassVar[bool] = True
    # A background thread syncs every fsync_interval seconds.
    background_sync: ClassVar[bool] = False
    # A sealed segment is fdatasynced at once by a background thread, so its writeback
    # overlaps the appends to the next one instead of waiting for sync(), which then
    # finds it clean (benchmarks/README.md, "Sustained appends").
    sync_sealed_ahead: ClassVar[bool] = False

    def fast_path(self, settle: Callable[[int], object]) -> tuple[Any, Any]:
        """(group committer, append cursor) for append's fast path; either may be None.
        ``settle(seq)`` makes durable a record the committer appended but could not see
        durable, or raises."""
        return None, impl.Cursor()


class Always(Durability):
    """``fsync="always"``: append returns once the record is on disk (group commit)."""

    name = "always"
    via_map = False
    warm = False
    zero_fill = True  # cheaper fdatasyncs of records later
    sync_prepared = True
    append_waits = True
    sync_before_rotation = True
    durable_commits = True

    def fast_path(self, settle: Callable[[int], object]) -> tuple[Any, Any]:
        return impl.new_committer(settle), None  # None in pure Python: appends take the lock


class Interval(Durability):
    """``fsync="interval"``: a background thread syncs every ``fsync_interval`` seconds."""

    name = "interval"
    background_sync = True


class Never(Durability):
    """``fsync="never"``: the page cache only until ``sync()``; sealed segments are synced
    in the background (``sync_sealed_ahead``)."""

    name = "never"
    closes_sealed = True
    sync_on_close = False
    sync_sealed_ahead = True


POLICIES: dict[str, type[Durability]] = {p.name: p for p in (Always, Interval, Never)}
