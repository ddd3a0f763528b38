"""Fuzzing whole log directories: the adversary of issue 15, kept in the repository.

Theory of operation
-------------------
A *template* is a real log written by :class:`SegmentLog` (small segments, a few hundred
records, part of them consumed and committed, consumed segments recycled). Its model is
exact: the payload written with every sequence number, and where every record's frame
lies (segment file, byte range covered by the checksum). Payloads start with
``rec:<seq>:`` and go on with random bytes, so a returned record names the sequence
number it was written with.

A *case* copies a template, applies one *mutation kind* (bit flips, overwrites,
truncation, deleted/renamed/duplicated segments, forged frames, damaged checkpoints and
dead-letter files, special files...) and computes, from byte ranges, exactly which
records it *touched*: a record is intact when some file holding a copy of its segment
still has the frame's checksummed bytes unchanged. It then drives the log through
open, partial read, commit, rewind, read, append, reopen, read, append; and, on a second
copy of the mutated directory, ``verify`` (segmentlog.examine), ``repair`` and a last
open. The checks, per case:

* **crash**: any exception that is not a :class:`SegmentLogError` (a raw ValueError,
  OSError, struct.error, AssertionError...), or the worker process dying;
* **hang**: a case is run in a worker process under a per-case alarm, and the parent
  kills the worker if even the alarm does not bring it back;
* **wrong_record**: a returned payload that is not byte for byte the one written with
  its sequence number (forged frames carry ``forged:<seq>:`` payloads, counted apart);
* **order**: sequence numbers (from the contents, and ``Batch.first_seq``/``last_seq``)
  not strictly increasing within and across batches; **batch_bounds** when a batch's
  ``first_seq``/``last_seq`` is a skipped number, not its first/last record's;
* **loss** (the loss amplification): intact records at or after the consumer's position
  that a read from there did not return, counted per record;
* **unopenable**, **append_refused**, **repair_refused**: a clear SegmentLogError where
  the log should have opened, appended or repaired;
* **stale_append**: an append after reopen numbered at or below a sequence number the
  reader already passed; **append_lost**: an acknowledged append not read back;
* **verify_silent**: ``verify`` finds the log intact although a pending record was
  touched (except where the format cannot tell: see ``_verify_must_fail``);
  **verify_refused**/**stats_refused**: ``segmentlog verify``/``stats --json`` exit 2;
  **verify_mismatch**: its exit status disagrees with segmentlog.examine;
* **forged_accepted**: a forged frame returned whose sequence number its segment could
  not hold (more records than fit before its offset).

Run a long hunt with ``python tests/fuzz_logdir.py --cases 100000 --seed 1``; replay one
case with ``--kind KIND --case N --seed S -v`` (the summary prints these for every
distinct failure). tests/test_fuzz_logdir.py runs a short budget per mutation kind.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------ templates


@dataclass(frozen=True)
class TemplateConfig:
    seed: int
    segment_size: int
    first: int  # records appended before consuming
    consume: int  # records read and committed
    then: int  # records appended after the commit (into recycled segments)
    recycle: bool
    base: int = 0  # sequence number of the first record (a checkpoint written ahead)


TEMPLATES = [
    TemplateConfig(1, 8192, 260, 90, 60, True),
    TemplateConfig(2, 8192, 200, 0, 0, True),
    TemplateConfig(3, 12288, 300, 150, 120, True),
    TemplateConfig(4, 16384, 240, 200, 40, False),
    TemplateConfig(5, 8192, 160, 40, 80, True, base=1000),
    TemplateConfig(6, 8192, 300, 299, 1, True),
]


@dataclass(frozen=True)
class Frame:
    segment: str  # file name of the segment the frame was written to
    offset: int  # where its header starts
    end: int  # offset + 24 + payload length: the bytes its checksum covers
    size: int  # with padding


@dataclass
class Template:
    config: TemplateConfig
    path: str
    files: dict[str, bytes]  # every file of the log directory after close
    payloads: dict[int, bytes]  # seq -> payload, every record written
    frames: dict[int, Frame]  # seq -> frame, records present in segment files
    by_segment: dict[str, list[int]]  # segment name -> sequence numbers, in order
    segments: list[str]  # segment names, ascending
    checkpoint: int  # the committed position the template's checkpoint holds
    next_seq: int


def record_payload(seq: int, rng: random.Random) -> bytes:
    n = rng.choice((0, 0, 1, 7, 8, 9, 17, 40, 63, 64, 100, 180, 250, 400))
    return b"rec:%d:" % seq + rng.randbytes(n)


def build_template(cfg: TemplateConfig, root: str) -> Template:
    from segmentlog import SegmentLog, checkpoint
    from segmentlog import _pure as pure
    from segmentlog._format import SEGMENT_HEADER_SIZE, parse_segment_name

    path = os.path.join(root, f"template-{cfg.seed}")
    rng = random.Random(cfg.seed)
    payloads: dict[int, bytes] = {}
    if cfg.base:
        os.makedirs(path)
        checkpoint.write(path, cfg.base, durable=False)
    with SegmentLog(path, segment_size=cfg.segment_size, fsync="never",
                    recycle=cfg.recycle) as log:
        for _ in range(cfg.first):
            seq = cfg.base + len(payloads)
            p = record_payload(seq, rng)
            assert log.append(p) == seq
            payloads[seq] = p
        done = 0
        while done < cfg.consume:
            b = log.read_batch(max_records=min(rng.randint(1, 40), cfg.consume - done))
            assert b.records
            log.commit(b)
            done += len(b)
        for _ in range(cfg.then):
            seq = cfg.base + len(payloads)
            p = record_payload(seq, rng)
            assert log.append(p) == seq
            payloads[seq] = p
        next_seq = cfg.base + len(payloads)
    files = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            files[name] = f.read()
    ckpt, problem = checkpoint.read(path)
    assert ckpt is not None, problem
    frames: dict[int, Frame] = {}
    by_segment: dict[str, list[int]] = {}
    segments = sorted(n for n in files if parse_segment_name(n) is not None)
    for name in segments:
        data = files[name]
        base = parse_segment_name(name)
        assert base is not None
        r = pure.scan(data, SEGMENT_HEADER_SIZE, len(data), base, 1 << 30)
        seqs = []
        for i, (off, n) in enumerate(zip(r.offsets, r.lengths, strict=True)):
            seq = base + i
            assert bytes(data[off : off + n]) == payloads[seq], (name, seq)
            frames[seq] = Frame(name, off - 24, off + n, (24 + n + 7) & ~7)
            seqs.append(seq)
        by_segment[name] = seqs
    # Every record from the oldest segment on is in exactly one segment, in order.
    present = sorted(frames)
    assert present == list(range(present[0], next_seq)), "template is not contiguous"
    return Template(cfg, path, files, payloads, frames, by_segment, segments, ckpt, next_seq)


# ------------------------------------------------------------------ the simulated directory


@dataclass
class SimFile:
    origin: str | None  # the template segment whose bytes this file holds, if any
    data: bytearray  # its bytes now
    touched: list[tuple[int, int]] = field(default_factory=list)  # ranges of changed bytes
    regular: bool = True
    resized: bool = False

    @property
    def size(self) -> int:
        return len(self.data)


class Plan:
    """The operations of one case, and what they do to the records (computed exactly)."""

    def __init__(self, tpl: Template, rng: random.Random) -> None:
        self.tpl = tpl
        self.rng = rng
        self.ops: list[tuple[Any, ...]] = []
        self.files: dict[str, SimFile] = {}
        for name, data in tpl.files.items():
            self.files[name] = SimFile(name if name in tpl.by_segment else None,
                                       bytearray(data))
        # The consumer position the format says the log must start at: the template's
        # checkpoint, unless a mutation rewrote it validly (the log cannot tell that from
        # a commit) or destroyed it (then every record still present is read again).
        self.checkpoint: int | None = tpl.checkpoint
        self.forged: dict[int, bool] = {}  # forged seq -> plausible (a segment can hold it)
        self.forged_at: list[tuple[str, int, int]] = []  # plausible ones: file, offset, seq
        self.notes: list[str] = []

    # -- operations (recorded, and simulated on self.files)

    def segs(self) -> list[str]:
        from segmentlog._format import parse_segment_name

        return sorted(n for n, f in self.files.items()
                      if f.regular and parse_segment_name(n) is not None)

    def write(self, name: str, off: int, data: bytes) -> None:
        f = self.files[name]
        off = max(0, min(off, f.size))
        data = data[: f.size - off]  # never extend a file: a write lands inside it
        if not data:
            return
        self.ops.append(("write", name, off, data))
        # Only bytes that change touch a record (a zero written over a zero does not).
        run = None
        for i, b in enumerate(data):
            if f.data[off + i] != b and run is None:
                run = off + i
            elif f.data[off + i] == b and run is not None:
                f.touched.append((run, off + i))
                run = None
        if run is not None:
            f.touched.append((run, off + len(data)))
        f.data[off : off + len(data)] = data

    def truncate(self, name: str, size: int) -> None:
        f = self.files[name]
        size = max(0, min(size, f.size))
        self.ops.append(("truncate", name, size))
        if size < f.size:
            f.touched.append((size, f.size))
            del f.data[size:]
            f.resized = True

    def unlink(self, name: str) -> None:
        self.ops.append(("unlink", name))
        del self.files[name]
        if name == "checkpoint":
            self.checkpoint = None

    def rename(self, a: str, b: str) -> None:
        self.ops.append(("rename", a, b))
        self.files[b] = self.files.pop(a)
        if a == "checkpoint":
            self.checkpoint = None

    def copy(self, a: str, b: str) -> None:
        self.ops.append(("copy", a, b))
        src = self.files[a]
        self.files[b] = SimFile(src.origin, bytearray(src.data), list(src.touched), True,
                                src.resized)

    def put(self, name: str, data: bytes) -> None:
        """Create or replace ``name`` with ``data`` (a foreign file, a checkpoint...)."""
        self.ops.append(("put", name, data))
        self.files[name] = SimFile(None, bytearray(data))

    def special(self, name: str, what: str) -> None:
        """Replace ``name`` by a FIFO, a directory or a dangling symlink."""
        self.ops.append(("special", name, what))
        self.files[name] = SimFile(None, bytearray(), regular=False)
        if name == "checkpoint":
            self.checkpoint = None

    def append_deadletter(self, lines: bytes) -> None:
        f = self.files.setdefault("deadletter.jsonl", SimFile(None, bytearray()))
        if not f.regular:
            raise NoTarget()  # an earlier mutation of a mixed case made it a FIFO...
        self.ops.append(("append", "deadletter.jsonl", lines))
        f.data += lines

    # -- what the operations did

    def intact(self, seq: int) -> bool:
        """Some file holding a copy of the record's segment still has the bytes its
        checksum covers unchanged, and the whole frame: a file cut inside a frame's
        padding leaves a frame the format calls truncated (it runs past the end)."""
        fr = self.tpl.frames[seq]
        return any(
            f.origin == fr.segment and f.regular and f.size >= fr.offset + fr.size
            and not any(a < fr.end and fr.offset < b for a, b in f.touched)
            for f in self.files.values())

    def touched(self) -> set[int]:
        return {s for s in self.tpl.frames if not self.intact(s)}


def _remove(path: str) -> None:
    """Remove whatever ``path`` is (a file, a FIFO, a symlink, a directory), if anything."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def apply(ops: list[tuple[Any, ...]], d: str) -> None:
    for op in ops:
        kind = op[0]
        if kind == "write":
            with open(os.path.join(d, op[1]), "r+b") as f:
                f.seek(op[2])
                f.write(op[3])
        elif kind == "truncate":
            os.truncate(os.path.join(d, op[1]), op[2])
        elif kind == "unlink":
            os.unlink(os.path.join(d, op[1]))
        elif kind == "rename":
            os.replace(os.path.join(d, op[1]), os.path.join(d, op[2]))
        elif kind == "copy":
            shutil.copyfile(os.path.join(d, op[1]), os.path.join(d, op[2]))
        elif kind == "put":
            p = os.path.join(d, op[1])
            _remove(p)
            with open(p, "wb") as f:
                f.write(op[2])
        elif kind == "append":
            with open(os.path.join(d, op[1]), "ab") as f:
                f.write(op[2])
        elif kind == "special":
            p = os.path.join(d, op[1])
            _remove(p)
            if op[2] == "fifo":
                os.mkfifo(p)
            elif op[2] == "dir":
                os.mkdir(p)
            else:
                os.symlink(os.path.join(d, "no-such-file"), p)
        else:  # pragma: no cover
            raise AssertionError(kind)


