"""Micro-benchmarks of the hot paths (pytest-benchmark), so a regression shows as a number.

Not part of the default test run (pyproject's testpaths is ``tests``). Run with::

    python -m pytest benchmarks/test_micro.py                    # the live backend
    SEGMENTLOG_BACKEND=pure python -m pytest benchmarks/test_micro.py
    python -m pytest benchmarks/test_micro.py --benchmark-save=base   # then
    python -m pytest benchmarks/test_micro.py --benchmark-compare=0001 \\
        --benchmark-compare-fail=mean:20%

Every benchmark also checks its result, so a fast wrong answer fails. The CRC32C cases
run on the live backend (``segmentlog.backend``) and, for comparison, on the pure one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)
import pytest

from segmentlog import SegmentLog, _pure
from segmentlog._backend import impl
from segmentlog._format import FRAME_HEADER_SIZE, frame_size
from segmentlog.bench import payload_of

CADF = payload_of("cadf")
SIZES = {"64": 64, "cadf": len(CADF), "4096": 4096, "1MiB": 1 << 20}


def data_of(size: str) -> bytes:
    return CADF if size == "cadf" else bytes(range(256)) * (SIZES[size] // 256) + b"x" * (
        SIZES[size] % 256)


@pytest.mark.parametrize("size", list(SIZES))
def test_crc32c(benchmark: Any, size: str) -> None:
    data = data_of(size)
    benchmark.extra_info.update(backend=impl.NAME, bytes=len(data))
    result = benchmark(impl.crc32c, data)
    assert result == _pure.crc32c(data)


@pytest.mark.parametrize("size", ["64", "cadf", "4096"])
def test_crc32c_pure_backend(benchmark: Any, size: str) -> None:
    data = data_of(size)
    benchmark.extra_info.update(backend="pure", bytes=len(data))
    assert benchmark(_pure.crc32c, data) == impl.crc32c(data)


@pytest.mark.parametrize("size", ["64", "cadf", "4096"])
def test_frame_one_record(benchmark: Any, size: str) -> None:
    payload = data_of(size)
    buf = bytearray(1 << 16)
    benchmark.extra_info.update(backend=impl.NAME, bytes=len(payload))
    end = benchmark(impl.frame_into, buf, 0, payload, 7)
    assert end == frame_size(len(payload))
    assert bytes(buf[FRAME_HEADER_SIZE:FRAME_HEADER_SIZE + len(payload)]) == payload


@pytest.mark.parametrize("count", [100, 1000])
def test_frame_batch(benchmark: Any, count: int) -> None:
    payloads = [CADF] * count
    buf = bytearray(frame_size(len(CADF)) * count)
    benchmark.extra_info.update(backend=impl.NAME, records=count)
    end = benchmark(impl.frame_batch_into, buf, 0, payloads, 0)
    assert end == len(buf)


@pytest.mark.parametrize("count", [100, 1000])
def test_scan_batch(benchmark: Any, count: int) -> None:
    buf = bytearray(frame_size(len(CADF)) * count)
    impl.frame_batch_into(buf, 0, [CADF] * count, 0)
    benchmark.extra_info.update(backend=impl.NAME, records=count)
    result = benchmark(impl.scan, buf, 0, len(buf), 0, count + 1)
    assert result.count == count and result.end == len(buf)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SegmentLog]:
    with SegmentLog(str(tmp_path / "log"), segment_size=64 << 20, fsync="never") as lg:
        yield lg


def test_append(benchmark: Any, log: SegmentLog) -> None:
    # fsync="never": the CPU cost of an append (lock, frame, CRC into the mapping).
    benchmark.extra_info.update(backend=impl.NAME, bytes=len(CADF))
    seq = benchmark.pedantic(log.append, args=(CADF,), rounds=20000, iterations=1,
                             warmup_rounds=100)
    assert seq == log.stats()["next_seq"] - 1


def test_append_batch_100(benchmark: Any, log: SegmentLog) -> None:
    batch = [CADF] * 100
    benchmark.extra_info.update(backend=impl.NAME, records=100)
    benchmark.pedantic(log.append_batch, args=(batch,), rounds=500, iterations=1,
                       warmup_rounds=5)
    assert log.stats()["next_seq"] == 100 * 505


def test_read_batch_and_commit_1000(benchmark: Any, log: SegmentLog) -> None:
    rounds = 60
    for _ in range(rounds + 2):
        log.append_batch([CADF] * 1000)

    def drain() -> int:
        b = log.read_batch(1000)
        log.commit(b)
        return len(b)

    benchmark.extra_info.update(backend=impl.NAME, records=1000)
    got = benchmark.pedantic(drain, rounds=rounds, iterations=1, warmup_rounds=2)
    assert got == 1000
