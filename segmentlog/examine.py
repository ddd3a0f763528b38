"""Read-only inspection of a log directory: what ``verify``, ``dump`` and ``stats`` report.

Theory of operation
-------------------
:func:`inspect` looks at every file of a segmentlog directory and returns a
:class:`Report`: per segment its header, its records (counted by :func:`walk.walk`, the
engine's own frame walker, so the tools and the log agree on what is a record), the
damage crossed and how the segment ends; the sequence continuity between segments; the
checkpoint against the segments; the dead-letter file; files that do not belong.
:func:`records` walks the same way for ``dump`` and yields records and damage in order.

Rule 1: it never changes a byte. Files are opened read-only (segments are mapped
``PROT_READ``), and only regular files, never through a link (segment.open_regular; a
name the log owns that is not one is reported as ``special_file``, never opened); the
writer lock is never taken and no file is ever created, not even the dead-letter file.
Rule 2: it tolerates a running writer. The last segment may grow while it is walked, so
unsound bytes with nothing sound after them at its end are a torn tail (information),
and damage seen in it is reported only if a second walk a moment later sees it again (a
frame being written can look damaged once). A segment that disappears, or is renamed
away, while it is read (consumed, then deleted or recycled) is dropped, and the
checkpoint read again.
Rule 3: every problem has a kind (FORMAT.md, "Problem kinds reported by verify"), and
its kind alone says whether it is damage. Damage that is already kept in the dead-letter
file *and* neutralised on disk (its bytes zeroed, or, for a gap, the missing range
recorded) is reported as ``repaired_damage``, which is not damage: that is the state
``repair`` leaves behind.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from segmentlog import checkpoint as checkpoint_mod
from segmentlog import deadletter
from segmentlog._format import (
    CHECKPOINT,
    CHECKPOINT_NAME,
    DEADLETTER_NAME,
    FRAME_ALIGN,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_MARKER,
    LOCK_NAME,
    PREPARED_NAME,
    SEGMENT_HEADER_SIZE,
    SPARE_NAME,
    TMP_SUFFIX,
    parse_segment_name,
)
from segmentlog.errors import ConfigError, CorruptionError
from segmentlog.segment import MOVING_SUFFIX, header_problem, open_regular, special_files
from segmentlog.walk import NO_LIMIT_SEQ, Damage, Walk, torn_extent, walk

QUARANTINE_SUFFIX = ".damaged"  # a segment set aside (by the log or by repair), bytes kept

# Problem kinds that are damage (verify exits 1). Every other kind is information.
DAMAGE_KINDS = frozenset({
    # a region of a segment holding no sound frame (walk's statuses)
    "bad_crc", "bad_marker", "truncated", "bad_flags", "bad_seq", "zero",
    # sequence numbers in no segment
    "missing_records",
    # segment headers and files
    "bad_header_crc", "bad_magic", "header_name_mismatch", "zero_header", "short_header",
    "unsupported_version", "empty_segment",
    # a segment file cut short: records at its end may be gone
    "short_segment",
    # a name the log owns that is not a regular file: the log refuses to open
    "special_file",
    # the checkpoint
    "checkpoint_missing", "checkpoint_bad_crc", "checkpoint_bad_size",
    "checkpoint_bad_magic", "checkpoint_behind",
    # the dead-letter file
    "deadletter_bad_line",
})
INFO_KINDS = frozenset({
    "torn_tail", "repaired_damage", "consumed_gap", "checkpoint_ahead", "wrong_size",
    "foreign_file", "quarantined_segment", "seq_overlap", "moving_segment",
})
HEADER_KINDS = frozenset({
    "bad_header_crc", "bad_magic", "header_name_mismatch", "zero_header", "short_header",
    "unsupported_version", "empty_segment",
})
_CONFIRM_DELAY = 0.05  # seconds between the two walks of the last segment (Rule 2)
_PAGE = mmap.PAGESIZE
_MADV_POPULATE_READ = 22  # Linux >= 5.14: map a range in one call (EINVAL before)
_PREVIEW_MAX = 1 << 16  # bytes of the oldest pending record kept for ``stats``


@dataclass
class Problem:
    """One thing verify reports: where, what kind, whether it is damage, in words."""

    kind: str
    segment: str | None  # file name (a segment, "checkpoint", "deadletter.jsonl", ...)
    offset: int | None  # byte offset in that file, when the problem has one
    detail: str
    length: int | None = None  # bytes of the region, when it is one
    first_seq: int | None = None  # first sequence number lost (or affected)
    resume_seq: int | None = None  # sequence number after the lost range
    was: str | None = None  # for repaired_damage: the kind it was

    @property
    def damage(self) -> bool:
        return self.kind in DAMAGE_KINDS

    @property
    def lost_records(self) -> int:
        if self.first_seq is None or self.resume_seq is None:
            return 0
        return max(0, self.resume_seq - self.first_seq)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"segment": self.segment, "offset": self.offset,
                               "kind": self.kind, "damage": self.damage,
                               "detail": self.detail}
        for key in ("length", "first_seq", "resume_seq", "was"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass
class SegmentReport:
    """What one walk of one segment file found."""

    name: str
    base: int
    size: int
    records: int = 0
    payload_bytes: int = 0
    used_bytes: int = 0  # offset just past the last record (or damage crossed)
    end_seq: int = 0  # the sequence number expected after its last record
    first_seq: int | None = None
    header: str | None = None  # header_problem(), or None when the header is sound
    stop: str = "limit"  # walk.Walk.stop
    torn_offset: int | None = None  # where unsound bytes with nothing after them start
    torn_length: int = 0  # how many bytes of them belong to the torn frame
    torn_kind: str | None = None
    damages: list[Damage] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    pending_records: int = 0
    pending_bytes: int = 0
    first_pending: tuple[int, int, bytes] | None = None  # (seq, frame offset, payload head)
    mtime: float = 0.0
    # Written bytes run to the file's last byte (a frame ends there or is cut there): a
    # preallocated segment always ends in zero space unless a record fills it exactly.
    fills_end: bool = False

    @property
    def last_seq(self) -> int | None:
        return self.end_seq - 1 if self.records else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "base": self.base, "first_seq": self.first_seq,
            "last_seq": self.last_seq, "records": self.records,
            "bytes_used": self.used_bytes, "payload_bytes": self.payload_bytes,
            "size": self.size, "pending_records": self.pending_records,
            "header_ok": self.header is None,
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass
class Report:
    """Everything verify knows about a directory."""

    directory: str
    segments: list[SegmentReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # not tied to one segment's walk
    checkpoint: int | None = None  # the checkpoint's next_seq, when it is sound
    checkpoint_problem: str | None = None
    checkpoint_time_ns: int | None = None
    read_from: int = 0  # where the log would start reading (the checkpoint, or the oldest)
    deadletter_entries: int = 0
    deadletter_bytes: int = 0
    segment_size: int | None = None  # the common size of the segment files
    prepared_bytes: int = 0  # next.prep and spare.prep
    quarantined: list[str] = field(default_factory=list)
    acks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    kept: set[tuple[str, int, str]] = field(default_factory=set)  # dead letters' keys+kinds

    def all_problems(self) -> list[Problem]:
        out = [p for s in self.segments for p in s.problems] + self.problems
        return sorted(out, key=_problem_order)

    @property
    def ok(self) -> bool:
        return not any(p.damage for p in self.all_problems())

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def pending_records(self) -> int:
        return sum(s.pending_records for s in self.segments)

    @property
    def pending_bytes(self) -> int:
        return sum(s.pending_bytes for s in self.segments)

    @property
    def payload_bytes(self) -> int:
        return sum(s.payload_bytes for s in self.segments)

    @property
    def used_bytes(self) -> int:
        return sum(s.used_bytes for s in self.segments)

    @property
    def disk_bytes(self) -> int:
        """Bytes of the segment files and prepared segments (what max_total_size counts)."""
        return sum(s.size for s in self.segments) + self.prepared_bytes

    @property
    def damaged_records(self) -> int:
        return sum(p.lost_records for p in self.all_problems() if p.damage)

    @property
    def damaged_bytes(self) -> int:
        return sum(p.length or 0 for p in self.all_problems() if p.damage)

    @property
    def torn_tail_bytes(self) -> int:
        return sum(p.length or 0 for p in self.all_problems() if p.kind == "torn_tail")

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended record would get (about)."""
        last = self.segments[-1].end_seq if self.segments else 0
        return max(last, self.checkpoint or 0)

    def first_pending(self) -> tuple[str, int, int, bytes] | None:
        """(segment, seq, frame offset, payload head) of the oldest pending record."""
        for s in self.segments:
            if s.first_pending is not None:
                seq, off, head = s.first_pending
                return s.name, seq, off, head
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "pending": self.pending_records,
            "pending_bytes": self.pending_bytes,
            "bytes": self.payload_bytes,
            "used_bytes": self.used_bytes,
            "disk_bytes": self.disk_bytes,
            "segments_count": len(self.segments),
            "damaged_records": self.damaged_records,
            "damaged_bytes": self.damaged_bytes,
            "torn_tail_bytes": self.torn_tail_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        problems = self.all_problems()
        return {
            "ok": self.ok,
            "directory": self.directory,
            **self.summary(),
            "checkpoint": {"next_seq": self.checkpoint, "problem": self.checkpoint_problem,
                           "time_ns": self.checkpoint_time_ns},
            "read_from": self.read_from,
            "deadletter_entries": self.deadletter_entries,
            "segment_size": self.segment_size,
            "segments": [s.to_json() for s in self.segments],
            "problems": [p.to_json() for p in problems],
            "damage_count": sum(p.damage for p in problems),
        }


