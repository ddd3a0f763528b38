"""Power-loss states: a file system that forgets what was not made durable.

``kill -9`` keeps the page cache, so a crash loop never sees what a power failure
loses. This layer records every durability-relevant operation the log makes through
the file-system seam (segmentlog/_fs.py) and builds, for any point of a recorded run,
the directory a power failure at that point could leave; the tests reopen each such
state with a real SegmentLog and check that nothing acknowledged was lost.

The model (after LevelDB's FaultInjectionTestEnv and the crash states of the ALICE
paper, "All File Systems Are Not Created Equal", OSDI 2014)
--------------------------------------------------------------------------------------
Files have identities (inodes): a name in the directory points at one; a rename moves
the identity to the new name, and the content goes with the identity, not the name.

Rule 1 (data): a file's durable content is what it held when its last ``fsync`` or
``fdatasync`` was called (the recorder reads the file then, under its lock, so no write
through the seam races with it; a write through a map racing with it may be in it in
part, as on a real disk; the real fsync is not made: the files are scratch). The read is
of the file, so it holds what was written through a map as well: the page cache is one
(a mapped file's durable state is what its page cache held when an fdatasync of it
returned; writes through a map are no syscalls and are never seen otherwise). A file
never synced is empty, whatever its size was: ``posix_fallocate``'s size and zeros
included.
Rule 2 (names): the directory's durable content is the name -> identity map at its last
``fsync``. A create, rename or unlink not followed by a directory fsync did not happen:
the file keeps its old name (or none), an unlinked file is back with its durable content.
Rule 3 (media damage): bytes the test damages on purpose (:meth:`Recorder.damage`) are
damaged in the durable content too: the disk itself returns them.

Those three give the *conservative* crash state at each point (LevelDB's model: drop
unsynced data, delete files whose creation was not synced). The *ALICE* mode adds, at
each point, states a real file system may also leave, each of which must be as safe:

* a prefix of the metadata operations since the last directory fsync persisted, in
  order (ext4's journal commits them in order), including all of them; and all of them
  but one of the last three (a file system that reorders them);
* every write made through the seam (``pwrite``/``write``) since the file's last fsync
  persisted (a crash that lost only the map's writes);
* the first half of those writes persisted, the next one torn half-way;
* the sizes persisted but not the data (reserved space, appends, as zeros: a
  writeback-mode journal).

A crash state has only files the seam saw created (not ``lock``: it holds no data the
log recovers). Writes through the map past the last fsync of a file are never in a
state (the seam cannot see them): the torn tails they leave are the kill -9 crash loops'
subject (tests/test_crash.py). ``msync`` of a map (recovery's zeroing of a torn tail) is
not seen either: the state keeps the torn bytes, which recovery then zeroes again.

What is checked at a crash point (:func:`check_state`), given what the workload was told
before it (the ``mark`` events):

1. The state opens with a real SegmentLog, and a new record appended then reads back
   with a sequence number above every record returned and every acknowledged one.
2. Every record returned is byte-identical to the one appended with its sequence
   number, in increasing order, each at most once.
3. Every acknowledged record (``fsync="always"``: ``append`` returned; otherwise a
   ``sync()`` that covered it returned) at or after the highest position the consumer
   ever asked to commit is returned; and so is every one at or after the checkpoint the
   state holds (a consumed segment is deleted only after a checkpoint past it is
   durable, so a checkpoint never points into records that are gone). Records below the
   checkpoint may be absent, uncommitted ones delivered again.
4. The state's checkpoint is never past the highest position the consumer asked to
   commit.
5. Every dead-letter entry the reader had moved past is in the state's dead-letter file
   (the entry is durable before the reader moves on).

A second crash (:func:`starts`, ``Workload.start``): a crash state of one run, ALICE-like
ones included (torn writes, half-done renames), is where a second recorded run starts,
so the log's recovery (zeroing a torn tail, deleting leftovers, writing a missing
checkpoint, starting a segment past a checkpoint ahead of the data) is itself crashed
at every point. The records a reopen of the start state returned count as acknowledged;
the first run's other records are known (a record read back must be one of them, by
number) but not expected.

Cost: a file's content is kept whole at each fsync (the tests use 16 KiB segments); a
state is reopened once (states are cached by content), with a file system without
fsyncs. The tests sample the ALICE-like states (every n-th crash point) and keep
runs short; ``SEGMENTLOG_POWERLOSS_LONG`` runs longer ones at every point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from segmentlog import LogFullError, SegmentLog, _fs, checkpoint
from segmentlog import _pure as pure
from segmentlog._format import (
    CHECKPOINT_NAME,
    DEADLETTER_NAME,
    LOCK_NAME,
    SEGMENT_HEADER_SIZE,
    parse_segment_name,
)

Event = tuple[Any, ...]


class SeamBypassed(AssertionError):
    """The log touched a file of the directory without the seam seeing it."""


class Recorder(_fs.FileSystem):
    """A file system that does the real operation and records it (fsyncs only recorded:
    the crash is simulated, the files are scratch). One directory is tracked; files
    elsewhere pass through unrecorded."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.live: dict[str, int] = {}  # the directory now: name -> file identity
        self._fds: dict[int, tuple[int | None, int]] = {}  # fd -> (identity, inode)
        # What exists when recording starts is durable as it is.
        self.initial_dir: dict[str, int] = {}
        self.initial_content: dict[int, bytes] = {}
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fid = next(self._ids)
                self.live[name] = self.initial_dir[name] = fid
                with open(path, "rb") as f:
                    self.initial_content[fid] = f.read()

    # -------------------------------------------------------------- the seam

    def _name(self, path: str) -> str | None:
        path = os.path.abspath(path)
        return os.path.basename(path) if os.path.dirname(path) == self.directory else None

    def _fail(self, message: str) -> SeamBypassed:
        self.errors.append(message)
        return SeamBypassed(message)

    def _fid(self, fd: int) -> int | None:
        entry = self._fds.get(fd)
        if entry is None or os.fstat(fd).st_ino != entry[1]:
            raise self._fail(f"descriptor {fd} was not opened through the seam")
        return entry[0]

    def open(self, path: str, flags: int, mode: int = 0o777, *,  # type: ignore[override]
             dir_fd: int | None = None) -> int:
        name = self._name(path)
        with self._lock:
            fd = os.open(path, flags, mode)
            fid = None
            if name is not None:
                fid = self.live.get(name)
                if fid is None:
                    if not flags & os.O_CREAT:
                        os.close(fd)
                        raise self._fail(f"{path} was created without the seam")
                    fid = next(self._ids)
                    self.live[name] = fid
                    self.events.append(("create", name, fid))
                elif flags & os.O_TRUNC:
                    self.events.append(("trunc", fid, 0))
            self._fds[fd] = (fid, os.fstat(fd).st_ino)
            return fd

    def pwrite(self, fd: int, data: Any, offset: int) -> int:  # type: ignore[override]
        with self._lock:
            fid = self._fid(fd)
            n = os.pwrite(fd, data, offset)
            if fid is not None:
                self.events.append(("write", fid, offset, bytes(memoryview(data)[:n])))
            return n

    def write(self, fd: int, data: Any) -> int:  # type: ignore[override]
        with self._lock:
            fid = self._fid(fd)
            n = os.write(fd, data)
            if fid is not None:
                offset = os.lseek(fd, 0, os.SEEK_CUR) - n
                self.events.append(("write", fid, offset, bytes(memoryview(data)[:n])))
            return n

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:  # type: ignore[override]
        with self._lock:
            fid = self._fid(fd)
            os.posix_fallocate(fd, offset, length)
            if fid is not None:
                self.events.append(("alloc", fid, offset + length))

    def fdatasync(self, fd: int) -> None:  # type: ignore[override]
        with self._lock:
            fid = self._fid(fd)
            if fid is not None:
                self.events.append(("sync", fid, _content(fd)))

    fsync = fdatasync  # type: ignore[assignment]

    def fsync_dir(self, path: str) -> None:  # type: ignore[override]
        with self._lock:
            if os.path.abspath(path) == self.directory:
                self.events.append(("dirsync", dict(self.live)))

    def rename(self, src: str, dst: str) -> None:  # type: ignore[override]
        sname, dname = self._name(src), self._name(dst)
        with self._lock:
            if sname is not None and sname not in self.live:
                raise self._fail(f"{src} was created without the seam")
            os.replace(src, dst)
            if sname is not None and dname is not None:
                fid = self.live.pop(sname)
                self.live[dname] = fid
                self.events.append(("rename", sname, dname, fid))
            elif sname is not None or dname is not None:
                raise self._fail(f"rename {src} -> {dst} crosses directories")

    def unlink(self, path: str) -> None:  # type: ignore[override]
        name = self._name(path)
        with self._lock:
            os.unlink(path)
            if name is not None and self.live.pop(name, None) is not None:
                self.events.append(("unlink", name))

    def check_directory(self) -> None:
        """Raise SeamBypassed if the directory holds other names than the seam saw made
        (a create, rename or unlink made past it); ``lock`` is not the seam's."""
        actual = set(os.listdir(self.directory)) - {LOCK_NAME}
        seen = set(self.live) - {LOCK_NAME}
        if actual != seen:
            raise self._fail(f"the directory changed past the seam: it holds "
                             f"{sorted(actual - seen)} the seam never saw made, "
                             f"and lacks {sorted(seen - actual)}")

    # -------------------------------------------------------------- the test's own events

    def mark(self, kind: str, value: Any) -> None:
        """Note what the workload was told (an acknowledgement, a commit asked for...)."""
        with self._lock:
            self.events.append(("mark", kind, value))

    def damage(self, name: str, offset: int, data: bytes) -> None:
        """Overwrite bytes of ``name`` as a failing disk would: durable at once."""
        with self._lock:
            fd = os.open(os.path.join(self.directory, name), os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            self.events.append(("damage", self.live[name], offset, data))


def _content(fd: int) -> bytes:
    """All of the file behind ``fd`` (opened again for reading: the fd may be write-only,
    and the file may have no name left)."""
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        size = os.fstat(rfd).st_size
        return os.pread(rfd, size, 0) if size else b""
    finally:
        os.close(rfd)


class NoSync(_fs.FileSystem):
    """The real file system without fsyncs: reopening crash states needs no durability."""

    @staticmethod
    def fdatasync(fd: int) -> None:
        pass

    fsync = fdatasync

    @staticmethod
    def fsync_dir(path: str) -> None:
        pass


# ---------------------------------------------------------------------- crash states


@dataclasses.dataclass
class Expected:
    """What the workload had been told at a crash point."""

    acked: int = -1  # every appended record up to this sequence number was acknowledged
    commit_max: int = 0  # the highest position the consumer asked to commit
    damaged: frozenset[int] = frozenset()  # records the test damaged on the disk
    deadletter: frozenset[tuple[str, int]] = frozenset()  # entries the reader moved past


@dataclasses.dataclass(frozen=True)
class CrashState:
    index: int  # the crash is just after events[index - 1]
    variant: str  # "conservative", or which ALICE variant
    files: dict[str, bytes]
    expected: Expected

    def key(self) -> str:
        h = hashlib.sha1()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha1(self.files[name]).digest())
        return h.hexdigest()


