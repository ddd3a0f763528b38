"""Segment files: the header, creation with reserved space, and the directory fsync.

Rule 1: a segment's space is reserved and written (zeros, or a recycled segment's old
bytes) before anything is mapped, so a full disk is an ``OSError`` here, never a SIGBUS
while writing through the map.
Rule 2: a new segment's header is durable before its name appears, and the name is
durable (directory fsync) before any record in it is acknowledged.
Rule 3: old bytes in a recycled segment are never read as records: their sequence numbers
are all below the new base, and a reader accepts only the expected sequence number.
This module never decides policy (when to rotate, what to delete): log.py does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from segmentlog._backend import impl
from segmentlog._format import (
    FORMAT_VERSION,
    FRAME_ALIGN,
    LOCK_NAME,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
)
from segmentlog.errors import LogLockedError

FILE_MODE = 0o600
_PID_WIDTH = 24
DIR_MODE = 0o700
_ZERO_CHUNK = bytes(1 << 20)


def encode_header(base_seq: int) -> bytes:
    """The 32-byte header of a segment whose first record is ``base_seq``."""
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, FRAME_ALIGN, base_seq, 0, 0)[:28]
    crc: int = impl.crc32c(body)
    return body + crc.to_bytes(4, "little")


def header_problem(data: bytes | memoryview, base_seq: int) -> str | None:
    """Why ``data`` is not a valid header for a segment named ``base_seq``; None if it is."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return "short_header"
    magic, version, align, base, reserved, crc = SEGMENT_HEADER.unpack_from(data, 0)
    if not any(bytes(data[:SEGMENT_HEADER_SIZE])):
        return "zero_header"
    if impl.crc32c(bytes(data[:28])) != crc:
        return "bad_header_crc"
    if magic != SEGMENT_MAGIC:
        return "bad_magic"
    if version != FORMAT_VERSION or align != FRAME_ALIGN or reserved != 0:
        return "unsupported_version"
    if base != base_seq:
        return "header_name_mismatch"
    return None


def fsync_dir(path: str) -> None:
    """Make creates, renames and unlinks in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reserve_and_zero(path: str, size: int, zero_fill: bool = True, sync: bool = True,
                     warm: bool = False) -> None:
    """Create ``path`` with ``size`` bytes allocated (and, with ``zero_fill``, written as
    zeros), then (with ``sync``) fdatasync it; with ``warm``, read it through once.

    Writing the zeros (not only ``posix_fallocate``) turns unwritten extents into written
    ones up front, which makes every later ``fdatasync`` of records cheaper (FORMAT.md,
    "Writing and preparing segments"). Reading the file puts its pages in the page cache
    as clean zero pages: writing through the map then finds them ready, and no zeros are
    written back to disk. On ENOSPC the partial file is removed and the error raised.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            # Some file systems (tmpfs on old kernels, some FUSE) lack fallocate; writing
            # the zeros below reserves the space just as well, and still fails on ENOSPC.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            zero_fill = True
        written = 0 if zero_fill else size
        while written < size:
            n = min(len(_ZERO_CHUNK), size - written)
            written += os.pwrite(fd, _ZERO_CHUNK[:n], written)
        if sync:
            os.fdatasync(fd)
        if warm:
            chunk, done = bytearray(len(_ZERO_CHUNK)), 0
            while done < size and (n := os.preadv(fd, [chunk], done)) > 0:
                done += n
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def take_lock(directory: str) -> int:
    """Take the writer lock of ``directory`` (flock on ``lock``, which then holds our pid);
    return its descriptor, whose closing releases the lock. Raises LogLockedError with the
    holder's pid when another process has it. Shared by SegmentLog and ``repair``."""
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            pid = int(holder) if holder.isdigit() else None
            raise LogLockedError(
                f"{directory} is in use by process {holder or '(unknown)'}: one writer "
                "per directory; stop that process or use another directory",
                pid,
            ) from None
        raise
    try:
        # Overwrite in place (padded), then cut: an existing lock file needs no new block.
        stamp = f"{os.getpid()}\n".encode().ljust(_PID_WIDTH, b" ")
        os.pwrite(fd, stamp, 0)
        os.ftruncate(fd, len(stamp))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            os.close(fd)
            raise
        # A full disk: the lock is held all the same; others just cannot see our pid.
    return fd
