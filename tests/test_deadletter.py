"""A damaged dead-letter file never stops the log, and the tools report and wrap it.

The dead-letter file is a report, not state the log needs (FORMAT.md, "Dead-letter
file"): every line that is not a sound entry (not JSON, not an object, or an object whose
``segment``/``offset``/sequence fields have the wrong type or range) is damage that
``verify`` reports as ``deadletter_bad_line``, ``repair`` wraps keeping its bytes, and
every parser skips for its key purposes, never raising.
"""

from __future__ import annotations

import base64
import os

import pytest
from logtools import flip_bit, frames, segment_files
from test_cli import N, damage, deadletters, logcopy, pristine, readable, repair_then_verify, verify

from segmentlog import SegmentLog, deadletter

__all__ = ["logcopy", "pristine"]  # fixtures shared with test_cli

SEG0 = "00000000000000000000.seg"

BAD_LINES = {
    "offset_string": b'{"segment": "%s", "offset": "64", "kind": "bad_crc"}' % SEG0.encode(),
    "offset_absent": b'{"segment": "%s", "kind": "bad_crc"}' % SEG0.encode(),
    "offset_negative": b'{"segment": "%s", "offset": -64, "kind": "bad_crc"}' % SEG0.encode(),
    "offset_huge_float": b'{"segment": "%s", "offset": 1e30}' % SEG0.encode(),
    "offset_2_to_64": b'{"segment": "%s", "offset": 18446744073709551616}' % SEG0.encode(),
    "offset_bool": b'{"segment": "%s", "offset": true}' % SEG0.encode(),
    "offset_null": b'{"segment": "%s", "offset": null}' % SEG0.encode(),
    "offset_list": b'{"segment": "%s", "offset": [64]}' % SEG0.encode(),
    "gap_key_not_matching": b'{"segment": "%s", "offset": -7, "kind": "missing_records", '
                            b'"first_missing_seq": 9, "resume_seq": 12}' % SEG0.encode(),
    "segment_int": b'{"segment": 5, "offset": 64}',
    "segment_null": b'{"segment": null, "offset": 64}',
    "seq_string": b'{"segment": "%s", "offset": 64, "first_missing_seq": "3", '
                  b'"resume_seq": 4}' % SEG0.encode(),
    "seq_bool": b'{"segment": "%s", "offset": 64, "first_missing_seq": false, '
                b'"resume_seq": true}' % SEG0.encode(),
    "seq_reversed": b'{"segment": "%s", "offset": 64, "first_missing_seq": 9, '
                    b'"resume_seq": 3}' % SEG0.encode(),
    "list": b"[1, 2, 3]",
    "string": b'"just a string"',
    "number": b"42",
    "null": b"null",
    "binary": b"\x00\xff\xfe\x80 not json at all \x01",
    "deep_nesting": b"[" * 5000 + b"]" * 5000,
    "huge_object": b'{"segment": "%s", "pad": "%s"}' % (SEG0.encode(), b"a" * (4 << 20)),
    "huge_junk": b"\xfe" * (4 << 20),
}


def add_line(directory: str, line: bytes) -> int:
    """Append ``line`` (and a newline) to the dead-letter file; its byte offset."""
    path = deadletter.path_of(directory)
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    with open(path, "ab") as f:
        f.write(line + b"\n")
    return offset


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_deadletter_line_never_stops_the_log_and_is_reported_and_wrapped(
        capsys: pytest.CaptureFixture[str], logcopy: str, case: str) -> None:
    line = BAD_LINES[case]
    at = add_line(logcopy, line)
    assert deadletter.known_keys(logcopy) == set()  # skipped for key purposes, no raise
    assert readable(logcopy) == list(range(N))  # the log opens and reads every record
    rc, report = verify(capsys, logcopy)
    assert rc == 1
    (bad,) = damage(report)
    assert (bad["kind"], bad["segment"], bad["offset"]) == (
        "deadletter_bad_line", "deadletter.jsonl", at)
    repair_then_verify(capsys, logcopy, set())
    wrapped = [e for e in deadletters(logcopy) if e["kind"] == "deadletter_bad_line"]
    assert [base64.b64decode(e["raw_base64"]) for e in wrapped] == [line + b"\n"]


def test_bad_offset_beside_real_damage_is_repaired_without_a_traceback(
        capsys: pytest.CaptureFixture[str], logcopy: str) -> None:
    """The issue's case: a valid-JSON line with a bad offset, and damage in a segment."""
    seg = segment_files(logcopy)[1]
    off, bad_seq, _ = frames(seg)[2]
    flip_bit(seg, off + 30)
    add_line(logcopy, b'{"segment": "%s", "offset": "%d"}' % (
        os.path.basename(seg).encode(), off))
    rc, report = verify(capsys, logcopy)
    assert rc == 1
    assert {p["kind"] for p in damage(report)} == {"bad_crc", "deadletter_bad_line"}
    repair_then_verify(capsys, logcopy, {bad_seq})


def test_gap_entries_with_negative_offsets_are_sound(logcopy: str) -> None:
    """repair records a gap under offset -first_missing_seq (the log's key for a gap)."""
    add_line(logcopy, b'{"segment": "%s", "offset": -9, "kind": "missing_records", '
                      b'"first_missing_seq": 9, "resume_seq": 12}' % SEG0.encode())
    assert deadletter.known_keys(logcopy) == {(SEG0, -9)}


def test_entries_written_by_the_log_are_sound_keys(logcopy: str) -> None:
    seg = segment_files(logcopy)[1]
    off, _, _ = frames(seg)[2]
    flip_bit(seg, off + 30)
    with SegmentLog(logcopy, segment_size=8192) as log:
        while log.read_batch():
            pass
    assert deadletter.known_keys(logcopy) == {(os.path.basename(seg), off)}