# ------------------------------------------------------------------ frames by hand


def forge_frame(seq: int, payload: bytes, flags: int = 0) -> bytes:
    """A frame with a valid checksum, built by hand (any u64 sequence number)."""
    from segmentlog._backend import impl
    from segmentlog._format import FRAME_HEADER, FRAME_MARKER

    head = FRAME_HEADER.pack(FRAME_MARKER, len(payload), seq, flags, 0)[:20]
    crc = impl.crc32c(payload, impl.crc32c(head))
    frame = head + struct.pack("<I", crc) + payload
    return frame + bytes(-len(frame) % 8)


def forged_payload(seq: int, rng: random.Random) -> bytes:
    return b"forged:%d:" % seq + rng.randbytes(rng.choice((0, 5, 30)))


def _plausible(plan: Plan, name: str, off: int, seq: int) -> bool:
    """Could the segment ``name`` hold a record ``seq`` at ``off``? Every frame before
    it takes 24 bytes or more, and sealed segments end below the next one's base."""
    from segmentlog._format import parse_segment_name

    base = parse_segment_name(name)
    assert base is not None
    segs = plan.segs()
    later = [parse_segment_name(n) for n in segs if n > name]
    if later and seq >= min(b for b in later if b is not None):
        return False
    return base <= seq <= base + (off - 32) // 24


# ------------------------------------------------------------------ mutation kinds


class NoTarget(Exception):
    """No file left for this mutation (an earlier one of a mixed case removed it)."""


def _segment_choice(plan: Plan, where: str = "any") -> str:
    segs = plan.segs()
    if not segs or (where == "sealed" and len(segs) < 2):
        raise NoTarget()
    if where == "last":
        return segs[-1]
    if where == "sealed":
        return plan.rng.choice(segs[:-1])
    return plan.rng.choice(segs)