def _apply(content: bytes, op: Event, *, sizes_only: bool = False) -> bytes:
    kind = op[0]
    if kind == "trunc":
        return content[: op[2]]
    if kind == "alloc":
        return content + bytes(max(0, op[2] - len(content)))
    if kind == "write" or kind == "damage":
        off, data = op[2], op[3]
        if len(content) < off:
            content += bytes(off - len(content))
        if sizes_only:
            return content + bytes(max(0, off + len(data) - len(content)))
        return content[:off] + data + content[off + len(data):]
    raise AssertionError(op)


def _rename(names: dict[str, int], op: Event) -> None:
    if op[0] == "create":
        names[op[1]] = op[2]
    elif op[0] == "rename":
        names.pop(op[1], None)
        names[op[2]] = op[3]
    elif op[0] == "unlink":
        names.pop(op[1], None)


def crash_states(rec: Recorder, alice: int = 0) -> Iterator[CrashState]:
    """The crash states after each event of ``rec``: the conservative one, and at every
    ``alice``-th point (none for 0) the ALICE-like variants (module docstring)."""
    durable_dir = dict(rec.initial_dir)
    durable: dict[int, bytes] = dict(rec.initial_content)
    unsynced: dict[int, list[Event]] = {}  # data ops since each file's last sync
    meta: list[Event] = []  # metadata ops since the last directory fsync
    exp = Expected()
    events = rec.events
    for i, ev in enumerate(events):
        kind = ev[0]
        if kind == "sync":
            durable[ev[1]] = ev[2]
            unsynced.pop(ev[1], None)
        elif kind == "dirsync":
            durable_dir = dict(ev[1])
            meta = []
        elif kind in ("create", "rename", "unlink"):
            meta.append(ev)
        elif kind in ("write", "trunc", "alloc"):
            unsynced.setdefault(ev[1], []).append(ev)
        elif kind == "damage":
            durable[ev[1]] = _apply(durable.get(ev[1], b""), ev)
        elif kind == "mark":
            exp = _marked(exp, ev[1], ev[2])
        if kind == "mark" and i + 1 != len(events) and events[i + 1][0] == "mark":
            continue  # the next mark tells more about the same state
        yield CrashState(i + 1, "conservative",
                         {n: durable.get(f, b"") for n, f in durable_dir.items()}, exp)
        if alice and not i % alice:
            yield from _alice(i + 1, durable_dir, durable, unsynced, meta, exp)


