"""Helpers for tests that write a log, tamper with its files and read it back."""

from __future__ import annotations

import os

from segmentlog import SegmentLog
from segmentlog import _pure as pure
from segmentlog._format import SEGMENT_HEADER_SIZE, parse_segment_name

SMALL = 8192  # two pages: a segment that holds a handful of records


def record(seq: int, size: int | None = None) -> bytes:
    """Deterministic content for record ``seq`` (so a reader can check every byte)."""
    stem = f"<{seq}>".encode()
    n = len(stem) + (seq * 37) % 300 if size is None else size
    return (stem * (n // len(stem) + 1))[:n]


def reclaimed(log: SegmentLog) -> None:
    """Wait until the log's reclaim thread has freed what the commits so far consumed
    (commit() hands it the work and returns)."""
    assert log.wait_for_reclaim(30), "the reclaim thread did not finish within 30 s"


def segment_files(directory: str) -> list[str]:
    return sorted(
        os.path.join(directory, n) for n in os.listdir(directory)
        if parse_segment_name(n) is not None
    )


def frames(path: str) -> list[tuple[int, int, int]]:
    """(offset, seq, payload length) of every sound frame of a segment file, in order."""
    with open(path, "rb") as f:
        data = f.read()
    base = parse_segment_name(os.path.basename(path))
    assert base is not None
    r = pure.scan(data, SEGMENT_HEADER_SIZE, len(data), base, 1 << 30)
    pairs = zip(r.offsets, r.lengths, strict=True)
    return [(o - 24, base + i, n) for i, (o, n) in enumerate(pairs)]


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def seq_of(payload: bytes) -> int:
    """The sequence number ``record()`` encoded in a payload."""
    return int(payload[1 : payload.index(b">")])


def read_all(log: SegmentLog) -> list[bytes]:
    """Every record readable from the current read position, in order."""
    out: list[bytes] = []
    while True:
        batch = log.read_batch(max_records=10_000)
        if not batch:
            return out
        out.extend(batch.records)


def check_intact(payloads: list[bytes], expected_seqs: list[int]) -> None:
    """Every payload is exactly ``record(seq)`` for the expected sequence numbers."""
    assert [record(s) for s in expected_seqs] == payloads


def write_log(directory: str, count: int, segment_size: int = SMALL, **kw: object) -> None:
    with SegmentLog(directory, segment_size=segment_size, fsync="never", **kw) as log:
        for seq in range(count):
            assert log.append(record(seq)) == seq
