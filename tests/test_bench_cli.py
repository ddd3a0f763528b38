"""``python -m segmentlog bench``: it runs, reports every row and ratio, and cleans up; its
default is the sustained regime (checked on the plan, never by running it).

Functional only: a test never judges speed (the machine is shared). The runs here pass
few records, one repetition and a short steady state, so the module takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import childenv
import pytest

from segmentlog import SegmentLog
from segmentlog._backend import NAME as BACKEND
from segmentlog._format import SEGMENT_HEADER_SIZE, frame_size
from segmentlog.bench import (
    FILL,
    FSYNC_AT_END,
    ROTATIONS,
    THREADS_ROW,
    Bench,
    from_args,
    payload_of,
    sustained_records,
)
from segmentlog.cli import build_parser

QUICK = ["--records", "2000", "--reps", "1", "--threads-seconds", "0.2"]
HAS_QUEUELIB = importlib.util.find_spec("queuelib") is not None

BASELINES = ["jsonl append", FSYNC_AT_END, "jsonl read", "page cache fill, 1 MiB writes", FILL]
KEY_ROWS = [
    *BASELINES,
    "segmentlog append fsync=never batch=1 + sync",
    "segmentlog append fsync=never batch=1000 + sync",
    "segmentlog drain fsync=never batch=1000",
]
EVERY_ROW = [
    *KEY_ROWS,
    "go-original append",
    "segmentlog drain fsync=never batch=1",
    "segmentlog append fsync=interval batch=1 + sync",
    "segmentlog append fsync=interval batch=1000 + sync",
    "segmentlog drain fsync=interval batch=1000",
    *[f"segmentlog {op} fsync=always batch={b}" for b in (1, 100, 1000)
      for op in ("append", "drain")],
    THREADS_ROW,
    "short run: jsonl append",
    "short run: jsonl read",
    "short run: segmentlog append fsync=never batch=1",
    "short run: segmentlog append fsync=never batch=1000",
    "short run: segmentlog drain fsync=never batch=1000",
]


def run_bench(*args: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    # TMPDIR points the default temporary directory into the test's own directory, so
    # the test can see that the run removed what it made.
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.run([sys.executable, "-m", "segmentlog", "bench", *args],
                          cwd=childenv.PKG_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def run_json(*args: str, tmpdir: Path) -> dict[str, Any]:
    out = run_bench(*args, "--json", tmpdir=tmpdir)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def rows_of(result: dict[str, Any], size: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in result["rows"] if r["size"] == size}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One quick run of the default sizes, shared by the tests that only read its report."""
    tmpdir = tmp_path_factory.mktemp("bench")
    return run_json(*QUICK, tmpdir=tmpdir), tmpdir


def test_default_command_line_plans_the_sustained_regime(tmp_path: Path) -> None:
    """Without options, every size's sustained rows fill at least ROTATIONS segments of
    the log's default size, and the CADF event gets the rows every target judges."""
    with SegmentLog(tmp_path / "log") as log:
        default_segment = log.segment_size
    args = build_parser().parse_args(["bench"])
    bench = from_args(args, str(tmp_path))
    assert bench.segment_size == default_segment
    assert bench.reps >= 3 and bench.thread_seconds >= 3.0
    assert [w.size for w in bench.workloads] == ["cadf", "64", "4096"]
    for w in bench.workloads:
        per_segment = (default_segment - SEGMENT_HEADER_SIZE) // frame_size(len(w.payload))
        assert w.records > ROTATIONS * per_segment, w.size
        assert w.records % 1000 == 0  # whole batches: the batch rows append every record
    labels = [label for label, _ in bench.plan()]
    for row in ("fsync=never batch=1", "fsync=never batch=1000", "fsync=always batch=100",
                "16 threads", "go-original", "jsonl", "page cache fill"):
        assert f"cadf: {row}" in labels
    for size in ("64", "4096"):
        assert f"{size}: fsync=never batch=1" in labels
        assert f"{size}: fsync=never batch=1000" in labels