def _alice(index: int, durable_dir: dict[str, int], durable: dict[int, bytes],
           unsynced: dict[int, list[Event]], meta: list[Event],
           exp: Expected) -> Iterator[CrashState]:
    def names_after(p: int) -> dict[str, int]:
        names = dict(durable_dir)
        for op in meta[:p]:
            _rename(names, op)
        return names

    # A prefix of the metadata operations (a sample of the prefixes when there are many).
    prefixes = sorted({1, len(meta) // 2, len(meta) - 1, len(meta)} - {0}) if meta else []
    for p in prefixes:
        yield CrashState(index, f"meta[:{p}]",
                         {n: durable.get(f, b"") for n, f in names_after(p).items()}, exp)
    # Reordered: every operation but one of the last three (a file system that does not
    # keep their order).
    for skip in range(max(0, len(meta) - 3), len(meta) - 1):
        names = dict(durable_dir)
        for op in meta[:skip] + meta[skip + 1:]:
            _rename(names, op)
        yield CrashState(index, f"meta-without[{skip}]",
                         {n: durable.get(f, b"") for n, f in names.items()}, exp)
    if not unsynced:
        return
    every_name = names_after(len(meta))

    def contents(cut: str) -> dict[str, bytes]:
        out = {}
        for n, f in every_name.items():
            data, ops = durable.get(f, b""), unsynced.get(f, [])
            if cut == "half":
                keep = len(ops) // 2
                for op in ops[:keep]:
                    data = _apply(data, op)
                if keep < len(ops):
                    op = ops[keep]
                    if op[0] == "write":
                        op = (*op[:3], op[3][: len(op[3]) // 2])
                    data = _apply(data, op)
            else:
                for op in ops:
                    data = _apply(data, op, sizes_only=cut == "sizes")
            out[n] = data
        return out

    for cut in ("all", "half", "sizes"):
        yield CrashState(index, f"data-{cut}", contents(cut), exp)


def _marked(exp: Expected, kind: str, value: Any) -> Expected:
    if kind == "acked":
        return dataclasses.replace(exp, acked=max(exp.acked, value))
    if kind == "commit":
        return dataclasses.replace(exp, commit_max=max(exp.commit_max, value))
    if kind == "damaged":
        return dataclasses.replace(exp, damaged=exp.damaged | {value})
    if kind == "deadletter":
        return dataclasses.replace(exp, deadletter=exp.deadletter | {value})
    if kind in ("appended", "known", "survived"):
        return exp
    raise AssertionError(kind)


# ---------------------------------------------------------------------- checking a state


@dataclasses.dataclass
class Reopened:
    """What a real SegmentLog made of a crash state."""

    error: str | None = None
    checkpoint: int | None = None  # the state's checkpoint, if sound
    # (first_seq, last_seq, records) of every batch read
    batches: list[tuple[int, int, list[bytes]]] = dataclasses.field(default_factory=list)
    new_seq: int = -1
    deadletter: frozenset[tuple[str, int]] = frozenset()
    # After settle(): the numbers of the records read, and what was wrong with them
    # (the records themselves are dropped: a run's states would hold them all).
    seqs: list[int] = dataclasses.field(default_factory=list)
    record_problems: list[str] = dataclasses.field(default_factory=list)


def settle(got: Reopened, payloads: dict[int, bytes], by_payload: dict[bytes, int]) -> None:
    """Check the records ``got`` read against those appended (rule 2), keep their numbers
    and the problems, drop the records."""
    numbered, problems = number_records(got, by_payload)
    for seq, data in numbered:
        if payloads.get(seq) != data:
            problems.append(f"record {seq} is not the one appended: {data[:40]!r}")
    got.seqs = [n for n, _ in numbered]
    if any(b <= a for a, b in itertools.pairwise(got.seqs)):
        problems.append(f"sequence numbers not increasing: {got.seqs}")
    got.record_problems = problems
    got.batches = []


def reopen(files: dict[str, bytes], scratch: str, segment_size: int, fsync: str) -> Reopened:
    """Write ``files`` into ``scratch`` (emptied first), open it as a log, read every
    record, append one and read it back."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    for name, data in files.items():
        with open(os.path.join(scratch, name), "wb") as f:
            f.write(data)
    out = Reopened()
    if CHECKPOINT_NAME in files:
        out.checkpoint = checkpoint.decode(files[CHECKPOINT_NAME])[0]
    out.deadletter = _deadletter_keys(files.get(DEADLETTER_NAME, b""))
    try:
        with _fs.installed(NoSync()):
            log = SegmentLog(scratch, segment_size=segment_size, fsync=fsync)
            try:
                while batch := log.read_batch(max_records=1000):
                    out.batches.append((batch.first_seq, batch.last_seq, batch.records))
                out.new_seq = log.append(b"after the crash")
                again = log.read_batch(max_records=1)
                if again.records != [b"after the crash"] or again.last_seq != out.new_seq:
                    out.error = f"the new record read back as {again!r}"
            finally:
                log.close()
    except Exception as exc:  # any failure to reopen is the finding
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def _deadletter_keys(data: bytes) -> frozenset[tuple[str, int]]:
    keys = set()
    for line in data.splitlines():
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict) and "segment" in item and isinstance(item.get("offset"), int):
            keys.add((str(item["segment"]), item["offset"]))
    return frozenset(keys)


def check_state(state: CrashState, got: Reopened, ours: set[int]) -> list[str]:
    """The rules of the module docstring for one crash state (``got`` settled); the
    broken ones, worded. ``ours``: the records this run appended or started with (an
    earlier run's records lost in its crash are known, never expected)."""
    exp = state.expected
    if got.error is not None:
        return [f"does not reopen: {got.error}"]
    problems = list(got.record_problems)
    seqs = got.seqs
    returned = set(seqs)
    floors = [exp.commit_max] + ([got.checkpoint] if got.checkpoint is not None else [])
    floor = min(floors)
    lost = [s for s in range(floor, exp.acked + 1)
            if s not in returned and s not in exp.damaged and s in ours]
    if lost:
        problems.append(f"acknowledged records lost: {_ranges(lost)} (checkpoint "
                        f"{got.checkpoint}, commit asked up to {exp.commit_max})")
    if got.checkpoint is not None and got.checkpoint > exp.commit_max:
        problems.append(f"checkpoint {got.checkpoint} is past every commit asked for "
                        f"({exp.commit_max})")
    top = max([*seqs, exp.acked])
    if got.new_seq <= top:
        problems.append(f"a new record got sequence number {got.new_seq}, not above {top}")
    missing = exp.deadletter - got.deadletter
    if missing:
        problems.append(f"dead-letter entries lost: {sorted(missing)}")
    return problems


def _ranges(seqs: list[int]) -> str:
    out = []
    for _, group in itertools.groupby(enumerate(seqs), lambda p: p[1] - p[0]):
        g = [s for _, s in group]
        out.append(f"{g[0]}..{g[-1]}" if len(g) > 1 else str(g[0]))
    return ", ".join(out)


def number_records(got: Reopened,
                   by_payload: dict[bytes, int]) -> tuple[list[tuple[int, bytes]], list[str]]:
    """(sequence number, record) of every record read, and the batches that disagree."""
    out: list[tuple[int, bytes]] = []
    problems = []
    for first, last, records in got.batches:
        if len(records) == last - first + 1:
            out += zip(range(first, last + 1), records, strict=True)
            continue
        # Damage skipped inside the batch: each record's number is the one it was
        # appended with, if it was; it must lie within the batch's numbers.
        numbered = [(by_payload.get(r, -1), r) for r in records]
        if any(not first <= n <= last for n, _ in numbered):
            problems.append(f"batch {first}..{last} holds records of other numbers: "
                            f"{[n for n, _ in numbered]}")
        out += numbered
    return out, problems


def payloads_of(rec: Recorder) -> tuple[dict[int, bytes], set[int]]:
    """Every record the run appended, by sequence number (from its ``appended`` marks),
    and those an earlier run appended (``known``); and the numbers of those the run
    appended or started with (``survived``)."""
    out: dict[int, bytes] = {}
    ours: set[int] = set()
    for ev in rec.events:
        if ev[0] == "mark" and ev[1] == "appended":
            first, records = ev[2]
            for i, data in enumerate(records):
                out[first + i] = data
            ours.update(range(first, first + len(records)))
        elif ev[0] == "mark" and ev[1] in ("known", "survived"):
            out.update(ev[2])  # the start of the run: appends that follow override
            if ev[1] == "survived":
                ours.update(ev[2])
    return out, ours


# ---------------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Start:
    files: dict[str, bytes]
    known: dict[int, bytes]  # every record the earlier run appended, by sequence number
    survived: dict[int, bytes]  # the records a reopen of ``files`` returned
    checkpoint: int | None  # the checkpoint ``files`` hold, if sound
    origin: str  # which run and state it comes from


@dataclasses.dataclass
class Workload:
    fsync: str
    seed: int
    steps: int = 300
    segment_size: int = 16384
    recycle: bool = True
    max_total_size: int | None = None
    damage: bool = False
    reopen_at: int | None = None  # close and reopen the log (recorded) at this step
    threads: int = 0  # this many appender threads (the run's thread syncs and consumes)
    # The run starts in the crash state of an earlier one (a second crash, during or
    # after recovery): its files, and the records a reopen of them returned.
    start: Start | None = dataclasses.field(default=None, repr=False)
    # Called with each log opened and the recorder: the layer's own tests break a rule here.
    tamper: Callable[[SegmentLog, Recorder], None] | None = dataclasses.field(
        default=None, repr=False)


def run(directory: str, w: Workload) -> Recorder:
    """Run workload ``w`` in ``directory`` under a Recorder; return it."""
    os.makedirs(directory, exist_ok=True)
    if w.start is not None:
        for name, data in w.start.files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
    rec = Recorder(directory)  # what is there now is durable
    if w.start is not None:
        rec.mark("known", w.start.known)
        if w.start.survived:
            rec.mark("survived", w.start.survived)
            rec.mark("acked", max(w.start.survived))
        if w.start.checkpoint is not None:
            rec.mark("commit", w.start.checkpoint)  # committed by the earlier run
    with _fs.installed(rec):
        _Driver(rec, w).run()
    rec.check_directory()
    if rec.errors:
        raise SeamBypassed("; ".join(rec.errors))
    return rec


class _Driver:
    """One run of a workload; each append, sync and commit noted with ``Recorder.mark``."""

    def __init__(self, rec: Recorder, w: Workload) -> None:
        self.rec, self.w = rec, w
        self.rng = random.Random(w.seed)
        self.ids = itertools.count()
        self.last = -1  # the highest sequence number an append returned
        self.mutex = threading.Lock()

    def open_log(self) -> SegmentLog:
        w = self.w
        log = SegmentLog(self.rec.directory, segment_size=w.segment_size, fsync=w.fsync,
                         fsync_interval=0.002, recycle=w.recycle,
                         max_total_size=w.max_total_size)
        if w.tamper is not None:
            w.tamper(log, self.rec)
        return log

    def payload(self, rng: random.Random) -> bytes:
        return b"%06d|" % next(self.ids) + rng.randbytes(rng.randint(1, 600))

    def append(self, log: SegmentLog, rng: random.Random, count: int = 1) -> None:
        records = [self.payload(rng) for _ in range(count)]

        def once() -> int:
            return log.append(records[0]) if count == 1 else log.append_batch(records)

        try:
            last = once()
        except LogFullError:
            # max_total_size reached (nothing was written): the consumer catches up and
            # commits, then the same records go in again.
            if self.w.threads:
                raise
            while batch := log.read_batch(max_records=1000):
                self.rec.mark("commit", batch.last_seq + 1)
                log.commit(batch)
            last = once()
        self.rec.mark("appended", (last - count + 1, records))
        with self.mutex:
            self.last = max(self.last, last)
        if self.w.fsync == "always":
            self.rec.mark("acked", last)  # durable on return, and so is all before it

    def sync(self, log: SegmentLog) -> None:
        with self.mutex:
            target = self.last  # every append returned before sync() was called
        log.sync()
        self.rec.mark("acked", target)

    def run(self) -> None:
        w, rng = self.w, self.rng
        log = self.open_log()
        try:
            if w.threads:
                self.run_threads(log)
                return
            damage_pending = w.damage
            for step in range(w.steps):
                if step == w.reopen_at:
                    if w.fsync == "never":
                        # Closing syncs nothing with "never", and the reopened log takes
                        # what it finds as durable, so its sync() would not cover these
                        # (test_sync_after_a_reopen_makes_the_records_found_at_open_durable).
                        self.sync(log)
                    log.close()
                    self.rec.mark("acked", self.last)  # closing synced everything
                    log = self.open_log()
                roll = rng.random()
                if roll < 0.6:
                    self.append(log, rng, 1 if roll < 0.45 else rng.randint(2, 6))
                elif roll < 0.72:
                    self.sync(log)
                else:
                    if damage_pending and step >= w.steps // 3:
                        # Enough records past the read position to seal a segment of them.
                        while not _damage_one(self.rec, log):
                            self.append(log, rng)
                        self.rec.mark("acked", self.last)  # _damage_one synced
                        damage_pending = False
                    _consume(self.rec, log, rng)
            if damage_pending:
                raise AssertionError(f"{w}: the run ended before it damaged a record")
        finally:
            log.close()
            if w.fsync != "never":
                self.rec.mark("acked", self.last)

    def run_threads(self, log: SegmentLog) -> None:
        """``w.threads`` appenders share the steps; this thread syncs and consumes."""
        w = self.w

        def appender(i: int) -> None:
            rng = random.Random(w.seed * 1000 + i)
            for _ in range(w.steps // w.threads):
                self.append(log, rng, 1 if rng.random() < 0.75 else rng.randint(2, 6))

        threads = [threading.Thread(target=appender, args=(i,)) for i in range(w.threads)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if self.rng.random() < 0.3:
                self.sync(log)
            else:
                _consume(self.rec, log, self.rng)
        for t in threads:
            t.join()


def _consume(rec: Recorder, log: SegmentLog, rng: random.Random) -> None:
    before = _deadletter_keys(_read(os.path.join(rec.directory, DEADLETTER_NAME)))
    batch = log.read_batch(max_records=rng.randint(1, 40))
    after = _deadletter_keys(_read(os.path.join(rec.directory, DEADLETTER_NAME)))
    for key in sorted(after - before):
        rec.mark("deadletter", key)
    if batch and rng.random() < 0.7:
        rec.mark("commit", batch.last_seq + 1)
        log.commit(batch)
    elif rng.random() < 0.1:
        log.rewind()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _damage_one(rec: Recorder, log: SegmentLog) -> bool:
    """Flip a payload byte of an unread record in a sealed segment made durable first;
    False when no sealed segment holds three unread records."""
    log.sync()
    read_seq = log.stats()["read_seq"]
    names = sorted(n for n in rec.live if parse_segment_name(n) is not None)
    for name in names[:-1]:  # never the active segment
        base = parse_segment_name(name)
        assert base is not None
        if base <= read_seq:
            continue
        data = _read(os.path.join(rec.directory, name))
        r = pure.scan(data, SEGMENT_HEADER_SIZE, len(data), base, 1 << 30)
        if r.count < 3:
            continue
        off = r.offsets[1] + r.lengths[1] // 2
        rec.mark("damaged", base + 1)  # before: a crash right after it must know
        rec.damage(name, off, bytes([data[off] ^ 0x40]))
        return True
    return False


def verify(rec: Recorder, w: Workload, scratch: str, *,
           alice: int = 0) -> tuple[int, list[str]]:
    """Reopen every crash state of ``rec`` (ALICE-like ones at every ``alice``-th point);
    (states reopened, problems found)."""
    payloads, ours = payloads_of(rec)
    by_payload = {data: seq for seq, data in payloads.items()}
    cache: dict[str, Reopened] = {}
    problems: list[str] = []
    for state in crash_states(rec, alice=alice):
        key = state.key()
        got = cache.get(key)
        if got is None:
            got = cache[key] = reopen(state.files, scratch, w.segment_size, w.fsync)
            settle(got, payloads, by_payload)
        for p in check_state(state, got, ours):
            problems.append(f"{w} crash after event {state.index} "
                            f"({_describe(rec.events, state.index)}), {state.variant}: {p}")
    return len(cache), problems


def starts(rec: Recorder, w: Workload, scratch: str, count: int) -> list[Start]:
    """``count`` crash states of ``rec`` spread over the run (ALICE-like ones among
    them), with the records a reopen of each returns: where a second run starts."""
    payloads, _ = payloads_of(rec)
    by_payload = {data: seq for seq, data in payloads.items()}
    states = [s for s in crash_states(rec, alice=1) if s.variant != "conservative"]
    out = []
    for k in range(count):
        state = states[(2 * k + 1) * len(states) // (2 * count)]
        got = reopen(state.files, scratch, w.segment_size, w.fsync)
        assert got.error is None, got.error
        numbered, problems = number_records(got, by_payload)
        assert not problems, problems
        out.append(Start(state.files, payloads, dict(numbered), got.checkpoint,
                         f"{w} after event {state.index}, {state.variant}"))
    return out


def _describe(events: list[Event], index: int) -> str:
    if index == 0:
        return "before any"
    ev = events[index - 1]
    if ev[0] == "sync":
        return f"sync of file {ev[1]}"
    if ev[0] == "dirsync":
        return "directory fsync"
    if ev[0] == "write":
        return f"write of {len(ev[3])} bytes to file {ev[1]} at {ev[2]}"
    if ev[0] == "mark":
        return f"mark {ev[1]} {str(ev[2])[:40]}"
    return " ".join(map(str, ev))