def _frame_offset(plan: Plan, name: str) -> int | None:
    seqs = plan.tpl.by_segment.get(plan.files[name].origin or "", [])
    if not seqs:
        return None
    return plan.tpl.frames[plan.rng.choice(seqs)].offset


def _where(plan: Plan, name: str) -> int:
    """An offset in ``name``: in a frame, a header, padding, the segment header or the
    space after the records."""
    rng = plan.rng
    size = plan.files[name].size
    pick = rng.random()
    fo = _frame_offset(plan, name)
    if fo is not None and pick < 0.6:
        return fo + rng.choice((0, 4, 8, 12, 16, 20, 24, 25, rng.randrange(0, 64)))
    if pick < 0.7:
        return rng.randrange(0, 32)
    return rng.randrange(0, max(size, 1))


def m_bitflip(plan: Plan) -> None:
    for _ in range(plan.rng.choice((1, 1, 2, 3))):
        name = _segment_choice(plan)
        off = _where(plan, name)
        if off >= plan.files[name].size:
            continue
        old = plan.files[name].data[off]
        plan.write(name, off, bytes([old ^ (1 << plan.rng.randrange(8))]))


def m_overwrite_random(plan: Plan) -> None:
    name = _segment_choice(plan)
    plan.write(name, _where(plan, name), plan.rng.randbytes(plan.rng.randint(1, 64)))


def m_overwrite_zero(plan: Plan) -> None:
    name = _segment_choice(plan)
    plan.write(name, _where(plan, name), bytes(plan.rng.choice((1, 4, 8, 24, 100, 700, 2048))))


def m_overwrite_across(plan: Plan) -> None:
    """Damage spanning the boundary of two frames (or several frames)."""
    rng = plan.rng
    name = _segment_choice(plan)
    seqs = plan.tpl.by_segment.get(name, [])
    if len(seqs) < 2:
        return m_overwrite_random(plan)
    i = rng.randrange(len(seqs) - 1)
    fr = plan.tpl.frames[seqs[i]]
    start = rng.randrange(fr.offset, fr.offset + fr.size)
    n = rng.randint(fr.offset + fr.size - start + 1, fr.offset + fr.size - start + 300)
    data = bytes(n) if rng.random() < 0.4 else rng.randbytes(n)
    plan.write(name, start, data)


def m_header(plan: Plan) -> None:
    name = _segment_choice(plan)
    off = plan.rng.randrange(0, 32)
    plan.write(name, off, plan.rng.randbytes(plan.rng.randint(1, 32 - off)))


def m_truncate_last(plan: Plan) -> None:
    name = _segment_choice(plan, "last")
    size = plan.files[name].size
    plan.truncate(name, plan.rng.choice((0, 16, 32, plan.rng.randrange(32, size),
                                         plan.rng.randrange(32, size) & ~7)))


def m_truncate_sealed(plan: Plan) -> None:
    name = _segment_choice(plan, "sealed")
    size = plan.files[name].size
    plan.truncate(name, plan.rng.choice((0, 16, 32, plan.rng.randrange(32, size),
                                         plan.rng.randrange(32, size) & ~7)))


def m_delete_segment(plan: Plan) -> None:
    plan.unlink(_segment_choice(plan, plan.rng.choice(("last", "sealed", "any"))))


def _free_name(plan: Plan, lo: int, hi: int) -> str | None:
    from segmentlog._format import segment_name

    for _ in range(20):
        if hi <= lo:
            return None
        name = segment_name(plan.rng.randrange(lo, hi))
        if name not in plan.files:
            return name
    return None


def _bases(plan: Plan) -> list[int]:
    from segmentlog._format import parse_segment_name

    return [b for b in map(parse_segment_name, plan.segs()) if b is not None]


def m_rename_segment(plan: Plan) -> None:
    """A segment under another free name (inside another segment's range, in a gap,
    below the first or past the last). Its bytes are unchanged; its header still says
    its base."""
    rng = plan.rng
    name = _segment_choice(plan)
    bases = _bases(plan)
    last_end = plan.tpl.next_seq
    lo, hi = rng.choice(((bases[0] + 1, last_end + 50), (0, bases[0] or 1),
                         (last_end, last_end + 1000), (bases[-1] + 1, last_end)))
    new = _free_name(plan, lo, hi)
    if new is not None:
        plan.rename(name, new)


def m_duplicate_segment(plan: Plan) -> None:
    """A copy of a segment under another free name (its original stays)."""
    rng = plan.rng
    name = _segment_choice(plan)
    bases = _bases(plan)
    new = _free_name(plan, *rng.choice(((bases[0] + 1, plan.tpl.next_seq + 50),
                                        (plan.tpl.next_seq, plan.tpl.next_seq + 5000))))
    if new is not None:
        plan.copy(name, new)


def m_stray_copy_last_range(plan: Plan) -> None:
    """Issue 15 item 5: a copy of an old segment under a name inside the last segment's
    range."""
    segs = plan.segs()
    if len(segs) < 2:
        return m_duplicate_segment(plan)
    bases = _bases(plan)
    new = _free_name(plan, bases[-1] + 1, max(plan.tpl.next_seq, bases[-1] + 2))
    if new is not None:
        plan.copy(plan.rng.choice(segs[:-1]), new)


def m_swap_segments(plan: Plan) -> None:
    segs = plan.segs()
    if len(segs) < 2:
        return
    a, b = plan.rng.sample(segs, 2)
    plan.rename(a, "swap.tmpname")
    plan.rename(b, a)
    plan.rename("swap.tmpname", b)


def _forge_into(plan: Plan, name: str, seqs: list[int], off: int) -> None:
    data = b""
    pos = off
    for seq in seqs:
        plan.forged[seq] = _plausible(plan, name, pos, seq)
        if plan.forged[seq]:
            plan.forged_at.append((name, pos, seq))
        fr = forge_frame(seq, forged_payload(seq, plan.rng))
        data += fr
        pos += len(fr)
    plan.write(name, off, data)


def _forge_seq(plan: Plan) -> int:
    rng = plan.rng
    last = plan.tpl.next_seq
    return rng.choice((last + rng.randint(1, 40), last + rng.randint(1000, 10**6),
                       2**63 + rng.randint(0, 5), 2**64 - rng.randint(1, 3),
                       2**64 - rng.randint(4, 100)))


def _forge_offset(plan: Plan, name: str) -> int:
    rng = plan.rng
    seqs = plan.tpl.by_segment.get(plan.files[name].origin or "", [])
    if seqs and rng.random() < 0.5:
        return plan.tpl.frames[rng.choice(seqs)].offset  # over a record
    end = plan.tpl.frames[seqs[-1]].offset + plan.tpl.frames[seqs[-1]].size if seqs else 32
    return min(end + rng.choice((0, 0, 8, 64)), plan.files[name].size - 64) & ~7  # after them


def m_forge_high_last(plan: Plan) -> None:
    """Issue 15 item 7: a valid frame with a higher (up to 2**64-1) sequence number in
    the last segment."""
    name = _segment_choice(plan, "last")
    seq = _forge_seq(plan)
    _forge_into(plan, name, [s for s in (seq, seq + 1) if s < 2**64][: plan.rng.randint(1, 2)],
                _forge_offset(plan, name))


