"""The file store: events buffered in a :class:`~segmentlog.SegmentLog` on a volume.

Theory of operation
-------------------
One event is one record of the segment log: ``orjson.dumps(event)``, framed and
checksummed by the log. The store adds only the mapping to the BackingStore interface:

* ``write`` is ``log.append`` and ``write_many`` is one ``log.append_batch`` (one
  durability point for the whole list, all or nothing); ``write_many_encoded`` appends
  the caller's JSON bytes as they are (Rule 10 of base.py). Writers are not serialised by
  the store: concurrent ``fsync="always"`` writers share fsyncs in the log (group commit).
* ``read_batch(max_events)`` is ``log.read_batch(max_events or batch_size)``. If the
  previous batch was not committed, it first calls ``log.rewind()``, so reading again
  starts from the same oldest event (Rule 4 of base.py). ``commit()`` is
  ``log.commit(batch)``: the log's reclaim thread then makes the checkpoint durable and
  deletes or recycles whole consumed segments.
* ``pending()`` is the log's ``pending_records`` (records appended and not committed,
  from two counters: O(1)) minus the records of that range this store already moved to
  ``deadletter-json.jsonl``. It over-counts, until they are read past, the records of a
  damaged region (their sequence numbers are gone with them) and not-yet-read records
  that will turn out not to be JSON objects.
* ``max_total_size`` reached (or no space left on the device for a new segment) is
  :class:`~segmentlog.errors.BackingStoreFull`; the log's ``LogFullError`` never leaks.

Corrupt data is never dropped silently. A record that fails its checksum is skipped by
the log itself, its bytes kept in ``<directory>/deadletter.jsonl``
(``audittools_backing_store_errors_total{operation="read_corrupt"}`` follows the log's
``damaged_regions`` count). A record that passes its checksum but is not a JSON object
(written by something other than this store) is written to
``<directory>/deadletter-json.jsonl`` -- sequence number, segment, reason, raw bytes in
base64 -- fsynced before its batch can be committed, and counted as ``read_unmarshal``.

Many processes
--------------
Every process (every store) configured with one ``directory`` writes a log of its own
inside it, claimed from a :class:`~segmentlog.pool.LogPool`: ``<directory>/logs/<name>/``
(FORMAT.md, "Shared directory"). ``close()`` removes the log when nothing in it is
pending and leaves it otherwise; ``adopt()`` (BackingStore Rule 9, called by the
Auditor every few seconds) opens the logs of processes that are gone, reads them before
the store's own and removes each once it is delivered. A forked child claims a log of
its own at first use; the parent keeps its logs. Segments at the top of ``directory``
(written by an earlier version, or by a plain SegmentLog) are one more log of the pool.

Parameters are the original's (``directory``, ``max_file_size``, ``max_total_size``)
plus ``fsync``, ``fsync_interval`` and ``batch_size``. ``max_file_size`` becomes the
log's ``segment_size``, rounded up to whole pages (the log maps segments); each segment
occupies that size on disk from its creation (space is reserved up front, so a full disk
is an error at rotation, never a crash). The directory is created 0700 and tightened to
0700 if it exists; the log creates its files 0600.
"""

from __future__ import annotations

import base64
import bisect
import errno
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson

from .._format import SEGMENT_HEADER_SIZE, frame_size, parse_segment_name
from ..errors import (
    BackingStoreError,
    BackingStoreFull,
    ConfigError,
    CorruptionError,
    DurabilityError,
    LogClosedError,
    LogFullError,
    RecordTooLargeError,
)
from ..segment import open_regular, prepare_directory
from .base import (
    BackingStore,
    BatchTracker,
    Commit,
    Event,
    _check_encoded,
    _dumps,
    _event_id,
    _writes_overridden,
    batch_limit,
)
from .metrics import StoreMetrics
from .params import Params, check_int

_T = TypeVar("_T")

LOG = logging.getLogger("segmentlog.store.file")


def _event(raw: bytes, event: dict[str, Any]) -> dict[str, Any]:
    return event  # read_batch keeps the decoded event


def _bytes_and_id(raw: bytes, event: dict[str, Any]) -> tuple[bytes, str | None]:
    return raw, _event_id(event)  # the drain keeps the stored bytes and the id

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..log import Batch, SegmentLog

__all__ = ["JSON_DEADLETTER_NAME", "FileStore"]

