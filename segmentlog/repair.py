"""Repairing a log directory: every damaged spot made known and harmless, nothing lost.

Theory of operation
-------------------
``repair`` inspects the directory (segmentlog.examine), plans one action per problem,
keeps what it is about to change, then changes it, and inspects again. The state it
leaves is the one ``verify`` reports as repaired (inspect, Rule 3), so ``verify`` after
``repair`` exits 0, and SegmentLog reads every record that was not damaged.

Rule 1: nothing is changed before it is kept. The bytes of every region about to be
zeroed, of every header and checkpoint about to be rewritten, are appended (fsynced) to
the dead-letter file first. A segment with no readable record is renamed aside to
``<name>.damaged``, never deleted. The one exception is a torn tail of the last
segment, which is zeroed without being kept, exactly as opening the log does: it is a
write a crash cut short, never acknowledged, and keeping it under its offset would stop
the log from keeping real damage found at that offset later.
Rule 2: repair is a writer. It takes the writer lock (segment.take_lock) and refuses
while another process holds it; ``--dry-run`` only inspects and prints the plan, so it
changes nothing and takes no lock.
Rule 3: conservative about the consumer: a missing or damaged checkpoint is rebuilt as
the oldest record present (records are delivered again rather than lost); a checkpoint
behind the oldest segment moves up to it, and the records in between (gone) are
recorded as a gap.
Rule 4: what cannot be repaired is left alone and reported: a segment header naming a
format version this code does not know may be a newer segmentlog's file.
Rule 5: a name the log owns that is not a regular file (a FIFO, a directory, a symlink:
``special_file``) stops the whole repair before it changes anything: it is the
operator's (a link may point at the real segment, a directory may hold anything), and
keeping before changing needs the dead-letter file and segments to be regular files.
"""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from segmentlog import checkpoint, deadletter
from segmentlog._format import (
    CHECKPOINT,
    CHECKPOINT_NAME,
    DEADLETTER_NAME,
    SEGMENT_HEADER_SIZE,
    TMP_SUFFIX,
)
from segmentlog.examine import (
    HEADER_KINDS,
    QUARANTINE_SUFFIX,
    Report,
    SegmentReport,
    covered,
    inspect,
    list_directory,
)
from segmentlog.segment import (
    encode_header,
    fsync_dir,
    open_regular,
    quarantine_name,
    restore_names,
    take_lock,
)

_REWRITABLE_HEADERS = frozenset({"bad_header_crc", "bad_magic", "header_name_mismatch",
                                 "zero_header"})
_MAX_PASSES = 3  # a second pass only ever records what the first one's changes revealed


@dataclass
class Action:
    """One step of a repair: what it keeps first, then what it changes."""

    kind: str  # keep_region, rewrite_header, set_aside, record_gap, checkpoint,
    #            zero_torn_tail, fix_deadletter, record_short, restore_name,
    #            unrepairable
    target: str  # the file it acts on
    text: str  # what it does, for the operator
    offset: int | None = None
    length: int = 0
    first_seq: int | None = None
    resume_seq: int | None = None
    problem: str | None = None  # the problem kind it answers
    value: int | None = None  # the new checkpoint
    zero: bool = False  # zero [offset, offset + length) of ``target`` after keeping it

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RepairResult:
    actions: list[Action] = field(default_factory=list)
    before: Report | None = None
    after: Report | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        final = self.before if self.dry_run else self.after
        if final is None:
            return False
        if self.dry_run:
            return not any(a.kind == "unrepairable" for a in self.actions)
        return final.ok

    def to_json(self) -> dict[str, Any]:
        final = self.after or self.before
        return {
            "ok": self.ok, "dry_run": self.dry_run,
            "actions": [a.to_json() for a in self.actions],
            "remaining_problems": [p.to_json() for p in final.all_problems() if p.damage]
            if final is not None and not self.dry_run else [],
        }


# ------------------------------------------------------------------ planning


