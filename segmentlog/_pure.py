"""The pure-Python backend: CRC32C, framing and scanning without the C core.

It is the reference the C core (csrc/) must match byte for byte; tests/test_backends.py
runs both over the same inputs. A machine without a compiler still gets every check.

Rule 1: CRC32C comes from google-crc32c (Apache-2.0, wheels with the CPU's CRC
instructions) when its C extension imports: the ``fast-pure`` extra. It is never
required: without it the CRC runs in Python, four bytes a step through two 64 Ki-entry
tables built on first use, and a byte at a time (``_crc32c_bytewise``, the plain
reference) for short inputs and for a starting crc outside 32 bits. The CRC is nearly
all of this backend's cost per record (benchmarks/README.md).
Rule 2: the per-record paths (``frame_into``, ``Cursor.append``, ``scan``) build each
frame as one bytes object and write it with one slice assignment, with precompiled
Structs and no helper calls per record; the checks stay those of the C core, in order.
"""

from __future__ import annotations

import importlib
import mmap
import struct
import sys
import threading
import warnings
from array import array
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
# The header bytes the CRC covers (marker, length, seq, flags): FRAME_HEADER less the crc.
_COVERED = struct.Struct(FRAME_HEADER.format[:-1])
assert _COVERED.size == FRAME_CRC_COVERS
_PADDING = [bytes(n) for n in range(FRAME_ALIGN)]  # padding is always written as zeros
_ALIGN_MASK = FRAME_ALIGN - 1
_U32 = 0xFFFFFFFF


def _crc32c_bytewise(data: Buffer, crc: int = 0) -> int:
    """The reference CRC32C, a byte at a time: any ``crc`` (bits above 32 included)."""
    table = _TABLE
    crc ^= _U32
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


_WORD_MIN = 16  # shorter inputs take the byte loop (and never build the tables)
_word_tables: tuple[list[int], list[int]] | None = None


def _build_word_tables() -> tuple[list[int], list[int]]:
    """(low, high): four byte steps of a 32-bit state's low and high 16 bits.

    A step is linear, so the state after four bytes is low[s & 0xFFFF] ^ high[s >> 16].
    high[i] is two steps of i (its two steps of zero bits first just shift it down)."""
    t = _TABLE
    one = [t[i & 0xFF] ^ (i >> 8) for i in range(65536)]  # a step of 16-bit states
    two = [t[c & 0xFF] ^ (c >> 8) for c in one]
    low = [two[c & 0xFFFF] ^ (c >> 16) for c in two]
    return low, two


def _crc32c_words(data: bytes, crc: int) -> int:
    """CRC32C of ``data`` from a 32-bit ``crc``, four bytes a step (Rule 1)."""
    global _word_tables
    tables = _word_tables
    if tables is None:
        tables = _word_tables = _build_word_tables()  # a race builds it twice: harmless
    low, high = tables
    n = len(data)
    cut = n & ~3
    if sys.byteorder == "little":
        words: Any = memoryview(data)[:cut].cast("I")
    else:
        words = array("I", data[:cut])
        words.byteswap()
    crc ^= _U32
    for word in words:
        crc ^= word
        crc = low[crc & 0xFFFF] ^ high[crc >> 16]
    table = _TABLE
    for byte in data[cut:]:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def _python_crc(data: bytes, crc: int) -> int:
    if len(data) < _WORD_MIN:
        return _crc32c_bytewise(data, crc)
    return _crc32c_words(data, crc)


def _load_google() -> Callable[[int, bytes], int] | None:
    """google_crc32c.extend when its C extension imports (Rule 1), else None."""
    try:
        with warnings.catch_warnings():
            # Without its C extension the package warns and runs in Python: not used then.
            warnings.simplefilter("ignore", RuntimeWarning)
            google_crc32c = importlib.import_module("google_crc32c")  # optional: no stubs needed
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", None) != "c":
        return None
    extend: Callable[[int, bytes], int] = google_crc32c.extend
    return extend if extend(0, b"123456789") == 0xE3069283 else None  # the check value


