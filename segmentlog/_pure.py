"""The pure-Python backend: CRC32C, framing and scanning with nothing but the stdlib.

It is the reference the C core (csrc/) must match byte for byte; tests/test_backends.py
runs both over the same inputs. It is slow (CRC32C runs a byte at a time) but complete:
a machine without a compiler still gets every check, just not the speed.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from segmentlog._format import (
    FRAME_ALIGN,
    FRAME_CRC_COVERS,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_MARKER,
    MAX_PAYLOAD,
    SCAN_BAD_CRC,
    SCAN_BAD_FLAGS,
    SCAN_BAD_MARKER,
    SCAN_BAD_SEQ,
    SCAN_OK,
    SCAN_TRUNCATED,
    SCAN_ZERO,
    frame_size,
)

NAME = "pure"
ERR_CURSOR_CLOSED = -6  # csrc/segmentlog.h SL_ERR_CLOSED

Buffer = bytes | bytearray | memoryview
ReadableBuffer = Buffer | mmap.mmap  # what scan and resync read (a segment's map too)
WritableBuffer = bytearray | memoryview | mmap.mmap  # what a Framer writes into


class ScanResult(NamedTuple):
    """What one scan found: accepted frames and why it stopped."""

    end: int  # offset just past the last accepted frame
    next_seq: int  # the sequence number expected at ``end``
    count: int  # type: ignore[assignment]  # frames accepted (shadows tuple.count)
    nbytes: int  # payload bytes accepted
    status: int  # SCAN_* (segmentlog._format): why the scan stopped at ``end``
    offsets: Sequence[int]  # payload offset of each accepted frame
    lengths: Sequence[int]  # payload length of each accepted frame


def _make_table() -> list[int]:
    poly = 0x82F63B78  # CRC32C (Castagnoli), reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_MARKER_BYTES = FRAME_MARKER.to_bytes(4, "little")


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (as zlib.crc32 chains)."""
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_impl() -> str:
    """Which CRC32C implementation is live."""
    return "python"


def _check_payload(payload: Buffer) -> int:
    return _check_length(len(payload))


def _check_length(length: int) -> int:
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds the format limit {MAX_PAYLOAD}")
    return length


def frame_into(buf: bytearray | memoryview, off: int, payload: Buffer, seq: int) -> int:
    """Write one frame at ``off``; return the offset just past it (padding included)."""
    length = _check_payload(payload)
    size = frame_size(length)
    if off < 0 or off % FRAME_ALIGN or off + size > len(buf):
        raise ValueError(f"frame of {size} bytes does not fit at offset {off} of {len(buf)}")
    head = FRAME_HEADER.pack(FRAME_MARKER, length, seq, 0, 0)[:FRAME_CRC_COVERS]
    crc = crc32c(payload, crc32c(head))
    end = off + FRAME_HEADER_SIZE + length
    buf[off : off + FRAME_CRC_COVERS] = head
    buf[off + FRAME_CRC_COVERS : off + FRAME_HEADER_SIZE] = crc.to_bytes(4, "little")
    buf[off + FRAME_HEADER_SIZE : end] = payload
    buf[end : off + size] = bytes(off + size - end)  # padding is always written as zeros
    return off + size


def frames_size(lens: Sequence[int]) -> int:
    """The bytes frames of payload lengths ``lens`` occupy, padding included."""
    return sum(frame_size(_check_length(n)) for n in lens)


def frame_batch_into(
    buf: bytearray | memoryview, off: int, payloads: Sequence[Buffer], first_seq: int
) -> int:
    """Write consecutive frames for ``payloads`` starting at ``off``; return the new end."""
    total = sum(frame_size(_check_payload(p)) for p in payloads)
    if off < 0 or off % FRAME_ALIGN or off + total > len(buf):
        raise ValueError(f"batch of {total} bytes does not fit at offset {off} of {len(buf)}")
    for i, payload in enumerate(payloads):
        off = frame_into(buf, off, payload, first_seq + i)
    return off


