"""On-disk constants. FORMAT.md is the specification; this module only names its numbers.

csrc/segmentlog.h carries the same numbers for the C core; tests/test_format.py checks that
the two agree with each other and with FORMAT.md's byte-level example.
"""

from __future__ import annotations

import struct

FORMAT_VERSION = 1

# Segment file header (FORMAT.md, "Segment header").
SEGMENT_MAGIC = b"SEGLOG\x1a\n"
SEGMENT_HEADER_SIZE = 32
SEGMENT_HEADER = struct.Struct("<8sIIQII")  # magic, version, align, base_seq, reserved, crc
SEGMENT_NAME_DIGITS = 20
# Sequence numbers stay below this (FORMAT.md, "Segment"): a segment name or checkpoint
# at or above it is not one of this log's (damage or a stray file), and no record can
# take a number that a frame header could not hold.
SEQ_LIMIT = 1 << 63
SEGMENT_SUFFIX = ".seg"

# Record frame (FORMAT.md, "Record frame").
FRAME_MARKER = 0x5AA55CD3
FRAME_HEADER_SIZE = 24
FRAME_HEADER = struct.Struct("<IIQII")  # marker, length, seq, flags, crc
FRAME_CRC_COVERS = 20  # the CRC covers header bytes [0, 20) and then the payload
FRAME_ALIGN = 8
MAX_PAYLOAD = 0xFFFFFFFF

# Scan statuses: why a scan stopped (same numbers as SL_* in csrc/segmentlog.h).
SCAN_OK = 0  # stopped at max_records / max_bytes, or exactly at the end given
SCAN_ZERO = 1  # a zero marker: preallocated space, the end of written data
SCAN_TRUNCATED = 2  # the frame (or its header) extends past the end given
SCAN_BAD_MARKER = 3  # a non-zero word that is not the frame marker
SCAN_BAD_CRC = 4  # the checksum does not match header + payload
SCAN_BAD_FLAGS = 5  # checksum fine, but flags this version does not know
SCAN_BAD_SEQ = 6  # checksum fine, but not the expected sequence number (stale or misplaced)

SCAN_STATUS_NAMES = {
    SCAN_OK: "ok",
    SCAN_ZERO: "zero",
    SCAN_TRUNCATED: "truncated",
    SCAN_BAD_MARKER: "bad_marker",
    SCAN_BAD_CRC: "bad_crc",
    SCAN_BAD_FLAGS: "bad_flags",
    SCAN_BAD_SEQ: "bad_seq",
}

# Directory entries.
CHECKPOINT_NAME = "checkpoint"
CHECKPOINT_MAGIC = b"SLCKPT1\n"
CHECKPOINT = struct.Struct("<8sQQI")  # magic, committed next_seq, wall-clock ns, crc
LOCK_NAME = "lock"
DEADLETTER_NAME = "deadletter.jsonl"
PREPARED_NAME = "next.prep"
SPARE_NAME = "spare.prep"
TMP_SUFFIX = ".tmp"


def frame_size(length: int) -> int:
    """Bytes one record of ``length`` payload bytes occupies, padding included."""
    return (FRAME_HEADER_SIZE + length + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1)


def segment_name(base_seq: int) -> str:
    """The file name of the segment whose first record has sequence ``base_seq``."""
    return f"{base_seq:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The base sequence of a segment file name, or None if ``name`` is not one."""
    stem = name[: -len(SEGMENT_SUFFIX)]
    if (
        name.endswith(SEGMENT_SUFFIX)
        and len(stem) == SEGMENT_NAME_DIGITS
        and stem.isascii()
        and stem.isdigit()
        and int(stem) < SEQ_LIMIT
    ):
        return int(stem)
    return None