def _problem_order(p: Problem) -> tuple[str, int]:
    return (p.segment or "", p.offset if p.offset is not None else -1)


# ------------------------------------------------------------------ the directory


@dataclass
class Listing:
    """The names in a log directory, sorted by role."""

    segments: list[tuple[int, str]]  # (base, name), ascending
    has_checkpoint: bool
    has_lock: bool
    has_deadletter: bool
    prepared: list[str]
    quarantined: list[str]
    foreign: list[str]
    special: list[tuple[str, str]]  # (name, what it is): names the log owns, not files


def list_directory(directory: str) -> Listing:
    """Classify the names in ``directory``. ConfigError when it is not a segmentlog
    directory (no segment, no checkpoint and no lock file: an empty directory, or
    someone else's files); OSError when it cannot be listed."""
    if not os.path.exists(directory):
        raise ConfigError(f"no such directory: {directory}")
    if not os.path.isdir(directory):
        raise ConfigError(f"{directory} is not a directory; give the log's directory")
    names = sorted(os.listdir(directory))
    special = special_files(directory)
    not_files = {name for name, _ in special}  # never opened (segment.py, Rule 4)
    segments, prepared, quarantined, foreign = [], [], [], []
    for name in names:
        base = parse_segment_name(name)
        if name in not_files:
            continue
        if base is not None:
            segments.append((base, name))
        elif name in (PREPARED_NAME, SPARE_NAME):
            prepared.append(name)
        elif name in (CHECKPOINT_NAME, LOCK_NAME, DEADLETTER_NAME) or name.endswith(TMP_SUFFIX):
            # *.tmp: a checkpoint (or dead-letter file) being replaced, or a consumed
            # segment being deleted; transient, removed by the next open, never holds
            # records that are still to be read.
            continue
        elif QUARANTINE_SUFFIX in name and parse_segment_name(
                name.split(QUARANTINE_SUFFIX, 1)[0]) is not None:
            quarantined.append(name)
        else:
            foreign.append(name)
    has_ckpt = CHECKPOINT_NAME in names
    has_lock = LOCK_NAME in names
    if not segments and not has_ckpt and not has_lock:
        raise ConfigError(
            f"{directory} is not a segmentlog directory: it has no segment files "
            f"(NNNNNNNNNNNNNNNNNNNN.seg), no {CHECKPOINT_NAME} and no {LOCK_NAME} file"
        )
    return Listing(segments, has_ckpt, has_lock, DEADLETTER_NAME in names, prepared,
                   quarantined, foreign, special)