def plan(report: Report) -> list[Action]:
    """The actions that bring ``report``'s directory to the repaired state."""
    actions: list[Action] = []
    add = actions.append
    special = [p for p in report.problems if p.kind == "special_file"]
    if special:  # Rule 5
        return [Action("unrepairable", p.segment or "", f"{p.segment}: {p.detail}; nothing "
                       "was changed", problem=p.kind) for p in special]
    bad_lines = [p for p in report.problems if p.kind == "deadletter_bad_line"]
    if bad_lines:
        add(Action("fix_deadletter", DEADLETTER_NAME,
                   f"wrap {len(bad_lines)} damaged line(s) of {DEADLETTER_NAME} in valid "
                   "entries that keep their bytes (base64)", problem="deadletter_bad_line"))
    segs = report.segments
    kept: list[SegmentReport] = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        next_base = segs[i + 1].base if not last else None
        if seg.header == "unsupported_version":
            add(Action("unrepairable", seg.name, f"{seg.name}: its header names a format "
                       "version or alignment this segmentlog does not know; left as it is "
                       "(it may be a newer segmentlog's file)", problem=seg.header))
            kept.append(seg)
            continue
        garbage = seg.header is not None or bool(seg.damages) or (
            seg.stop == "torn" and not last)
        if seg.records == 0 and garbage:
            resume = next_base if next_base is not None else seg.base
            add(Action("set_aside", seg.name,
                       f"{seg.name}: no readable record ({seg.header or 'unsound bytes'}); "
                       f"rename it to {seg.name}{QUARANTINE_SUFFIX}* (bytes kept)",
                       first_seq=seg.base, resume_seq=resume,
                       problem=seg.header or seg.torn_kind))
            continue
        kept.append(seg)
        if any(p.kind == "short_segment" for p in seg.problems):
            add(Action("record_short", seg.name,
                       f"{seg.name}: record in {DEADLETTER_NAME} that it was cut short at "
                       f"{seg.size} bytes (records from {seg.end_seq} on may be gone), with "
                       "the bytes after its last record", offset=seg.size,
                       first_seq=seg.end_seq, problem="short_segment"))
        if seg.header in _REWRITABLE_HEADERS:
            add(Action("rewrite_header", seg.name,
                       f"{seg.name}: keep the old header, write a sound one for base "
                       f"{seg.base} (its file name)", offset=0, length=SEGMENT_HEADER_SIZE,
                       problem=seg.header))
        for p in seg.problems:
            # Damaged regions of the segment (walk's damage, or unsound bytes ending a
            # sealed segment); headers and gaps (no length) are handled apart.
            if (not p.damage or p.length is None or p.offset is None
                    or p.kind in HEADER_KINDS):
                continue
            assert p.first_seq is not None and p.resume_seq is not None
            add(Action("keep_region", seg.name,
                       f"{seg.name} @{p.offset}: keep {p.length} bytes ({p.kind}, records "
                       f"{p.first_seq}..{p.resume_seq - 1}) in {DEADLETTER_NAME}, then zero "
                       "them", offset=p.offset, length=p.length or 0, first_seq=p.first_seq,
                       resume_seq=p.resume_seq, problem=p.kind, zero=True))
        if seg.stop == "torn" and seg.torn_offset is not None:
            if last:
                add(Action("zero_torn_tail", seg.name,
                           f"{seg.name} @{seg.torn_offset}: zero the torn tail "
                           f"({seg.torn_length} bytes, a write cut short; as recovery does)",
                           offset=seg.torn_offset, length=seg.torn_length, zero=True,
                           problem="torn_tail"))
            elif not any(a.target == seg.name and a.offset == seg.torn_offset
                         for a in actions):
                # Leftover bytes after the last record of a sealed segment (no record lost):
                # the log would keep them as damage when it reads there; keep and zero now.
                add(Action("keep_region", seg.name,
                           f"{seg.name} @{seg.torn_offset}: keep leftover bytes after the "
                           "last record, then zero them", offset=seg.torn_offset,
                           length=seg.torn_length, first_seq=seg.end_seq,
                           resume_seq=seg.end_seq, problem="torn_tail", zero=True))

    # The checkpoint (Rule 3), against the segments that stay.
    ckpt = report.checkpoint
    oldest = kept[0] if kept else None
    if report.checkpoint_problem is not None and (segs or report.checkpoint_problem !=
                                                  "checkpoint_missing"):
        value = oldest.base if oldest else max((s.end_seq for s in segs), default=0)
        add(Action("checkpoint", CHECKPOINT_NAME,
                   f"{report.checkpoint_problem}: keep the old file's bytes, write a "
                   f"checkpoint at {value} (the oldest record present: re-delivery, not loss)",
                   problem=report.checkpoint_problem, value=value))
        ckpt = value
    elif ckpt is not None and oldest is not None and ckpt < oldest.base:
        add(Action("record_gap", oldest.name,
                   f"records {ckpt}..{oldest.base - 1} (below the oldest segment) are gone: "
                   f"record them in {DEADLETTER_NAME}", offset=-ckpt, first_seq=ckpt,
                   resume_seq=oldest.base, problem="checkpoint_behind"))
        add(Action("checkpoint", CHECKPOINT_NAME,
                   f"move the checkpoint from {ckpt} up to the oldest segment {oldest.base}",
                   problem="checkpoint_behind", value=oldest.base))
        ckpt = oldest.base

    # Gaps between the segments that stay (missing ones, and those set aside).
    for a, c in itertools.pairwise(kept):
        first, resume = a.end_seq, c.base
        if first >= resume or (ckpt is not None and resume <= ckpt):
            continue  # no gap, or all of it consumed
        add(Action("record_gap", a.name,
                   f"records {first}..{resume - 1} are in no segment (after {a.name}): "
                   f"record the gap in {DEADLETTER_NAME}", offset=-first, first_seq=first,
                   resume_seq=resume, problem="missing_records"))
    return actions