def _check_frame(view: memoryview, pos: int, end: int) -> tuple[int, int, int, int]:
    """(status, length, seq, size) of the frame at ``pos``; status SCAN_OK if it is sound."""
    if end - pos < FRAME_HEADER_SIZE:
        zero = not any(view[pos:end])
        return (SCAN_ZERO if zero else SCAN_TRUNCATED), 0, 0, 0
    marker, length, seq, flags, stored = FRAME_HEADER.unpack_from(view, pos)
    if marker == 0:
        return SCAN_ZERO, 0, 0, 0
    if marker != FRAME_MARKER:
        return SCAN_BAD_MARKER, 0, 0, 0
    size = frame_size(length)
    if size > end - pos:
        return SCAN_TRUNCATED, length, seq, size
    head = view[pos : pos + FRAME_CRC_COVERS]
    payload = view[pos + FRAME_HEADER_SIZE : pos + FRAME_HEADER_SIZE + length]
    if crc32c(payload, crc32c(head)) != stored:
        return SCAN_BAD_CRC, length, seq, size
    if flags != 0:
        return SCAN_BAD_FLAGS, length, seq, size
    return SCAN_OK, length, seq, size


def scan(
    buf: ReadableBuffer,
    off: int,
    end: int,
    expected_seq: int,
    max_records: int,
    max_bytes: int | None = None,
) -> ScanResult:
    """Validate frames from ``off`` towards ``end``; stop at the first one that is not sound.

    At most ``max_records`` frames are accepted; ``max_bytes`` (payload bytes) stops the
    scan before a frame that would exceed it, but the first frame is always accepted.
    """
    view = memoryview(buf)
    end = min(end, len(view))
    offsets: list[int] = []
    lengths: list[int] = []
    pos, seq, nbytes = off, expected_seq, 0
    status = SCAN_OK
    while len(offsets) < max_records and pos < end:
        status, length, got_seq, size = _check_frame(view, pos, end)
        if status == SCAN_OK and got_seq != seq:
            status = SCAN_BAD_SEQ
        if status != SCAN_OK:
            break
        if max_bytes is not None and offsets and nbytes + length > max_bytes:
            break
        offsets.append(pos + FRAME_HEADER_SIZE)
        lengths.append(length)
        nbytes += length
        seq += 1
        pos += size
    return ScanResult(pos, seq, len(offsets), nbytes, status, offsets, lengths)