def m_forge_high_sealed(plan: Plan) -> None:
    name = _segment_choice(plan, "sealed")
    _forge_into(plan, name, [_forge_seq(plan)], _forge_offset(plan, name))


def m_forge_misdirected(plan: Plan) -> None:
    """Issue 15 item 7: a misdirected write: real frames of one segment copied over
    another segment at an 8-aligned offset."""
    rng = plan.rng
    segs = [n for n in plan.segs() if plan.tpl.by_segment.get(n)]
    if len(segs) < 2:
        return
    src, dst = rng.sample(segs, 2)
    seqs = plan.tpl.by_segment[src]
    i = rng.randrange(len(seqs))
    n = rng.randint(1, 6)
    a = plan.tpl.frames[seqs[i]].offset
    last = plan.tpl.frames[seqs[min(i + n, len(seqs)) - 1]]
    data = plan.tpl.files[src][a : last.offset + last.size]
    plan.write(dst, _forge_offset(plan, dst), data)


def m_forge_low(plan: Plan) -> None:
    """Valid frames with old (already used) sequence numbers: stale bytes."""
    name = _segment_choice(plan)
    _forge_into(plan, name, [plan.rng.randint(0, max(plan.tpl.checkpoint, 1))],
                _forge_offset(plan, name))


def _ckpt(seq: int, crc_ok: bool = True) -> bytes:
    from segmentlog import checkpoint

    data = checkpoint.encode(seq)
    return data if crc_ok else data[:-4] + bytes(b ^ 0xFF for b in data[-4:])


def m_checkpoint(plan: Plan) -> None:
    rng = plan.rng
    tpl = plan.tpl
    first = min(tpl.frames)
    what = rng.choice(("bad_crc", "ahead", "behind", "huge", "max", "short", "garbage",
                       "deleted", "empty"))
    plan.notes.append(f"checkpoint {what}")
    if what == "bad_crc":
        plan.put("checkpoint", _ckpt(tpl.checkpoint, crc_ok=False))
        plan.checkpoint = None
    elif what == "ahead":
        v = rng.randint(tpl.checkpoint, tpl.next_seq)
        plan.put("checkpoint", _ckpt(v))
        plan.checkpoint = v
    elif what == "behind":
        v = rng.randint(0, max(tpl.checkpoint, first))
        plan.put("checkpoint", _ckpt(v))
        plan.checkpoint = v
    elif what == "huge":
        v = tpl.next_seq + rng.randint(1, 10**9)
        plan.put("checkpoint", _ckpt(v))
        plan.checkpoint = v
    elif what == "max":
        v = 2**64 - rng.randint(1, 10)
        plan.put("checkpoint", _ckpt(v))
        plan.checkpoint = v
    elif what == "short":
        plan.put("checkpoint", _ckpt(tpl.checkpoint)[: rng.randrange(28)])
        plan.checkpoint = None
    elif what == "garbage":
        plan.put("checkpoint", rng.randbytes(28))
        plan.checkpoint = None
    elif what == "empty":
        plan.put("checkpoint", b"")
        plan.checkpoint = None
    else:
        plan.unlink("checkpoint")


def m_deadletter(plan: Plan) -> None:
    """Issue 15 item 4: damaged dead-letter lines. The file is a report: no content of it
    may stop the log from opening or change what it returns."""
    rng = plan.rng
    # A mixed case may have removed every segment already: any name will do then.
    seg = rng.choice(plan.segs() or ["00000000000000000000.seg"])
    lines = [
        b"{not json\n",
        b"[1, 2, 3]\n",
        b"42\n",
        b'"a string"\n',
        b"null\n",
        b'{"segment": "%s", "offset": "12"}\n' % seg.encode(),
        b'{"segment": "%s", "offset": 1.5}\n' % seg.encode(),
        b'{"segment": "%s", "offset": null}\n' % seg.encode(),
        b'{"segment": "%s", "offset": [1]}\n' % seg.encode(),
        b'{"segment": "%s", "offset": %d}\n' % (seg.encode(), 2**70),
        b'{"segment": "%s", "offset": %d}\n' % (seg.encode(), -(2**70)),
        b'{"segment": 7, "offset": 32}\n',
        b'{"segment": {"a": 1}, "offset": 32}\n',
        b'{"offset": 32}\n',
        b"\xff\xfe\x00garbage\n",
        b"",  # a torn last line (no newline) below
        b'{"segment": "%s", "offset": 32, "kind": "bad_crc"' % seg.encode(),
    ]
    chosen = rng.sample(lines, rng.randint(1, 4))
    plan.append_deadletter(b"".join(chosen))


def m_other_files(plan: Plan) -> None:
    """Files that hold no records: the lock deleted, foreign files, stale temp files and
    prepared segments with garbage. None of it may change what the log returns."""
    from segmentlog._format import segment_name

    rng = plan.rng
    what = rng.choice(("lock", "foreign", "tmp", "prep", "quarantine", "odd_names"))
    plan.notes.append(what)
    if what == "lock" and "lock" in plan.files:
        plan.unlink("lock")
    elif what == "foreign":
        plan.put(rng.choice(("notes.seg", "README", "1.seg", segment_name(5) + ".bak")),
                 rng.randbytes(100))
    elif what == "tmp":
        plan.put(rng.choice(("checkpoint.tmp", segment_name(0) + ".tmp", "x.tmp")),
                 rng.randbytes(50))
    elif what == "prep":
        plan.put(rng.choice(("next.prep", "spare.prep")), rng.randbytes(rng.choice((0, 8192))))
    elif what == "quarantine":
        plan.put(segment_name(rng.randrange(10**6)) + ".damaged", rng.randbytes(64))
    else:
        plan.put(rng.choice(("0000000000000000000a.seg", "000000000000000000001.seg",
                             "0000000000000000000.seg", "-0000000000000000001.seg")),
                 rng.randbytes(64))


def m_special(plan: Plan) -> None:
    """A FIFO, a directory or a dangling symlink named like a segment, the checkpoint or
    the dead-letter file (hangs are contained by the worker's alarm)."""
    from segmentlog._format import segment_name

    rng = plan.rng
    what = rng.choice(("fifo", "dir", "symlink"))
    bases = _bases(plan) or [plan.tpl.next_seq]
    where = rng.choice(("new_segment", "new_segment", "checkpoint", "deadletter.jsonl"))
    if where == "new_segment":
        name = rng.choice((segment_name(plan.tpl.next_seq + rng.randint(0, 100)),
                           _free_name(plan, bases[0] + 1, plan.tpl.next_seq) or
                           segment_name(plan.tpl.next_seq)))
    else:
        name = where
    plan.notes.append(f"{what} as {name}")
    plan.special(name, what)


def m_none(plan: Plan) -> None:
    """The control: nothing changed, so every check must pass."""


