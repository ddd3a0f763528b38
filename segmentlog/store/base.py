"""The BackingStore interface: where an Auditor buffers events while the broker is down.

Theory of operation
-------------------
A store is a FIFO of JSON events with a two-step read. ``read_batch()`` hands out the
oldest events plus a ``commit`` callable; only ``commit()`` removes them, and the caller
calls it after every event of the batch was delivered. Until then the events stay stored:
a crash, an exception or a failed delivery loses nothing, it only repeats (at-least-once;
consumers dedupe by CADF event ID).

Rules every store follows (the conformance suite in tests/test_store_conformance.py pins
them for each built-in store):

Rule 1: ``write``/``write_many`` return only when the events are stored as durably as the
        store promises (fsync, database commit, or just memory for the memory store).
Rule 2: a full store raises :class:`~segmentlog.errors.BackingStoreFull`, and no other
        error means "full". Other failures raise
        :class:`~segmentlog.errors.BackingStoreError`, except two refusals of one
        event, raised before anything is stored: ``TypeError`` (not JSON-serialisable)
        and, in the file store, ``RecordTooLargeError`` (a ``ValueError``: the event is
        larger than a segment; raise ``max_file_size``).
Rule 3: built-in stores write a ``write_many`` list all-or-nothing, with one durability
        point. The default ``write_many`` below (for custom stores) loops ``write``: if it
        raises, a prefix of the list may be stored already; writing the whole list again
        is safe under at-least-once delivery (duplicates, never loss).
Rule 4: ``read_batch()`` returns ``([], None)`` when nothing is stored; otherwise the
        oldest events in write order. Reading again without committing starts again
        from the same events (the previous batch's ``commit`` is then stale and raises
        ``BackingStoreError`` if called). ``commit()`` removes exactly the events of its
        batch; a second call of the same ``commit`` does nothing.
Rule 5: after ``close()``, ``write``, ``write_many``, ``read_batch`` and a batch's
        ``commit`` raise :class:`~segmentlog.errors.LogClosedError`; ``update_metrics``
        and ``close`` do nothing.

A store never publishes, never retries on its own and never drops an event silently:
an event that cannot be parsed back is moved to a dead-letter place and counted.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ..errors import BackingStoreError

__all__ = ["BackingStore", "BatchTracker", "Commit", "Event"]

#: One audit event: a JSON-serialisable mapping (a CADF event as a dict).
Event = Mapping[str, Any]

#: The callable ``read_batch`` returns with a batch: removes exactly that batch.
Commit = Callable[[], None]

_S = TypeVar("_S", bound="BackingStore")


class BackingStore(ABC):
    """A durable (or, for the memory store, bounded in-memory) FIFO of events."""

    @abstractmethod
    def write(self, event: Event) -> None:
        """Persist one event; raise ``BackingStoreFull`` at the store's limit."""

    def write_many(self, events: Sequence[Event]) -> None:
        """Persist a list of events with one durability point (see Rule 3).

        This default loops :meth:`write`, for custom stores; every built-in store
        overrides it with an all-or-nothing write that costs one fsync or one commit.
        """
        for event in events:
            self.write(event)

    @abstractmethod
    def read_batch(self) -> tuple[list[dict[str, Any]], Commit | None]:
        """Return the oldest events and their commit callable, or ``([], None)``."""

    def update_metrics(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Refresh gauges; cheap enough to call every few seconds."""

    @abstractmethod
    def close(self) -> None:
        """Release files, connections and metric series; idempotent."""

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BatchTracker:
    """Hands out the ``commit`` callables of a store's batches (Rule 4).

    At most one batch is live. Reading again makes the previous batch stale: its commit
    raises instead of removing events the caller may not have delivered in the order it
    thinks. A commit that already ran does nothing when called again. The store's
    ``do_commit`` runs under the store's lock, so a concurrent ``read_batch`` never sees
    half a commit.
    """

    def __init__(
        self,
        lock: threading.RLock | threading.Lock,
        what: str,
        check_open: Callable[[], None],
    ) -> None:
        self._lock = lock
        self._what = what
        self._check_open = check_open
        self._generation = 0
        self._live = False

    @property
    def outstanding(self) -> bool:
        """True when a batch was read and neither committed nor superseded."""
        return self._live

    def issue(self, do_commit: Callable[[], None]) -> Commit:
        """Start a new batch (superseding any live one) and return its commit callable.

        Call with the store's lock held.
        """
        self._generation += 1
        generation = self._generation
        self._live = True
        done = False

        def commit() -> None:
            nonlocal done
            with self._lock:
                self._check_open()
                if done:
                    return  # idempotent: the events are already removed
                if generation != self._generation or not self._live:
                    raise BackingStoreError(
                        f"{self._what}: commit of a stale batch; read_batch() was called "
                        "again before this batch was committed. Commit the latest batch "
                        "(its events start with the same oldest events)."
                    )
                do_commit()
                done = True
                self._live = False

        return commit

    def drop(self) -> None:
        """Forget the live batch (close, reread): its commit becomes stale."""
        self._generation += 1
        self._live = False
