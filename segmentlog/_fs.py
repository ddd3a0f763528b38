"""The file-system seam: the log's durability-relevant operations, in one replaceable object.

Every operation whose order or durability the recovery rules depend on (creating, writing
with ``pwrite``/``write``, reserving space, ``fsync``/``fdatasync`` of a file, ``fsync`` of
the directory, rename, unlink) goes through :data:`fs`: log.py, checkpoint.py,
deadletter.py and segment.py call ``_fs.fs.<op>`` and never the ``os`` function itself.
By default the operations *are* the ``os`` functions (no wrapper, nothing added to a call);
the power-loss tests (tests/powerloss.py) install a file system that records them and
builds the states a power failure could leave.

Rule 1: records written through a map are not syscalls and never pass here. What a
mapped file holds after a crash is what its page cache held when an ``fdatasync`` of it
returned: the seam sees that ``fdatasync``, and that is enough.
Rule 2: install a replacement before a log is opened and restore the default after it is
closed (:func:`installed`): a log keeps the ``fdatasync`` it found when it was opened, and
while that is not ``os.fdatasync`` its C group committer stays closed, so every
``fdatasync`` of records passes here.
Reads are not part of the seam: they change nothing a crash could lose.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSystem:
    """The real file system: each operation is the ``os`` function of the same name."""

    open = staticmethod(os.open)
    pwrite = staticmethod(os.pwrite)
    write = staticmethod(os.write)
    posix_fallocate = staticmethod(os.posix_fallocate)
    fdatasync = staticmethod(os.fdatasync)
    fsync = staticmethod(os.fsync)
    rename = staticmethod(os.replace)  # POSIX rename: replaces an existing target
    unlink = staticmethod(os.unlink)

    @staticmethod
    def fsync_dir(path: str) -> None:
        """Make creates, renames and unlinks in directory ``path`` durable."""
        _fsync_dir(path)


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