KINDS: dict[str, Callable[[Plan], None]] = {
    "none": m_none,
    "bitflip": m_bitflip,
    "overwrite_random": m_overwrite_random,
    "overwrite_zero": m_overwrite_zero,
    "overwrite_across": m_overwrite_across,
    "header": m_header,
    "truncate_last": m_truncate_last,
    "truncate_sealed": m_truncate_sealed,
    "delete_segment": m_delete_segment,
    "rename_segment": m_rename_segment,
    "duplicate_segment": m_duplicate_segment,
    "stray_copy_last_range": m_stray_copy_last_range,
    "swap_segments": m_swap_segments,
    "forge_high_last": m_forge_high_last,
    "forge_high_sealed": m_forge_high_sealed,
    "forge_misdirected": m_forge_misdirected,
    "forge_low": m_forge_low,
    "checkpoint": m_checkpoint,
    "deadletter": m_deadletter,
    "other_files": m_other_files,
    "special": m_special,
}
MIXED = "mixed"  # two to four mutations of different kinds in one case
ALL_KINDS = [*KINDS, MIXED]


# ------------------------------------------------------------------ running one case


class CaseHang(BaseException):
    """The per-case alarm fired (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, outcome: Outcome | None = None) -> None:
        super().__init__()
        self.outcome = outcome


_ALARM = [0]  # the worker's per-case alarm, in seconds (0 outside a worker: no alarm)


@dataclass
class Failure:
    check: str
    phase: str
    detail: str
    where: str = ""  # the innermost segmentlog frame of an exception

    def key(self) -> str:
        detail = re.sub(r"[0-9]+", "N", re.sub(r"/\S*/", "", self.detail))
        return f"{self.check}|{self.phase}|{self.where}|{detail}"


@dataclass
class Outcome:
    kind: str
    case: int
    seed: int
    failures: list[Failure] = field(default_factory=list)
    loss: int = 0  # intact pending records not returned (the loss amplification)
    touched: int = 0  # pending records the mutation touched (lost for a reason)
    loss_cannot_tell: int = 0  # intact records hidden by a forged frame they cannot tell
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "case": self.case, "seed": self.seed, "loss": self.loss,
                "touched": self.touched, "loss_cannot_tell": self.loss_cannot_tell,
                "notes": self.notes,
                "failures": [f.__dict__ for f in self.failures]}


def _refused(chk: Any, out: Any, phase: str, exc: Exception, refusals: dict[str, str]) -> None:
    """A SegmentLogError in ``phase``: a failure, unless the format says it is right."""
    if phase.startswith("append") and chk.passed >= 2**64 - 64:
        out.notes.append(f"sequence space exhausted, append refused: {exc}")
    elif getattr(exc, "kind", None) == "special_file":
        # By design (FORMAT.md, regular files only): a special file under a name the log
        # owns is refused with an error naming it and the fix, before anything changes;
        # nothing is lost (the file store's pool takes another log).
        out.notes.append(f"refused clearly: {exc}"[:300])
    else:
        chk.fail(refusals.get(phase, "refused"), phase, f"{type(exc).__name__}: {exc}",
                 _innermost(exc))


def _innermost(exc: BaseException) -> str:
    """Where ``exc`` came from: the innermost frame in segmentlog (or the last frame)."""
    tb = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in tb if os.sep + "segmentlog" + os.sep in f.filename] or list(tb)
    if not ours:
        return type(exc).__name__
    return f"{type(exc).__name__} at {os.path.basename(ours[-1].filename)}:{ours[-1].name}"


class _Checker:
    """Checks the records one read stream returns against the model."""

    def __init__(self, tpl: Template, plan: Plan, out: Outcome, new: dict[bytes, int]) -> None:
        self.tpl, self.plan, self.out, self.new = tpl, plan, out, new
        self.passed = -1  # the highest sequence number any reader passed

    def fail(self, check: str, phase: str, detail: str, where: str = "") -> None:
        self.out.failures.append(Failure(check, phase, detail, where))

    def seq_of(self, payload: bytes, phase: str) -> int | None:
        """The sequence number the payload was written with, checking its bytes."""
        try:
            tag, num, _ = payload.split(b":", 2)
            seq = int(num)
        except ValueError:
            self.fail("wrong_record", phase, f"unknown payload {payload[:40]!r}")
            return None
        if tag == b"rec":
            if self.tpl.payloads.get(seq) != payload:
                self.fail("wrong_record", phase, f"record {seq} is not the one written")
            return seq
        if tag == b"new":
            if payload not in self.new:
                self.fail("wrong_record", phase, f"unknown appended record {payload[:30]!r}")
                return None
            return self.new[payload]
        if tag == b"forged":
            if not self.plan.forged.get(seq, False):
                self.fail("forged_accepted", phase,
                          f"forged frame {seq} returned: its segment cannot hold it there")
            else:
                self.out.notes.append(f"plausible forged frame {seq} returned")
            return seq
        self.fail("wrong_record", phase, f"unknown payload {payload[:40]!r}")
        return None

    def read_stream(self, log: Any, phase: str, limit: int | None = None,
                    sizes: tuple[int, int] = (1, 64)) -> tuple[list[int], list[Any]]:
        """Read batches until empty (or ``limit`` records); return the sequence numbers
        and the batches, checking contents and order."""
        seqs: list[int] = []
        batches = []
        prev = last_seq = -1
        rng = self.plan.rng
        guard = 0
        while limit is None or len(seqs) < limit:
            guard += 1
            if guard > 100_000:
                self.fail("hang", phase, "read_batch never returned an empty batch")
                break
            b = log.read_batch(max_records=rng.randint(*sizes))
            if not b.records:
                break
            batches.append(b)
            got = [self.seq_of(p, phase) for p in b.records]
            known = [s for s in got if s is not None]
            for s in known:
                if s <= prev:
                    self.fail("order", phase, f"sequence {s} after {prev}")
                prev = max(prev, s)
            if b.first_seq <= last_seq or b.last_seq < b.first_seq:
                self.fail("order", phase, f"batch {b.first_seq}..{b.last_seq} after a batch "
                          f"ending at {last_seq}")
            last_seq = b.last_seq
            # A batch's bounds name its first and last records (numbers skipped before
            # or after them belong to no record of the batch).
            if got[-1] is not None and b.last_seq != got[-1]:
                kind = "batch_bounds" if b.last_seq > got[-1] else "order"
                self.fail(kind, phase,
                          f"batch last_seq {b.last_seq} but its last record is {got[-1]}")
            if got[0] is not None and b.first_seq != got[0]:
                kind = "batch_bounds" if b.first_seq < got[0] else "order"
                self.fail(kind, phase,
                          f"batch first_seq {b.first_seq} but its first record is {got[0]}")
            seqs.extend(known)
            self.passed = max(self.passed, b.last_seq, *known)
        return seqs, batches

    def expect(self, seqs: list[int], lo: int, hi: int | None, phase: str) -> None:
        """Every intact record in [lo, hi) must be among ``seqs``: count the others."""
        got = set(seqs)
        missing = [s for s in self.tpl.frames
                   if s >= lo and (hi is None or s < hi) and s not in got
                   and self.plan.intact(s)]
        # The format cannot tell a forged frame the segment could hold (checksum sound,
        # a number its position allows) from a record: the records it hides (after it
        # in the same file, lower numbers) are lost for a reason; counted apart.
        hidden = [s for s in missing if any(
            name == self.tpl.frames[s].segment and off < self.tpl.frames[s].offset and f > s
            for name, off, f in self.plan.forged_at)]
        if hidden:
            self.out.notes.append(f"{phase}: {len(hidden)} record(s) after a plausible "
                                  "forged frame not returned (the format cannot tell)")
            self.out.loss_cannot_tell += len(hidden)
            missing = [s for s in missing if s not in set(hidden)]
        if missing:
            self.out.loss += len(missing)
            self.fail("loss", phase, f"{len(missing)} intact record(s) not returned, first "
                      f"{min(missing)}" + self._pattern(missing, lo, hi))

    def _pattern(self, missing: list[int], lo: int, hi: int | None) -> str:
        from segmentlog._format import segment_name

        """Tag the loss of issue 15 item 1: the reader finds its start position by counting
        records from the start of its segment, so N damaged records of that segment below
        the start make it skip the first N intact records at or after it."""
        base = max((b for b in self._bases() if b <= lo), default=None)
        if base is None:
            return ""
        # Damage below the start in its segment: touched records, or a forged frame (the
        # log skips the numbers it jumps over, more than the records it damaged).
        name = segment_name(base)
        damaged = any(base <= s < lo for s in self.plan.touched()) or any(
            op[0] == "write" and op[1] == name and op[2] < self._offset_of(lo)
            for op in self.plan.ops)
        expected = sorted(s for s in self.tpl.frames if s >= lo and (hi is None or s < hi)
                          and self.plan.intact(s))
        if damaged and sorted(missing) == expected[: len(missing)]:
            return " (the first ones after the start: item 1 pattern)"
        return ""

    def _offset_of(self, seq: int) -> int:
        fr = self.tpl.frames.get(seq)
        return fr.offset if fr is not None else 1 << 62

    def _bases(self) -> list[int]:
        from segmentlog._format import parse_segment_name

        return [b for b in map(parse_segment_name, self.tpl.segments) if b is not None]


def _verify_must_fail(tpl: Template, plan: Plan, pending: set[int]) -> bool:
    """Must ``verify`` report damage? Yes when a pending record was touched, except where
    the bytes cannot tell damage from a log that simply ended there: the touched records
    are the last ones of the last segment, that segment kept its size (a crash cuts short
    the last write, or loses unsynced tail records, leaving exactly this) or was deleted
    as a whole (a trailing segment that is gone leaves no trace)."""
    if not pending:
        return False
    last = tpl.segments[-1]
    tail = tpl.by_segment[last]
    if not pending <= set(tail):
        return True
    if min(pending) < max(tail) and any(plan.intact(s) for s in tail if s > min(pending)):
        return True  # an intact record after the damage: damage in the middle
    f = plan.files.get(last)
    if f is None:
        return False
    return f.resized or not f.regular or f.origin != last


def run_case(tpl: Template, kind: str, case: int, seed: int, work: str) -> Outcome:
    from segmentlog import SegmentLog, cli
    from segmentlog.errors import SegmentLogError
    from segmentlog.examine import inspect
    from segmentlog.repair import repair

    rng = random.Random(f"{seed}/{kind}/{case}")
    out = Outcome(kind, case, seed)
    plan = Plan(tpl, rng)
    if kind == MIXED:
        for k in rng.sample(sorted(KINDS), rng.randint(2, 4)):
            out.notes.append(k)
            with contextlib.suppress(NoTarget):
                KINDS[k](plan)
    else:
        try:
            KINDS[kind](plan)
        except NoTarget:
            out.notes.append("no target for this kind in this template: nothing mutated")
    out.notes.extend(plan.notes)
    for op in plan.ops:
        out.notes.append(" ".join(str(x) if not isinstance(x, bytes) else f"{len(x)}B"
                                  for x in op))
    new: dict[bytes, int] = {}
    chk = _Checker(tpl, plan, out, new)
    ckpt = plan.checkpoint if plan.checkpoint is not None else 0
    touched = plan.touched()
    pending_touched = {s for s in touched if s >= ckpt}
    out.touched = len(pending_touched)
    policy = rng.choice(("never", "never", "interval", "always"))
    out.notes.append(f"fsync={policy}")

    dirs = []
    for i in (1, 2):
        d = os.path.join(work, f"case{i}")
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d)
        for name, data in tpl.files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        apply(plan.ops, d)
        dirs.append(d)

    phase = "open"
    # Records below a sound checkpoint are consumed: no append may be numbered there. A
    # checkpoint at or above SEQ_LIMIT is damage by the format (re-delivery from the
    # oldest record), not a position the reader passed.
    from segmentlog._format import SEQ_LIMIT

    chk.passed = (plan.checkpoint - 1 if plan.checkpoint is not None
                  and plan.checkpoint < SEQ_LIMIT else -1)

    def new_payload() -> bytes:
        return b"new:%d:" % len(new) + rng.randbytes(rng.choice((0, 9, 50)))

    def append_some(log: Any, n: int, phase: str) -> list[int]:
        seqs: list[int] = []
        for _ in range(n):
            p = new_payload()
            seq = log.append(p)
            new[p] = seq
            if seq <= chk.passed:
                chk.fail("stale_append", phase,
                         f"append got {seq}, at or below {chk.passed} the reader passed")
            if seqs and seq <= seqs[-1]:
                chk.fail("order", phase, f"append got {seq} after {seqs[-1]}")
            seqs.append(seq)
        return seqs

    refusals = {"open": "unopenable", "reopen": "unopenable", "append": "append_refused",
                "append2": "append_refused", "repair": "repair_refused",
                "open_after_repair": "unopenable"}
    log = None
    hung = False
    try:
        # -- session 1: open, read part, commit part, rewind, read all, append, read back
        phase = "open"
        log = SegmentLog(dirs[0], segment_size=tpl.config.segment_size, fsync=policy)
        phase = "read"
        pending_n = len([s for s in tpl.frames if s >= ckpt])
        part, batches = chk.read_stream(log, "read", limit=rng.randint(0, pending_n))
        boundary = ckpt
        if batches:
            b = rng.choice(batches)
            phase = "commit"
            log.commit(b)
            boundary = b.last_seq + 1
            chk.expect(part, ckpt, boundary, "read")
        phase = "rewind"
        if rng.random() < 0.8:
            log.rewind()
            phase = "read_after_rewind"
            rest, _ = chk.read_stream(log, phase)
            chk.expect(rest, max(boundary, ckpt), None, phase)
        else:
            # No rewind: read on from where the partial read stopped.
            phase = "read_on"
            rest, _ = chk.read_stream(log, phase)
            chk.expect(part + rest, ckpt, None, phase)
        phase = "append"
        appended = append_some(log, rng.randint(1, 20), phase)
        phase = "read_appended"
        got, _ = chk.read_stream(log, phase)
        if got != appended:
            chk.fail("append_lost", phase, f"appended {appended[:3]}.. read back {got[:3]}..")
        with contextlib.suppress(Exception):
            log.stats()
        phase = "close"
        log.close()
        log = None
        # -- session 2: reopen, read everything from the committed position, append
        phase = "reopen"
        log = SegmentLog(dirs[0], segment_size=tpl.config.segment_size, fsync=policy)
        phase = "read_after_reopen"
        again, _ = chk.read_stream(log, phase)
        chk.expect(again, max(boundary, ckpt), None, phase)
        lost_new = [s for s in appended if s not in set(again)]
        if lost_new:
            chk.fail("append_lost", phase, f"{len(lost_new)} appended record(s) not read "
                     f"after reopen, first {lost_new[0]}")
        phase = "append2"
        appended2 = append_some(log, 3, phase)
        phase = "read_appended2"
        got, _ = chk.read_stream(log, phase)
        if got != appended2:
            chk.fail("append_lost", phase, f"appended {appended2} read back {got}")
        phase = "stats"
        log.stats()
        phase = "close2"
        log.close()
        log = None
    except CaseHang as exc:
        # Its threads may be stuck: closing could hang again. The second copy is still
        # verified and repaired (under a fresh alarm); the worker is replaced after.
        log = None
        chk.fail("hang", phase, "the per-case alarm fired", _innermost(exc))
        hung = True
        signal.alarm(_ALARM[0])
    except SegmentLogError as exc:
        _refused(chk, out, phase, exc, refusals)
    except Exception as exc:
        chk.fail("crash", phase, f"{type(exc).__name__}: {exc}"[:300], _innermost(exc))
    finally:
        if log is not None:
            with contextlib.suppress(Exception):
                log.close()

    # -- copy 2: verify, repair, verify, open and read everything
    log = None
    try:
        phase = "verify"
        report = inspect(dirs[1])
        if not report.ok and not pending_touched and plan.checkpoint is not None \
                and kind in ("deadletter", "other_files"):
            out.notes.append("verify reports damage without a touched record")
        if report.ok and _verify_must_fail(tpl, plan, pending_touched):
            chk.fail("verify_silent", phase, f"verify exits 0 with {len(pending_touched)} "
                     f"pending record(s) touched, first {min(pending_touched)}")
        # The command line (python -m segmentlog verify/stats): the same answer as an
        # exit status, 2 only for a clear refusal, never a traceback.
        for tool in ("verify", "stats"):
            phase = f"cli_{tool}"
            sink = io.StringIO()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                rc = cli.main([tool, "--json", dirs[1]])
            if rc == 2:
                chk.fail(f"{tool}_refused", phase, sink.getvalue().strip()[-200:])
            elif tool == "verify" and rc != (0 if report.ok else 1):
                chk.fail("verify_mismatch", phase, f"exit {rc} but inspect ok={report.ok}")
        phase = "repair"
        result = repair(dirs[1])
        phase = "verify_after_repair"
        if not inspect(dirs[1]).ok:
            out.notes.append("verify after repair still reports damage")
        _ = result
        phase = "open_after_repair"
        log = SegmentLog(dirs[1], segment_size=tpl.config.segment_size, fsync="never")
        phase = "read_after_repair"
        seqs, _ = chk.read_stream(log, phase, sizes=(100, 1000))
        chk.expect(seqs, ckpt, None, phase)
        log.close()
        log = None
    except CaseHang as exc:
        # Its threads may be stuck: closing could hang again. The second copy is still
        # verified and repaired (under a fresh alarm); the worker is replaced after.
        log = None
        chk.fail("hang", phase, "the per-case alarm fired", _innermost(exc))
        hung = True
        signal.alarm(_ALARM[0])
    except SegmentLogError as exc:
        _refused(chk, out, phase, exc, refusals)
    except Exception as exc:
        chk.fail("crash", phase, f"{type(exc).__name__}: {exc}"[:300], _innermost(exc))
    finally:
        if log is not None:
            with contextlib.suppress(Exception):
                log.close()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    if hung:
        raise CaseHang(out)
    # A failure repeated in every phase counts once per (check, phase).
    seen = set()
    unique = []
    for fail in out.failures:
        if (fail.check, fail.phase, fail.detail) not in seen:
            seen.add((fail.check, fail.phase, fail.detail))
            unique.append(fail)
    out.failures = unique
    return out


# ------------------------------------------------------------------ the worker process


class _FifoWatch:
    """Linux: a case blocked opening or reading a FIFO never comes back, so do not wait
    for the alarm: when the main thread sleeps in the kernel's FIFO wait for half a
    second, send it SIGALRM at once (the alarm stays the rule for every other hang)."""

    WAITS = frozenset({"wait_for_partner", "fifo_open", "pipe_read", "pipe_write",
                       "pipe_wait"})

    def __init__(self) -> None:
        self.armed = False
        self.main = threading.main_thread().ident
        path = f"/proc/self/task/{threading.get_native_id()}/wchan"
        if not os.path.exists(path):
            return
        threading.Thread(target=self._run, args=(path,), daemon=True).start()

    def _run(self, path: str) -> None:
        blocked = 0
        while True:
            time.sleep(0.05)
            try:
                with open(path) as f:
                    wchan = f.read().strip()
            except OSError:
                return
            blocked = blocked + 1 if self.armed and wchan in self.WAITS else 0
            if blocked >= 10 and self.main is not None:
                # The handler raises CaseHang in the main thread, which leaves the wait.
                blocked = 0
                signal.pthread_kill(self.main, signal.SIGALRM)


def _guard(alarm: int) -> _FifoWatch:
    """Turn SIGALRM into CaseHang and watch for FIFO waits; the caller arms both."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseHang()

    signal.signal(signal.SIGALRM, on_alarm)
    _ALARM[0] = alarm
    return _FifoWatch()


