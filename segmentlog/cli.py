"""The ``segmentlog`` command line (``python -m segmentlog``): one sub-command per tool.

``verify``, ``dump`` and ``stats`` are read-only (segmentlog.examine): safe while a
writer runs, they never change a byte. ``repair`` (segmentlog.repair) takes the writer
lock. ``bench`` measures the log (segmentlog.bench).

Exit status: 0 success (verify: intact), 1 the tool found damage (or repair could not
fix all of it), 2 it could not run (bad arguments, no such directory, not a segmentlog
directory, unreadable, locked). A failure prints a one-line reason on stderr, never a
traceback. ``--json`` output is orjson; progress goes to stderr, only when it is a
terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

EXIT_OK, EXIT_DAMAGE, EXIT_ERROR = 0, 1, 2


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
    return value


def _byte_size(text: str) -> int:
    """``1073741824``, ``64M``, ``2G`` (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = units.get(t[-1:], 1)
    try:
        value = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a byte count like 1073741824 or 64M, "
                                         f"got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


VERIFY_EPILOG = """\
problem kinds (FORMAT.md, "Problem kinds reported by verify"):
  damage (exit 1):
    bad_crc, bad_marker, truncated, bad_flags, bad_seq, zero
                          a region of a segment holding no sound frame, between sound
                          ones (or unsound bytes ending a sealed segment): records lost
    missing_records       sequence numbers in no segment (a segment deleted or lost, or
                          the end of the segment before the gap lost)
    bad_header_crc, bad_magic, header_name_mismatch, zero_header, short_header,
    unsupported_version   the segment header (the log reads it by its file name)
    empty_segment         a segment file of 0 bytes
    short_segment         a segment file cut short (shorter than a preallocated segment
                          with records up to its end, or not a multiple of the page
                          size): records at its end may be gone
    special_file          a name the log uses (segment, checkpoint, lock, ...) that is
                          not a regular file (FIFO, directory, symlink): the log refuses
                          to open; remove or rename it
    checkpoint_missing, checkpoint_bad_crc, checkpoint_bad_size, checkpoint_bad_magic
                          the consumer's position is lost: records will be re-delivered
    checkpoint_behind     the checkpoint is below the oldest segment: records gone
    deadletter_bad_line   a line of deadletter.jsonl is not a sound entry (not JSON,
                          not an object, or a field of the wrong type or range)
  information (exit 0):
    torn_tail             unsound bytes after the last record of the last segment: a
                          write cut short by a crash (or in progress); never a record
    repaired_damage       damage kept in deadletter.jsonl and neutralised (zeroed, or the
                          gap recorded): what repair leaves
    consumed_gap          missing sequence numbers all below the checkpoint
    checkpoint_ahead      the checkpoint is past the last record (fsync="never" lost
                          the tail after it was consumed, or a writer is appending)
    seq_overlap           a sealed segment's records run past the next segment's base
    wrong_size            a segment file whose size differs from the others, not cut
                          short (another segment_size, or longer)
    quarantined_segment   NAME.seg.damaged: a segment set aside, bytes kept
    moving_segment        NAME.seg.moving: the log stopped while renaming it; next open ends it
    foreign_file          a file segmentlog does not own (ignored, never deleted)

exit status: 0 intact, 1 damage found, 2 could not verify (reason on stderr)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentlog", description="Tools for segmentlog directories and benchmarks."
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="measure the log against buffered JSONL, the page cache and the Go original",
        description="Append and drain records through the segment log at every fsync "
        "policy and batch size in the sustained regime (the default segment size, at least "
        "8 rotations and the final sync() inside each row's clock), beside a JSON-lines "
        "file, the page cache's fill rate and the Go original's open/write/fsync/close per "
        "event (and queuelib's FifoDiskQueue when installed), in one process; print "
        "records/s, ratios, fsyncs per record, the engine's targets with their verdicts "
        "and the native/pure-backend ratio. About 3 minutes with the defaults; one line "
        "per step on stderr.",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--size", choices=["all", "64", "cadf", "4096"], default="all",
                       help="record size: 64 bytes, the ~514-byte CADF event or 4 KiB, each "
                       "with every row; 'all' (default): every row for the CADF event, the "
                       "key rows for 64 bytes and 4 KiB")
    bench.add_argument("--records", type=_positive, default=None,
                       help="records per sustained row (default: enough for 8 rotations of "
                       "the default segment size, ~1 M CADF events; fewer gives no verdicts)")
    bench.add_argument("--reps", type=_positive, default=3,
                       help="interleaved repetitions per row; the median is shown (default 3)")
    bench.add_argument("--threads-seconds", type=_positive_seconds, default=None,
                       metavar="SECONDS", help="steady state the 16-thread durable row "
                       "counts (default 3; less gives that target no verdict)")
    bench.add_argument("--dir", default=None, metavar="PATH",
                       help="measure this disk: the run writes in a temporary directory "
                       "made inside PATH and removes it (default: the system temp dir)")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    # ---------------------------------------------------------------- operator tools
    verify = sub.add_parser(
        "verify", help="check every header, record, checksum, the checkpoint and dead letters",
        description="Check every segment header, every record frame and checksum, sequence "
        "continuity across segments, the consumer checkpoint against the segments and the "
        "dead-letter file. Read-only: safe while a writer runs; never changes a byte.",
        epilog=VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("dir", metavar="DIR", help="the log directory")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    dump = sub.add_parser(
        "dump", help="print every record (and damaged region) in order",
        description="One line per record: sequence number, segment, offset, length, "
        "checksum, and the payload (whole when it is JSON, else a preview). Damaged "
        "regions, torn tails and gaps are shown inline. Read-only. Exit status: 0, or 1 "
        "when a damaged region was shown, 2 on errors.",
    )
    dump.add_argument("dir", metavar="DIR", help="the log directory")
    dump.add_argument("--from", dest="from_seq", type=_non_negative, default=0,
                      metavar="SEQ", help="start at record SEQ (default 0)")
    dump.add_argument("--limit", type=_positive, default=None, metavar="N",
                      help="print at most N records")
    dump.add_argument("--json", action="store_true",
                      help="one JSON object per line (the payload as JSON when it is)")
    stats = sub.add_parser(
        "stats", help="pending records and bytes, oldest pending age, disk use",
        description="Pending records and bytes, the oldest pending record's age (from its "
        "payload's eventTime/time/timestamp field when it has one: frames carry no clock), "
        "segment count, disk bytes, limit and fill ratio. Read-only.",
    )
    stats.add_argument("dir", metavar="DIR", help="the log directory")
    stats.add_argument("--max-total-size", type=_byte_size, default=None, metavar="BYTES",
                       help="the writer's max_total_size (not stored on disk), for the fill "
                       "ratio; e.g. 1073741824 or 1G")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    repair = sub.add_parser(
        "repair", help="keep damaged bytes in the dead-letter file and make the log sound",
        description="Repair DIR: keep the bytes of every damaged region in "
        "deadletter.jsonl, then zero them; rewrite damaged segment headers from the file "
        "name; set aside segments with no readable record as NAME.damaged; record gaps; "
        "zero torn tails; rebuild a missing or damaged checkpoint at the oldest record "
        "(re-delivery, not loss). Refuses while another process holds the writer lock. "
        "`verify` after `repair` exits 0. Exit status: 0 repaired (or nothing to do), 1 "
        "damage left (see output), 2 could not run.",
    )
    repair.add_argument("dir", metavar="DIR", help="the log directory")
    repair.add_argument("--dry-run", action="store_true",
                        help="print what would be done; change nothing, take no lock")
    repair.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from segmentlog import bench

        return bench.main(args)
    tool = _TOOLS.get(args.command)
    if tool is None:  # pragma: no cover - argparse rejects unknown commands
        parser.error(f"unknown command {args.command}")
    shared = _shared_logs(args.dir)
    if shared is None:
        return _run_tool(args.command, tool, args)
    return _run_shared(args.command, tool, args, shared)


def _version_line() -> str:
    from segmentlog import __version__, backend

    return f"segmentlog {__version__} ({backend} backend, Python {platform.python_version()})"


# Module names ``python -m`` runs the command by.
_COMMAND_MODULES = ("segmentlog", "segmentlog.__main__", "segmentlog.cli")


def exit_if_command_line(exc: BaseException) -> None:
    """Exit with status 2 and ``exc``'s one-line reason when this process is the
    segmentlog command; return otherwise.

    ``exc`` stopped the import of the package (a bad ``SEGMENTLOG_BACKEND``, or ``native``
    without the C core). Python imports the package before any code of the command runs,
    so main() cannot catch it: segmentlog/__init__.py calls this, then re-raises for any
    other program.
    """
    if _is_command_line():
        sys.stderr.write(f"segmentlog: {_reason(exc)}\n")
        raise SystemExit(EXIT_ERROR)


def _is_command_line() -> bool:
    """``python -m segmentlog`` (while Python imports the package for ``-m``,
    ``sys.argv[0]`` is ``"-m"`` and the module's name is in ``sys.orig_argv``) or the
    ``segmentlog`` script."""
    if sys.argv[:1] == ["-m"]:
        args = sys.orig_argv[1:]
        for i, arg in enumerate(args):
            if arg == "-m":
                return i + 1 < len(args) and args[i + 1] in _COMMAND_MODULES
            if arg.startswith("-m"):
                return arg[2:] in _COMMAND_MODULES
        return False
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "segmentlog"


def _shared_logs(directory: str) -> list[str] | None:
    """The logs of a directory shared by several processes (FORMAT.md, "Shared
    directory"), or None when ``directory`` is one log."""
    from segmentlog.pool import LOGS_DIR, LogPool

    if not os.path.isdir(os.path.join(directory, LOGS_DIR)):
        return None
    return LogPool(directory).log_paths()


def _run_shared(name: str, tool: Callable[[argparse.Namespace], int],
                args: argparse.Namespace, logs: list[str]) -> int:
    """Run a tool on every log of a shared directory: one report per log (text: a
    heading each; --json: one object, ``{"logs": {path: report}}``); the exit status is
    the worst of theirs."""
    worst = EXIT_OK
    reports: dict[str, Any] = {}
    as_json = getattr(args, "json", False)
    for path in logs:
        one = argparse.Namespace(**{**vars(args), "dir": path})
        if as_json:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                status = _run_tool(name, tool, one)
            text = out.getvalue().strip()
            reports[path] = orjson.loads(text) if text.startswith("{") else {"output": text}
        else:
            print(f"== {path}")
            sys.stdout.flush()
            status = _run_tool(name, tool, one)
        worst = max(worst, status)
    if as_json:
        _print_json({"directory": args.dir, "logs": reports})
    else:
        outcome = {EXIT_OK: "ok", EXIT_DAMAGE: "damage found"}.get(worst, "errors")
        print(f"== {args.dir}: a shared directory of {len(logs)} log(s): {outcome}")
    return worst


# ------------------------------------------------------------------ operator tools


def _run_tool(name: str, tool: Callable[[argparse.Namespace], int],
              args: argparse.Namespace) -> int:
    """Run a tool; an expected failure is one line on stderr and exit status 2."""
    from segmentlog.errors import SegmentLogError

    try:
        return tool(args)
    except BrokenPipeError:
        # `segmentlog dump DIR | head`: the reader left; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (SegmentLogError, OSError) as exc:
        sys.stderr.write(f"segmentlog {name}: {_reason(exc)}\n")
        return EXIT_ERROR


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Progress:
    """``verify: 3/10 segments, 192 MiB`` on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int, nbytes: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        rate = nbytes / max(now - self.start, 1e-9) / 1e6
        sys.stderr.write(f"\r{self.label}: {done}/{total} segments, {nbytes >> 20} MiB, "
                         f"{rate:.0f} MB/s ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def _verify(args: argparse.Namespace) -> int:
    from segmentlog.examine import inspect

    progress = _Progress("verify")
    try:
        report = inspect(args.dir, progress)
    finally:
        progress.done()
    if args.json:
        _print_json(report.to_json())
        return EXIT_OK if report.ok else EXIT_DAMAGE
    rows = [["segment", "first_seq", "last_seq", "records", "bytes_used", "problems"]]
    for s in report.segments:
        rows.append([s.name, _opt(s.first_seq), _opt(s.last_seq), str(s.records),
                     str(s.used_bytes), str(len(s.problems))])
    lines = _table(rows, {1, 2, 3, 4, 5}) if report.segments else ["(no segment files)"]
    out = [lines[0]]
    for s, line in zip(report.segments, lines[1:], strict=True):
        out.append(line)
        out.extend(_problem_line(p, indent=True) for p in s.problems)
    others = list(report.problems)
    if others:
        out.append("other files:")
        out.extend(_problem_line(p, indent=True) for p in others)
    ck = report.checkpoint
    out.append(f"checkpoint: {ck if ck is not None else report.checkpoint_problem}"
               f" (reading starts at {report.read_from})")
    sm = report.summary()
    damage = [p for p in report.all_problems() if p.damage]
    out.append(
        f"summary: {sm['records']} records, {sm['pending']} pending ({sm['pending_bytes']} "
        f"bytes), {sm['bytes']} payload bytes in {len(report.segments)} segments "
        f"({sm['disk_bytes']} bytes on disk), {sm['damaged_records']} damaged records, "
        f"{sm['torn_tail_bytes']} torn-tail bytes, {report.deadletter_entries} dead-letter "
        "entries")
    out.append("result: intact" if report.ok else
               f"result: DAMAGED ({len(damage)} problem{'s' if len(damage) != 1 else ''}; "
               f"`segmentlog repair {args.dir}` keeps the damaged bytes and fixes the rest)")
    print("\n".join(out))
    return EXIT_OK if report.ok else EXIT_DAMAGE


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _problem_line(p: Any, indent: bool = False) -> str:
    where = p.segment if not indent else ""
    at = f"@{p.offset}" if p.offset is not None else ""
    tag = "DAMAGE" if p.damage else "info"
    text = f"{'  ' if indent else ''}{tag:6}  {p.kind:20} {where}{at:>8}  {p.detail}"
    if indent and p.segment and not p.segment.endswith(".seg"):
        text = f"  {tag:6}  {p.kind:20} {p.segment}{(' ' + at) if at else ''}  {p.detail}"
    return text


def _payload_text(payload: bytes, as_json: bool) -> tuple[str, Any]:
    """(human text, JSON value or None): the whole payload when it is JSON, else a
    preview of its first bytes."""
    stripped = payload.lstrip()
    if stripped[:1] in (b"{", b"[", b'"') or stripped[:1].isdigit():
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
        else:
            return orjson.dumps(value).decode(), value
    head = payload[:48]
    text = repr(head)[2:-1] + ("..." if len(payload) > 48 else "")
    return text, None


def _dump(args: argparse.Namespace) -> int:
    from segmentlog.examine import Problem, records

    shown = 0
    damaged = False
    write = sys.stdout.write
    events = records(args.dir, args.from_seq)  # not a log: fails here, before any output
    if not args.json:
        write(f"{'seq':>12}  {'segment':24}  {'offset':>10}  {'length':>8}  crc  payload\n")
    for ev in events:
        if isinstance(ev, Problem):
            damaged = damaged or ev.damage
            if args.json:
                write(orjson.dumps({"problem": ev.to_json()}).decode() + "\n")
            else:
                seqs = (f"{ev.first_seq}..{ev.resume_seq - 1}"
                        if ev.first_seq is not None and ev.resume_seq is not None
                        and ev.resume_seq > ev.first_seq else "-")
                crc = "BAD" if ev.damage else "-"
                write(f"{seqs:>12}  {ev.segment or '-':24}  {_opt(ev.offset):>10}  "
                      f"{_opt(ev.length):>8}  {crc:3}  !! {ev.kind}: {ev.detail}\n")
            continue
        if args.limit is not None and shown >= args.limit:
            break
        shown += 1
        text, value = _payload_text(ev.payload, args.json)
        if args.json:
            item: dict[str, Any] = {"seq": ev.seq, "segment": ev.segment, "offset": ev.offset,
                                    "length": ev.length, "crc_ok": True}
            if value is not None:
                item["payload"] = value
            else:
                item["payload_preview"] = text
            write(orjson.dumps(item).decode() + "\n")
        else:
            write(f"{ev.seq:>12}  {ev.segment:24}  {ev.offset:>10}  {ev.length:>8}  ok   "
                  f"{text}\n")
    sys.stdout.flush()
    return EXIT_DAMAGE if damaged else EXIT_OK


_TIME_KEYS = ("eventTime", "time", "timestamp", "@timestamp", "ts")


def payload_time(payload: bytes) -> tuple[float, str] | None:
    """(Unix time, field name) of a JSON payload's timestamp field, if it has one: the
    frames themselves carry no clock."""
    from segmentlog.cadf import parse_time

    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    for key in _TIME_KEYS:
        raw = value.get(key)
        if isinstance(raw, str):
            try:
                when = parse_time(raw)
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            return when.timestamp(), key
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0:
            t = float(raw)
            while t > 1e11:  # milliseconds, microseconds, nanoseconds since the epoch
                t /= 1000
            return t, key
    return None


def _stats(args: argparse.Namespace) -> int:
    from segmentlog.examine import inspect

    progress = _Progress("stats")
    try:
        report = inspect(args.dir, progress)
    finally:
        progress.done()
    now = time.time()
    oldest = report.first_pending()
    age = source = None
    if oldest is not None:
        found = payload_time(oldest[3])
        if found is not None:
            age, source = max(0.0, now - found[0]), f"payload {found[1]}"
    limit = args.max_total_size
    data = {
        "directory": report.directory,
        "pending_records": report.pending_records,
        "pending_bytes": report.pending_bytes,
        "oldest_pending_seq": oldest[1] if oldest else None,
        "oldest_pending_age_seconds": age,
        "oldest_pending_age_source": source,
        "checkpoint": report.checkpoint,
        "checkpoint_age_seconds": (max(0.0, now - report.checkpoint_time_ns / 1e9)
                                   if report.checkpoint_time_ns else None),
        "records": report.records,
        "next_seq": report.next_seq,
        "segments": len(report.segments),
        "segment_size": report.segment_size,
        "disk_bytes": report.disk_bytes,
        "max_total_size": limit,
        "fill_ratio": report.disk_bytes / limit if limit else None,
        "deadletter_entries": report.deadletter_entries,
        "deadletter_bytes": report.deadletter_bytes,
        "ok": report.ok,
    }
    if args.json:
        _print_json(data)
        return EXIT_OK
    width = max(map(len, data))
    for key, value in data.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return EXIT_OK


def _repair(args: argparse.Namespace) -> int:
    from segmentlog.repair import repair

    progress = _Progress("repair")
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        if not args.json:
            print(("would: " if args.dry_run else "done: ") + text)

    try:
        result = repair(args.dir, dry_run=args.dry_run, say=say, progress=progress)
    finally:
        progress.done()
    if args.json:
        _print_json(result.to_json())
    elif not lines:
        print("nothing to repair")
    if not args.json and not args.dry_run and result.after is not None:
        left = [p for p in result.after.all_problems() if p.damage]
        for p in left:
            print("left:", _problem_line(p))
        print("result: verify now finds the log intact" if not left else
              f"result: {len(left)} problem(s) could not be repaired")
    return EXIT_OK if result.ok else EXIT_DAMAGE


_TOOLS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _verify, "dump": _dump, "stats": _stats, "repair": _repair,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