# ------------------------------------------------------------------ acting


def _read(path: str, offset: int, length: int) -> bytes:
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
        f.seek(offset)
        return f.read(length)


def _entries_to_keep(directory: str, actions: list[Action],
                     known: set[tuple[str, int]], report: Report) -> list[dict[str, Any]]:
    """Dead-letter entries for everything the actions will change or record (Rule 1)."""
    out: list[dict[str, Any]] = []
    for a in actions:
        path = os.path.join(directory, a.target)
        if a.kind in ("keep_region", "rewrite_header"):
            assert a.offset is not None
            if a.kind == "keep_region" and covered(report, a.target, a.first_seq or 0,
                                                   a.resume_seq or 0):
                continue  # already kept (by the log's reader, or an earlier repair)
            raw = _read(path, a.offset, a.length)
            entry = {"segment": a.target, "offset": a.offset, "kind": a.problem,
                     "repair": a.kind, "raw": raw}
            if a.kind == "keep_region":
                # Only region entries carry a sequence range: a range is what makes
                # verify call zeroed bytes repaired (inspect, Rule 3); a header has none.
                entry.update(first_missing_seq=a.first_seq, resume_seq=a.resume_seq)
            out.append(entry)
        elif a.kind == "record_gap":
            if (a.target, a.offset) in known and covered(report, a.target, a.first_seq or 0,
                                                         a.resume_seq or 0):
                continue
            out.append({"segment": a.target, "offset": a.offset, "kind": "missing_records",
                        "first_missing_seq": a.first_seq, "resume_seq": a.resume_seq,
                        "repair": a.kind, "raw": b""})
        elif a.kind == "record_short":
            seg = next(s for s in report.segments if s.name == a.target)
            # The bytes after the last record: what is left of a record cut at the end
            # (zeroed next as a torn tail), kept first.
            out.append({"segment": a.target, "offset": a.offset, "kind": a.problem,
                        "repair": a.kind,
                        "raw": _read(path, seg.used_bytes, seg.size - seg.used_bytes)})
        elif a.kind == "checkpoint":
            try:
                raw = _read(path, 0, CHECKPOINT.size + 1)
            except FileNotFoundError:
                continue  # nothing to keep: the old checkpoint is missing
            out.append({"segment": CHECKPOINT_NAME, "offset": 0, "kind": a.problem,
                        "repair": a.kind, "raw": raw})
    return out