def _worker(root: str, alarm: int) -> int:
    """Run cases named on stdin ("kind case seed" per line), one JSON outcome per line on
    the original stdout. Anything the library prints goes to stderr."""
    logging.getLogger("segmentlog").setLevel(logging.CRITICAL + 1)
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    watch = _guard(alarm)
    templates: dict[int, Template] = {}
    os.makedirs(root, exist_ok=True)
    try:
        for line in sys.stdin:
            kind, case_s, seed_s = line.split()
            case, seed = int(case_s), int(seed_s)
            t = random.Random(f"{seed}/{kind}/{case}/template").randrange(len(TEMPLATES))
            work = os.path.join(root, "work")
            os.makedirs(work, exist_ok=True)
            signal.alarm(alarm)
            watch.armed = True
            try:
                if t not in templates:
                    templates[t] = build_template(TEMPLATES[t], root)
                out = run_case(templates[t], kind, case, seed, work)
            except Exception:
                # run_case catches what the library raises: this is the harness's own bug.
                out = Outcome(kind, case, seed, [
                    Failure("harness_error", "?", traceback.format_exc()[-600:])])
            except CaseHang as exc:
                out = exc.outcome or Outcome(kind, case, seed, [
                    Failure("hang", "?", f"no answer in {alarm} s", _innermost(exc))])
                results.write(json.dumps(out.to_json()) + "\n")
                results.flush()
                return 3  # threads may be stuck: the parent starts a fresh worker
            finally:
                watch.armed = False
                signal.alarm(0)
            results.write(json.dumps(out.to_json()) + "\n")
            results.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


