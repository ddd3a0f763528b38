"""The native backend: a thin wrapper over the C core (segmentlog._native, built by cffi).

It implements the same contract as segmentlog._pure (segmentlog/_backend_protocol.py,
which mypy checks both against) with the same results; tests/test_backends.py holds the
two to that.

Rule 1: the C core only ever sees arguments it can take: byte buffers and integers in
its uint64 range. Anything else (a negative offset, a sequence number past 2^64 - 1, a
buffer that is not a contiguous run of bytes) is handed to segmentlog._pure, the
reference, so both backends answer a caller's mistake the same way. Those are cold paths.
Rule 2: the C core writes a frame completely or not at all. When it refuses a frame the
reference is asked to do the same write, which raises the reference's own error; the C
core and the reference check the same conditions in the same order.
Rule 3: the hot paths (Framer.frame: one call per append; scan) bind the buffer once
(ffi.from_buffer exports it, so release() must come before the map is closed) and pass
``bytes`` payloads to C without a copy.
Rule 4: C answers with a status code and hands results back through out-parameter
cells, never allocated per call: an object one thread uses at a time keeps its own
cell; calls that threads make at once take a cell from a pool and give it back.
This module owns no state but the bound pointers, those cells, the append cursor and the
group committer (csrc/committer.c, which writes and fdatasyncs the segment descriptor
SegmentLog hands it). The test hooks (``TEST_HOOKS``) exist only in the test build.
"""

from __future__ import annotations

import functools
import struct
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from segmentlog import _pure
from segmentlog._format import FRAME_HEADER_SIZE, SCAN_BAD_SEQ, SCAN_OK
from segmentlog._native import ffi, lib
from segmentlog._pure import Buffer, ReadableBuffer, ScanResult, WritableBuffer

__all__ = [
    "NAME",
    "TEST_HOOKS",
    "Cursor",
    "Framer",
    "ScanResult",
    "Scanner",
    "crc32c",
    "crc32c_impl",
    "frame_batch_into",
    "frame_into",
    "frames_size",
    "new_committer",
    "payloads",
    "resync",
    "scan",
]

NAME = "native"

_U64 = 1 << 64
_FIRST_CHUNK = 1 << 14  # frames per scan call before the offset arrays grow (doubling)
_NULL = ffi.NULL
_crc32c = lib.sl_crc32c
_frame_one = lib.sl_frame_one
_frame_batch = lib.sl_frame_batch
_sl_scan = lib.sl_scan
_OK: int = lib.SL_OK
_NOT_FOUND: int = lib.SL_NOT_FOUND
_NOT_DURABLE: int = lib.SL_NOT_DURABLE
_ERR_ARG: int = lib.SL_ERR_ARG
_cursor_open = lib.sl_cursor_open
_cursor_close = lib.sl_cursor_close
_commit_append = lib.sl_commit_append
_commit_open = lib.sl_commit_open
_commit_close = lib.sl_commit_close
_APPEND_MAX_SEQ: int = lib.SL_APPEND_MAX_SEQ

# Rule 4's pool: out-parameter cells (uint64_t[2]) for calls that threads make at once.
# A call pops one and appends it back (both atomic), so no two calls in flight share a
# cell, and the pool holds as many as ever ran at once.
_CELLS: list[Any] = []

# The test build's hooks (SL_TESTING, segmentlog/_build_native.py); the shipped
# extension has none.
TEST_HOOKS: bool = hasattr(lib, "sl_commit_fail_next")


def _cell() -> Any:
    """An out-parameter cell from the pool (give it back with ``_CELLS.append``)."""
    try:
        return _CELLS.pop()
    except IndexError:
        return ffi.new("uint64_t[2]")


def _hook(name: str) -> Any:
    """A test hook of the C core, or RuntimeError if this build has none."""
    if not TEST_HOOKS:
        raise RuntimeError(
            f"{name} is a test hook of the C core, compiled only into the test build: "
            "rebuild with SEGMENTLOG_STRICT_BUILD=1 (python setup.py build_ext --inplace)"
        )
    return getattr(lib, name)


