"""The consumer checkpoint: the sequence number of the first record not yet consumed.

Written atomically: a temp file, fsync, rename over ``checkpoint``, fsync of the
directory (FORMAT.md, "Checkpoint"). A checkpoint that is missing or fails its checksum
is never trusted: the log then starts from its oldest segment, so records are delivered
again rather than lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

from segmentlog import _fs
from segmentlog._backend import impl
from segmentlog._format import CHECKPOINT, CHECKPOINT_MAGIC, CHECKPOINT_NAME, TMP_SUFFIX
from segmentlog.segment import fsync_dir, open_regular


def encode(next_seq: int, when_ns: int | None = None) -> bytes:
    when = time.time_ns() if when_ns is None else when_ns
    body = CHECKPOINT.pack(CHECKPOINT_MAGIC, next_seq, when, 0)[:-4]
    crc: int = impl.crc32c(body)
    return body + crc.to_bytes(4, "little")


def decode(data: bytes) -> tuple[int | None, str | None]:
    """(next_seq, None) for a sound checkpoint, else (None, the problem's kind)."""
    if len(data) != CHECKPOINT.size:
        return None, "checkpoint_bad_size"
    magic, next_seq, _when, crc = CHECKPOINT.unpack(data)
    if impl.crc32c(data[:-4]) != crc:
        return None, "checkpoint_bad_crc"
    if magic != CHECKPOINT_MAGIC:
        return None, "checkpoint_bad_magic"
    return next_seq, None


def read(directory: str) -> tuple[int | None, str | None]:
    """The checkpoint of ``directory``: (next_seq, None), (None, "checkpoint_missing") or
    (None, kind) when it is damaged."""
    try:
        with os.fdopen(open_regular(os.path.join(directory, CHECKPOINT_NAME), os.O_RDONLY),
                       "rb") as f:
            data = f.read(CHECKPOINT.size + 1)
    except FileNotFoundError:
        return None, "checkpoint_missing"
    return decode(data)


def write(directory: str, next_seq: int, durable: bool) -> None:
    """Replace the checkpoint atomically; with ``durable`` it survives a crash on return."""
    path = os.path.join(directory, CHECKPOINT_NAME)
    tmp = path + TMP_SUFFIX
    data = encode(next_seq)
    try:
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            if _fs.fs.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            if durable:
                _fs.fs.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not os.path.exists(path):
            raise
        # A full disk has no block for a new file, and the consumer could then never
        # commit, so never free a segment: overwrite the old checkpoint in place instead
        # (its block exists). A torn overwrite fails its checksum, and a damaged
        # checkpoint makes the log re-read from its oldest segment: re-delivery, no loss.
        with contextlib.suppress(OSError):
            _fs.fs.unlink(tmp)
        _overwrite(path, data)
        return
    _fs.fs.rename(tmp, path)
    if durable:
        fsync_dir(directory)


def _overwrite(path: str, data: bytes) -> None:
    fd = open_regular(path, os.O_WRONLY)
    try:
        _fs.fs.pwrite(fd, data, 0)
        _fs.fs.fdatasync(fd)
    finally:
        os.close(fd)


def make_durable(directory: str) -> None:
    """fsync a checkpoint written earlier with ``durable=False`` (and its directory entry)."""
    fd = open_regular(os.path.join(directory, CHECKPOINT_NAME), os.O_RDONLY)
    try:
        _fs.fs.fdatasync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
