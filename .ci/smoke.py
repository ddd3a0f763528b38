"""Smoke test of an installed segmentlog (.ci/run runs it after installing the wheel).

Run it with the Python of the venv that holds the package, from a directory that has no
segmentlog of its own. It checks that the package imported is the installed one with
its C core, that a small log appends, reads and commits, and that the command line
(``--version``, ``verify``) works on the log it wrote. With ``--no-compiler`` it also
checks that no C compiler was on PATH (the wheel needs none). Exit status 0 or an
AssertionError naming what failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile


def main() -> None:
    if "--no-compiler" in sys.argv[1:]:
        found = {cc: shutil.which(cc) for cc in ("gcc", "cc", "clang")}
        assert not any(found.values()), f"a C compiler is on PATH: {found}"

    import segmentlog
    from segmentlog import SegmentLog

    site = sysconfig.get_paths()["platlib"]
    assert segmentlog.__file__.startswith(site), (segmentlog.__file__, site)
    assert segmentlog.backend == "native", segmentlog.backend

    directory = tempfile.mkdtemp(prefix="segmentlog-smoke-")
    try:
        with SegmentLog(directory, segment_size=1 << 20) as log:
            log.append_batch([b"a", b"b"])
            log.append(b'{"id": "c"}')
            batch = log.read_batch(max_records=10)
            assert list(batch.records) == [b"a", b"b", b'{"id": "c"}'], batch.records
            log.commit(batch)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "segmentlog", *args],
                                  capture_output=True, text=True, timeout=60,
                                  cwd=tempfile.gettempdir())

        version = cli("--version")
        expected = f"segmentlog {segmentlog.__version__} (native backend, Python "
        assert version.returncode == 0 and version.stdout.startswith(expected), version
        verify = cli("verify", directory)
        assert verify.returncode == 0 and "result: intact" in verify.stdout, verify
        print(f"smoke: {version.stdout.strip()} from {os.path.dirname(segmentlog.__file__)}: "
              "append, read, commit and verify ok")
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
