"""The C core under AddressSanitizer and UndefinedBehaviorSanitizer, and its shared state
(the append cursor, the group committer) under ThreadSanitizer.

tests/c/fuzz_scan.c is compiled with csrc/crc32c.c and csrc/segmentlog.c, with
-fsanitize=address,undefined and warnings as errors, and run over seeded random and
damaged inputs (valid frame runs with bit flips, overwrites, zeroed spans, stale copies,
truncation; plain random bytes), with the live and with the portable CRC code, and over
a few crafted input files. Any out-of-bounds read, undefined behaviour or broken
invariant ends the run non-zero. A first test proves the sanitizer build really reports
an overread here, so a silent, uninstrumented build cannot pass.

tests/c/stress_cursor.c is compiled with -fsanitize=thread: four threads append through one
cursor while another closes and reopens it; every record that got a sequence number
must be in the buffer once, in order, intact, and TSan must see no data race (a probe
first shows that this TSan build does report a race). tests/c/stress_committer.c does the
same for the group committer over a real file, with a toggler that also syncs, retires and
reopens it, and an injected fdatasync failure.

Skips (with the reason) only when there is no C compiler or it cannot build and run
sanitized programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CTESTS = ROOT / "tests" / "c"  # test programs: never shipped, never in the extension
SANITIZE = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
]
# The tests' build of the C core: warnings are errors, and SL_TESTING compiles in the test
# hooks (segmentlog.h) that fuzz_scan.c and stress_committer.c use.
WARN = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-DSL_TESTING"]
RUN_ENV = {
    **os.environ,
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
}


def _compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")
    if path is None:
        pytest.skip(f"no C compiler ({cc!r} not found): the sanitizer run needs one")
    return path


def _compile(cc: str, sources: list[Path], out: Path, extra: list[str]) -> None:
    cmd = [cc, *extra, *SANITIZE, f"-I{CSRC}", f"-I{CTESTS}", *map(str, sources), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def cc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A compiler that builds and runs sanitized programs, or a skip saying why not."""
    cc = _compiler()
    probe_dir = tmp_path_factory.mktemp("sanitizer_probe")
    src = probe_dir / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    exe = probe_dir / "probe"
    proc = subprocess.run(
        [cc, *SANITIZE, str(src), "-o", str(exe)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.skip(f"{cc} cannot build with -fsanitize=address,undefined: {proc.stderr[-500:]}")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=RUN_ENV)
    if run.returncode != 0:
        pytest.skip(f"sanitized programs do not run here (ASan runtime): {run.stderr[-500:]}")
    return cc


@pytest.fixture(scope="module")
def fuzz_scan(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("fuzz_scan") / "fuzz_scan"
    sources = [CTESTS / "fuzz_scan.c", CSRC / "crc32c.c", CSRC / "segmentlog.c"]
    _compile(cc, sources, exe, WARN)
    return exe


def test_sanitizer_build_reports_a_one_byte_overread(cc: str, tmp_path: Path) -> None:
    src = tmp_path / "overread.c"
    src.write_text(
        "#include <stdlib.h>\n"
        "#include <string.h>\n"
        "int main(int argc, char **argv) {\n"
        "    (void)argv;\n"
        "    char *p = malloc(16);\n"
        "    memset(p, 1, 16);\n"
        "    int v = p[15 + argc];  /* one past the end */\n"
        "    free(p);\n"
        "    return v == 1 ? 0 : 3;\n"
        "}\n"
    )
    exe = tmp_path / "overread"
    _compile(cc, [src], exe, [])
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=RUN_ENV)
    # ASan (heap-buffer-overflow) or UBSan's object-size check, whichever sees it first.
    assert proc.returncode in (86, 87), proc.stderr[-2000:]
    assert "heap-buffer-overflow" in proc.stderr or "insufficient space" in proc.stderr


@pytest.mark.parametrize("args", [["-s", "1"], ["-s", "2", "-p"]], ids=["live_crc", "portable_crc"])
def test_fuzz_scan_random_and_damaged_inputs_under_asan_ubsan(
    fuzz_scan: Path, args: list[str]
) -> None:
    proc = subprocess.run(
        [str(fuzz_scan), "-n", "2500", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=RUN_ENV,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "all checks passed" in proc.stdout


def _crafted_inputs() -> dict[str, bytes]:
    """Inputs at the edges of the reader: lengths that reach one byte past the end or
    wrap a 32-bit size, headers cut short, markers with nothing after them."""
    from segmentlog import _pure

    frames = bytearray(32 + 3 * 32)
    _pure.frame_batch_into(frames, 32, [b"abc", b"hello", b"\xff" * 8], 0)
    marker = (0x5AA55CD3).to_bytes(4, "little")
    one_past = bytearray(frames[:64])
    one_past[32 + 4 : 32 + 8] = (64 - 32 - 24 + 1).to_bytes(4, "little")
    huge = bytearray(frames)
    huge[32 + 4 : 32 + 8] = b"\xff\xff\xff\xff"
    return {
        "empty": b"",
        "frames": bytes(frames),
        "frames_cut_in_header": bytes(frames[: 32 + 20]),
        "frames_cut_in_payload": bytes(frames[: 32 + 26]),
        "length_one_past_end": bytes(one_past),
        "length_0xffffffff": bytes(huge),
        "marker_only": marker,
        "marker_then_23_bytes": marker + b"\x01" * 19,
        "nonzero_23_bytes": b"\x01" * 23,
        "markers_everywhere": (marker + b"\xff" * 4) * 64,
    }


def test_fuzz_scan_crafted_inputs_under_asan_ubsan(fuzz_scan: Path, tmp_path: Path) -> None:
    paths = []
    for name, data in _crafted_inputs().items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    proc = subprocess.run(
        [str(fuzz_scan), *paths], capture_output=True, text=True, timeout=60, env=RUN_ENV
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"


TSAN = ["-fsanitize=thread", "-g", "-O1"]
TSAN_ENV = {**os.environ, "TSAN_OPTIONS": "exitcode=66:halt_on_error=1"}


def _tsan_build(cc: str, sources: list[Path], out: Path, extra: list[str]) -> str:
    """Build with ThreadSanitizer; '' on success, else the compiler's complaint."""
    cmd = [cc, *extra, *TSAN, f"-I{CSRC}", f"-I{CTESTS}", *map(str, sources), "-lpthread",
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return "" if proc.returncode == 0 else f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def tsan_cc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A compiler whose ThreadSanitizer build reports a plain data race, or a skip."""
    cc = _compiler()
    probe = tmp_path_factory.mktemp("tsan_probe")
    src = probe / "race.c"
    src.write_text(
        "#include <pthread.h>\n"
        "static int shared;\n"
        "static void *bump(void *arg) { (void)arg; for (int i = 0; i < 100000; i++) shared++;"
        " return 0; }\n"
        "int main(void) { pthread_t a, b; pthread_create(&a, 0, bump, 0);"
        " pthread_create(&b, 0, bump, 0); pthread_join(a, 0); pthread_join(b, 0);"
        " return shared == 0; }\n"
    )
    problem = _tsan_build(cc, [src], probe / "race", [])
    if problem:
        pytest.skip(f"{cc} cannot build with -fsanitize=thread: {problem[-500:]}")
    run = subprocess.run([str(probe / "race")], capture_output=True, text=True, timeout=60,
                         env=TSAN_ENV)
    if "ThreadSanitizer" not in run.stderr and run.returncode != 66:
        pytest.skip(f"ThreadSanitizer does not run here: exit {run.returncode} "
                    f"{run.stderr[-500:]}")
    assert run.returncode == 66 and "data race" in run.stderr, run.stderr[-2000:]
    return cc


def test_append_cursor_under_threads_and_toggling_has_no_race(
    tsan_cc: str, tmp_path: Path
) -> None:
    exe = tmp_path / "stress_cursor"
    sources = [CTESTS / "stress_cursor.c", CSRC / "cursor.c", CSRC / "segmentlog.c",
               CSRC / "crc32c.c"]
    problem = _tsan_build(tsan_cc, sources, exe, WARN)
    assert not problem, problem
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                          env=TSAN_ENV)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "all checks passed" in proc.stdout


@pytest.mark.parametrize("wait", ["futex", "condition"])
def test_group_committer_under_threads_toggling_and_a_failing_fsync_has_no_race(
    tsan_cc: str, tmp_path: Path, wait: str
) -> None:
    """tests/c/stress_committer.c: four appenders through one committer over a real file
    while another thread closes, syncs, retires and reopens it as the log's lock does;
    then an injected fdatasync failure. Waiters sleep on the futex (Linux) or on the
    condition other systems use (-DSL_COMMIT_NO_FUTEX). (Verified while writing it: with
    close's mutex removed, TSan reports a data race here.)"""
    exe = tmp_path / "stress_committer"
    sources = [CTESTS / "stress_committer.c", CSRC / "committer.c", CSRC / "segmentlog.c",
               CSRC / "crc32c.c"]
    extra = [*WARN, "-DSL_COMMIT_NO_FUTEX"] if wait == "condition" else WARN
    problem = _tsan_build(tsan_cc, sources, exe, extra)
    assert not problem, problem
    proc = subprocess.run([str(exe), str(tmp_path / "segment")], capture_output=True,
                          text=True, timeout=300, env=TSAN_ENV)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "all checks passed" in proc.stdout