def resync(
    buf: ReadableBuffer, off: int, end: int, min_seq: int, max_seq: int
) -> tuple[int, int] | None:
    """The first sound frame at an aligned offset >= ``off`` whose sequence number lies in
    [min_seq, max_seq] and is dense enough (the records min_seq .. seq - 1 it skips fit
    between ``off`` and it, a frame header each at least), as (offset, seq); None if
    there is none before ``end``."""
    data = bytes(buf) if not isinstance(buf, bytes) else buf
    view = memoryview(data)
    end = min(end, len(data))
    min_seq = max(min_seq, 0)  # no frame carries a lower number: the density counts from 0
    pos = off + (-off % FRAME_ALIGN)
    while True:
        pos = data.find(_MARKER_BYTES, pos, end)
        if pos < 0:
            return None
        if pos % FRAME_ALIGN:
            pos += FRAME_ALIGN - pos % FRAME_ALIGN
            continue
        status, _, seq, _ = _check_frame(view, pos, end)
        if (status == SCAN_OK and min_seq <= seq <= max_seq
                and seq - min_seq <= (pos - off) // FRAME_HEADER_SIZE):
            return pos, seq
        pos += FRAME_ALIGN


def payloads(buf: Any, offsets: Sequence[int], lengths: Sequence[int]) -> Sequence[bytes]:
    """The bytes of ``buf[offsets[i] : offsets[i] + lengths[i]]`` for every i, in order
    (a scan's accepted payloads). Offsets must ascend without overlapping payloads, and
    every payload lie inside ``buf``; else ValueError, and nothing is returned."""
    out: list[bytes] = []
    pos, size = (offsets[0] if len(offsets) else 0), len(buf)
    for off, n in zip(offsets, lengths, strict=True):
        if off < pos or off + n > size:
            raise ValueError(f"payload at {off} of {n} bytes: offsets must ascend without "
                             f"overlap, inside the buffer of {size} bytes")
        out.append(bytes(buf[off : off + n]))
        pos = off + n
    return out


class Framer:
    """Frames records into one buffer (a segment's map), bound once for the hot path.

    The same class as the native backend's: there binding saves a pointer export per call;
    here it only keeps the buffer. ``release()`` before closing the map; a released
    Framer raises ValueError.
    """

    __slots__ = ("_buf",)

    def __init__(self, buf: bytearray | memoryview | Any) -> None:
        self._buf = buf

    def frame(self, off: int, payload: Buffer, seq: int) -> int:
        """Write one frame at ``off``; return the offset just past it."""
        return frame_into(self._bound(), off, payload, seq)

    def frame_batch(self, off: int, payloads: Sequence[Buffer], first_seq: int) -> int:
        """Write consecutive frames for ``payloads`` at ``off``; return the new end."""
        return frame_batch_into(self._bound(), off, payloads, first_seq)

    def frame_joined(self, off: int, src: bytes, lens: Sequence[int], first_seq: int) -> int:
        """append_batch's hot path: frames for the payloads ``src`` holds back to back,
        ``lens`` their lengths. Returns the new end, or a negative number when refused
        (lengths that do not add up to ``src``, or a batch that does not fit): nothing is
        written then, and ``frame_batch`` says why."""
        if sum(lens) != len(src) or not 0 <= first_seq <= (1 << 64) - len(lens):
            return -1
        view, pos, payloads = memoryview(src), 0, []
        for n in lens:
            payloads.append(view[pos : pos + n])
            pos += n
        try:
            return frame_batch_into(self._bound(), off, payloads, first_seq)
        except ValueError:
            return -1

    def raw(self, off: int, payload: bytes, length: int, seq: int) -> int:
        """The append hot path's call: like ``frame`` for a ``bytes`` payload of ``length``
        bytes, but a refused frame returns a negative number instead of raising (the
        caller then calls ``frame`` for the error). Valid until ``release()``."""
        try:
            return frame_into(self._bound(), off, payload, seq)
        except ValueError:
            return -1

    def release(self) -> None:
        """Drop the buffer (idempotent); it may then be closed."""
        self._buf = None

    def _bound(self) -> Any:
        if self._buf is None:
            raise ValueError("Framer used after release(): bind the new buffer to a new Framer")
        return self._buf

    def __enter__(self) -> Framer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Cursor:
    """Where the next frame of the active segment goes: the native backend's Cursor (see
    there), with a threading.Lock for the C core's spin lock."""

    __slots__ = ("_framer", "_lock", "_off", "_seq", "_window")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._framer: Framer | None = None
        self._off = self._seq = self._window = 0

    def append(self, payload: bytes, length: int) -> int:
        with self._lock:
            off, seq = self._off, self._seq
            if self._framer is None or off + frame_size(length) > self._window:
                return ERR_CURSOR_CLOSED
            end = self._framer.raw(off, payload, length, seq)
            if end < 0:
                return end
            self._off, self._seq = end, seq + 1
            return seq

    def open(self, framer: Framer, off: int, next_seq: int, window: int) -> bool:
        if next_seq >= 1 << 63:
            return False
        with self._lock:
            self._framer, self._off, self._seq = framer, off, next_seq
            self._window = window
        return True

    def close(self) -> tuple[int, int]:
        with self._lock:
            self._framer = None
            return self._off, self._seq


def new_committer(settle: Callable[[int], object]) -> None:
    """No group committer in pure Python: SegmentLog's own group commit does that work
    (the native backend's committer only takes the GIL off its wait)."""
    return None


class Scanner:
    """Scans one buffer (a segment's map), bound once; see Framer."""

    __slots__ = ("_buf",)

    def __init__(self, buf: Buffer | Any) -> None:
        self._buf = buf

    def scan(
        self,
        off: int,
        end: int,
        expected_seq: int,
        max_records: int,
        max_bytes: int | None = None,
    ) -> ScanResult:
        """``scan(buf, ...)`` on the bound buffer."""
        return scan(self._bound(), off, end, expected_seq, max_records, max_bytes)

    def resync(self, off: int, end: int, min_seq: int, max_seq: int) -> tuple[int, int] | None:
        """``resync(buf, ...)`` on the bound buffer."""
        return resync(self._bound(), off, end, min_seq, max_seq)

    def release(self) -> None:
        """Drop the buffer (idempotent); it may then be closed."""
        self._buf = None

    def _bound(self) -> Any:
        if self._buf is None:
            raise ValueError("Scanner used after release(): bind the new buffer to a new Scanner")
        return self._buf

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
