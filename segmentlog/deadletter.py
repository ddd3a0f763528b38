"""The dead-letter file: damaged bytes are kept here, never simply dropped.

One JSON object per line in ``deadletter.jsonl`` beside the segments: when, which
segment and offset, why, which sequence numbers are missing, and the raw bytes
(base64; an all-zero region is recorded by its length only). Each entry is fsynced
(and the file's name, when the entry created it) before the reader moves past the
damage, so the bytes survive even if the segment is deleted right after.

The file is a report, not state the log needs: no content of it may stop the log from
opening. Every parser goes through :func:`entries`, which yields a line as an entry only
when it is sound (:func:`sound_entry`); any other line (not JSON, not an object, a field
of the wrong type or range) is yielded as damaged, for ``verify`` to report and
``repair`` to wrap, and is skipped for key purposes (the worst that does is keep a region
a second time).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from typing import Any, TypeGuard

import orjson

from segmentlog import _fs
from segmentlog._format import DEADLETTER_NAME
from segmentlog.segment import fsync_dir, open_regular

_U64 = 1 << 64  # sequence numbers and byte offsets are u64 on disk


def _u64(value: object) -> TypeGuard[int]:
    # bool is an int in Python; ``true`` is no number in an entry.
    return type(value) is int and 0 <= value < _U64


def sound_entry(item: object) -> bool:
    """Whether a parsed line is an entry the log and the tools can use (FORMAT.md,
    "Dead-letter file"): an object whose ``segment`` is a string and whose ``offset`` is
    a byte offset (0 <= offset < 2**64) or, for a gap (``kind`` ``missing_records``), minus
    its ``first_missing_seq``; ``first_missing_seq`` and ``resume_seq``, when present, are
    both there, each 0 <= n < 2**64, in order."""
    if not isinstance(item, dict) or not isinstance(item.get("segment"), str):
        return False
    first, resume = item.get("first_missing_seq"), item.get("resume_seq")
    if first is not None or resume is not None:
        if not (_u64(first) and _u64(resume)):
            return False
        if first > resume:
            return False
    offset = item.get("offset")
    if "offset" not in item and item["segment"] == DEADLETTER_NAME:
        # A damaged line wrapped by an earlier ``repair``, which named it by its line
        # number only.
        return item.get("kind") == "deadletter_bad_line"
    if _u64(offset):
        return True
    return (type(offset) is int and item.get("kind") == "missing_records"
            and _u64(first) and offset == -first)


def path_of(directory: str) -> str:
    return os.path.join(directory, DEADLETTER_NAME)


def append(directory: str, entries: list[dict[str, Any]]) -> None:
    """Append ``entries`` (each with segment, offset, kind, raw bytes...) durably."""
    if not entries:
        return
    lines = []
    now = time.time()
    for entry in entries:
        item = dict(entry)
        raw = item.pop("raw", b"")
        item.setdefault("time", now)
        item["length"] = len(raw)
        if any(raw):
            item["raw_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            item["zeros"] = True
        lines.append(orjson.dumps(item) + b"\n")
    # Never through a link (damaged bytes appended to its target), never a FIFO.
    fd = open_regular(path_of(directory), os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # The last line was torn (a crash mid-append): end it, so this entry is not
            # glued to it and lost with it.
            lines.insert(0, b"\n")
        _fs.fs.write(fd, b"".join(lines))
        _fs.fs.fsync(fd)
    finally:
        os.close(fd)
    if not size:
        # A new file: its name is durable only once the directory is fsynced, and a
        # power loss before that would take every entry with it, after the reader moved
        # past the damage (a commit may then delete the segment that held it).
        fsync_dir(directory)


def entries(directory: str) -> Iterator[tuple[int, dict[str, Any] | None, bytes]]:
    """(line number, parsed entry or None if the line is damaged, raw line) per line.
    CorruptionError (when iterated) if the file is not a regular file."""
    try:
        f = os.fdopen(open_regular(path_of(directory), os.O_RDONLY), "rb")
    except FileNotFoundError:
        return
    with f:
        for number, line in enumerate(f, 1):
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:  # also binary junk, and nesting too deep
                yield number, None, line
                continue
            yield number, item if sound_entry(item) else None, line


def known_keys(directory: str) -> set[tuple[str, int]]:
    """(segment, offset) of every sound entry already kept, so damage is kept once."""
    keys = set()
    for _, item, _ in entries(directory):
        if item is not None and "offset" in item:
            keys.add((item["segment"], item["offset"]))
    return keys
