"""The file-system seam: the log's durability-relevant operations, in one replaceable object.

Every operation whose order or durability the recovery rules depend on (creating, writing
with ``pwrite``/``write``, reserving space, ``fsync``/``fdatasync`` of a file, ``fsync`` of
the directory, rename, unlink) goes through :data:`fs`: the engine, checkpoint.py,
deadletter.py and segment.py call ``_fs.fs.<op>`` and never the ``os`` function itself.
By default each operation calls the ``os`` function (one Python call more, on paths that
make a syscall anyway: none is per record; appends through the map or the C group
committer never pass here); the power-loss tests (tests/powerloss.py) install a file
system that records them and builds the states a power failure could leave.

Rule 1: records written through a map are not syscalls and never pass here. What a
mapped file holds after a crash is what its page cache held when an ``fdatasync`` of it
returned: the seam sees that ``fdatasync``, and that is enough.
Rule 2: install a replacement before a log is opened and restore the default after it is
closed (:func:`installed`): a log keeps the ``fdatasync`` it found when it was opened, and
while that is not the default one its C group committer stays closed, so every
``fdatasync`` of records passes here.
Every open of the log's files passes here too (``segment.open_regular``), so a
replacement knows each descriptor; reads do not: they change nothing a crash could lose.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class FileSystem:
    """The real file system: each operation calls the ``os`` function of the same name
    when it runs (so a shim on ``os``, such as the benchmark's fsync counter, sees it).

    Operations are static methods: reading one gives the same object every time, so a
    log can tell the default ``fdatasync`` from a replacement by identity."""

    @staticmethod
    def open(path: str, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags, mode)

    @staticmethod
    def pwrite(fd: int, data: ReadableBuffer, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    @staticmethod
    def write(fd: int, data: ReadableBuffer) -> int:
        return os.write(fd, data)

    @staticmethod
    def posix_fallocate(fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    @staticmethod
    def fdatasync(fd: int) -> None:
        os.fdatasync(fd)

    @staticmethod
    def fsync(fd: int) -> None:
        os.fsync(fd)

    @staticmethod
    def rename(src: str, dst: str) -> None:
        """POSIX rename: replaces an existing ``dst``."""
        os.replace(src, dst)

    @staticmethod
    def unlink(path: str) -> None:
        os.unlink(path)

    @staticmethod
    def fsync_dir(path: str) -> None:
        """Make creates, renames and unlinks in directory ``path`` durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


DEFAULT = FileSystem()
fs: FileSystem = DEFAULT


@contextlib.contextmanager
def installed(replacement: FileSystem) -> Iterator[FileSystem]:
    """Route the log's I/O through ``replacement`` for the ``with`` block (tests only)."""
    global fs
    previous, fs = fs, replacement
    try:
        yield replacement
    finally:
        fs = previous
