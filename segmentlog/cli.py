"""The ``segmentlog`` command line (``python -m segmentlog``): one sub-command per tool.

Exit status: 0 success, 1 the tool found a problem (damage), 2 it could not run (bad
arguments, no such directory, not a segmentlog directory). A failure prints a one-line
reason on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentlog", description="Tools for segmentlog directories and benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="measure the log against buffered JSONL and the Go original",
        description="Append and drain records through the segment log at every fsync "
        "policy and batch size, beside a buffered JSON-lines file and the Go original's "
        "open/write/fsync/close per event, in one process; print records/s and ratios.",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--size", choices=["64", "cadf", "4096"], default="cadf",
                       help="record size: 64 bytes, the ~514-byte CADF event, or 4 KiB")
    bench.add_argument("--records", type=_positive, default=100_000,
                       help="records per fast row (default 100000)")
    bench.add_argument("--reps", type=_positive, default=3,
                       help="interleaved repetitions per row; the median is shown (default 3)")
    bench.add_argument("--dir", default=None,
                       help="directory to measure (default: a temporary directory, removed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from segmentlog import bench

        return bench.main(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse rejects it
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