#: Records that pass the checksum but are not JSON objects go here (one JSON per line).
JSON_DEADLETTER_NAME = "deadletter-json.jsonl"

_EXAMPLE = (
    '{"type":"file","params":{"directory":"/var/lib/app/audit","max_file_size":10485760,'
    '"max_total_size":1073741824,"fsync":"always","batch_size":1000}}'
)
_FSYNC = ("always", "interval", "never")
_PAGE = mmap.PAGESIZE
# room() waits this long for the log to free what commits consumed (then it errs low).
ROOM_RECLAIM_WAIT = 1.0


def _round_segment_size(size: int) -> int:
    # The log needs a page multiple of at least two pages; the original took any size.
    pages = max(2, -(-size // _PAGE))
    return pages * _PAGE


class _Source:
    """One log the store reads: its own, or an adopted one of a gone process (module
    docstring, "Many processes"), with the JSON dead-letter bookkeeping of that log's
    directory. Called with the store's read lock held."""

    def __init__(self, log: SegmentLog, what: str, metrics: StoreMetrics) -> None:
        self.log = log
        self.what = what
        self.metrics = metrics
        self.dead_path = os.path.join(log.directory, JSON_DEADLETTER_NAME)
        # Only entries at or above the committed position matter: reading never goes
        # back below it in this process (rewind stops there, reopen starts there).
        self.dead_seqs = self.known_dead_seqs()
        self.forget_dead_below(int(log.stats()["committed_seq"]))

    def pending(self) -> int:
        """Records appended and not committed, less those already dead-lettered."""
        stats = self.log.stats()
        first, end = int(stats["committed_seq"]), int(stats["next_seq"])
        dead = sum(1 for s in self.dead_seqs if first <= s < end)
        return max(0, int(stats["pending_records"]) - dead)

    def known_dead_seqs(self) -> set[int]:
        # Records already dead-lettered by an earlier run (crash before commit): kept once.
        seqs: set[int] = set()
        try:
            # Not a regular file: CorruptionError, as the log refuses one under its names.
            with open(open_regular(self.dead_path, os.O_RDONLY), "rb") as f:
                for line in f:
                    try:
                        item = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a torn last line: that entry is written again
                    seq = item.get("seq") if isinstance(item, dict) else None
                    if type(seq) is int:
                        seqs.add(seq)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # A report, not state the store needs: without it an entry may be written
            # twice after a restart, never lost. Writing to it will fail loudly.
            LOG.warning("%s: cannot read %s (%s); records dead-lettered by an earlier "
                        "run may be listed again", self.what, self.dead_path, exc)
        return seqs

    def forget_dead_below(self, seq: int) -> None:
        # Committed records are never read again in this process, so their entries can
        # go: the set (and pending()'s walk over it) stays as small as the dead records
        # still ahead of the reader. The file keeps every entry for a restart.
        if self.dead_seqs:
            self.dead_seqs = {s for s in self.dead_seqs if s >= seq}

    def parse(self, batch: Batch, keep: Callable[[bytes, dict[str, Any]], _T]) -> list[_T]:
        """Parse each record of ``batch`` and return ``keep(record, event)`` for each;
        records that are not JSON objects go to the dead-letter file."""
        out: list[_T] = []
        bad: list[tuple[int | None, bytes, str]] = []
        # Sequence numbers are first_seq + i unless the log skipped damage inside the
        # batch; then they are unknown and the entry says so (seq null).
        exact = batch.last_seq - batch.first_seq + 1 == len(batch.records)
        loads = orjson.loads
        for i, raw in enumerate(batch.records):
            try:
                event = loads(raw)
            except orjson.JSONDecodeError as exc:
                bad.append((batch.first_seq + i if exact else None, raw, f"invalid JSON: {exc}"))
                continue
            if type(event) is not dict:
                bad.append((batch.first_seq + i if exact else None, raw, "not a JSON object"))
                continue
            out.append(keep(raw, event))
        if bad:
            self.dead_letter(bad)
        return out

    def dead_letter(self, bad: list[tuple[int | None, bytes, str]]) -> None:
        # Only the log's own segment names: any other file here (a foreign notes.seg)
        # is not ours and says nothing about where a record was.
        segments = sorted(
            base for base in map(parse_segment_name, os.listdir(self.log.directory))
            if base is not None
        )
        lines = []
        kept: list[int] = []
        now = time.time()
        for seq, raw, reason in bad:
            if seq is not None and seq in self.dead_seqs:
                continue  # kept already (read again after a rewind or a restart)
            segment = None
            if seq is not None and segments:
                i = bisect.bisect_right(segments, seq) - 1
                if i >= 0:
                    segment = f"{segments[i]:020d}.seg"
            lines.append(
                orjson.dumps(
                    {
                        "time": now,
                        "seq": seq,
                        "segment": segment,
                        "reason": reason,
                        "length": len(raw),
                        "raw_base64": base64.b64encode(raw).decode("ascii"),
                    }
                )
                + b"\n"
            )
            if seq is not None:
                kept.append(seq)
        self.metrics.error("read_unmarshal", len(bad))
        if not lines:
            return
        # fsynced before the batch can be committed: the bytes outlive their segment.
        fd = self.open_dead_letter(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        # Known as kept only now: a failed write is retried by the next read (which
        # starts again from the same records), not skipped as "kept already".
        self.dead_seqs.update(kept)

    def open_dead_letter(self, flags: int) -> int:
        """Open deadletter-json.jsonl itself (``open_regular``: never through a symlink,
        never a FIFO or device); not a regular file is an OSError naming the path and the
        fix, which the store's callers already turn into its own errors."""
        try:
            return open_regular(self.dead_path, flags, 0o600)
        except CorruptionError as exc:
            raise OSError(errno.EINVAL, str(exc)) from exc


class FileStore(BackingStore):
    """Segment-log store (``type: "file"``).

    :param directory: the log directory (required; created 0700).
    :param max_file_size: segment size in bytes (default 10 MiB, the original's),
        rounded up to whole pages.
    :param max_total_size: bytes of segments at most, per process's log; 0 (default)
        means unlimited
        (then only a full disk makes the store full). Must hold two segments.
    :param fsync: ``"always"`` (default: ``write`` returns when the event is on disk),
        ``"interval"`` (synced every ``fsync_interval`` seconds; a crash loses at most
        that window) or ``"never"`` (page cache; a process crash loses nothing, a power
        loss may).
    :param batch_size: most events one ``read_batch()`` returns (default 1000; a drainer
        may ask for more with ``read_batch(max_events=n)``).
    """

    TYPE = "file"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_file_size: int = 10 << 20,
        max_total_size: int = 0,
        fsync: str = "always",
        fsync_interval: float = 0.01,
        batch_size: int = 1000,
        registry: CollectorRegistry | None = None,
        name: str | None = None,
    ) -> None:
        from ..pool import LogPool

        self._directory = os.fspath(directory)
        if not self._directory:
            raise ConfigError("file backing store: parameter 'directory' must be a path")
        check_int(max_file_size, "max_file_size", minimum=1, unit="bytes")
        check_int(max_total_size, "max_total_size", minimum=0, unit="bytes; 0 = unlimited")
        self._batch_size = check_int(batch_size, "batch_size", minimum=1, unit="events")
        if (isinstance(fsync_interval, bool) or not isinstance(fsync_interval, int | float)
                or not 0 < fsync_interval < float("inf")):
            # The log takes inf, and its flush thread then dies: refused here.
            raise ConfigError(
                "file backing store: parameter 'fsync_interval' must be a finite number of "
                f"seconds > 0, got {fsync_interval!r}")
        if fsync not in _FSYNC:
            raise ConfigError(
                f"file backing store: parameter 'fsync' must be one of {', '.join(_FSYNC)}, "
                f"got {fsync!r}"
            )
        self._what = f"file backing store {self._directory}"
        self._prepare_directory()
        try:
            # Each process (each store) writes a log of its own inside the directory,
            # claimed from the pool: any number of workers share one configuration.
            self._pool = LogPool(
                self._directory,
                segment_size=_round_segment_size(max_file_size),
                max_total_size=max_total_size or None,
                fsync=fsync,
                fsync_interval=fsync_interval,
            )
        except ConfigError as exc:
            raise ConfigError(f"file backing store: {exc}") from exc
        self._read_lock, self._claim_lock = threading.Lock(), threading.Lock()
        self._closed = False
        self._batches = BatchTracker(self._read_lock, self._what, self._check_open)
        self._damaged_seen = 0
        self._written = 0  # records appended by logs this store wrote before (a fork)
        self._adopted: list[_Source] = []  # logs of gone processes, drained first
        self._reading: _Source | None = None  # the log of the batch handed out last
        self._own: _Source | None = None
        # writes_total is the log's count of appended records, read at scrape time:
        # write() then pays for no counter of its own.
        self._metrics = StoreMetrics(registry, self.TYPE, name, written=self._count)
        try:
            self._claim()
        except BaseException:
            self._metrics.release()
            raise
        _STORES.add(self)
        self.update_metrics()

    def _claim(self) -> None:
        """Take this process's own log from the pool (at creation, and in a forked child
        at first use)."""
        try:
            self._log: SegmentLog = self._pool.claim()
        except ConfigError as exc:
            raise ConfigError(f"file backing store: {exc}") from exc
        self._first_seq = int(self._log.stats()["next_seq"])
        try:
            self._own = _Source(self._log, self._what, self._metrics)
        except BaseException:
            self._log.close()
            raise

    def _count(self) -> int:
        if self._own is None:  # not claimed (yet) in a forked child: nothing written here
            return self._written
        return self._written + int(self._log.stats()["next_seq"]) - self._first_seq

    def _own_source(self) -> _Source:
        if self._own is None:  # a forked child's first use (_after_fork_in_child)
            with self._claim_lock:
                if self._own is None:
                    self._claim()
        assert self._own is not None
        return self._own

    def _next_source(self) -> _Source:
        return self._adopted[0] if self._adopted else self._own_source()

    def _retire(self, src: _Source) -> None:
        """An adopted log read to its end: give it back to the pool (removed if nothing
        is pending; closed and left for another process otherwise)."""
        self._adopted.remove(src)
        if self._reading is src:
            self._reading = None
        removed = self._pool.retire(src.log)
        LOG.info("%s: the adopted log %s is delivered%s", self._what, src.log.directory,
                 " and removed" if removed else "")

    def _after_fork_in_child(self) -> None:
        """The child of a fork: the logs this store holds belong to the parent (which
        goes on writing and draining them). Forget them without closing them (closing
        would write to the parent's files) and claim a log of the child's own at first
        use."""
        # Nothing here may take a lock: another thread of the parent may have held it
        # at the fork, and it stays held in the child. Counters start again at 0 (each
        # process reports what it wrote).
        self._written = 0
        self._adopted, self._reading, self._own = [], None, None
        self._log = cast(Any, _ClaimOnUse(self))
        self._read_lock, self._claim_lock = threading.Lock(), threading.Lock()
        self._batches = BatchTracker(self._read_lock, self._what, self._check_open)

    @classmethod
    def from_params(
        cls, params: dict[str, Any], registry: CollectorRegistry | None = None
    ) -> FileStore:
        """The ``file`` factory."""
        p = Params(params, cls.TYPE, _EXAMPLE)
        directory = p.require_str("directory", "the buffer directory path")
        max_file_size = p.get_int("max_file_size", 10 << 20, minimum=1, unit="bytes")
        max_total_size = p.get_int(
            "max_total_size", 0, minimum=0, unit="bytes; 0 = unlimited"
        )
        fsync = p.get_choice("fsync", _FSYNC, "always")
        fsync_interval = p.get_number("fsync_interval", 0.01, minimum=0.0001)
        batch_size = p.get_int("batch_size", 1000, minimum=1, unit="events")
        name = p.get_optional_str("name")
        p.finish()
        try:
            return cls(
                directory,
                max_file_size=max_file_size,
                max_total_size=max_total_size,
                fsync=fsync,
                fsync_interval=fsync_interval,
                batch_size=batch_size,
                registry=registry,
                name=name,
            )
        except ConfigError as exc:
            raise ConfigError(f"{exc}; expected e.g. {_EXAMPLE}") from exc

    @property
    def log(self) -> SegmentLog:
        """This process's own segment log (for stats and tools; do not read or commit
        it)."""
        return self._own_source().log

    @property
    def metrics_label(self) -> str:
        return self._metrics.label

    def room(self, event_size: int) -> int:
        """At least how many more events of ``event_size`` bytes fit (Rule 8 of
        base.py): the rest of the active segment, plus whole segments up to
        ``max_total_size`` and up to the free space of the device, each holding as many
        frames of that size as fit (a segment's tail too short for one is not counted).
        Segments prepared or recycled ahead are not counted: it errs low. Consumed
        segments count once the log's reclaim thread has freed them: it waits for that
        thread for up to ``ROOM_RECLAIM_WAIT`` seconds."""
        self._log.wait_for_reclaim(ROOM_RECLAIM_WAIT)
        with self._read_lock:
            self._check_open()
            try:
                stats = self._log.stats()
                device = os.statvfs(self._directory)
            except OSError as exc:
                raise BackingStoreError(f"{self._what}: cannot read the free space: "
                                        f"{exc}") from exc
        size = int(stats["segment_size"])
        frame = frame_size(max(0, int(event_size)))
        free = device.f_bavail * device.f_frsize // size
        limit = stats["max_total_size"]
        if limit:
            free = min(free, max(0, int(limit) // size - int(stats["segments"])))
        active = max(0, size - int(stats["write_offset"])) // frame
        return int(active + free * ((size - SEGMENT_HEADER_SIZE) // frame))

    @property
    def max_event_size(self) -> int:
        """A segment's payload (Rule 7 of base.py): the log refuses a larger record with
        RecordTooLargeError. Raise ``max_file_size`` to store larger events."""
        return int(self._log.max_record_size)

    # -- plumbing ---------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            prepare_directory(self._directory)  # the log's rule: 0700, an open one tightened
        except OSError as exc:
            raise BackingStoreError(
                f"{self._what}: cannot create the directory or set its mode 0700: {exc}; "
                "check the path and that the process owns it"
            ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self._what} is closed; create a new store")

    # -- writes -------------------------------------------------------------------------

    def write(self, event: Event) -> None:
        self._append_batch((_dumps(event),))  # TypeError here: nothing stored

    def write_many(self, events: Sequence[Event]) -> None:
        self._append_batch([_dumps(e) for e in events])  # TypeError here: nothing stored

    def write_many_encoded(self, bodies: Sequence[bytes]) -> None:
        """The bytes as given, one record each (Rule 10 of base.py: not parsed again;
        the reader parses every record and dead-letters one that is not a JSON
        object)."""
        if _writes_overridden(self, FileStore):
            super().write_many_encoded(bodies)
            return
        _check_encoded(bodies, self._what)
        self._append_batch(bodies)

    def _append_batch(self, payloads: Sequence[bytes]) -> None:
        """Append the records, all or none (one durability point); one record takes the
        log's cheaper single append (write-ahead writes one event at a time)."""
        try:
            if len(payloads) == 1:
                self._log.append(payloads[0])
            elif payloads:
                self._log.append_batch(payloads)
        except (RecordTooLargeError, LogFullError, DurabilityError) as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> Exception:
        """The log's error in the store's terms: full is BackingStoreFull, a failed disk
        BackingStoreError (each counted); a too-large record names this store's setting.
        (A try/except, not a context manager: this is every write's path.)"""
        if isinstance(exc, RecordTooLargeError):
            return RecordTooLargeError(
                f"{self._what}: {exc} (segment_size is this store's max_file_size)")
        if isinstance(exc, LogFullError):
            self._metrics.error("write_full")
            return BackingStoreFull(f"{self._what}: {exc}")
        self._metrics.error("write")
        return BackingStoreError(f"{self._what}: write failed: {exc}")

    # -- the drain ----------------------------------------------------------------------

    def read_batch(
        self, max_events: int | None = None
    ) -> tuple[list[dict[str, Any]], Commit | None]:
        limit = batch_limit(max_events, self._batch_size, self._what)
        return self._read(limit, _event)

    def read_encoded_up_to(
        self, max_events: int
    ) -> tuple[list[bytes], list[str | None], Commit | None]:
        """The stored bytes themselves (see BackingStore): each record is parsed once, to
        validate it (a record that does not parse is dead-lettered as by read_batch) and
        to take its id; the dict is dropped at once. A subclass that overrides
        read_batch gets the default, so its read_batch stays the one read."""
        if type(self).read_batch is not FileStore.read_batch:
            return super().read_encoded_up_to(max_events)
        limit = batch_limit(max_events, self._batch_size, self._what)
        pairs, commit = self._read(limit, _bytes_and_id)
        return [body for body, _ in pairs], [mid for _, mid in pairs], commit

    def _read(self, limit: int, keep: Callable[[bytes, dict[str, Any]], _T]
              ) -> tuple[list[_T], Commit | None]:
        """read_batch, returning ``keep(record, event)`` for each record that parses."""
        with self._read_lock:
            self._check_open()
            rewind = self._batches.outstanding
            self._batches.drop()
            # The batch outstanding is read again from its own log; else the oldest
            # adopted log first, then this process's own.
            src = self._reading if rewind and self._reading else self._next_source()
            try:
                if rewind:
                    src.log.rewind()
                while True:
                    batch = src.log.read_batch(max_records=limit)
                    if not batch:
                        if src is self._own:
                            return [], None
                        self._retire(src)  # an adopted log, all of it delivered
                        src = self._next_source()
                        continue
                    events = src.parse(batch, keep)
                    if events:
                        break
                    # Every record was dead-lettered (kept in deadletter-json.jsonl,
                    # fsynced): consume them and read on.
                    src.log.commit(batch)
                    src.forget_dead_below(batch.last_seq + 1)
            except Exception as exc:
                # The log's reader moved past the batch, and no commit was handed out to
                # bring it back: rewind, so the next read starts from the same records
                # (none is skipped because this read failed).
                self._metrics.error("read")
                try:
                    src.log.rewind()
                except Exception as again:  # the error below says the read failed
                    exc.add_note(f"rewind after the failed read also failed: {again}")
                if isinstance(exc, OSError | ValueError):
                    raise BackingStoreError(f"{self._what}: read failed: {exc}") from exc
                raise
            self._metrics.read(len(events))

            self._reading = src

            def do_commit() -> None:
                try:
                    src.log.commit(batch)
                except OSError as exc:
                    self._metrics.error("commit")
                    raise BackingStoreError(
                        f"{self._what}: commit failed ({exc}); the batch stays stored and "
                        "will be read again"
                    ) from exc
                src.forget_dead_below(batch.last_seq + 1)

            return events, self._batches.issue(do_commit)

    def pending(self) -> int:
        """Records appended and not committed, less those already dead-lettered, in this
        process's log and the logs it adopted."""
        with self._read_lock:
            self._check_open()
            try:
                return sum(src.pending() for src in [self._own_source(), *self._adopted])
            except OSError as exc:
                raise BackingStoreError(f"{self._what}: cannot read the log's counters: "
                                        f"{exc}") from exc

    def adopt(self) -> int:
        """Take over the logs of gone processes configured with this directory (module
        docstring, "Many processes"); returns how many events they hold. Their events are
        read before this process's own; each adopted log is removed once drained."""
        with self._read_lock:
            self._check_open()
            try:
                logs = self._pool.adopt()
            except OSError as exc:
                raise BackingStoreError(f"{self._what}: cannot look for logs to adopt: "
                                        f"{exc}") from exc
            for log in logs:
                LOG.info("%s: adopted the backlog of %s (%d events)", self._what,
                         log.directory, log.stats()["pending_records"])
                self._adopted.append(_Source(log, self._what, self._metrics))
            return sum(src.pending() for src in self._adopted)

    # -- metrics and closing -------------------------------------------------------------

    def update_metrics(self) -> None:
        if self._closed or self._own is None:
            return
        try:
            stats = self._log.stats()
        except Exception:  # metrics must never take the service down
            self._metrics.error("update_metrics")
            return
        self._metrics.set_events(stats["pending_records"])
        self._metrics.set_size_bytes(stats["disk_bytes"])
        # disk_bytes counts the prepared next segment too: it is a file on disk.
        self._metrics.set_files(stats["disk_bytes"] // stats["segment_size"])
        damaged = int(stats.get("damaged_regions", 0))
        if damaged > self._damaged_seen:
            self._metrics.error("read_corrupt", damaged - self._damaged_seen)
            self._damaged_seen = damaged

    def close(self) -> None:
        """Close the store. This process's log is removed when nothing in it is pending;
        otherwise it stays in the directory and the next process configured with it (a
        new worker, or any live one within a few seconds) delivers it. Adopted logs not
        yet delivered are given back the same way."""
        with self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._batches.drop()
        try:
            for src in [*self._adopted, self._own]:
                if src is not None:
                    self._pool.retire(src.log)
        finally:
            _STORES.discard(self)
            self._metrics.release()


class _ClaimOnUse:
    """A forked child's stand-in for the store's log: the first use claims the child's
    own log from the pool (FileStore._after_fork_in_child)."""

    def __init__(self, store: FileStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        self._store._own_source()
        return getattr(self._store._log, name)


_STORES: weakref.WeakSet[FileStore] = weakref.WeakSet()


def _forked() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_forked)