def _fix_deadletter(directory: str) -> None:
    """Rewrite the dead-letter file with every damaged line wrapped in a valid entry that
    keeps its bytes; atomically (temp file, fsync, rename, directory fsync)."""
    lines = []
    offset = 0
    for number, item, raw in deadletter.entries(directory):
        if item is None:
            # Named by where verify reported it: the line's byte offset (and number) in
            # the file as it was.
            item = {"segment": DEADLETTER_NAME, "offset": offset, "line": number,
                    "kind": "deadletter_bad_line", "length": len(raw),
                    "raw_base64": base64.b64encode(raw).decode("ascii")}
            lines.append(orjson.dumps(item) + b"\n")
        else:
            lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
        offset += len(raw)
    path = deadletter.path_of(directory)
    tmp = path + TMP_SUFFIX
    fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def _zero(path: str, regions: list[tuple[int, int]]) -> None:
    fd = open_regular(path, os.O_RDWR)
    try:
        for offset, length in regions:
            done = 0
            while done < length:
                n = min(1 << 20, length - done)
                done += os.pwrite(fd, bytes(n), offset + done)
        os.fsync(fd)
    finally:
        os.close(fd)


def apply(directory: str, report: Report, actions: list[Action],
          say: Callable[[str], None]) -> None:
    """Carry out ``actions`` (lock held): keep, then change (Rule 1)."""
    for a in actions:
        if a.kind == "fix_deadletter":
            # First: appending after a torn last line would glue the new entry to it.
            _fix_deadletter(directory)
            say(a.text)
    known = deadletter.known_keys(directory)
    keep = _entries_to_keep(directory, actions, known, report)
    set_aside = [a for a in actions if a.kind == "set_aside"]
    renames = {a.target: quarantine_name(directory, a.target) for a in set_aside}
    for a in set_aside:
        keep.append({"segment": renames[a.target], "offset": 0, "kind": a.problem,
                     "first_missing_seq": a.first_seq, "resume_seq": a.resume_seq,
                     "repair": "set_aside", "moved_from": a.target, "raw": b""})
    deadletter.append(directory, keep)  # fsynced before anything below changes a byte

    zeros: dict[str, list[tuple[int, int]]] = {}
    for a in actions:
        if a.zero and a.offset is not None and a.length:
            zeros.setdefault(a.target, []).append((a.offset, a.length))
    for name, regions in zeros.items():
        _zero(os.path.join(directory, name), regions)
    for a in actions:
        path = os.path.join(directory, a.target)
        if a.kind == "rewrite_header":
            seg = next(s for s in report.segments if s.name == a.target)
            fd = open_regular(path, os.O_RDWR)
            try:
                os.pwrite(fd, encode_header(seg.base), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        elif a.kind == "set_aside":
            os.rename(path, os.path.join(directory, renames[a.target]))
            a.text = a.text.replace(f"{QUARANTINE_SUFFIX}*", renames[a.target][len(a.target):])
        elif a.kind == "checkpoint":
            assert a.value is not None
            checkpoint.write(directory, a.value, durable=True)
        if a.kind != "fix_deadletter":
            say(a.text)
    if set_aside:
        fsync_dir(directory)


def repair(directory: str, *, dry_run: bool = False,
           say: Callable[[str], None] = lambda _: None,
           progress: Callable[[int, int, int], None] | None = None) -> RepairResult:
    """Repair ``directory`` (module docstring). Raises ConfigError when it is not a
    segmentlog directory, LogLockedError when a writer holds it, OSError on I/O errors."""
    directory = os.fspath(directory)
    list_directory(directory)  # not a log: refuse before creating a lock file in it
    result = RepairResult(dry_run=dry_run)
    if dry_run:
        result.before = inspect(directory, progress)
        result.actions = plan(result.before)
        for a in result.actions:
            say(a.text)
        return result
    lock_fd = take_lock(directory)
    try:
        # Renamed or swapped segment files first, as the log's open does: their headers
        # say which records they hold (quarantining them would hide intact records).
        def renamed(text: str) -> None:
            say(text)
            result.actions.append(Action("restore_name", directory, text))

        restore_names(directory, os.listdir(directory), renamed)
        report = inspect(directory, progress)
        result.before = report
        for a in plan(report):
            if a.kind == "unrepairable":  # Rule 4: reported once, never acted on
                say(a.text)
                result.actions.append(a)
        for _ in range(_MAX_PASSES):
            actions = [a for a in plan(report) if a.kind != "unrepairable"]
            if not actions:
                break
            apply(directory, report, actions, say)
            result.actions.extend(actions)
            report = inspect(directory)
            if report.ok:
                break
        result.after = report
    finally:
        os.close(lock_fd)  # releases the flock
    return result
