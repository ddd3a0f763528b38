"""``python -m segmentlog bench``: it runs, reports every row and ratio, and cleans up.

Functional only: a test never judges speed (the machine is shared). Each run uses few
records and one repetition, so the whole module takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from segmentlog._backend import NAME as BACKEND

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--records", "1000", "--reps", "1"]
HAS_QUEUELIB = importlib.util.find_spec("queuelib") is not None

EXPECTED_ROWS = [
    "jsonl append",
    "jsonl append + fsync at end",
    "jsonl read",
    "go-original append",
    *[f"segmentlog {op} fsync={f} batch={b}" for f in ("never", "interval", "always")
      for b in (1, 100, 1000) for op in ("append", "drain")],
    "segmentlog append fsync=always batch=1 threads=16",
]


def run_bench(*args: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    # TMPDIR points the default temporary directory into the test's own directory, so
    # the test can see that the run removed what it made.
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.run([sys.executable, "-m", "segmentlog", "bench", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def run_json(*args: str, tmpdir: Path) -> dict[str, Any]:
    out = run_bench(*args, "--json", tmpdir=tmpdir)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One quick default run, shared by the tests that only read its report."""
    tmpdir = tmp_path_factory.mktemp("bench")
    return run_json(*QUICK, tmpdir=tmpdir), tmpdir


def test_bench_json_reports_every_row_with_ratios_and_removes_its_directory(
        default_run: tuple[dict[str, Any], Path]) -> None:
    result, tmp_path = default_run
    rows = {r["name"]: r for r in result["rows"]}
    for name in EXPECTED_ROWS:
        assert name in rows, f"row {name!r} missing"
    assert ("queuelib FifoDiskQueue push" in rows) == HAS_QUEUELIB
    for r in rows.values():
        assert r["records_per_s"] > 0 and r["mb_per_s"] > 0
        assert r["vs_jsonl"] > 0
        assert (r["vs_go_original"] is not None) == (r["op"] == "append")
        assert len(r["records"]) == len(r["seconds"]) == 1  # --reps 1
    assert rows["jsonl append"]["vs_jsonl"] == pytest.approx(1.0)
    assert rows["go-original append"]["vs_go_original"] == pytest.approx(1.0)
    # Every segmentlog row checksums; no baseline does.
    assert all(r["checksum"] == r["name"].startswith("segmentlog") for r in rows.values())
    # Durability is counted, not claimed: one fsync per record for the Go original and
    # fsync="always" one record at a time, none for the page-cache rows.
    assert rows["go-original append"]["fsyncs_per_record"] == pytest.approx(1.0)
    assert rows["segmentlog append fsync=always batch=1"]["fsyncs_per_record"] >= 1.0
    assert rows["segmentlog append fsync=always batch=100"]["fsyncs_per_record"] <= 0.02
    assert rows["segmentlog append fsync=never batch=1"]["fsyncs_per_record"] == 0
    assert rows["jsonl append"]["fsyncs_per_record"] == 0
    for t in result["targets"]:
        if "queuelib" in t["baseline"] and not HAS_QUEUELIB:
            assert t["ratio"] is None and "pip install" in t["why"]
        else:
            assert t["ratio"] > 0 and isinstance(t["met"], bool | None)
    assert result["payload_bytes"] == 514 and result["backend"] == BACKEND
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
    assert set(pure) == {"segmentlog append fsync=never batch=1",
                         "segmentlog append fsync=never batch=1000",
                         "segmentlog drain fsync=never batch=1000"}
    for p in pure.values():
        assert p["native_over_pure"] == pytest.approx(
            p["native_records_per_s"] / p["pure_records_per_s"])
    assert result["notes"] == []


@pytest.mark.parametrize(("size", "nbytes"), [("64", 64), ("4096", 4096)])
def test_bench_size_option_sets_the_record_size(tmp_path: Path, size: str,
                                                nbytes: int) -> None:
    result = run_json("--size", size, *QUICK, tmpdir=tmp_path)
    assert result["payload_bytes"] == nbytes
    assert result["size"] == size
    # The engine's targets are stated for the CADF event: no verdict at other sizes.
    assert all(t["met"] is None for t in result["targets"])


def test_bench_dir_option_writes_inside_the_chosen_directory_and_removes_its_files(
        tmp_path: Path) -> None:
    chosen = tmp_path / "disk" / "under-test"  # created when missing
    elsewhere = tmp_path / "tmp"
    elsewhere.mkdir()
    result = run_json(*QUICK, "--dir", str(chosen), tmpdir=elsewhere)
    assert Path(result["directory"]).parent == chosen
    assert list(chosen.iterdir()) == []
    assert list(elsewhere.iterdir()) == []


def test_bench_dir_option_that_is_a_file_exits_2_with_a_reason(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    out = run_bench(*QUICK, "--dir", str(not_a_dir), tmpdir=tmp_path)
    assert out.returncode == 2
    assert "--dir" in out.stderr and "Traceback" not in out.stderr


def test_bench_table_shows_rows_targets_and_the_baselines(tmp_path: Path) -> None:
    out = run_bench(*QUICK, tmpdir=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in EXPECTED_ROWS:
        assert name in text
    for heading in ("records/s", "vs jsonl", "vs go", "fsync/rec", "targets"):
        assert heading in text
    assert list(tmp_path.iterdir()) == []
