"""Walking the frames of one segment, across damage: the one reader of segment bytes.

The log's reader, its recovery on open and the ``verify``/``repair`` tools all walk
segments through :func:`walk`, so they agree on what is a record, what is damage and what
is the end.

Rule 1: only frames the backend's ``scan`` accepted (marker, bounds, CRC32C over header
and payload, flags, the expected sequence number) are ever returned.
Rule 2: after a frame that is not sound, the walk looks for the next sound frame with a
larger sequence number at every 8-aligned offset (``resync``); it never trusts the
damaged frame's length, so a flipped length cannot make it skip good records. The bytes
in between are reported as a :class:`Damage`, to be kept in the dead-letter file.
Rule 3: when nothing sound follows, the walk ends. A zero marker or a stale frame (valid,
but numbered below the segment's base: an old record of a recycled segment) is a clean
end; anything else is a *torn* end, which the caller classifies: a crash in the last
segment, damage elsewhere. A sound frame numbered from the base on but below the expected
number is never a clean end: no write of this log leaves one there (it is a copy, or
frames after a forged one were passed), so the bytes from it on are kept, not dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from segmentlog._backend import impl
from segmentlog._format import (
    FRAME_ALIGN,
    SCAN_BAD_SEQ,
    SCAN_OK,
    SCAN_STATUS_NAMES,
    SCAN_ZERO,
    frame_size,
)

NO_LIMIT_SEQ = (1 << 64) - 1
_CHUNK = 1 << 16  # frames per scan call: bounds the offset arrays a scan allocates


@dataclass(frozen=True)
class Damage:
    """A region of a segment that holds no sound frame, between two sound ones."""

    offset: int  # where the unsound bytes start
    length: int  # how many bytes until the next sound frame
    kind: str  # why the frame at ``offset`` was rejected: bad_crc, bad_marker, zero, ...
    first_missing_seq: int  # the sequence number expected at ``offset``
    resume_seq: int  # the sequence number of the next sound frame (missing: the range)


@dataclass
class Walk:
    """Frames accepted by one walk, the damage crossed, and how it ended."""

    offsets: Sequence[int] = field(default_factory=list)  # payload offset of each frame
    lengths: Sequence[int] = field(default_factory=list)  # payload length of each frame
    seqs: list[int] = field(default_factory=list)  # sequence numbers (with want_seqs only)
    first_seq: int | None = None  # sequence number of the first accepted frame
    last_seq: int | None = None  # sequence number of the last accepted frame
    damages: list[Damage] = field(default_factory=list)
    end: int = 0  # offset just past the last accepted frame (or damage crossed)
    next_seq: int = 0  # sequence number expected at ``end``
    count: int = 0  # frames accepted (also when not collected)
    nbytes: int = 0
    # "max": stopped by max_records/max_bytes; "limit": reached ``limit``;
    # "end": clean end (zero or stale bytes); "torn": unsound bytes with nothing after them
    stop: str = "limit"
    torn_kind: str | None = None  # for stop == "torn": why the frame at ``end`` failed


def walk(
    buf: Any,
    pos: int,
    limit: int,
    seq: int,
    *,
    max_records: int,
    max_bytes: int | None = None,
    end_seq: int | None = None,
    max_seq: int = NO_LIMIT_SEQ,
    stop_seq: int = NO_LIMIT_SEQ,
    base: int | None = None,
    collect: bool = True,
    want_seqs: bool = True,
) -> Walk:
    """Walk frames of ``buf`` from ``pos`` (expected sequence ``seq``) towards ``limit``.

    ``end_seq``: the sequence number the data is known to end at (the next segment's base),
    if known: reaching it ends the walk cleanly without a resync search.
    ``max_seq``: the largest sequence number a resync may accept.
    ``stop_seq``: accept no frame numbered ``stop_seq`` or above (positioning by sequence
    number: counting records instead would pass intact records once damage below the
    target has taken numbers out of the count).
    ``base``: the segment's base; a sound frame numbered below it is stale (a clean end),
    one at or above it ends the walk torn (None: every out-of-order frame is stale).
    ``collect``: keep offsets/lengths/seqs of accepted frames (False: only count them, for
    walking a whole segment without holding millions of offsets).
    ``want_seqs``: also list the sequence number of every accepted frame.
    """
    out = Walk(end=pos, next_seq=seq)
    offsets: list[int] = []
    lengths: list[int] = []
    budget = max_bytes
    while True:
        want = min(max_records - out.count, stop_seq - seq)
        if want <= 0 or (budget is not None and budget <= 0 and out.count):
            out.stop = "max"
            return out
        r = impl.scan(buf, pos, limit, seq, min(want, _CHUNK), budget)
        if r.count and out.count and budget is not None and r.lengths[0] > budget:
            # scan() takes the first frame of every call whatever its size; only the first
            # frame of the whole walk may exceed the budget, so this one waits.
            out.stop = "max"
            return out
        if r.count:
            if out.first_seq is None:
                out.first_seq = seq
            if collect:
                if not out.count and r.status == SCAN_OK and (
                        r.end >= limit or r.count < min(want, _CHUNK)
                        or r.count >= max_records):
                    # The common case, one scan and done: keep its arrays, copy nothing.
                    out.offsets, out.lengths = r.offsets, r.lengths
                else:
                    offsets.extend(r.offsets)
                    lengths.extend(r.lengths)
                    out.offsets, out.lengths = offsets, lengths
                if want_seqs:
                    out.seqs.extend(range(seq, r.next_seq))
            out.count += r.count
            out.last_seq = r.next_seq - 1
            out.nbytes += r.nbytes
            if budget is not None:
                budget = max(0, budget - r.nbytes)
        pos, seq = r.end, r.next_seq
        out.end, out.next_seq = pos, seq
        if r.status == SCAN_OK:
            if pos >= limit:
                out.stop = "limit"
                return out
            if r.count < min(want, _CHUNK) or out.count >= max_records or seq >= stop_seq:
                out.stop = "max"  # max_bytes, max_records or stop_seq reached
                return out
            continue  # a full chunk: scan on
        if (r.status in (SCAN_ZERO, SCAN_BAD_SEQ)) and end_seq is not None and seq >= end_seq:
            out.stop = "end"
            return out
        found = impl.resync(buf, pos, limit, seq, max_seq)
        if found is None:
            if r.status == SCAN_ZERO or (r.status == SCAN_BAD_SEQ and (
                    base is None or int.from_bytes(buf[pos + 8 : pos + 16], "little") < base)):
                out.stop = "end"
            else:
                out.stop = "torn"
                out.torn_kind = SCAN_STATUS_NAMES[r.status]
            return out
        at, resume = found
        kind = SCAN_STATUS_NAMES[r.status]
        if r.status == SCAN_BAD_SEQ and resume > seq:
            kind = "missing_records"
        out.damages.append(Damage(pos, at - pos, kind, seq, resume))
        pos, seq = at, resume
        out.end, out.next_seq = pos, seq


def torn_extent(buf: Any, off: int, size: int) -> int:
    """How many bytes from ``off`` belong to a torn frame: by its length field when that
    is plausible, else up to the last non-zero byte (the one rule of SegmentLog's recovery,
    which zeroes a torn tail, and of ``repair``)."""
    if size - off >= 8:
        length = int.from_bytes(buf[off + 4 : off + 8], "little")
        extent = frame_size(length)
        if extent <= size - off:
            return extent
    tail = bytes(buf[off:size]).rstrip(b"\0")
    # Rounded up to whole 8-byte words, but never past the end of a file cut at an odd
    # size: zeroing there would extend the file.
    return min((len(tail) + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1), size - off)