def test_rotations_are_counted_inside_the_clock(tmp_path: Path) -> None:
    """A sustained row sized for small segments crosses ROTATIONS of them while timed,
    and its drain reads across as many; the targets then give no verdict (not the log's
    default segment size)."""
    segment = 1 << 20
    payload = payload_of("cadf")
    records = sustained_records(payload, segment)
    bench = Bench(str(tmp_path), ["cadf"], 1, records=records, segment_size=segment,
                  pure=False)
    w = bench.workloads[0]
    bench.log_rows(w, "never", 1000, records=records, cap=60.0)
    bench.log_rows(w, "interval", 1, records=records, cap=60.0, drain_cap=None)
    rows = {name: row for (_, name), row in bench.rows.items()}
    for name in ("segmentlog append fsync=never batch=1000 + sync",
                 "segmentlog drain fsync=never batch=1000",
                 "segmentlog append fsync=interval batch=1 + sync"):
        assert rows[name].records == [records], name
        assert rows[name].rotations[0] >= ROTATIONS, name
    bench.jsonl(w)
    bench.page_fill(w)
    target = bench._target("t", "segmentlog append fsync=never batch=1000 + sync", FILL,
                           0.8, "rotations")
    assert target["ratio"] > 0 and target["met"] is None
    assert BACKEND == "pure" or "segments of 1048576 bytes" in target["why"]
    assert sorted(os.listdir(tmp_path)) == []  # every row removes its files


@pytest.mark.parametrize(("row", "regime", "rotations", "seconds", "met"), [
    ("segmentlog append fsync=never batch=1 + sync", "rotations", 8, 1.0, True),
    ("segmentlog append fsync=never batch=1 + sync", "rotations", 7, 9.0, None),
    (THREADS_ROW, "seconds", 0, 3.0, True),
    (THREADS_ROW, "seconds", 0, 2.9, None),
    ("segmentlog append fsync=always batch=100", "rotations or seconds", 1, 3.5, True),
    ("segmentlog append fsync=always batch=100", "rotations or seconds", 8, 0.5, True),
    ("segmentlog append fsync=always batch=100", "rotations or seconds", 7, 2.5, None),
])
def test_a_target_gets_a_verdict_only_in_the_sustained_regime(
        tmp_path: Path, row: str, regime: str, rotations: int, seconds: float,
        met: bool | None) -> None:
    bench = Bench(str(tmp_path), ["cadf"], 1, records=1000, pure=False)
    w = bench.workloads[0]
    # The row runs at 2x its baseline: met when judged against 1.5x, missed against 3x.
    bench.add(w, row, "append", "sustained", "", True, 2000, seconds, 0, rotations)
    bench.add(w, "base", "append", "sustained", "", False, 1000, seconds, 0)
    low = bench._target("t", row, "base", 1.5, regime)
    high = bench._target("t", row, "base", 3.0, regime)
    assert low["ratio"] == pytest.approx(2.0)
    if BACKEND == "pure":
        assert low["met"] is None and "C core" in low["why"]
    elif met is None:
        assert low["met"] is None and high["met"] is None
        assert "not the sustained regime" in low["why"]
    else:
        assert low["met"] is True and high["met"] is False


def test_bench_json_reports_every_row_with_ratios_and_removes_its_directory(
        default_run: tuple[dict[str, Any], Path]) -> None:
    result, tmp_path = default_run
    assert [s["size"] for s in result["sizes"]] == ["cadf", "64", "4096"]
    assert [s["rows"] for s in result["sizes"]] == ["all", "key", "key"]
    for size, expected in (("cadf", EVERY_ROW), ("64", KEY_ROWS), ("4096", KEY_ROWS)):
        rows = rows_of(result, size)
        for name in expected:
            assert name in rows, f"{size}: row {name!r} missing"
        for r in rows.values():
            assert r["payload_bytes"] == len(payload_of(size))
            assert r["records_per_s"] > 0 and r["mb_per_s"] > 0 and r["vs_jsonl"] > 0
            assert len(r["records"]) == len(r["seconds"]) == 1  # --reps 1
            assert r["regime"] in ("sustained", "time cap", "steady state", "short run")
            # The log's rows count the segment boundaries they crossed; baselines do not.
            assert (r["rotations"] is not None) == r["name"].startswith(
                ("segmentlog", "short run: segmentlog"))
            # The page-cache ceiling is shown for the sustained appends.
            assert (r["vs_fill"] is not None) == (r["op"] == "append"
                                                  and r["regime"] != "short run")
    rows = rows_of(result, "cadf")
    assert ("short run: queuelib FifoDiskQueue push" in rows) == HAS_QUEUELIB
    assert rows[FSYNC_AT_END]["vs_jsonl"] == pytest.approx(1.0)
    assert rows[FILL]["vs_fill"] == pytest.approx(1.0)
    assert rows["go-original append"]["vs_go_original"] == pytest.approx(1.0)
    assert all((r["vs_go_original"] is not None) == (r["op"] == "append")
               for r in rows.values())
    # --records applies to every sustained row.
    assert rows["segmentlog append fsync=never batch=1 + sync"]["records"] == [2000]
    assert rows["segmentlog drain fsync=never batch=1000"]["records"] == [2000]
    # Every segmentlog row checksums; no baseline does.
    for r in result["rows"]:
        assert r["checksum"] == ("segmentlog" in r["name"]), r["name"]
    # Durability is counted, not claimed: one fsync per record for the Go original and
    # fsync="always" one record at a time, none for the page-cache rows, and the
    # sustained fsync="never" rows pay for their final sync().
    assert rows["go-original append"]["fsyncs_per_record"] == pytest.approx(1.0)
    assert rows["segmentlog append fsync=always batch=1"]["fsyncs_per_record"] >= 1.0
    assert rows["segmentlog append fsync=always batch=100"]["fsyncs_per_record"] <= 0.02
    assert rows["segmentlog append fsync=never batch=1 + sync"]["fsyncs_per_record"] > 0
    assert rows["short run: segmentlog append fsync=never batch=1"]["fsyncs_per_record"] == 0
    assert rows["jsonl append"]["fsyncs_per_record"] == 0
    assert rows[FSYNC_AT_END]["fsyncs_per_record"] > 0
    assert rows[FILL]["fsyncs_per_record"] > 0
    # 2000 records never fill a 64 MiB segment: ratios, but no verdicts.
    assert len(result["targets"]) == 6
    for t in result["targets"]:
        assert t["ratio"] > 0 and t["met"] is None
        assert ("not the sustained regime" if BACKEND == "native" else "C core") in t["why"]
    assert result["backend"] == BACKEND
    assert result["segment_size"] == result["default_segment_size"]
    directory = Path(result["directory"])
    assert directory.parent == tmp_path
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []


