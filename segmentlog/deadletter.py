"""The dead-letter file: damaged bytes are kept here, never simply dropped.

One JSON object per line in ``deadletter.jsonl`` beside the segments: when, which
segment and offset, why, which sequence numbers are missing, and the raw bytes
(base64; an all-zero region is recorded by its length only). Each entry is fsynced
before the reader moves past the damage, so the bytes survive even if the segment is
deleted right after.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import orjson

from segmentlog._format import DEADLETTER_NAME
from segmentlog.segment import FILE_MODE


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
    fd = os.open(path_of(directory), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                 FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # The last line was torn (a crash mid-append): end it, so this entry is not
            # glued to it and lost with it.
            lines.insert(0, b"\n")
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)


def entries(directory: str) -> Iterator[tuple[int, dict[str, Any] | None, bytes]]:
    """(line number, parsed entry or None if the line is damaged, raw line) per line."""
    try:
        f = open(path_of(directory), "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with f:
        for number, line in enumerate(f, 1):
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield number, None, line
                continue
            yield number, item if isinstance(item, dict) else None, line


def known_keys(directory: str) -> set[tuple[str, int]]:
    """(segment, offset) of every entry already kept, so damage is kept once."""
    keys = set()
    for _, item, _ in entries(directory):
        if item is not None and "segment" in item and "offset" in item:
            keys.add((str(item["segment"]), int(item["offset"])))
    return keys