@contextlib.contextmanager
def open_segment(path: str) -> Iterator[tuple[Any, os.stat_result]]:
    """Map a segment file read-only; yields (buffer, stat). An empty file yields b"".
    CorruptionError if it is not a regular file (replaced since it was listed)."""
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
        st = os.fstat(f.fileno())
        if not st.st_size:
            yield b"", st
            return
        mm = mmap.mmap(f.fileno(), st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                mm.madvise(mmap.MADV_SEQUENTIAL)
                # One call maps every page (page faults one 4 KiB page at a time cost
                # about as much as the checksums); kernels before 5.14 say EINVAL.
                mm.madvise(_MADV_POPULATE_READ)
            yield mm, st
        finally:
            mm.close()


def all_zero(data: bytes) -> bool:
    return not data.rstrip(b"\0")


def _read_acks(directory: str, report: Report) -> None:
    """Index the dead-letter file: which sequence ranges of which segment are kept there
    (for Rule 3), and report lines that are not sound entries (deadletter.sound_entry)."""
    offset = 0
    lines = deadletter.entries(directory)
    while True:
        try:
            number, item, raw = next(lines)
        except StopIteration:
            break
        except CorruptionError:
            return  # not a regular file: reported as special_file, never read
        if item is None:
            report.problems.append(Problem(
                "deadletter_bad_line", DEADLETTER_NAME, offset,
                f"line {number} is not a sound entry ({len(raw)} bytes: not JSON, not an "
                "object, or a field of the wrong type or range); `repair` wraps "
                "its bytes in a valid entry", length=len(raw)))
        else:
            report.deadletter_entries += 1
            if isinstance(item.get("offset"), int) and isinstance(item.get("kind"), str):
                report.kept.add((item["segment"], item["offset"], item["kind"]))
            first, resume = item.get("first_missing_seq"), item.get("resume_seq")
            seg = item.get("segment")
            if isinstance(seg, str) and isinstance(first, int) and isinstance(resume, int):
                report.acks.setdefault(seg, []).append((first, resume))
        offset += len(raw)
    report.deadletter_bytes = offset


def covered(report: Report, segment: str, first: int, resume: int) -> bool:
    return any(f <= first and r >= resume for f, r in report.acks.get(segment, ()))


def _read_checkpoint(directory: str) -> tuple[int | None, str | None, int | None]:
    try:
        with os.fdopen(open_regular(os.path.join(directory, CHECKPOINT_NAME), os.O_RDONLY),
                       "rb") as f:
            data = f.read(CHECKPOINT.size + 1)
    except FileNotFoundError:
        return None, "checkpoint_missing", None
    except CorruptionError:
        return None, "special_file", None  # reported as such by _file_problems
    value, problem = checkpoint_mod.decode(data)
    when = CHECKPOINT.unpack(data)[2] if problem is None else None
    return value, problem, when


# ------------------------------------------------------------------ one segment


def _records_below(seg_base: int, end_seq: int, damages: list[Damage], below: int) -> int:
    """How many records of a walk lie below sequence ``below``: the walk's records are
    [base, end_seq) without the ranges its damages lost."""
    hi = min(below, end_seq)
    n = max(0, hi - seg_base)
    for d in damages:
        lo, up = max(d.first_missing_seq, seg_base), min(d.resume_seq, hi)
        if up > lo:
            n -= up - lo
    return max(0, n)


def _first_seq(base: int, damages: list[Damage]) -> int:
    s = base
    for d in damages:
        if d.first_missing_seq != s:
            break
        s = d.resume_seq
    return s


def _walk_segment(
    report: Report, path: str, name: str, base: int, next_base: int | None,
    read_from: int, start: int,
) -> SegmentReport | None:
    """Walk one segment file from sequence ``start`` (its base, or past the previous
    segment's records when they overlap it, as the log's reader does); None when it
    vanished (consumed while we looked)."""
    last = next_base is None
    with contextlib.ExitStack() as stack:
        try:
            buf, st = stack.enter_context(open_segment(path))
        except FileNotFoundError:
            return None
        size = st.st_size
        seg = SegmentReport(name, base, size, mtime=st.st_mtime)
        end_seq = next_base
        max_seq = NO_LIMIT_SEQ if next_base is None else next_base - 1

        def walk_all() -> Walk:
            return walk(buf, SEGMENT_HEADER_SIZE, size, start, max_records=NO_LIMIT_SEQ,
                        end_seq=end_seq, max_seq=max_seq, base=base, collect=False)

        w = walk_all()
        if last and w.damages:
            # Rule 2: a frame being written may look damaged once; keep what persists.
            seen = {d.offset for d in w.damages}
            time.sleep(_CONFIRM_DELAY)
            w = walk_all()
            w.damages = [d for d in w.damages if d.offset in seen]
        seg.records, seg.payload_bytes, seg.used_bytes = w.count, w.nbytes, w.end
        seg.end_seq, seg.stop, seg.damages = w.next_seq, w.stop, list(w.damages)
        seg.first_seq = _first_seq(start, seg.damages) if w.count else None
        seg.fills_end = size > SEGMENT_HEADER_SIZE and (
            w.end >= size or (w.stop == "torn" and w.torn_kind == "truncated")
            or any(buf[size - FRAME_ALIGN : size]))
        _segment_problems(report, seg, buf, w, next_base)

        # Pending records: those at or above the read position.
        below = _records_below(start, w.next_seq, seg.damages, read_from)
        if w.count > below:
            seg.pending_records = w.count - below
            pre = walk(buf, SEGMENT_HEADER_SIZE, size, start, max_records=below,
                       end_seq=end_seq, max_seq=max_seq, collect=False)
            seg.pending_bytes = w.nbytes - pre.nbytes
            one = walk(buf, pre.end, size, pre.next_seq, max_records=1, end_seq=end_seq,
                       max_seq=max_seq, collect=True)
            if one.count:
                off, n = one.offsets[0], one.lengths[0]
                seg.first_pending = (one.seqs[0], off - FRAME_HEADER_SIZE,
                                     bytes(buf[off : off + min(n, _PREVIEW_MAX)]))
        if any(p.damage for p in seg.problems):
            # Rule 2: renamed away (recycled) or deleted while we read it?
            try:
                now = os.stat(path)
            except FileNotFoundError:
                return None
            if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                return None
        return seg


def _segment_problems(report: Report, seg: SegmentReport, buf: Any, w: Walk,
                      next_base: int | None) -> None:
    name, size = seg.name, seg.size
    add = seg.problems.append
    if size == 0:
        seg.header = "empty_segment"
        add(Problem("empty_segment", name, 0, "the segment file is empty (0 bytes): it holds "
                    "no header and no record", length=0))
    else:
        seg.header = header_problem(buf[:SEGMENT_HEADER_SIZE], seg.base)
        if seg.header is not None:
            add(Problem(seg.header, name, 0, _HEADER_TEXT.get(seg.header, seg.header) +
                        "; the log reads the segment by its file name's base",
                        length=min(size, SEGMENT_HEADER_SIZE)))
    for d in w.damages:
        region = bytes(buf[d.offset : d.offset + d.length])
        add(_region_problem(report, name, d.kind, d.offset, d.length, d.first_missing_seq,
                            d.resume_seq, all_zero(region)))
    if w.stop == "torn":
        seg.torn_offset, seg.torn_kind = w.end, w.torn_kind
        seg.torn_length = torn_extent(buf, w.end, size)
        resume = w.next_seq if next_base is None else next_base
        if next_base is None or resume <= w.next_seq:
            # The end of the last segment: a write cut short by a crash (or in progress).
            # In a sealed segment with no sequence number missing, the bytes cannot have
            # been a record either: leftovers, not a loss.
            add(Problem("torn_tail", name, w.end,
                        f"unsound bytes ({w.torn_kind}) after the last record: a write cut "
                        "short (a crash, or a write in progress); not a record, never "
                        "acknowledged; recovery zeroes it", length=seg.torn_length))
        else:
            tail = bytes(buf[w.end : size]).rstrip(b"\0")
            add(_region_problem(report, name, w.torn_kind or "truncated", w.end, len(tail),
                                w.next_seq, resume, not tail))
    if next_base is not None and w.next_seq > next_base and w.count:
        # Not damage: the log reads them, then goes on in the next segment after the
        # last number it read (a frame there with a number already read is skipped).
        add(Problem("seq_overlap", name, w.end,
                    f"records {next_base}..{w.next_seq - 1} of this segment run past the "
                    f"next segment's base {next_base} (segment files renamed?); the log "
                    "reads them and continues after them in the next segment",
                    first_seq=next_base, resume_seq=w.next_seq))


def _region_problem(report: Report, name: str, kind: str, offset: int, length: int,
                    first: int, resume: int, zeroed: bool) -> Problem:
    """A damaged region; repaired_damage when it is kept in the dead-letter file and its
    bytes are zero on disk (Rule 3)."""
    lost = (f"records {first}..{resume - 1} lost" if resume > first
            else "no sequence number lost")
    if zeroed and covered(report, name, first, resume):
        return Problem("repaired_damage", name, offset,
                       f"{kind} region of {length} bytes, kept in {DEADLETTER_NAME} and "
                       f"zeroed ({lost})", length=length, first_seq=first,
                       resume_seq=resume, was=kind)
    kept = (f"; its bytes are already kept in {DEADLETTER_NAME}"
            if covered(report, name, first, resume) else "")
    return Problem(kind, name, offset, f"{_REGION_TEXT.get(kind, kind)}: {length} bytes, "
                   f"{lost}{kept}", length=length, first_seq=first, resume_seq=resume)


_HEADER_TEXT = {
    "bad_header_crc": "segment header fails its checksum",
    "bad_magic": "segment header has the wrong magic",
    "header_name_mismatch": "segment header's base sequence differs from the file name",
    "zero_header": "segment header is all zeros",
    "short_header": "segment file is shorter than its 32-byte header",
    "unsupported_version": "segment header names a format version/alignment this "
                           "segmentlog does not know",
}
_REGION_TEXT = {
    "bad_crc": "a frame fails its checksum",
    "bad_marker": "a frame has no valid marker",
    "truncated": "a frame's length runs past the segment",
    "bad_flags": "a frame has flags this version does not know",
    "bad_seq": "a frame with an unexpected sequence number",
    "zero": "zeroed bytes between records",
    "missing_records": "sequence numbers skipped",
}


# ------------------------------------------------------------------ the whole directory


def inspect(directory: str, progress: Callable[[int, int, int], None] | None = None) -> Report:
    """Inspect ``directory`` read-only (module docstring). ``progress(done, total,
    bytes)`` is called after each segment. Raises ConfigError when ``directory`` is not a
    segmentlog directory, OSError when a file cannot be read."""
    directory = os.fspath(directory)
    listing = list_directory(directory)
    report = Report(directory)
    _read_acks(directory, report)
    ckpt, ckpt_problem, ckpt_time = _read_checkpoint(directory)
    bases = [b for b, _ in listing.segments]
    read_from = ckpt if ckpt is not None else (bases[0] if bases else 0)
    if bases:
        read_from = max(read_from, bases[0])

    segs: list[SegmentReport] = []
    vanished = False
    done_bytes = 0
    for i, (base, name) in enumerate(listing.segments):
        next_base = bases[i + 1] if i + 1 < len(bases) else None
        start = max(base, segs[-1].end_seq) if segs else base
        seg = _walk_segment(report, os.path.join(directory, name), name, base, next_base,
                            read_from, start)
        if seg is None:
            vanished = True
        else:
            segs.append(seg)
            done_bytes += seg.size
        if progress is not None:
            progress(i + 1, len(bases), done_bytes)
    if vanished:
        # Rule 2: the consumer moved on while we read; its checkpoint says how far.
        again, again_problem, again_time = _read_checkpoint(directory)
        if again is not None and (ckpt is None or again > ckpt):
            ckpt, ckpt_problem, ckpt_time = again, again_problem, again_time
    report.segments = segs
    report.checkpoint, report.checkpoint_problem = ckpt, ckpt_problem
    report.checkpoint_time_ns = ckpt_time
    report.read_from = read_from

    _continuity(report)
    _checkpoint_problems(report)
    _file_problems(report, directory, listing)
    return report


def _continuity(report: Report) -> None:
    """Sequence numbers between consecutive segments: a gap is records in no segment."""
    segs = report.segments
    for a, c in itertools.pairwise(segs):
        first, resume = a.end_seq, c.base
        if first >= resume:
            continue
        if a.stop == "torn" and any(p.first_seq == first and p.resume_seq == resume
                                    for p in a.problems):
            continue  # the unsound tail of ``a`` is the reported loss; no second report
        detail = (f"records {first}..{resume - 1} are in no segment (between {a.name} and "
                  f"{c.name}): a segment deleted or lost, or the end of {a.name} lost")
        ckpt = report.checkpoint
        if ckpt is not None and resume <= ckpt:
            a.problems.append(Problem(
                "consumed_gap", a.name, a.used_bytes,
                detail + "; all below the checkpoint (consumed), so nothing pending is lost",
                first_seq=first, resume_seq=resume))
        elif covered(report, a.name, first, resume):
            a.problems.append(Problem(
                "repaired_damage", a.name, a.used_bytes,
                detail + f"; recorded in {DEADLETTER_NAME}", first_seq=first,
                resume_seq=resume, was="missing_records"))
        else:
            a.problems.append(Problem("missing_records", a.name, a.used_bytes, detail,
                                      first_seq=first, resume_seq=resume))


def _checkpoint_problems(report: Report) -> None:
    add = report.problems.append
    problem, ckpt, segs = report.checkpoint_problem, report.checkpoint, report.segments
    if problem == "special_file":
        return  # not a regular file: one problem, from _file_problems
    if problem == "checkpoint_missing":
        if segs:
            add(Problem("checkpoint_missing", CHECKPOINT_NAME, None,
                        f"no checkpoint: the log will deliver every record again from "
                        f"{segs[0].base} (re-delivery, not loss)"))
        return  # no segment either: an empty log whose creation stopped early
    if problem is not None:
        add(Problem(problem, CHECKPOINT_NAME, 0,
                    f"checkpoint is damaged ({problem}): the log will deliver every record "
                    f"again from the oldest segment (re-delivery, not loss)"))
        return
    assert ckpt is not None
    if segs and ckpt < segs[0].base:
        add(Problem("checkpoint_behind", CHECKPOINT_NAME, 0,
                    f"checkpoint {ckpt} is below the oldest segment's base {segs[0].base}: "
                    f"records {ckpt}..{segs[0].base - 1} were never consumed and are gone",
                    first_seq=ckpt, resume_seq=segs[0].base))
    elif segs and ckpt > segs[-1].end_seq:
        add(Problem("checkpoint_ahead", CHECKPOINT_NAME, 0,
                    f"checkpoint {ckpt} is beyond the last record {segs[-1].end_seq - 1}: "
                    "consumed records whose writes were lost (fsync=\"never\"), or a "
                    "writer appending meanwhile; new records get numbers from "
                    f"{ckpt} on"))


def _file_problems(report: Report, directory: str, listing: Listing) -> None:
    add = report.problems.append
    prepared = []
    for name in listing.prepared:
        with contextlib.suppress(FileNotFoundError):
            prepared.append(os.stat(os.path.join(directory, name)).st_size)
    report.prepared_bytes = sum(prepared)
    sizes = [s.size for s in report.segments if s.size >= SEGMENT_HEADER_SIZE]
    if sizes:
        # The common size is the configured segment_size (ties: the larger one).
        report.segment_size = max(set(sizes), key=lambda n: (sizes.count(n), n))
        # Every segment is preallocated whole, and next.prep/spare.prep are segments too.
        largest = max(sizes + [n for n in prepared if n >= SEGMENT_HEADER_SIZE])
        for s in report.segments:
            if s.size < SEGMENT_HEADER_SIZE:
                continue  # empty_segment / short_header
            if s.size % _PAGE or (s.size < largest and s.fills_end):
                s.problems.append(_short_problem(report, s, largest))
            elif s.size != report.segment_size:
                s.problems.append(Problem(
                    "wrong_size", s.name, None,
                    f"{s.size} bytes where the other segments have {report.segment_size}: "
                    "read as it is (another segment_size, or a copy cut where no record "
                    "was)"))
    for name in listing.quarantined:
        report.quarantined.append(name)
        add(Problem("quarantined_segment", name, None,
                    "a segment set aside because it held no readable record; its bytes are "
                    "kept for inspection, the log ignores it"))
    for name, what in listing.special:
        add(_special_problem(name, what))
    for name in listing.foreign:
        if name.endswith(MOVING_SUFFIX) and parse_segment_name(
                name[: -len(MOVING_SUFFIX)]) is not None:
            add(Problem("moving_segment", name, None,
                        "a segment file the log was giving its header's name when it "
                        "stopped: the next open finishes the move (its records are not "
                        "read until then)"))
            continue
        add(Problem("foreign_file", name, None,
                    "not a segmentlog file: the log ignores it (and never deletes it)"))


def _special_problem(name: str, what: str) -> Problem:
    return Problem("special_file", name, None,
                   f"a {what}, not a regular file, under a name the log uses: the log "
                   "refuses to open (it opens only regular files, never through a link); "
                   "remove or rename it (a link: replace it by the file it points to)")


def _short_problem(report: Report, s: SegmentReport, largest: int) -> Problem:
    """A segment file cut short: shorter than a preallocated segment with written bytes up
    to its last byte, or of a size no segment_size makes. Records after its end may be
    gone, and nothing on disk says how many. ``repair`` records it in the dead-letter
    file (keyed by the size it was found with), which makes it repaired_damage."""
    why = (f"{s.size} bytes, not a multiple of the page size {_PAGE}: no segment_size "
           "makes such a file" if s.size % _PAGE else
           f"{s.size} bytes with records up to its end, where a segment is preallocated "
           f"to {largest}")
    if (s.name, s.size, "short_segment") in report.kept:
        return Problem("repaired_damage", s.name, None, f"short_segment: {why}; recorded "
                       f"in {DEADLETTER_NAME}", was="short_segment")
    return Problem("short_segment", s.name, None,
                   f"{why}: the file was cut short, records from {s.end_seq} on may be "
                   "gone (how many, the bytes cannot tell)", first_seq=s.end_seq)


# ------------------------------------------------------------------ records, for dump


@dataclass(frozen=True)
class RecordEvent:
    segment: str
    seq: int
    offset: int  # of the frame
    length: int
    payload: bytes


def records(directory: str, from_seq: int = 0) -> Iterator[RecordEvent | Problem]:
    """Every record (and, inline, every damaged region, torn tail and gap) in order, from
    record ``from_seq`` on. Read-only, like :func:`inspect`. Raises ConfigError at once
    (not when iterated) when ``directory`` is not a segmentlog directory."""
    return _records(directory, list_directory(directory), from_seq)


def _records(directory: str, listing: Listing, from_seq: int) -> Iterator[RecordEvent | Problem]:
    scratch = Report(directory)
    _read_acks(directory, scratch)
    for name, what in listing.special:
        yield _special_problem(name, what)  # never opened; the log refuses to open
    bases = [b for b, _ in listing.segments]
    prev: tuple[str, int, int] | None = None  # (name, used bytes, end_seq)
    for i, (base, name) in enumerate(listing.segments):
        next_base = bases[i + 1] if i + 1 < len(bases) else None
        if next_base is not None and next_base <= from_seq:
            prev = None
            continue
        if prev is not None and prev[2] < base:
            first, resume = prev[2], base
            kind = "repaired_damage" if covered(scratch, prev[0], first, resume) else (
                "missing_records")
            yield Problem(kind, prev[0], prev[1], f"records {first}..{resume - 1} are in no "
                          "segment", first_seq=first, resume_seq=resume,
                          was="missing_records" if kind != "missing_records" else None)
        with contextlib.ExitStack() as stack:
            try:
                buf, st = stack.enter_context(open_segment(os.path.join(directory, name)))
            except FileNotFoundError:
                continue  # consumed and deleted since the listing: nothing to show
            start = max(base, prev[2]) if prev is not None else base
            used, end_seq = yield from _segment_records(scratch, name, buf, st.st_size, base,
                                                        start, next_base, from_seq)
        prev = (name, used, end_seq)


def _segment_records(report: Report, name: str, buf: Any, size: int, base: int,
                     start: int, next_base: int | None, from_seq: int,
                     ) -> Generator[RecordEvent | Problem, None, tuple[int, int]]:
    """Records and damage of one segment; returns (used bytes, end_seq)."""
    max_seq = NO_LIMIT_SEQ if next_base is None else next_base - 1
    pos, seq = SEGMENT_HEADER_SIZE, start
    if size < SEGMENT_HEADER_SIZE:
        yield Problem("empty_segment" if size == 0 else "short_header", name, 0,
                      f"segment file of {size} bytes holds no record", length=size)
    else:
        problem = header_problem(buf[:SEGMENT_HEADER_SIZE], base)
        if problem:
            yield Problem(problem, name, 0, _HEADER_TEXT.get(problem, problem),
                          length=SEGMENT_HEADER_SIZE)
    while True:
        w = walk(buf, pos, size, seq, max_records=4096, end_seq=next_base, max_seq=max_seq)
        events: list[tuple[int, RecordEvent | Problem]] = []
        for s, off, n in zip(w.seqs, w.offsets, w.lengths, strict=True):
            if s >= from_seq:
                events.append((off - FRAME_HEADER_SIZE, RecordEvent(
                    name, s, off - FRAME_HEADER_SIZE, n, bytes(buf[off : off + n]))))
        for d in w.damages:
            if d.resume_seq > from_seq:
                region = bytes(buf[d.offset : d.offset + d.length])
                p = _region_problem(report, name, d.kind, d.offset, d.length,
                                    d.first_missing_seq, d.resume_seq, all_zero(region))
                p.detail += _claimed(buf, d.offset, size)
                events.append((d.offset, p))
        events.sort(key=lambda e: e[0])
        for _, ev in events:
            yield ev
        pos, seq = w.end, w.next_seq
        if w.stop != "max":
            break
    if w.stop == "torn":
        resume = seq if next_base is None else next_base
        if resume <= seq:
            yield Problem("torn_tail", name, pos, f"unsound bytes ({w.torn_kind}) after the "
                          "last record" + _claimed(buf, pos, size),
                          length=torn_extent(buf, pos, size))
        elif resume > from_seq:
            tail = bytes(buf[pos:size]).rstrip(b"\0")
            yield _region_problem(report, name, w.torn_kind or "truncated", pos, len(tail),
                                  seq, resume, not tail)
    return pos, seq


def _claimed(buf: Any, off: int, size: int) -> str:
    """What the frame header at ``off`` claims, when it has the marker (for dump)."""
    if size - off < FRAME_HEADER_SIZE:
        return ""
    marker, length, seq, flags, _crc = FRAME_HEADER.unpack_from(buf, off)
    if marker != FRAME_MARKER:
        return ""
    return f" (its header claims seq {seq}, length {length}, flags {flags})"
