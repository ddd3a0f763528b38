"""What a backend is: the typed contract that segmentlog._pure and segmentlog._nativebackend
both implement, and mypy checks each of them against (segmentlog/_backend.py).

Rule 1: a backend is a module; ``Backend`` names every module attribute the rest of
segmentlog may use, with the types both backends accept. Anything else a backend has (the
native test hooks, its helpers) is its own business.
Rule 2: a backend's objects work together only with their own kind: a Cursor opens over
a Framer of the same backend, so the protocols are generic in that Framer (``F``).
Rule 3: there may be no group committer: ``new_committer`` returns None in the pure
backend always (SegmentLog's Python group commit does that work) and where C has no
POSIX threads (Windows). A caller must handle None.
Rule 4: append fast paths answer with one int: the sequence number (>= 0), or a negative
status when refused (nothing written: the caller takes its locked path). A committer's
append that it could not see durable goes to the owner's ``settle(seq)`` first.
This module holds types only: no code runs from it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from segmentlog._pure import Buffer, ReadableBuffer, WritableBuffer
from segmentlog._pure import ScanResult as Scan  # (Backend has a ScanResult member)

F = TypeVar("F", bound="Framer")
F_contra = TypeVar("F_contra", bound="Framer", contravariant=True)


class Framer(Protocol):
    """Frames records into one writable buffer, bound once; ``release()`` before the
    buffer is closed. One thread at a time (the holder of the log's lock)."""

    def frame(self, off: int, payload: Buffer, seq: int) -> int: ...

    def frame_batch(self, off: int, payloads: Sequence[Buffer], first_seq: int) -> int: ...

    def frame_joined(self, off: int, src: bytes, lens: array[int], first_seq: int) -> int: ...

    @property
    def raw(self) -> Callable[[int, bytes, int, int], int]:
        """``raw(off, payload, length, seq)``: the new end, or a negative status."""
        ...

    def release(self) -> None: ...


class Scanner(Protocol):
    """Scans one readable buffer, bound once; ``release()`` before it is closed."""

    def scan(self, off: int, end: int, expected_seq: int, max_records: int,
             max_bytes: int | None = None) -> Scan: ...

    def resync(self, off: int, end: int, min_seq: int,
               max_seq: int) -> tuple[int, int] | None: ...

    def release(self) -> None: ...


class Cursor(Protocol[F_contra]):
    """Where the next frame of the active segment goes; appends from any thread, open and
    close by the holder of the log's lock (Rule 4 for ``append``)."""

    @property
    def append(self) -> Callable[[bytes, int], int]: ...

    def open(self, framer: F_contra, off: int, next_seq: int, window: int) -> bool: ...

    def close(self) -> tuple[int, int]: ...


class Committer(Protocol[F_contra]):
    """The group committer of fsync="always" (csrc/committer.c); see Rule 3 and 4."""

    @property
    def append(self) -> Callable[[bytes, int], int]: ...

    def open(self, fd: int, group: F_contra, off: int, window: int, next_seq: int,
             durable_next: int, segment_id: int, mark: bool, gather_ns: int) -> bool: ...

    def close(self) -> tuple[int, int, int, int, int]: ...

    def retire(self) -> None: ...


class Backend(Protocol[F]):
    """The module attributes of a backend (Rule 1), generic in its Framer (Rule 2)."""

    @property
    def NAME(self) -> str: ...

    @property
    def ScanResult(self) -> type[Scan]: ...

    @property
    def Framer(self) -> Callable[[WritableBuffer], F]: ...

    @property
    def Scanner(self) -> Callable[[ReadableBuffer], Scanner]: ...

    @property
    def Cursor(self) -> Callable[[], Cursor[F]]: ...

    def new_committer(self, settle: Callable[[int], object]) -> Committer[F] | None:
        """The group committer, or None (Rule 3)."""
        ...

    def crc32c(self, data: Buffer, crc: int = 0) -> int: ...

    def crc32c_impl(self) -> str: ...

    def frame_into(self, buf: bytearray | memoryview, off: int, payload: Buffer,
                   seq: int) -> int: ...

    def frame_batch_into(self, buf: bytearray | memoryview, off: int,
                         payloads: Sequence[Buffer], first_seq: int) -> int: ...

    def frames_size(self, lens: array[int]) -> int: ...

    def scan(self, buf: ReadableBuffer, off: int, end: int, expected_seq: int,
             max_records: int, max_bytes: int | None = None) -> Scan: ...

    def resync(self, buf: ReadableBuffer, off: int, end: int, min_seq: int,
               max_seq: int) -> tuple[int, int] | None: ...

    def payloads(self, buf: Any, offsets: Sequence[int],
                 lengths: Sequence[int]) -> Sequence[bytes]: ...
