"""Backend parity: the C core (segmentlog._nativebackend) answers exactly as the pure-Python
reference (segmentlog._pure) does, on every input.

Categories: CRC32C known-answer vectors (both backends and both C code paths), CRC parity
on every length 0..300 at every alignment and across the interleaving thresholds,
byte-identical framing, scan/resync parity on hypothesis-built segments damaged in every
way FORMAT.md names and on random bytes, the edges of the integer ranges (where the
wrapper hands arguments to the reference), and the bound Framer/Scanner.

The native tests skip, saying why, when the extension is not built; under
SEGMENTLOG_BACKEND=native a missing extension fails them instead.
"""

from __future__ import annotations

import mmap
import os
import platform
import random
import struct
from array import array
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hooktools import need_test_hooks
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentlog import _pure
from segmentlog._format import (
    FRAME_HEADER_SIZE,
    FRAME_MARKER,
    SCAN_BAD_CRC,
    SCAN_BAD_FLAGS,
    SCAN_BAD_MARKER,
    SCAN_BAD_SEQ,
    SCAN_OK,
    SCAN_TRUNCATED,
    SCAN_ZERO,
    SEGMENT_HEADER_SIZE,
    frame_size,
)

try:
    from segmentlog import _nativebackend as _native_mod

    NATIVE_ERROR = ""
except ImportError as exc:  # the extension is not built
    _native_mod = None  # type: ignore[assignment]
    NATIVE_ERROR = str(exc)

U64 = 1 << 64
MARKER = FRAME_MARKER.to_bytes(4, "little")
PARITY = settings(max_examples=150, deadline=None)


def need_native() -> ModuleType:
    """The native backend, or a skip (a failure under SEGMENTLOG_BACKEND=native)."""
    if _native_mod is None:
        if os.environ.get("SEGMENTLOG_BACKEND", "").strip().lower() == "native":
            pytest.fail(f"SEGMENTLOG_BACKEND=native but the C core does not import: {NATIVE_ERROR}")
        pytest.skip(f"C core not built ({NATIVE_ERROR}); build it with: pip install -e .")
    return _native_mod


def backend(name: str) -> ModuleType:
    return _pure if name == "pure" else need_native()


@pytest.fixture()
def portable_crc() -> Iterator[ModuleType]:
    """The native backend with its portable CRC32C code forced on (restored after)."""
    native = need_test_hooks(need_native())
    previous = native.crc32c_force_portable(True)
    try:
        yield native
    finally:
        native.crc32c_force_portable(previous)


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What a call did: its normalised result, or the exception type and message."""
    try:
        result = fn(*args)
    except Exception as exc:  # the exception is the outcome compared
        return ("raised", type(exc), str(exc))
    if isinstance(result, _pure.ScanResult):
        return ("scan", *result[:5], list(result.offsets), list(result.lengths))
    return ("ok", result)


def four_ways_agree(function: str, method: str, size: int, *args: Any) -> None:
    """The module function ``function`` and the Framer method ``method`` of both backends
    give one outcome and leave the same bytes in a buffer of ``size`` stale bytes."""
    native = need_native()
    bufs = [bytearray(b"\x77" * size) for _ in range(4)]
    results = [
        outcome(getattr(_pure, function), bufs[0], *args),
        outcome(getattr(native, function), bufs[1], *args),
        outcome(getattr(_pure.Framer(bufs[2]), method), *args),
        outcome(getattr(native.Framer(bufs[3]), method), *args),
    ]
    assert results[1:] == results[:1] * 3
    assert bufs[1:] == bufs[:1] * 3


def both(name: str, *args: Any) -> tuple[Any, ...]:
    """Call function ``name`` of both backends; assert they agree; return the outcome."""
    native = need_native()
    want = outcome(getattr(_pure, name), *args)
    got = outcome(getattr(native, name), *args)
    assert got == want, f"{name}{args[1:]!r}: native {got!r} != pure {want!r}"
    return want


# --- CRC32C -----------------------------------------------------------------------------

# (input, CRC32C): the check value of the Castagnoli CRC catalogue and RFC 3720 (iSCSI)
# appendix B.4.
CRC_VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("name", ["pure", "native"])
def test_crc32c_known_answer_vectors(name: str) -> None:
    impl = backend(name)
    for data, want in CRC_VECTORS:
        assert impl.crc32c(data) == want, data


def test_crc32c_known_answer_vectors_portable_c_code(portable_crc: ModuleType) -> None:
    assert portable_crc.crc32c_impl() == "portable"
    for data, want in CRC_VECTORS:
        assert portable_crc.crc32c(data) == want, data


def _cpu_has_crc_instructions() -> str | None:
    """The name the C core must report on this CPU, read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return None
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64") and "sse4_2" in flags:
        return "sse4.2"
    if machine in ("aarch64", "arm64") and "crc32" in flags:
        return "armv8-crc"
    return None


def test_crc32c_impl_names_the_live_code() -> None:
    native = need_test_hooks(need_native())
    assert _pure.crc32c_impl() == ("python" if _pure._fast_crc is None else "google-crc32c")
    expected = _cpu_has_crc_instructions()
    if expected is None:
        assert native.crc32c_impl() == "portable"
    else:
        assert native.crc32c_impl() == expected
    previous = native.crc32c_force_portable(True)
    try:
        assert native.crc32c_impl() == "portable"
    finally:
        native.crc32c_force_portable(previous)
    assert native.crc32c_impl() == (expected or "portable")


def test_pure_crc32c_paths_match_the_bytewise_reference() -> None:
    """The word-table path and google-crc32c (when installed) against the byte loop, at
    every length around the 16-byte switch and 4-byte step, from any 32-bit crc."""
    rng = random.Random(13)
    paths = [_pure._crc32c_words] + ([] if _pure._fast_crc is None else
                                     [lambda d, c: _pure._fast_crc(c, d)])  # type: ignore[misc]
    for data, want in CRC_VECTORS:
        assert _pure._crc32c_bytewise(data) == want, data
        for path in paths:
            assert path(data, 0) == want, (path, data)
    for n in range(0, 70):
        data, seed = rng.randbytes(n), rng.randrange(1 << 32)
        want = _pure._crc32c_bytewise(data, seed)
        assert _pure.crc32c(data, seed) == want, n
        assert _pure.crc32c(memoryview(bytearray(data)), seed) == want, n
        for path in paths:
            assert path(data, seed) == want, (path, n)