def _status_name(status: int) -> str:
    return str(ffi.string(lib.sl_strerror(status)).decode())


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (as zlib.crc32 chains)."""
    if type(data) is bytes:  # exactly bytes: passed without a copy, and len() is true
        try:
            result: int = _crc32c(crc, data, len(data))
            return result
        except OverflowError:  # crc out of range
            pass
    if not 0 <= crc <= 0xFFFFFFFF:
        return _pure.crc32c(data, crc)  # Rule 1: a crc outside 32 bits is the caller's bug
    ptr = _byte_buffer(data)
    if ptr is None:
        return _pure.crc32c(data, crc)
    with ptr:
        return int(_crc32c(crc, ptr, len(ptr)))


def crc32c_impl() -> str:
    """Which CRC32C implementation is live: "sse4.2", "armv8-crc" or "portable"."""
    return str(ffi.string(lib.sl_crc32c_impl()).decode("ascii"))


def crc32c_force_portable(on: bool) -> bool:
    """Test hook (test build only): run the portable C code even on a CPU with CRC
    instructions (process wide). Returns the previous setting."""
    return bool(_hook("sl_crc32c_force_portable")(1 if on else 0))


def _byte_buffer(obj: Any, writable: bool = False) -> Any:
    """A cffi view of ``obj`` if it is a contiguous run of bytes whose len() is its size in
    bytes (what the reference assumes), else None (the caller then uses the reference)."""
    try:
        ptr = ffi.from_buffer(obj, require_writable=writable)
    except (TypeError, BufferError, ValueError):
        return None
    try:
        same = len(ptr) == len(obj)
    except TypeError:
        same = False
    if not same:
        ffi.release(ptr)
        return None
    return ptr


def _by_reference(status: int | None, reference: Any, *args: Any) -> int:
    """The result of a write the C core declined (None: Rule 1) or refused (its status:
    Rule 2): the reference does it, or raises its own error. Call with the buffer not
    exported, so the reference behaves exactly as it does alone."""
    if status is None:
        result: int = reference(*args)
        return result
    reference(*args)  # raises: the C core and the reference check the same conditions
    raise RuntimeError(
        f"segmentlog C core refused a write ({_status_name(status)}) "
        "that the pure-Python reference accepted: this is a bug, please report it; "
        "SEGMENTLOG_BACKEND=pure works around it"
    )


def _end_of(call: Any, *args: Any) -> tuple[int, int]:
    """(status, end) of a framing call whose last argument is the end's cell."""
    cell = _cell()
    status: int = call(*args, cell)
    end = int(cell[0])
    _CELLS.append(cell)
    return status, end


def _frame_c(ptr: Any, off: int, payload: Buffer, seq: int) -> tuple[int, int] | None:
    """One frame by the C core: (status, new end), or None if the arguments are not for
    C (Rule 1)."""
    if not (0 <= off < _U64 and 0 <= seq < _U64):
        return None
    if type(payload) is bytes:  # exactly bytes: passed without a copy, and len() is true
        return _end_of(_frame_one, ptr, len(ptr), off, payload, len(payload), seq)
    src = _byte_buffer(payload)
    if src is None:
        return None
    with src:
        return _end_of(_frame_one, ptr, len(ptr), off, src, len(src), seq)


def _frame_batch_c(
    ptr: Any, off: int, payloads: Sequence[Buffer], first_seq: int
) -> tuple[int, int] | None:
    """A batch of frames by the C core: as _frame_c."""
    try:
        n = len(payloads)
        src = b"".join(payloads)
        lens = array("Q", map(len, payloads))
    except (TypeError, OverflowError):
        return None
    # Out of range (the reference also gets a partial write right: it raises at the first
    # sequence number that does not fit, after writing the frames before it), or a
    # payload whose len() is not its size in bytes.
    if not (0 <= off < _U64 and first_seq >= 0 and first_seq + n <= _U64):
        return None
    with ffi.from_buffer("uint64_t[]", lens) as lens_ptr:
        result = _end_of(_frame_batch, ptr, len(ptr), off, src, len(src), lens_ptr, n,
                         first_seq)
    # SL_ERR_ARG: the lengths do not add up to the bytes (a payload whose len() is not
    # its size in bytes); the reference, which takes each payload as it is, writes it.
    return None if result[0] == _ERR_ARG else result


