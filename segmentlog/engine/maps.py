"""Mapped segment files: the writer's read-write map and the reader's read-only one.

Pages are mapped ahead of the reader in windows of ``POPULATE_WINDOW`` with one
``madvise(MADV_POPULATE_READ)`` call instead of one page fault per page, and the reader
and the writer unmap the pages behind them (``unmap_below``), so resident memory stays a
few windows, not whole segments (benchmarks/README.md, "Design measurements").
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import Any

from segmentlog._backend import impl
from segmentlog.segment import open_regular

PAGE = mmap.PAGESIZE
POPULATE_WINDOW = 4 << 20
MAP_STEP = POPULATE_WINDOW  # the reader maps and unmaps in steps of this or more
ZEROS = memoryview(bytes(POPULATE_WINDOW + (64 << 10)))
END_MARK = 8  # zero bytes after the last frame in a recycled segment (a zero marker)
MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL and we stop asking


def populate(mm: Any, start: int, end: int, advice: int) -> bool:
    """Map pages [start, end) of ``mm`` in one call; False if the kernel cannot."""
    start -= start % PAGE
    try:
        mm.madvise(advice, start, end - start)
    except (OSError, ValueError):
        return False
    return True


class _Map:
    """A mapped segment file whose user unmaps the pages it is done with."""

    __slots__ = ("dropped", "mm")
    dropped: int  # pages below this offset are unmapped
    mm: Any

    def unmap_below(self, end: int, step: int = 0) -> None:
        """Unmap the pages below ``end`` (``MADV_DONTNEED``) once at least ``step`` bytes
        more than last time are due. Safe for shared file mappings: the data stays in
        the page cache (dirty pages stay dirty and are written back as usual); a later
        access maps them again. They stop counting as this process's memory, and
        writeback finds no writable mapping of them to write-protect (no TLB
        shootdown per page, see segmentlog.engine.sync)."""
        end -= end % PAGE
        if end > self.dropped and end - self.dropped >= step:
            with contextlib.suppress(OSError, ValueError):
                self.mm.madvise(mmap.MADV_DONTNEED, self.dropped, end - self.dropped)
            self.dropped = end


class Segment(_Map):
    """One mapped segment file (the writer's view, read-write)."""

    __slots__ = ("base", "fd", "framer", "path", "populated", "recycled", "size")

    def __init__(self, path: str, base: int, fd: int, size: int,
                 recycled: bool = False) -> None:
        self.path, self.base, self.fd, self.size = path, base, fd, size
        # A recycled segment holds a consumed segment's old bytes after the write
        # position; the writer keeps zeros just ahead of it, so every walk of it (a
        # reader's, or recovery's after a crash) ends on a zero marker, not on old bytes.
        self.recycled = recycled
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.framer = impl.Framer(self.mm)
        self.populated = 0  # the writer's windows reach this offset
        self.dropped = 0  # pages below this offset are unmapped (unmap_below)

    def close(self) -> None:
        self.framer.release()
        self.mm.close()
        os.close(self.fd)


class ReadView(_Map):
    """The reader's read-only map of one segment."""

    __slots__ = ("base", "populated", "size")

    def __init__(self, path: str, base: int) -> None:
        self.base = base
        self.populated = 0  # pages below this offset are mapped (MADV_POPULATE_READ)
        self.dropped = 0  # pages below this offset are unmapped (unmap_below)
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            # An empty file cannot be mapped; it reads as a segment without records.
            self.mm: Any = (mmap.mmap(f.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ)
                            if self.size else b"")

    def close(self) -> None:
        if self.size:
            self.mm.close()