@pytest.fixture(scope="module")
def crc_table_answers() -> tuple[bytes, dict[tuple[int, int], int]]:
    """The reference's CRC of every length 0..300 at every alignment 0..7 of one buffer."""
    data = random.Random(7).randbytes(320)
    return data, {
        (off, n): _pure.crc32c(data[off : off + n]) for off in range(8) for n in range(301)
    }


@pytest.mark.parametrize("forced", [False, True], ids=["live", "portable"])
def test_crc32c_every_length_and_alignment_matches_reference(
    forced: bool, crc_table_answers: tuple[bytes, dict[tuple[int, int], int]]
) -> None:
    native = need_test_hooks(need_native())
    data, answers = crc_table_answers
    view = memoryview(data)
    previous = native.crc32c_force_portable(forced)
    try:
        for (off, n), want in answers.items():
            # memoryview slices start at unaligned addresses; bytes take the no-copy path.
            assert native.crc32c(view[off : off + n]) == want, (off, n)
            assert native.crc32c(data[off : off + n]) == want, (off, n)
    finally:
        native.crc32c_force_portable(previous)


def test_crc32c_hardware_and_portable_agree_across_interleave_thresholds() -> None:
    native = need_test_hooks(need_native())
    data = random.Random(11).randbytes(3 * 2 * 8192 + 64)
    view = memoryview(data)
    sizes = [383, 384, 385, 767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 2 * 3 * 8192 + 7]
    live = {(off, n): native.crc32c(view[off : off + n]) for off in (0, 1, 5) for n in sizes}
    previous = native.crc32c_force_portable(True)
    try:
        portable = {key: native.crc32c(view[key[0] : key[0] + key[1]]) for key in live}
    finally:
        native.crc32c_force_portable(previous)
    assert live == portable
    # And the reference agrees on a few of them (it is slow on long inputs).
    for key in [(1, 385), (5, 3 * 8192 + 1)]:
        assert live[key] == _pure.crc32c(view[key[0] : key[0] + key[1]])


@PARITY
@given(a=st.binary(max_size=700), b=st.binary(max_size=700), seed=st.integers(0, 2**32 - 1))
def test_crc32c_chaining_matches_reference(a: bytes, b: bytes, seed: int) -> None:
    native = need_native()
    whole = _pure.crc32c(a + b)
    assert _pure.crc32c(b, _pure.crc32c(a)) == whole
    assert native.crc32c(b, native.crc32c(a)) == whole
    assert native.crc32c(a + b) == whole
    assert native.crc32c(b, seed) == _pure.crc32c(b, seed)  # any starting crc chains


def test_crc32c_accepts_every_byte_buffer_type() -> None:
    native = need_native()
    data = b"segmentlog" * 7
    want = _pure.crc32c(data)
    for buf in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        assert native.crc32c(buf) == want, type(buf)
    both("crc32c", memoryview(data)[::3])  # not contiguous: handed to the reference
    both("crc32c", "text")  # not bytes at all: the reference's TypeError


@pytest.mark.parametrize("crc", [-1, 1 << 32, (1 << 40) + 5])
def test_crc32c_out_of_range_start_matches_reference(crc: int) -> None:
    both("crc32c", b"abc", crc)
    both("crc32c", b"", crc)


# --- framing ----------------------------------------------------------------------------


def _pad(payloads: list[bytes]) -> int:
    return sum(frame_size(len(p)) for p in payloads)


payload_lists = st.lists(st.binary(max_size=90), max_size=10)
first_seqs = st.one_of(st.integers(0, 1000), st.integers(U64 - 12, U64 - 1))


@PARITY
@given(payloads=payload_lists, first_seq=first_seqs, pre=st.integers(0, 6), fill=st.binary())
def test_frame_batch_output_is_byte_identical(
    payloads: list[bytes], first_seq: int, pre: int, fill: bytes
) -> None:
    native = need_native()
    size = 8 * pre + _pad(payloads) + 16
    stale = ((fill or b"\xa5") * size)[:size]  # stale bytes: padding must be zeroed by both
    want_buf, got_buf = bytearray(stale), bytearray(stale)
    want = outcome(_pure.frame_batch_into, want_buf, 8 * pre, payloads, first_seq)
    got = outcome(native.frame_batch_into, got_buf, 8 * pre, payloads, first_seq)
    assert got == want
    assert got_buf == want_buf


@PARITY
@given(payloads=payload_lists, first_seq=first_seqs)
def test_frame_into_and_framer_write_what_frame_batch_writes(
    payloads: list[bytes], first_seq: int
) -> None:
    native = need_native()
    first_seq = min(first_seq, U64 - max(1, len(payloads)))  # every number fits 64 bits
    size = SEGMENT_HEADER_SIZE + _pad(payloads)
    want = bytearray(size)
    end = _pure.frame_batch_into(want, SEGMENT_HEADER_SIZE, payloads, first_seq)
    for impl in (_pure, native):
        one = bytearray(size)
        off = SEGMENT_HEADER_SIZE
        for i, p in enumerate(payloads):
            off = impl.frame_into(one, off, p, first_seq + i)
        assert (off, one) == (end, want)
        bound = bytearray(size)
        with impl.Framer(bound) as framer:
            off = SEGMENT_HEADER_SIZE
            for i, p in enumerate(payloads):
                off = framer.frame(off, p, first_seq + i)
            assert framer.frame_batch(SEGMENT_HEADER_SIZE, payloads, first_seq) == end
        assert (off, bound) == (end, want)


@PARITY
@given(lens=st.lists(st.one_of(st.integers(0, 5000), st.sampled_from(
    [0xFFFFFFFF, 0x100000000, U64 - 1])), max_size=20))
def test_frames_size_is_the_sum_of_frame_sizes_in_both(lens: list[int]) -> None:
    """What append_batch reserves for a batch: exactly the bytes framing writes, and a
    length past the format limit refused alike."""
    native = need_native()
    want = outcome(_pure.frames_size, lens)
    assert outcome(native.frames_size, array("Q", lens)) == want
    if want[0] == "ok":
        assert want[1] == sum(frame_size(n) for n in lens)
        payloads = [b"p" * n for n in lens if n <= 5000]
        if len(payloads) == len(lens):
            buf = bytearray(want[1])
            assert native.frame_batch_into(buf, 0, payloads, 0) == want[1]