class Runner:
    """Feeds cases to a worker process; a worker that does not answer within the hard
    timeout is killed (a hang), one that dies is a crash; either is replaced."""

    def __init__(self, scratch: str | None = None, alarm: int = 20, verbose: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.scratch = scratch or _default_scratch()
        self.alarm = alarm
        self.verbose = verbose
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.root: str | None = None  # the worker's directory, removed with it

    def _start(self) -> subprocess.Popen[str]:
        import segmentlog

        self.root = tempfile.mkdtemp(prefix="fuzz-logdir-", dir=self.scratch)

        env = dict(os.environ if self.env is None else self.env)
        # The worker tests the same segmentlog this process imported.
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(segmentlog.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        return subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--scratch", self.root,
             "--alarm", str(self.alarm)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if self.verbose else subprocess.DEVNULL, text=True, env=env)

    def run(self, kind: str, case: int, seed: int) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{kind} {case} {seed}\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        # Building a template can take a while under the pure backend: allow for it.
        ready, _, _ = select.select([proc.stdout], [], [], 2 * self.alarm + 60)
        line = proc.stdout.readline() if ready else ""
        if line:
            out = Outcome(kind, case, seed)
            data = json.loads(line)
            out.loss, out.touched, out.notes = data["loss"], data["touched"], data["notes"]
            out.loss_cannot_tell = data["loss_cannot_tell"]
            out.failures = [Failure(**f) for f in data["failures"]]
            if any(f.check == "hang" for f in out.failures):
                self.close()
            return out
        if ready:  # EOF: the worker died
            rc = proc.wait()
            self.close()
            return Outcome(kind, case, seed, [Failure("crash", "worker",
                                                      f"worker exited with {rc}")])
        self.close()
        return Outcome(kind, case, seed, [Failure("hang", "worker",
                                                  "the worker did not answer; killed")])

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    if f is not None:
                        f.close()
            self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_scratch() -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


# ------------------------------------------------------------------ summaries


@dataclass
class Summary:
    cases: int = 0
    per_kind: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    distinct: dict[str, tuple[Failure, Outcome, int]] = field(default_factory=dict)

    def add(self, out: Outcome) -> None:
        self.cases += 1
        c = self.per_kind[out.kind]
        c["cases"] += 1
        c["loss_amplification"] += out.loss
        c["touched_pending"] += out.touched
        c["loss_cannot_tell"] += out.loss_cannot_tell
        checks = {f.check for f in out.failures}
        for check in checks:
            c[check] += 1  # cases with at least one failure of this check
        for f in out.failures:
            key = f"{out.kind}|{f.key()}"
            if key in self.distinct:
                first, o, n = self.distinct[key]
                self.distinct[key] = (first, o, n + 1)
            else:
                self.distinct[key] = (f, out, 1)

    def totals(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for c in self.per_kind.values():
            total.update(c)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "totals": dict(self.totals()),
            "per_kind": {k: dict(v) for k, v in sorted(self.per_kind.items())},
            "distinct_failures": [
                {"kind": o.kind, "seed": o.seed, "case": o.case, "count": n, **f.__dict__}
                for f, o, n in self.distinct.values()],
        }

    def text(self) -> str:
        t = self.totals()
        lines = [f"cases {self.cases}: crashes {t['crash']}, hangs {t['hang']}, wrong records "
                 f"{t['wrong_record']}, unopenable {t['unopenable']}, loss amplification "
                 f"{t['loss_amplification']} records (in {t['loss']} cases), "
                 f"{t['loss_cannot_tell']} more behind plausible forged frames",
                 "per kind: cases with at least one failure of each check; loss_amp = intact "
                 "pending records not returned, summed over reads"]
        cols = ["cases", "harness_error", "crash", "hang", "wrong_record", "order", "batch_bounds",
                "unopenable", "append_refused", "repair_refused", "stale_append",
                "append_lost", "verify_silent", "verify_refused", "verify_mismatch",
                "stats_refused", "refused", "forged_accepted", "loss",
                "loss_amplification", "loss_cannot_tell", "touched_pending"]
        lines.append("kind".ljust(22) + " ".join(c[:8].rjust(8) for c in cols))
        lines.append("".ljust(22) + " ".join(c[8:16].rjust(8) for c in cols))
        for k, c in sorted(self.per_kind.items()):
            lines.append(k.ljust(22) + " ".join(str(c[col]).rjust(8) for col in cols))
        lines.append("distinct failures (kind, check, phase, where: first case to replay):")
        for f, o, n in sorted(self.distinct.values(), key=lambda x: (x[1].kind, x[0].check)):
            lines.append(f"  {o.kind} {f.check} in {f.phase} x{n} [{f.where}] {f.detail[:120]}"
                         f"  -- replay: --seed {o.seed} --kind {o.kind} --case {o.case}")
        return "\n".join(lines)


def run_cases(kinds: list[str], cases: int, seed: int, *, runner: Runner | None = None,
              deadline: float | None = None, first_case: int = 0,
              on_outcome: Callable[[Outcome], None] | None = None) -> Summary:
    """Run ``cases`` cases (kinds in turn, or chosen by the seed when several are given)
    and summarise them."""
    summary = Summary()
    own = runner is None
    runner = runner or Runner()
    try:
        for i in range(first_case, first_case + cases):
            if deadline is not None and time.monotonic() > deadline:
                break
            kind = kinds[0] if len(kinds) == 1 else random.Random(f"{seed}/{i}").choice(kinds)
            out = runner.run(kind, i, seed)
            summary.add(out)
            if on_outcome is not None:
                on_outcome(out)
    finally:
        if own:
            runner.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", action="append", choices=ALL_KINDS,
                        help="mutation kinds (repeat); default all")
    parser.add_argument("--case", type=int, default=None, help="run only this case number")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--out", default=None, help="also write the JSON summary here")
    parser.add_argument("--alarm", type=int, default=20, help="seconds before a case hangs")
    parser.add_argument("--scratch", default=None, help="where case directories go")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every failing case and the worker's stderr")
    parser.add_argument("--in-process", action="store_true",
                        help="run --case in this process (tracebacks, a debugger)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # --scratch is the directory the parent made for this worker
        return _worker(args.scratch, args.alarm)
    if args.in_process:
        kind = (args.kind or [MIXED])[0]
        case = args.case or 0
        t = random.Random(f"{args.seed}/{kind}/{case}/template").randrange(len(TEMPLATES))
        root = tempfile.mkdtemp(prefix="fuzz-logdir-", dir=args.scratch or _default_scratch())
        watch = _guard(args.alarm)
        try:
            tpl = build_template(TEMPLATES[t], root)
            signal.alarm(args.alarm)
            watch.armed = True
            try:
                out = run_case(tpl, kind, case, args.seed, root)
            except CaseHang as exc:
                out = exc.outcome or Outcome(kind, case, args.seed)
            watch.armed = False
            signal.alarm(0)
            print(f"template {t} {tpl.config}; segments "
                  + ", ".join(f"{n[-12:]}:{s[0] if s else '-'}..{s[-1] if s else '-'}"
                              for n, s in tpl.by_segment.items())
                  + f"; checkpoint {tpl.checkpoint}, next {tpl.next_seq}")
            print(json.dumps(out.to_json(), indent=1))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    kinds = args.kind or ALL_KINDS
    first, count = (args.case, 1) if args.case is not None else (0, args.cases)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None

    def show(out: Outcome) -> None:
        if args.verbose and (out.failures or out.loss):
            print(json.dumps(out.to_json(), indent=1), file=sys.stderr)

    with Runner(args.scratch, args.alarm, args.verbose) as runner:
        summary = run_cases(kinds, count, args.seed, runner=runner, deadline=deadline,
                            first_case=first, on_outcome=show)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary.to_json(), f, indent=1)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print(summary.text())
    totals = summary.totals()
    bad = totals["crash"] + totals["hang"] + totals["wrong_record"] + totals["unopenable"] \
        + totals["loss"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