_fast_crc = _load_google()
# The CRC of the per-record paths: (crc, data: bytes) -> crc, crc within 32 bits.
_crc: Callable[[int, bytes], int] = _fast_crc or (lambda crc, data: _python_crc(data, crc))


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (as zlib.crc32 chains)."""
    if type(data) is not bytes:
        data = bytes(data)  # a str raises TypeError here, as it should
    if not 0 <= crc <= _U32:
        return _crc32c_bytewise(data, crc)
    return _crc(crc, data)


def crc32c_impl() -> str:
    """Which CRC32C implementation is live: "google-crc32c" or "python" (Rule 1)."""
    return "python" if _fast_crc is None else "google-crc32c"


def _check_length(length: int) -> int:
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds the format limit {MAX_PAYLOAD}")
    return length


def frame_into(buf: bytearray | memoryview, off: int, payload: Buffer, seq: int) -> int:
    """Write one frame at ``off``; return the offset just past it (padding included)."""
    length = len(payload)
    if length > MAX_PAYLOAD:
        _check_length(length)
    size = (FRAME_HEADER_SIZE + length + _ALIGN_MASK) & ~_ALIGN_MASK
    if off < 0 or off & _ALIGN_MASK or off + size > len(buf):
        raise ValueError(f"frame of {size} bytes does not fit at offset {off} of {len(buf)}")
    head = _COVERED.pack(FRAME_MARKER, length, seq, 0)
    if type(payload) is not bytes:
        payload = bytes(payload)
    crc = _crc(_crc(0, head), payload)
    buf[off : off + size] = b"".join(
        (head, crc.to_bytes(4, "little"), payload, _PADDING[size - FRAME_HEADER_SIZE - length])
    )
    return off + size


def frames_size(lens: Sequence[int]) -> int:
    """The bytes frames of payload lengths ``lens`` occupy, padding included."""
    return sum(frame_size(_check_length(n)) for n in lens)


def frame_batch_into(
    buf: bytearray | memoryview, off: int, payloads: Sequence[Buffer], first_seq: int
) -> int:
    """Write consecutive frames for ``payloads`` starting at ``off``; return the new end."""
    total = sum(frame_size(_check_length(len(p))) for p in payloads)
    if off < 0 or off % FRAME_ALIGN or off + total > len(buf):
        raise ValueError(f"batch of {total} bytes does not fit at offset {off} of {len(buf)}")
    for i, payload in enumerate(payloads):
        off = frame_into(buf, off, payload, first_seq + i)
    return off


def _reader(buf: ReadableBuffer) -> tuple[Any, Callable[[int, int], bytes]]:
    """(what to read headers from, (start, stop) -> the bytes of that range): bytes and
    maps slice to bytes themselves, anything else through one memoryview."""
    if isinstance(buf, (bytes, mmap.mmap)):
        return buf, lambda start, stop: buf[start:stop]
    view = memoryview(buf)
    return view, lambda start, stop: bytes(view[start:stop])


def _check_frame(
    buf: ReadableBuffer, take: Callable[[int, int], bytes], pos: int, end: int
) -> tuple[int, int, int, int]:
    """(status, length, seq, size) of the frame at ``pos``; status SCAN_OK if it is sound."""
    if end - pos < FRAME_HEADER_SIZE:
        zero = not any(take(pos, end))
        return (SCAN_ZERO if zero else SCAN_TRUNCATED), 0, 0, 0
    marker, length, seq, flags, stored = FRAME_HEADER.unpack_from(buf, pos)
    if marker == 0:
        return SCAN_ZERO, 0, 0, 0
    if marker != FRAME_MARKER:
        return SCAN_BAD_MARKER, 0, 0, 0
    size = (FRAME_HEADER_SIZE + length + _ALIGN_MASK) & ~_ALIGN_MASK
    if size > end - pos:
        return SCAN_TRUNCATED, length, seq, size
    body = pos + FRAME_HEADER_SIZE
    if _crc(_crc(0, take(pos, pos + FRAME_CRC_COVERS)), take(body, body + length)) != stored:
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
    buf, take = _reader(buf)
    end = min(end, len(buf))
    offsets: list[int] = []
    lengths: list[int] = []
    pos, seq, nbytes, count = off, expected_seq, 0, 0
    status = SCAN_OK
    unpack, crc = FRAME_HEADER.unpack_from, _crc
    while count < max_records and pos < end:
        # A sound frame is checked inline (Rule 2); any other is handed to _check_frame,
        # which names why it is not, in the C core's order.
        sound = False
        if end - pos >= FRAME_HEADER_SIZE:
            marker, length, got_seq, flags, stored = unpack(buf, pos)
            size = (FRAME_HEADER_SIZE + length + _ALIGN_MASK) & ~_ALIGN_MASK
            body = pos + FRAME_HEADER_SIZE
            sound = (marker == FRAME_MARKER and got_seq == seq and not flags
                     and size <= end - pos
                     and crc(crc(0, take(pos, pos + FRAME_CRC_COVERS)),
                             take(body, body + length)) == stored)
        if not sound:
            status = _check_frame(buf, take, pos, end)[0]
            if status == SCAN_OK:  # sound but for its sequence number
                status = SCAN_BAD_SEQ
            break
        if max_bytes is not None and count and nbytes + length > max_bytes:
            break
        offsets.append(body)
        lengths.append(length)
        nbytes += length
        count += 1
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
    _, take = _reader(data)
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
        status, _, seq, _ = _check_frame(data, take, pos, end)
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
        pos, payloads = 0, []
        for n in lens:
            payloads.append(src[pos : pos + n])  # bytes: the CRC takes them without a copy
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
            off, seq, framer = self._off, self._seq, self._framer
            size = (FRAME_HEADER_SIZE + length + _ALIGN_MASK) & ~_ALIGN_MASK  # frame_size
            if framer is None or off + size > self._window:
                return ERR_CURSOR_CLOSED
            end = framer.raw(off, payload, length, seq)
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