@PARITY
@given(payloads=payload_lists, first_seq=first_seqs, pre=st.integers(0, 6),
       skew=st.sampled_from([0, 0, 1, -1]), room=st.integers(-16, 16))
def test_framer_frame_joined_writes_what_frame_batch_writes_or_refuses_alike(
    payloads: list[bytes], first_seq: int, pre: int, skew: int, room: int
) -> None:
    """append_batch's hot path (payloads joined, lengths in an array) against the list
    form: the same bytes when it fits; a negative result and not one byte written when
    the lengths do not add up to the bytes (skew) or the batch does not fit (room)."""
    native = need_native()
    off = 8 * pre
    size = max(0, off + _pad(payloads) + 8 * (room // 8))
    src = b"".join(payloads) + b"z" * max(skew, 0)
    if skew < 0:
        src = src[:-1]
    lens = array("Q", map(len, payloads))
    want_buf = bytearray(b"\xa5" * size)
    want = outcome(_pure.frame_batch_into, want_buf, off, payloads, first_seq)
    refused = len(src) != sum(lens) or want[0] == "raised"
    for impl in (_pure, native):
        buf = bytearray(b"\xa5" * size)
        with impl.Framer(buf) as framer:
            got = framer.frame_joined(off, src, lens, first_seq)
        if refused:
            assert got < 0
            assert buf == bytearray(b"\xa5" * size)
        else:
            assert (("ok", got), buf) == (want, want_buf)


@pytest.mark.parametrize(
    ("size", "off", "payload", "seq"),
    [
        (64, 4, b"x", 0),  # misaligned offset
        (64, 40, b"x" * 9, 0),  # does not fit
        (64, 64, b"", 0),  # no room left at all
        (64, 72, b"", 0),  # offset past the end
        (64, -8, b"x", 0),  # negative offset
        (64, 0, b"x", -1),  # sequence number below 0: struct.error, nothing written
        (64, 0, b"x", U64),  # sequence number past 2^64 - 1
        (64, 1 << 70, b"x", 0),  # offset past the C range
        (64, 0, bytearray(b"abc"), 5),  # bytearray payload
        (64, 0, memoryview(b"abcdefgh")[::2], 5),  # non-contiguous payload
        (64, 0, "text", 5),  # not bytes at all
    ],
)
def test_frame_into_errors_and_odd_arguments_match_reference(
    size: int, off: int, payload: Any, seq: int
) -> None:
    four_ways_agree("frame_into", "frame", size, off, payload, seq)


@pytest.mark.parametrize(
    ("size", "off", "payloads", "first_seq"),
    [
        (256, 3, [b"a"], 0),  # misaligned
        (64, 0, [b"a", b"b", b"c"], 0),  # does not fit
        (64, 72, [], 0),  # empty batch at an offset past the end
        (64, 64, [], -5),  # empty batch: the sequence number is never used
        (256, 0, [b"a", b"b", b"c"], U64 - 2),  # the third seq overflows: a partial write
        (256, 0, [b"a"], -1),
        (256, 0, [bytearray(b"a"), memoryview(b"bc"), b"d"], 9),  # mixed buffer types
        (256, 0, [b"a", 5], 9),  # not bytes
    ],
)
def test_frame_batch_errors_and_partial_writes_match_reference(
    size: int, off: int, payloads: list[Any], first_seq: int
) -> None:
    four_ways_agree("frame_batch_into", "frame_batch", size, off, payloads, first_seq)


class _HugeLen(bytes):
    """A payload that claims the format's size limit is exceeded (no 4 GiB allocation)."""

    def __len__(self) -> int:
        return (1 << 32) + 1


def test_payload_over_format_limit_is_refused_by_both_before_writing() -> None:
    native = need_native()
    for impl in (_pure, native):
        buf = bytearray(64)
        with pytest.raises(ValueError, match="exceeds the format limit"):
            impl.frame_into(buf, 0, _HugeLen(b"x"), 0)
        assert buf == bytearray(64)
    # The C core checks the length itself, before touching either buffer.
    from segmentlog._native import ffi, lib

    dst = ffi.new("char[]", 64)
    end = ffi.new("uint64_t *", 12345)  # an out-parameter is written only on SL_OK
    assert lib.sl_frame_one(dst, 64, 0, b"", 1 << 32, 0, end) == lib.SL_ERR_TOO_LARGE
    lens = ffi.new("uint64_t[]", [1, 1 << 32])
    assert lib.sl_frame_batch(dst, 64, 0, b"x", 1, lens, 2, 0, end) == lib.SL_ERR_TOO_LARGE
    assert lib.sl_frames_size(lens, 2, end) == lib.SL_ERR_TOO_LARGE
    assert bytes(ffi.buffer(dst)) == bytes(64) and end[0] == 12345
    assert ffi.string(lib.sl_strerror(lib.SL_ERR_TOO_LARGE)) == b"too_large"
    # Lengths that disagree with the bytes handed over: refused before any byte is read.
    ok = ffi.new("uint64_t[]", [1, 2])
    assert lib.sl_frame_batch(dst, 64, 0, b"xy", 2, ok, 2, 0, end) == lib.SL_ERR_ARG
    assert bytes(ffi.buffer(dst)) == bytes(64) and end[0] == 12345
    assert lib.sl_frame_batch(dst, 64, 0, b"xyz", 3, ok, 2, 0, end) == lib.SL_OK
    assert end[0] == 64


class _LyingLen(bytes):
    """A bytes subclass whose len() is not its size: the C core must never trust it."""

    def __len__(self) -> int:
        return 40


def test_bytes_subclass_with_lying_len_never_reaches_c_and_matches_reference() -> None:
    native = need_native()
    payload = _LyingLen(b"xy")
    for fn in ("frame_into", "frame_batch_into"):
        arg: Any = payload if fn == "frame_into" else [payload]
        bufs = [bytearray(128), bytearray(128)]
        want = outcome(getattr(_pure, fn), bufs[0], 0, arg, 0)
        assert outcome(getattr(native, fn), bufs[1], 0, arg, 0) == want
        assert bufs[0] == bufs[1]
    framed = [bytearray(128), bytearray(128)]
    want = outcome(_pure.Framer(framed[0]).frame, 0, payload, 0)
    assert outcome(native.Framer(framed[1]).frame, 0, payload, 0) == want
    assert framed[0] == framed[1]
    both("crc32c", payload)


def test_c_error_codes_all_have_names() -> None:
    need_native()
    from segmentlog._native import ffi, lib

    codes = [lib.SL_OK, lib.SL_NOT_FOUND, lib.SL_NOT_DURABLE, lib.SL_ERR_ARG]
    codes += [lib.SL_ERR_TOO_LARGE, lib.SL_ERR_ALIGN, lib.SL_ERR_NO_SPACE, lib.SL_ERR_SEQ]
    codes += [lib.SL_ERR_CLOSED]
    names = [ffi.string(lib.sl_strerror(code)).decode() for code in codes]
    assert "unknown" not in names and len(set(names)) == len(codes)
    assert ffi.string(lib.sl_strerror(-99)) == b"unknown"


def test_c_results_come_through_out_parameters_written_only_on_success() -> None:
    """The ABI rule of csrc/segmentlog.h: a status code, results in out-parameters, and
    nothing written to them unless the status says so."""
    native = need_native()
    ffi, lib = native.ffi, native.lib
    dst = ffi.new("char[]", 64)
    out = ffi.new("uint64_t[2]", [7, 7])
    assert lib.sl_frame_one(dst, 64, 4, b"x", 1, 0, out) == lib.SL_ERR_ALIGN
    assert lib.sl_frame_one(dst, 16, 0, b"x", 1, 0, out) == lib.SL_ERR_NO_SPACE
    assert list(out) == [7, 7]
    assert lib.sl_frame_one(dst, 64, 8, b"x", 1, 3, out) == lib.SL_OK
    assert out[0] == 8 + frame_size(1)
    assert lib.sl_frames_size(ffi.new("uint64_t[]", [0, 5]), 2, out) == lib.SL_OK
    assert out[0] == frame_size(0) + frame_size(5)
    # sl_resync: SL_OK with where and which, or SL_NOT_FOUND (an answer, not an error).
    frames = bytes(ffi.buffer(dst))
    out[0] = out[1] = 7
    assert lib.sl_resync(frames, 64, 0, 3, 10, out, out + 1) == lib.SL_OK
    assert list(out) == [8, 3]
    out[0] = out[1] = 7
    assert lib.sl_resync(frames, 64, 0, 4, 10, out, out + 1) == lib.SL_NOT_FOUND
    assert lib.sl_resync(bytes(64), 64, 0, 0, 10, out, out + 1) == lib.SL_NOT_FOUND
    assert list(out) == [7, 7]
    assert lib.sl_resync(frames, 64, 0, 0, 10, ffi.NULL, out) == lib.SL_ERR_ARG


# --- the append cursor (csrc/cursor.c) ----------------------------------------------------


@PARITY
@given(payloads=payload_lists, first_seq=st.integers(0, (1 << 63) - 200), pre=st.integers(0, 6),
       window_slack=st.integers(-40, 40))
def test_cursor_appends_what_frame_batch_writes_and_refuses_at_its_window_alike(
    payloads: list[bytes], first_seq: int, pre: int, window_slack: int
) -> None:
    """Both cursors frame appended records exactly as frame_batch would, hand out
    consecutive sequence numbers, and refuse the first record that would pass the window
    (nothing written); close() reports where they stopped."""
    native = need_native()
    off = pre * 8
    total = sum(frame_size(len(p)) for p in payloads)
    window = max(0, off + total + window_slack)
    size = off + total + 64
    reference = bytearray(b"\x77" * size)
    _pure.frame_batch_into(reference, off, payloads, first_seq)
    outcomes = []
    for impl in (_pure, native):
        buf = bytearray(b"\x77" * size)
        framer, cursor = impl.Framer(buf), impl.Cursor()
        assert cursor.open(framer, off, first_seq, window)
        got, end = [], off
        for p in payloads:
            seq = cursor.append(p, len(p))
            if seq < 0:
                assert seq == -6  # SL_ERR_CLOSED: it would pass the window
                assert end + frame_size(len(p)) > window
                break
            got.append(seq)
            end += frame_size(len(p))
        assert got == list(range(first_seq, first_seq + len(got)))
        assert cursor.close() == (end, first_seq + len(got))
        assert buf[:end] == reference[:end] and buf[end:] == b"\x77" * (size - end)
        framer.release()
        outcomes.append((got, bytes(buf)))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("name", ["pure", "native"])
def test_cursor_refuses_while_closed_and_past_2_63(name: str) -> None:
    impl = backend(name)
    buf = bytearray(4096)
    framer, cursor = impl.Framer(buf), impl.Cursor()
    assert cursor.append(b"x", 1) < 0  # new: closed
    assert cursor.open(framer, 32, 5, 4096)
    assert cursor.append(b"x", 1) == 5
    assert cursor.close() == (32 + frame_size(1), 6)
    assert cursor.append(b"y", 1) < 0  # closed again: nothing written
    assert buf[32 + frame_size(1):] == bytes(4096 - 32 - frame_size(1))
    # Past the last sequence number a cursor hands out (SL_APPEND_MAX_SEQ): it stays closed.
    assert not cursor.open(framer, 64, 1 << 63, 4096)
    assert cursor.append(b"z", 1) < 0
    framer.release()


def test_cursor_hands_out_the_last_sequence_number_then_refuses_with_seq() -> None:
    """The binding's adapter (segmentlog/_build_native.py GLUE) answers as
    sl_cursor_append: the sequence number, or the status when refused; the last number
    is SL_APPEND_MAX_SEQ, then SL_ERR_SEQ with nothing written."""
    native = need_native()
    lib = native.lib
    top = lib.SL_APPEND_MAX_SEQ
    assert top == (1 << 63) - 1
    buf = bytearray(4096)
    framer, cursor = native.Framer(buf), native.Cursor()
    assert cursor.open(framer, 0, top, 4096)
    assert cursor.append(b"last", 4) == top
    assert cursor.append(b"past", 4) == lib.SL_ERR_SEQ
    assert cursor.close() == (frame_size(4), top + 1)
    assert buf[frame_size(4):] == bytes(4096 - frame_size(4))
    seq = native.ffi.new("uint64_t *", 7)
    c = lib.sl_cursor_new()
    try:
        assert lib.sl_cursor_append(c, b"x", 1, seq) == lib.SL_ERR_CLOSED  # new: closed
        assert lib.slpy_cursor_append(c, b"x", 1) == lib.SL_ERR_CLOSED
        assert seq[0] == 7
    finally:
        lib.sl_cursor_free(c)
    framer.release()


def test_cursor_window_beyond_the_buffer_is_capped_at_its_end() -> None:
    native = need_native()
    buf = bytearray(64)
    framer, cursor = native.Framer(buf), native.Cursor()
    assert cursor.open(framer, 0, 0, 1 << 40)  # a window past the map never writes past it
    assert cursor.append(b"a" * 16, 16) == 0
    assert cursor.append(b"b" * 16, 16) < 0  # 40 + 40 > 64
    assert cursor.close() == (40, 1)
    framer.release()


def test_cursor_frames_every_record_once_under_threads_racing_close() -> None:
    """Four threads append through one native cursor (the GIL is released in the call)
    while another closes and reopens it, as the log's lock does: every record that got a
    sequence number is in the buffer once, in sequence order, with a sound checksum."""
    import threading

    native = need_native()
    size = 1 << 22
    buf = bytearray(size)
    framer, cursor = native.Framer(buf), native.Cursor()
    cursor.open(framer, 0, 0, size)
    done = threading.Event()
    got: list[list[tuple[int, bytes]]] = [[] for _ in range(4)]

    def appender(i: int) -> None:
        for n in range(3000):
            p = f"t{i}-{n}".encode()
            seq = cursor.append(p, len(p))
            if seq >= 0:
                got[i].append((seq, p))

    def toggler() -> None:
        while not done.is_set():
            off, seq = cursor.close()
            cursor.open(framer, off, seq, size)

    workers = [threading.Thread(target=appender, args=(i,)) for i in range(4)]
    flip = threading.Thread(target=toggler)
    flip.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    done.set()
    flip.join(60)
    end, next_seq = cursor.close()
    accepted = sorted(x for g in got for x in g)
    assert [s for s, _ in accepted] == list(range(next_seq))
    scan = native.scan(buf, 0, size, 0, next_seq + 1)
    assert (scan.count, scan.end, scan.status) == (next_seq, end, SCAN_ZERO)
    framed = zip(scan.offsets, scan.lengths, strict=True)
    assert [bytes(buf[o : o + n]) for o, n in framed] == [p for _, p in accepted]
    framer.release()


@pytest.mark.parametrize("name", ["pure", "native"])
def test_framer_release_lets_the_map_close_and_later_use_raises(name: str) -> None:
    impl = backend(name)
    mm = mmap.mmap(-1, 4096)
    framer = impl.Framer(mm)
    scanner = impl.Scanner(mm)
    end = framer.frame(32, b"hello", 0)
    assert scanner.scan(32, 4096, 0, 10).count == 1
    framer.release()
    scanner.release()
    framer.release()  # idempotent
    mm.close()  # a native pointer still exported would make this a BufferError
    with pytest.raises(ValueError, match="after release"):
        framer.frame(end, b"x", 1)
    with pytest.raises(ValueError, match="after release"):
        framer.frame_batch(end, [b"x"], 1)
    with pytest.raises(ValueError, match="after release"):
        scanner.scan(32, 4096, 0, 10)
    with pytest.raises(ValueError, match="after release"):
        scanner.resync(32, 4096, 0, 10)


def test_framer_on_a_read_only_buffer_fails_like_the_reference() -> None:
    native = need_native()
    for off in (0, 3):
        want = outcome(_pure.Framer(bytes(64)).frame, off, b"x", 0)
        assert outcome(native.Framer(bytes(64)).frame, off, b"x", 0) == want
        assert want[0] == "raised"


# --- scanning and resync ----------------------------------------------------------------

DAMAGE = ["flip", "zero", "garbage", "truncate", "stale", "marker", "reseal"]


def _reseal(buf: bytearray, pos: int) -> None:
    """Recompute the CRC of a frame-looking header at ``pos`` (so a length, seq or flags
    change is tested apart from the checksum), if its length fits the buffer."""
    if pos + FRAME_HEADER_SIZE > len(buf):
        return
    length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
    if pos + FRAME_HEADER_SIZE + length > len(buf):
        return
    crc = _pure.crc32c(buf[pos + FRAME_HEADER_SIZE : pos + FRAME_HEADER_SIZE + length],
                       _pure.crc32c(buf[pos : pos + 20]))  # fmt: skip
    buf[pos + 20 : pos + 24] = crc.to_bytes(4, "little")


@st.composite
def damaged_segments(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """(buffer, first_seq, frames): frames as the log writes them, then damaged."""
    payloads = draw(st.lists(st.binary(max_size=80), max_size=12))
    first = draw(st.one_of(st.integers(0, 50), st.integers(U64 - 14, U64 - 1)))
    first = min(first, U64 - max(1, len(payloads)))
    buf = bytearray(SEGMENT_HEADER_SIZE + _pad(payloads) + draw(st.integers(0, 40)))
    _pure.frame_batch_into(buf, SEGMENT_HEADER_SIZE, payloads, first)
    for kind in draw(st.lists(st.sampled_from(DAMAGE), max_size=4)):
        if not buf:
            break
        at = draw(st.integers(0, len(buf) - 1))
        aligned = at & ~7
        if kind == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "zero":
            span = draw(st.integers(1, 64))
            buf[at : at + span] = bytes(len(buf[at : at + span]))
        elif kind == "garbage":
            junk = draw(st.binary(min_size=1, max_size=32))
            buf[at : at + len(junk)] = junk[: len(buf) - at]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "stale":  # an old copy of some frame further on (a recycled segment)
            src = draw(st.integers(0, len(buf) - 1)) & ~7
            span = draw(st.integers(8, 120))
            chunk = buf[src : src + span]
            buf[aligned : aligned + len(chunk)] = chunk[: len(buf) - aligned]
        elif kind == "marker":
            buf[aligned : aligned + 4] = MARKER[: len(buf) - aligned]
        else:  # "reseal": change a header field, then make its checksum right again
            field = draw(st.sampled_from([(4, 4), (8, 8), (16, 4)]))
            value = draw(st.integers(0, 2 ** (8 * field[1]) - 1))
            if aligned + 24 <= len(buf):
                buf[aligned + field[0] : aligned + sum(field)] = value.to_bytes(field[1], "little")
                _reseal(buf, aligned)
    return bytes(buf), first, len(payloads)


offsets_ = st.one_of(st.just(SEGMENT_HEADER_SIZE), st.integers(0, 600).map(lambda n: n & ~7),
                     st.integers(0, 600))  # fmt: skip
max_bytes_ = st.one_of(st.none(), st.integers(-2, 400), st.just(U64 + 5))


@PARITY
@given(
    seg=damaged_segments(),
    off=offsets_,
    end_cut=st.integers(0, 40),
    seq_shift=st.sampled_from([0, 0, 0, 1, -1, 3]),
    max_records=st.one_of(st.integers(-1, 14), st.just(10**30)),
    max_bytes=max_bytes_,
)
def test_scan_damaged_segments_matches_reference(
    seg: tuple[bytes, int, int],
    off: int,
    end_cut: int,
    seq_shift: int,
    max_records: int,
    max_bytes: int | None,
) -> None:
    buf, first, _ = seg
    for end in (len(buf), len(buf) - end_cut, len(buf) + 100):
        both("scan", buf, off, end, first + seq_shift, max_records, max_bytes)
    both("scan", bytearray(buf), off, len(buf), first, max_records, max_bytes)


@PARITY
@given(
    seg=damaged_segments(),
    off=offsets_,
    end_cut=st.integers(0, 40),
    window=st.sampled_from([(0, U64 - 1), (1, 3), (-5, U64 * 2), (U64 - 20, U64 - 1), (9, 2)]),
)
def test_resync_damaged_segments_matches_reference(
    seg: tuple[bytes, int, int], off: int, end_cut: int, window: tuple[int, int]
) -> None:
    buf, first, _ = seg
    lo, hi = window
    for end in (len(buf), len(buf) - end_cut):
        both("resync", buf, off, end, lo, hi)
        both("resync", buf, off, end, first + 1, first + 5)


def test_scan_and_resync_random_bytes_fuzz_matches_reference() -> None:
    native = need_native()
    rng = random.Random(2024)
    for i in range(300):
        size = rng.randrange(0, 300)
        buf = bytearray(rng.randbytes(size))
        if i % 3 == 0:  # sprinkle markers at aligned offsets so frames are attempted
            for pos in range(0, size - 3, 8):
                if rng.random() < 0.5:
                    buf[pos : pos + 4] = MARKER
        if i % 5 == 0 and size >= 24:  # and some zero runs
            at = rng.randrange(size)
            buf[at:] = bytes(size - at)
        data = bytes(buf)
        seq = int.from_bytes(data[8:16], "little") if size >= 16 else 0
        for off in (0, 8, rng.randrange(0, size + 1)):
            for mb in (None, 0, rng.randrange(0, 64)):
                want = outcome(_pure.scan, data, off, size, seq, 50, mb)
                assert outcome(native.scan, data, off, size, seq, 50, mb) == want
            want = outcome(_pure.resync, data, off, size, 0, U64 - 1)
            assert outcome(native.resync, data, off, size, 0, U64 - 1) == want


def _segment(payloads: list[bytes], first: int, slack: int = 0) -> bytearray:
    buf = bytearray(SEGMENT_HEADER_SIZE + _pad(payloads) + slack)
    _pure.frame_batch_into(buf, SEGMENT_HEADER_SIZE, payloads, first)
    return buf


def test_scan_stops_after_sequence_number_2_64_minus_1() -> None:
    buf = _segment([b"a", b"b"], U64 - 2)
    buf += _segment([b"c"], 0)[SEGMENT_HEADER_SIZE:]  # a sound frame whose seq wrapped to 0
    r = both("scan", bytes(buf), 32, len(buf), U64 - 2, 10)
    assert r[1:6] == (32 + 2 * 32, U64, 2, 2, SCAN_BAD_SEQ)  # end, next_seq, count, ...


@pytest.mark.parametrize("expected", [U64, U64 + 7, -1])
def test_scan_expected_seq_no_frame_can_carry_matches_reference(expected: int) -> None:
    sound = bytes(_segment([b"abc"], 0, slack=8))
    r = both("scan", sound, 32, len(sound), expected, 5)
    assert r[5] == SCAN_BAD_SEQ
    damaged = bytearray(sound)
    damaged[32 + 24] ^= 1
    r = both("scan", bytes(damaged), 32, len(damaged), expected, 5)
    assert r[5] == SCAN_BAD_CRC
    r = both("scan", sound, 32 + 32, len(sound), expected, 5)  # at the zero tail
    assert r[5] == SCAN_ZERO


@pytest.mark.parametrize("tail", [bytes(8), b"\x01" + bytes(7), MARKER + bytes(4)])
def test_scan_first_frame_over_max_bytes_then_short_tail(tail: bytes) -> None:
    # One frame takes the first chunk of the native scan (room for exactly one), so the
    # over-limit stop happens across the chunk boundary; the tail's status must still win.
    buf = bytes(_segment([b"x"], 0)) + tail
    for mb in (0, -1):
        both("scan", buf, 32, len(buf), 0, 5, mb)
    buf = bytes(_segment([b"x", b""], 0))
    r = both("scan", buf, 32, len(buf), 0, 5, 0)
    assert r[3] == 1  # a zero-length frame after the over-limit first frame is not taken
    buf = bytes(_segment([b"", b"", b""], 0))
    r = both("scan", buf, 32, len(buf), 0, 5, -1)
    assert r[3] == 1  # a negative limit: every frame after the first exceeds it
    r = both("scan", buf, 32, len(buf), 0, 5, 0)
    assert r[3] == 3  # zero-length frames never exceed a limit of 0


def test_scan_more_frames_than_the_first_native_chunk_matches_reference() -> None:
    native = need_native()
    from segmentlog._nativebackend import _FIRST_CHUNK

    n = _FIRST_CHUNK + 3000
    buf = bytes(_segment([bytes([i & 0xFF]) for i in range(n)], 5, slack=40))
    pure_all = _pure.scan(buf, 32, len(buf), 5, 10**9)
    got = native.scan(buf, 32, len(buf), 5, 10**9)
    assert got[:5] == pure_all[:5] == (32 + 32 * n, 5 + n, n, n, SCAN_ZERO)
    assert list(got.offsets) == pure_all.offsets and list(got.lengths) == pure_all.lengths
    # Stops in the second chunk: by max_records, by max_bytes, by damage.
    # _FIRST_CHUNK bytes: the limit is reached exactly at the chunk boundary.
    for args in [(n - 5, None), (n, _FIRST_CHUNK + 10), (n, _FIRST_CHUNK), (n, 0), (3, None)]:
        assert outcome(native.scan, buf, 32, len(buf), 5, *args) == outcome(
            _pure.scan, buf, 32, len(buf), 5, *args
        )
    damaged = bytearray(buf)
    damaged[32 + 32 * (_FIRST_CHUNK + 7) + 24] ^= 0x10
    r = both("scan", bytes(damaged), 32, len(damaged), 5, 10**9)
    assert r[3:6] == (_FIRST_CHUNK + 7, _FIRST_CHUNK + 7, SCAN_BAD_CRC)


def test_scan_reports_each_reader_branch_like_the_reference() -> None:
    base = _segment([b"hello"], 3, slack=32)
    cases: dict[int, bytearray] = {}
    cases[SCAN_ZERO] = base
    cases[SCAN_TRUNCATED] = base[: 32 + 20]
    bad_marker = bytearray(base)
    bad_marker[32] ^= 0xFF
    cases[SCAN_BAD_MARKER] = bad_marker
    bad_crc = bytearray(base)
    bad_crc[32 + 24] ^= 1
    cases[SCAN_BAD_CRC] = bad_crc
    bad_flags = bytearray(base)
    bad_flags[32 + 16] = 1
    _reseal(bad_flags, 32)
    cases[SCAN_BAD_FLAGS] = bad_flags
    bad_seq = bytearray(base)
    bad_seq[32 + 8] = 9
    _reseal(bad_seq, 32)
    cases[SCAN_BAD_SEQ] = bad_seq
    long_len = bytearray(base)
    long_len[32 + 4 : 32 + 8] = (10**6).to_bytes(4, "little")  # length past the end
    for status, buf in [*cases.items(), (SCAN_TRUNCATED, long_len)]:
        r = both("scan", bytes(buf), 32, len(buf), 3, 10)
        assert r[5] == status, buf
    r = both("scan", bytes(base), 32, 32 + 32, 3, 10)
    assert (r[3], r[5]) == (1, SCAN_OK)  # stopped exactly at the end given


@pytest.mark.parametrize(
    ("off", "end"), [(0, 10**9), (500, 600), (64, 40), (-8, 200), (-3, 200), (5, 200), (33, 33)]
)
def test_scan_and_resync_offset_edges_match_reference(off: int, end: int) -> None:
    buf = bytes(_segment([b"abc", b"defgh"], 0, slack=24))
    both("scan", buf, off, end, 0, 10)
    both("resync", buf, off, end, 0, 10)
    both("resync", buf, off, end, 1, 1)


def test_resync_finds_the_next_sound_frame_after_damage() -> None:
    buf = _segment([b"a" * 30, b"b" * 30, b"c" * 30], 10, slack=16)
    buf[32 + 4] ^= 0x40  # a damaged length: never trusted
    assert both("resync", bytes(buf), 32, len(buf), 11, 100) == ("ok", (32 + 56, 11))
    assert both("resync", bytes(buf), 33, len(buf), 12, 100) == ("ok", (32 + 112, 12))
    assert both("resync", bytes(buf), 32, len(buf), 13, 100) == ("ok", None)


@pytest.mark.parametrize("name", ["pure", "native"])
def test_scanner_matches_module_functions(name: str) -> None:
    impl = backend(name)
    buf = bytes(_segment([b"a", b"bb", b"ccc"], 4, slack=8))
    with impl.Scanner(buf) as scanner:
        for args in [(32, len(buf), 4, 10), (32, len(buf), 4, 2), (-8, len(buf), 4, 10)]:
            assert outcome(scanner.scan, *args) == outcome(_pure.scan, buf, *args)
            assert outcome(scanner.scan, *args, 1) == outcome(_pure.scan, buf, *args, 1)
        assert scanner.resync(33, len(buf), 5, 6) == _pure.resync(buf, 33, len(buf), 5, 6)


def test_scan_offsets_are_arrays_of_the_accepted_frames() -> None:
    native = need_native()
    buf = bytes(_segment([b"a", b"", b"xyz"], 0))
    r = native.scan(buf, 32, len(buf), 0, 10)
    assert (list(r.offsets), list(r.lengths)) == ([56, 88, 112], [1, 0, 3])
    assert [buf[o : o + n] for o, n in zip(r.offsets, r.lengths, strict=True)] == [
        b"a",
        b"",
        b"xyz",
    ]


def test_struct_error_of_reference_is_what_native_raises_for_bad_seq() -> None:
    native = need_native()
    with pytest.raises(struct.error):
        native.frame_into(bytearray(64), 0, b"x", -1)


# -- payloads: the bytes objects of a batch -------------------------------------------------


@st.composite
def payload_spans(draw: Any) -> tuple[bytes, list[int], list[int]]:
    """A buffer and ascending, non-overlapping (offset, length) spans inside it: gaps of
    0 or more bytes, empty payloads, and counts on both sides of the struct threshold."""
    spans: list[tuple[int, int]] = []
    pos = draw(st.integers(0, 40))
    for _ in range(draw(st.integers(0, 40))):
        pos += draw(st.sampled_from([0, 0, 1, 7, 24, 300]))
        n = draw(st.sampled_from([0, 1, 8, 63, 514, 1000]))
        spans.append((pos, n))
        pos += n
    buf = random.Random(pos).randbytes(pos + draw(st.integers(0, 9)))
    return buf, [o for o, _ in spans], [n for _, n in spans]


@PARITY
@given(payload_spans())
def test_payloads_parity(case: tuple[bytes, list[int], list[int]]) -> None:
    buf, offsets, lengths = case
    native = need_native()
    want = [buf[o : o + n] for o, n in zip(offsets, lengths, strict=True)]
    for mod in (_pure, native):
        for offs, lens in ((offsets, lengths), (array("Q", offsets), array("Q", lengths))):
            got = mod.payloads(buf, offs, lens)
            assert list(got) == want
            assert all(type(p) is bytes for p in got)
            mm = mmap.mmap(-1, max(len(buf), 1))
            mm[: len(buf)] = buf
            assert list(mod.payloads(mm, offs, lens)) == want
            mm.close()


@pytest.mark.parametrize("count", [3, 20])  # both sides of the struct threshold
def test_payloads_refuse_spans_out_of_order_or_past_the_end(count: int) -> None:
    native = need_native()
    buf = bytes(range(256)) * 40
    offsets = [i * 100 for i in range(count)]
    lengths = [50] * count
    bad_cases = [
        ([*offsets[:-1], offsets[-2] + 10], lengths),  # overlaps the payload before
        ([*offsets[:-1], len(buf) - 10], lengths),  # runs past the end of the buffer
        (list(reversed(offsets)), lengths),  # descending
    ]
    for mod in (_pure, native):
        assert list(mod.payloads(buf, offsets, lengths)) == [
            buf[o : o + 50] for o in offsets]
        for offs, lens in bad_cases:
            with pytest.raises(ValueError, match="offsets must ascend"):
                mod.payloads(buf, offs, lens)


def test_unpack_format_known_answer() -> None:
    native = need_native()
    ffi, lib = native.ffi, native.lib
    offs = ffi.new("uint64_t[]", [24, 80, 80, 104])
    lens = ffi.new("uint64_t[]", [10, 0, 0, 514])
    out = ffi.new("char[]", 2 + 42 * 4)
    written = ffi.new("uint64_t *")
    assert lib.sl_unpack_format(offs, lens, 4, out, 2 + 42 * 4, written) == lib.SL_OK
    n = written[0]
    assert ffi.buffer(out, n)[:] == b"<10s46x0s0s24x514s"
    assert struct.calcsize(ffi.buffer(out, n)[:]) == 104 + 514 - 24
    assert lib.sl_unpack_format(offs, lens, 4, out, 5, written) == lib.SL_ERR_NO_SPACE
    assert lib.sl_unpack_format(ffi.NULL, lens, 4, out, 100, written) == lib.SL_ERR_ARG
    assert written[0] == n  # untouched by the refusals
    assert lib.sl_unpack_format(offs, lens, 0, out, 2, written) == lib.SL_OK
    assert written[0] == 1  # just "<"


# ---------------------------------------------------------------------- group committer


def _no_settling(seq: int) -> None:
    raise AssertionError(f"record {seq} was sent to settle, but every append here is durable")


@pytest.fixture()
def segment_file(tmp_path: Any) -> Iterator[int]:
    """A descriptor of a 64 KiB file of 0xFF bytes (old bytes, as in a recycled segment)."""
    fd = os.open(tmp_path / "segment", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"\xff" * 65536)
    try:
        yield fd
    finally:
        os.close(fd)


def test_committer_writes_frames_and_zero_mark_and_reports_its_state(segment_file: int) -> None:
    """Known answer: two durable appends through the committer leave exactly the frames the
    reference writes, then 8 zero bytes (the marker a recycled segment needs), in the
    file at the offset given; close reports where the file ends, the next and the durable
    sequence numbers, one fdatasync per append (alone, no gathering) and no error."""
    native = need_native()
    committer = native.new_committer(_no_settling)
    assert committer is not None  # POSIX: there is one
    group = native.Framer(bytearray(4096))
    assert committer.open(segment_file, group, 32, 65536, 7, 7, 1, True, 100_000)
    assert committer.append(b"first", 5) == 7
    assert committer.append(b"", 0) == 8
    expected = bytearray(64)
    end = _pure.frame_into(expected, 0, b"first", 7)
    end = _pure.frame_into(expected, end, b"", 8)
    assert committer.close() == (32 + end, 9, 9, 2, 0)
    on_disk = os.pread(segment_file, end + 16, 32)
    assert on_disk == bytes(expected[:end]) + bytes(8) + b"\xff" * 8
    assert committer.append(b"closed", 6) == native.lib.SL_ERR_CLOSED  # nothing written
    assert os.pread(segment_file, 8, 32 + end) == bytes(8)
    group.release()


def test_committer_refuses_what_does_not_fit_and_sequence_numbers_past_its_range(
    segment_file: int,
) -> None:
    native = need_native()
    committer = native.new_committer(_no_settling)
    group = native.Framer(bytearray(256))
    closed = native.lib.SL_ERR_CLOSED
    assert committer.open(segment_file, group, 0, 128, 0, 0, 1, False, 0)
    assert committer.append(b"x" * 105, 105) == closed  # a 136-byte frame: past 128
    assert committer.append(b"x" * 80, 80) == 0  # 104 bytes: fits
    assert committer.append(b"y", 1) == closed  # 104 + 32 > 128
    assert committer.close() == (104, 1, 1, 1, 0)
    assert committer.open(segment_file, group, 0, 65536, 1, 1, 1, False, 0)
    assert committer.append(b"z" * 300, 300) == closed  # past the 256-byte group buffer
    committer.close()
    top = native.lib.SL_APPEND_MAX_SEQ
    assert committer.open(segment_file, group, 0, 65536, top, top, 2, False, 0)
    assert committer.append(b"last", 4) == top  # the last one it hands out
    assert committer.append(b"past", 4) == native.lib.SL_ERR_SEQ
    assert committer.close()[1:3] == (top + 1, top + 1)
    assert not committer.open(segment_file, group, 0, 65536, top + 1, top + 1, 3, False, 0)
    group.release()


def test_committer_fsync_failure_settles_the_append_and_is_sticky(segment_file: int) -> None:
    """An append the committer could not see durable (SL_NOT_DURABLE) goes to the
    owner's settle with its sequence number, then returns that number."""
    native = need_test_hooks(need_native())
    settled: list[int] = []
    committer = native.new_committer(settled.append)
    group = native.Framer(bytearray(4096))
    assert committer.open(segment_file, group, 0, 65536, 0, 0, 1, False, 0)
    assert committer.append(b"ok", 2) == 0
    assert settled == []
    committer.fail_next_fsync(5)  # EIO
    assert committer.append(b"lost?", 5) == 1  # appended as 1, not durable: settled
    assert settled == [1]
    assert committer.append(b"after", 5) == native.lib.SL_ERR_CLOSED  # refused
    assert settled == [1]
    off, next_seq, durable_next, rounds, err = committer.close()
    assert (off, next_seq, durable_next, rounds, err) == (64, 2, 1, 2, 5)  # both in the file
    group.release()


def test_committer_hook_is_refused_clearly_without_the_test_build() -> None:
    native = need_native()
    if native.TEST_HOOKS:
        pytest.skip("this C core is the test build: its hooks are there")
    committer = native.new_committer(_no_settling)
    with pytest.raises(RuntimeError, match="SEGMENTLOG_STRICT_BUILD=1"):
        committer.fail_next_fsync(5)
    with pytest.raises(RuntimeError, match="test hook"):
        native.crc32c_force_portable(True)