def test_bench_measures_the_pure_backend_in_a_child_process(
        default_run: tuple[dict[str, Any], Path]) -> None:
    result, _ = default_run
    pure = {p["row"]: p for p in result["pure_backend"]}
    if BACKEND == "pure":
        assert pure == {}  # nothing to compare with: every row already ran pure
        return
    assert set(pure) == {"short run: segmentlog append fsync=never batch=1",
                         "short run: segmentlog append fsync=never batch=1000",
                         "short run: segmentlog drain fsync=never batch=1000"}
    for p in pure.values():
        assert p["native_over_pure"] == pytest.approx(
            p["native_records_per_s"] / p["pure_records_per_s"])
    assert result["notes"] == []


def test_bench_size_option_gives_one_size_every_row(tmp_path: Path) -> None:
    size = "4096"  # few records: the pure backend checksums 4 KiB records slowly
    result = run_json("--size", size, *QUICK, "--records", "500", tmpdir=tmp_path)
    assert [s["size"] for s in result["sizes"]] == [size]
    rows = rows_of(result, size)
    for name in EVERY_ROW:
        assert name in rows, name
    assert {r["payload_bytes"] for r in result["rows"]} == {int(size)}
    # The engine's targets are stated for the CADF event: no verdict at other sizes.
    assert all(t["met"] is None and "CADF" in t["why"] for t in result["targets"])


def test_bench_dir_option_writes_inside_the_chosen_directory_and_removes_its_files(
        tmp_path: Path) -> None:
    chosen = tmp_path / "disk" / "under-test"  # created when missing
    elsewhere = tmp_path / "tmp"
    elsewhere.mkdir()
    out = run_bench("--size", "64", *QUICK, "--dir", str(chosen), "--quiet", "--json",
                    tmpdir=elsewhere)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # --quiet: no progress lines
    result = json.loads(out.stdout)
    assert {r["payload_bytes"] for r in result["rows"]} == {64}
    assert Path(result["directory"]).parent == chosen
    assert list(chosen.iterdir()) == []
    assert list(elsewhere.iterdir()) == []


def test_bench_dir_option_that_is_a_file_exits_2_with_a_reason(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    out = run_bench(*QUICK, "--dir", str(not_a_dir), tmpdir=tmp_path)
    assert out.returncode == 2
    assert "--dir" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bench_threads_seconds_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    out = run_bench("--threads-seconds", value, tmpdir=tmp_path)
    assert out.returncode == 2
    assert "--threads-seconds" in out.stderr and "Traceback" not in out.stderr


def test_bench_table_shows_rows_targets_verdicts_and_progress(tmp_path: Path) -> None:
    out = run_bench(*QUICK, tmpdir=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in EVERY_ROW:
        assert name in text
    for heading in ("records/s", "vs jsonl", "vs fill", "vs go", "fsync/rec", "rot",
                    "[sustained]", "[short run]", "targets", "no verdict"):
        assert heading in text
    assert "issue" not in text.lower()
    # One progress line per step on stderr, then the total.
    progress = out.stderr.splitlines()
    assert progress[0].startswith("bench: step 1/") and "cadf: jsonl" in progress[0]
    assert "steps done in" in progress[-1]
    assert list(tmp_path.iterdir()) == []