def frames_size(lens: array[int]) -> int:
    """The bytes frames of payload lengths ``lens`` (``array('Q')``) occupy; one C call."""
    with ffi.from_buffer("uint64_t[]", lens) as ptr:
        status, size = _end_of(lib.sl_frames_size, ptr, len(lens))
    if status != _OK:  # a length past the format limit: the reference raises for it
        return _pure.frames_size(lens)
    return size


def frame_into(buf: WritableBuffer, off: int, payload: Buffer, seq: int) -> int:
    """Write one frame at ``off``; return the offset just past it (padding included)."""
    return _write_into(buf, _frame_c, _pure.frame_into, off, payload, seq)


def frame_batch_into(
    buf: WritableBuffer, off: int, payloads: Sequence[Buffer], first_seq: int
) -> int:
    """Write consecutive frames for ``payloads`` starting at ``off``; return the new end."""
    return _write_into(buf, _frame_batch_c, _pure.frame_batch_into, off, payloads, first_seq)


def _write_into(buf: WritableBuffer, c_write: Any, reference: Any, *args: Any) -> int:
    """One write of the module-level API: bind ``buf``, let C write (Rule 1 and 2 as
    ever), and leave what C declines or refuses to the reference, buffer unbound."""
    ptr = _byte_buffer(buf, writable=True)
    result = None
    if ptr is not None:
        with ptr:
            result = c_write(ptr, *args)
        if result is not None and result[0] == _OK:
            return int(result[1])
    return _by_reference(None if result is None else result[0], reference, buf, *args)


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
    ``offsets`` and ``lengths`` of the result are ``array('Q')``.
    """
    if off < 0:  # Rule 1
        return _pure.scan(buf, off, end, expected_seq, max_records, max_bytes)
    ptr = _byte_buffer(buf)
    if ptr is None:
        return _pure.scan(buf, off, end, expected_seq, max_records, max_bytes)
    with ptr:
        return _scan_on(ptr, off, end, expected_seq, max_records, max_bytes)


def _scan_on(
    ptr: Any, off: int, end: int, expected_seq: int, max_records: int, max_bytes: int | None
) -> ScanResult:
    end = min(end, len(ptr))
    if off >= end or max_records <= 0:
        return ScanResult(off, expected_seq, 0, 0, SCAN_OK, array("Q"), array("Q"))
    flags, limit = 0, 0
    if max_bytes is not None and max_bytes < _U64:  # no payload total reaches 2^64 bytes
        flags, limit = lib.SL_OPT_LIMIT_BYTES, max_bytes
    # The arrays start small and double, so a scan of a whole segment with a huge
    # max_records holds about as many entries as frames it accepts, not max_records.
    # Every accepted frame takes >= FRAME_HEADER_SIZE bytes of [off, end); there is at
    # least one entry, as a frame is examined (for the status) even when none can fit.
    size = max(1, min(max_records, (end - off) // FRAME_HEADER_SIZE, _FIRST_CHUNK))
    if limit < 0:
        size = 1  # a negative limit: only the first frame (always accepted) can be taken
    offsets = array("Q", bytes(8 * size))
    lengths = array("Q", bytes(8 * size))
    res = ffi.new("sl_scan_result *")
    pos, seq, count, nbytes, status = off, expected_seq, 0, 0, SCAN_OK
    while True:
        want = min(max_records - count, _U64 - 1)
        room = size - count
        if seq >= _U64 or seq < 0:
            # Rule 1 (and the end of the sequence space): no frame can carry this number.
            status = _status_at(ptr, end, pos, None)
            break
        if flags and count and nbytes > limit:
            # After a first frame bigger than max_bytes (or any, for a negative limit):
            # the reference still checks the next frame (its defect wins over the limit)
            # but accepts nothing more.
            status = _status_at(ptr, end, pos, seq)
            break
        with (
            ffi.from_buffer("uint64_t[]", offsets) as o,
            ffi.from_buffer("uint64_t[]", lengths) as n,
        ):
            cflags = flags | (lib.SL_OPT_CONTINUE if count else 0)
            rc = _sl_scan(
                ptr, end, pos, seq, min(want, room), max(limit - nbytes, 0), cflags,
                o + count, n + count, res,
            )  # fmt: skip
        if rc != _OK:
            raise RuntimeError(f"sl_scan failed: {_status_name(rc)}")
        got = int(res.count)
        count += got
        nbytes += int(res.nbytes)
        seq += got
        pos = int(res.end)
        status = int(res.status)
        # Go on only when the arrays filled up and more frames may follow.
        if status != SCAN_OK or got < room or count >= max_records or pos >= end:
            break
        grow = max(1, min(size, max_records - count, (end - pos) // FRAME_HEADER_SIZE))
        offsets.frombytes(bytes(8 * grow))
        lengths.frombytes(bytes(8 * grow))
        size += grow
    del offsets[count:]
    del lengths[count:]
    return ScanResult(pos, seq, count, nbytes, status, offsets, lengths)


def _status_at(ptr: Any, end: int, pos: int, seq: int | None) -> int:
    """The status the reference stops with at ``pos`` when it will accept no frame there:
    the frame's own defect if it has one; else SCAN_BAD_SEQ if it does not carry ``seq``
    (None: a number no frame can carry); else SCAN_OK (a limit stopped the scan)."""
    res = ffi.new("sl_scan_result *")
    lib.sl_scan(ptr, end, pos, 0 if seq is None else seq, 1, 0, 0, _NULL, _NULL, res)
    if res.count:
        return SCAN_BAD_SEQ if seq is None else SCAN_OK
    return int(res.status)


def resync(
    buf: ReadableBuffer, off: int, end: int, min_seq: int, max_seq: int
) -> tuple[int, int] | None:
    """``_pure.resync``: the first sound, dense enough frame at an aligned offset >= ``off``
    whose sequence number lies in [min_seq, max_seq], as (offset, seq), or None."""
    if off < 0:  # Rule 1
        return _pure.resync(buf, off, end, min_seq, max_seq)
    ptr = _byte_buffer(buf)
    if ptr is None:
        return _pure.resync(buf, off, end, min_seq, max_seq)
    with ptr:
        return _resync_on(ptr, off, end, min_seq, max_seq)


def _resync_on(ptr: Any, off: int, end: int, min_seq: int, max_seq: int) -> tuple[int, int] | None:
    end = min(end, len(ptr))
    lo, hi = max(min_seq, 0), min(max_seq, _U64 - 1)
    if off >= end or lo > hi:  # no offset, or no sequence number a frame can carry
        return None
    out = _cell()
    status = lib.sl_resync(ptr, end, off, lo, hi, out, out + 1)
    found = (int(out[0]), int(out[1]))
    _CELLS.append(out)
    if status == _OK:
        return found
    if status == _NOT_FOUND:
        return None
    raise RuntimeError(f"sl_resync failed: {_status_name(status)}")


# Below this many payloads, slicing each costs less than building a struct format.
_STRUCT_MIN = 8
# Compiled unpack formats: a drain of same-sized records asks for the same few formats
# batch after batch, and compiling one of a thousand payloads costs more than its lookup.
_unpacker = functools.lru_cache(maxsize=16)(struct.Struct)
_unpack_format = lib.sl_unpack_format


def payloads(buf: Any, offsets: Sequence[int], lengths: Sequence[int]) -> Sequence[bytes]:
    """``_pure.payloads``, with every bytes object of a batch built by one
    ``struct.unpack_from`` call (csrc: sl_unpack_format), not one slice per payload."""
    n = len(offsets)
    if n < _STRUCT_MIN or len(lengths) != n:
        return _pure.payloads(buf, offsets, lengths)
    if not isinstance(offsets, array):
        offsets, lengths = array("Q", offsets), array("Q", lengths)
    cap = 2 + 42 * n
    out = ffi.new("char[]", cap)
    with (
        ffi.from_buffer("uint64_t[]", offsets) as o,
        ffi.from_buffer("uint64_t[]", lengths) as k,
    ):
        status, size = _end_of(_unpack_format, o, k, n, out, cap)
    if status != _OK:
        return _pure.payloads(buf, offsets, lengths)  # raises ValueError, naming them
    try:
        return _unpacker(ffi.buffer(out, size)[:]).unpack_from(buf, offsets[0])
    except struct.error:
        return _pure.payloads(buf, offsets, lengths)  # past the end: ValueError


class Framer:
    """Frames records into one writable buffer (a segment's map), bound once.

    ``frame`` is the engine's per-append call, so it is one C call on a pointer made at
    construction. ``release()`` drops that pointer, which must happen before the map is
    closed (a bound mmap refuses to close: BufferError). A released Framer raises
    ValueError. A buffer C cannot bind (not writable, not bytes) is written by the
    reference, which raises what it raises for it (Rule 1). Not thread-safe: the caller
    serialises writes (it holds the log's lock), so the Framer keeps one out-parameter
    cell for the end offsets C hands back (Rule 4).
    """

    __slots__ = ("_buf", "_cap", "_native", "_out", "_ptr")

    def __init__(self, buf: WritableBuffer) -> None:
        ptr = _byte_buffer(buf, writable=True)
        self._buf: WritableBuffer | None = buf
        self._native = ptr is not None
        self._ptr: Any = ptr if ptr is not None else _NULL
        self._cap = len(ptr) if ptr is not None else 0
        self._out: Any = ffi.new("uint64_t *")

    def frame(self, off: int, payload: Buffer, seq: int) -> int:
        """Write one frame at ``off``; return the offset just past it."""
        # Exactly bytes (not a subclass, whose len() might not be its size): passed to C
        # without a copy. Everything else takes the general path.
        if type(payload) is bytes:
            out = self._out
            try:
                status = _frame_one(self._ptr, self._cap, off, payload, len(payload), seq, out)
            except OverflowError:
                status = _ERR_ARG
            if status == _OK:
                end: int = out[0]
                return end
        return self._write(_frame_c, _pure.frame_into, off, payload, seq)

    @property
    def raw(self) -> Any:
        """The append hot path's call ``raw(off, payload, length, seq) -> end``: one C
        call on the bound buffer. Only for a ``bytes`` payload of ``length`` bytes; a
        refused frame returns the negative status (call ``frame`` then, for the error).
        Never call it after ``release()``."""
        if not self._native:
            return _pure.Framer(self._bound()).raw
        ptr, cap, out = self._ptr, self._cap, self._out

        def raw(off: int, payload: bytes, length: int, seq: int) -> int:
            status: int = _frame_one(ptr, cap, off, payload, length, seq, out)
            return status if status != _OK else int(out[0])

        return raw

    def frame_batch(self, off: int, payloads: Sequence[Buffer], first_seq: int) -> int:
        """Write consecutive frames for ``payloads`` at ``off``; return the new end."""
        return self._write(_frame_batch_c, _pure.frame_batch_into, off, payloads, first_seq)

    def frame_joined(self, off: int, src: bytes, lens: array[int], first_seq: int) -> int:
        """append_batch's hot path: frames for the payloads ``src`` holds back to back,
        ``lens`` (``array('Q')``) their lengths; one C call. Returns the new end, or a
        negative code when refused (nothing written; ``frame_batch`` then says why)."""
        if not self._native:
            return _pure.Framer(self._bound()).frame_joined(off, src, lens, first_seq)
        out = self._out
        try:
            with ffi.from_buffer("uint64_t[]", lens) as lens_ptr:
                status = _frame_batch(self._ptr, self._cap, off, src, len(src), lens_ptr,
                                      len(lens), first_seq, out)
        except OverflowError:
            return _ERR_ARG
        return int(status) if status != _OK else int(out[0])

    def _write(self, c_write: Any, reference: Any, *args: Any) -> int:
        buf = self._bound()
        result = c_write(self._ptr, *args) if self._native else None
        if result is not None and result[0] == _OK:
            return int(result[1])
        status = None if result is None else result[0]
        if not self._native:
            return _by_reference(status, reference, buf, *args)
        # The reference runs with the buffer unexported, exactly as it does alone.
        ffi.release(self._ptr)
        try:
            return _by_reference(status, reference, buf, *args)
        finally:
            self._ptr = ffi.from_buffer(buf, require_writable=True)
            self._cap = len(self._ptr)

    def release(self) -> None:
        """Drop the pointer into the buffer (idempotent); the buffer may then be closed."""
        if self._native:
            ffi.release(self._ptr)
        self._buf, self._ptr, self._cap, self._native = None, _NULL, 0, False

    def _bound(self) -> WritableBuffer:
        if self._buf is None:
            raise ValueError("Framer used after release(): bind the new buffer to a new Framer")
        return self._buf

    def __enter__(self) -> Framer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Cursor:
    """Where the next frame of the active segment goes (csrc/cursor.c): SegmentLog.append
    frames through it without the log's lock (the cursor has its own, held for one frame).

    ``append(payload, length)`` (a ``bytes`` payload of ``length`` bytes) returns the new
    record's sequence number, or the negative status when the cursor refuses: closed, or
    the frame would pass the window (one C call: the binding's adapter,
    segmentlog/_build_native.py GLUE). ``open`` points it at a Framer's buffer; ``close``
    stops every append (one in progress finishes first) and returns (offset, next
    sequence number). ``open`` and ``close`` are for one caller at a time (the holder of
    the log's lock), so they share one out-parameter cell. The Framer must outlive the
    opening: close the cursor before releasing it. The calls hold the plain pointer (cffi
    converts it faster than the one that frees the cursor, which ``_owner`` keeps): use
    ``append`` only while the Cursor lives.
    """

    __slots__ = ("_c", "_out", "_owner", "append")

    def __init__(self) -> None:
        c = lib.sl_cursor_new()  # closed
        if c == _NULL:
            raise MemoryError("segmentlog C core: no memory for an append cursor")
        self._owner = ffi.gc(c, lib.sl_cursor_free)
        self._c: Any = c
        self._out: Any = ffi.new("uint64_t[2]")
        self.append: Any = functools.partial(lib.slpy_cursor_append, c)

    def open(self, framer: Framer, off: int, next_seq: int, window: int) -> bool:
        """Open over ``[off, window)`` of the framer's buffer; False if that buffer is not
        one C can write (the cursor stays closed and every append takes the slow path)."""
        if not framer._native or next_seq > _APPEND_MAX_SEQ:
            return False
        _cursor_open(self._c, framer._ptr, framer._cap, off, next_seq, window)
        return True

    def close(self) -> tuple[int, int]:
        out = self._out
        _cursor_close(self._c, out, out + 1)
        return int(out[0]), int(out[1])


class Committer:
    """The group committer (csrc/committer.c): SegmentLog.append with fsync="always".

    ``append(payload, length)`` (a ``bytes`` payload of ``length`` bytes; one C call)
    returns the new record's sequence number once an fdatasync covered it. When the
    committer appended the record but could not see it durable (closed over another
    segment, retired, or its disk failed: SL_NOT_DURABLE) it calls ``settle(seq)`` first,
    the owner's way to make it durable or raise the recorded error. When it refuses
    (nothing written: closed, the segment or the group buffer full, a failed disk) it
    returns the negative status. ``open`` hands it the active segment (descriptor, group
    buffer, offsets), ``close`` takes the state back as (offset, next_seq, durable_next,
    rounds, errno), ``retire`` sends every waiter back. The group buffer's Framer must
    stay bound until the next close. Appends run in many threads at once: each takes its
    sequence number's cell from the pool (Rule 4). ``c`` is the committer's pointer, which
    frees it when collected; the calls hold the plain one (as Cursor's).
    """

    __slots__ = ("_c", "_owner", "_settle", "_state")

    def __init__(self, c: Any, settle: Callable[[int], object]) -> None:
        self._owner = c
        self._c: Any = ffi.cast("sl_committer *", c)
        self._settle = settle
        self._state: Any = ffi.new("sl_commit_state *")

    def append(self, payload: bytes, length: int) -> int:
        try:
            cell = _CELLS.pop()
        except IndexError:
            cell = ffi.new("uint64_t[2]")
        status = _commit_append(self._c, payload, length, cell)
        seq: int = cell[0]
        _CELLS.append(cell)
        if status == _OK:
            return seq
        if status == _NOT_DURABLE:
            self._settle(seq)
            return seq
        return int(status)

    def open(self, fd: int, group: Framer, off: int, window: int, next_seq: int,
             durable_next: int, segment_id: int, mark: bool, gather_ns: int) -> bool:
        """Open over a segment; False if the group buffer is not one C can write or the
        sequence numbers left its range (it stays closed: every append takes Python's path)."""
        if not group._native or next_seq > _APPEND_MAX_SEQ:
            return False
        _commit_open(self._c, fd, group._ptr, group._cap, off, window, next_seq,
                     max(durable_next, 0), segment_id, 1 if mark else 0, gather_ns)
        return True

    def close(self) -> tuple[int, int, int, int, int]:
        st = self._state
        _commit_close(self._c, st)
        return int(st.off), int(st.next_seq), int(st.durable_next), int(st.rounds), int(st.error)

    def retire(self) -> None:
        lib.sl_commit_retire(self._c)

    def fail_next_fsync(self, err: int) -> None:
        """Test hook (test build only): the next fdatasync of a round fails with ``err``
        instead of running."""
        _hook("sl_commit_fail_next")(self._c, err)


def new_committer(settle: Callable[[int], object]) -> Committer | None:
    """A group committer whose appends that it cannot see durable go to ``settle(seq)``,
    or None where C has none (Windows)."""
    c = lib.sl_commit_new()
    if c == _NULL:
        return None
    return Committer(ffi.gc(c, lib.sl_commit_free), settle)


class Scanner:
    """Scans one buffer (a segment's map, read-only is fine), bound once; see Framer."""

    __slots__ = ("_buf", "_ptr")

    def __init__(self, buf: ReadableBuffer) -> None:
        self._buf: ReadableBuffer | None = buf
        self._ptr: Any = _byte_buffer(buf)  # None: C cannot bind it, the reference scans

    def scan(
        self,
        off: int,
        end: int,
        expected_seq: int,
        max_records: int,
        max_bytes: int | None = None,
    ) -> ScanResult:
        """``scan(buf, ...)`` on the bound buffer."""
        buf = self._bound()
        if off < 0 or self._ptr is None:  # Rule 1
            return _pure.scan(buf, off, end, expected_seq, max_records, max_bytes)
        return _scan_on(self._ptr, off, end, expected_seq, max_records, max_bytes)

    def resync(self, off: int, end: int, min_seq: int, max_seq: int) -> tuple[int, int] | None:
        """``resync(buf, ...)`` on the bound buffer."""
        buf = self._bound()
        if off < 0 or self._ptr is None:  # Rule 1
            return _pure.resync(buf, off, end, min_seq, max_seq)
        return _resync_on(self._ptr, off, end, min_seq, max_seq)

    def release(self) -> None:
        """Drop the pointer into the buffer (idempotent); the buffer may then be closed."""
        if self._ptr is not None:
            ffi.release(self._ptr)
        self._buf = self._ptr = None

    def _bound(self) -> ReadableBuffer:
        if self._buf is None:
            raise ValueError("Scanner used after release(): bind the new buffer to a new Scanner")
        return self._buf

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
