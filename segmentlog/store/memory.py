"""The memory store: a bounded in-process FIFO, the default when nothing is configured.

Theory of operation
-------------------
Events are kept serialised (orjson bytes) in a deque under one lock, each with its id.
Keeping bytes, not the caller's dicts, means a caller that mutates an event after
``write`` cannot change what is buffered, reads hand out fresh dicts as the other stores
do, and ``audittools_backing_store_size_bytes`` is a real byte count.
``write_many_encoded`` keeps the caller's bytes (parsed once, to check them and take the
id: Rule 10 of base.py), so ``read_encoded_up_to`` hands back those very bytes and
parses nothing.

Rule 1: ``max_events`` is strict: a write (or a whole ``write_many`` list) that would
        exceed it raises ``BackingStoreFull`` and stores nothing.
Rule 2: every entry carries a sequence number; a commit removes the entries up to its
        batch's last number that are still at the head, so it removes exactly its batch
        and nothing written later.

This store is not durable: a process exit loses what it holds (the original's memory
store had the same limit; it does not meet PCI DSS / SOC 2 completeness on its own).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import BackingStoreFull, LogClosedError
from .base import (
    BackingStore,
    BatchTracker,
    Commit,
    Event,
    _check_encoded,
    _dumps,
    _event_id,
    _parse_encoded,
    _writes_overridden,
    batch_limit,
)
from .metrics import StoreMetrics
from .params import Params, check_int

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MemoryStore"]

_EXAMPLE = '{"type":"memory","params":{"max_events":1000,"batch_size":100}}'


class MemoryStore(BackingStore):
    """Bounded, thread-safe, in-memory store (``type: "memory"``).

    :param max_events: most events held at once (default 1000, as in the original).
    :param batch_size: most events one ``read_batch()`` returns (a drainer may ask for
        more with ``read_batch(max_events=n)``).
    :param registry: Prometheus registry for the metrics (``None``: the global one).
    :param name: the ``store`` label of the metrics (default ``"memory"``).
    """

    TYPE = "memory"
    durable = False  # dies with the process

    def __init__(
        self,
        max_events: int = 1000,
        batch_size: int = 100,
        *,
        registry: CollectorRegistry | None = None,
        name: str | None = None,
    ) -> None:
        self._max_events = check_int(max_events, "max_events", minimum=1, unit="events")
        self._batch_size = check_int(batch_size, "batch_size", minimum=1, unit="events")
        self._lock = threading.Lock()
        self._entries: deque[tuple[int, bytes, str | None]] = deque()  # seq, JSON, id
        self._next_seq = 0
        self._bytes = 0
        self._closed = False
        self._batches = BatchTracker(self._lock, "memory backing store", self._check_open)
        self._metrics = StoreMetrics(registry, self.TYPE, name)
        self._metrics.set_files(0)
        self._publish_gauges()
        _STORES.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child starts empty: the events held here are the parent's to deliver
        (a copy delivered by the child too would be a duplicate)."""
        self._lock = threading.Lock()
        self._batches = BatchTracker(self._lock, "memory backing store", self._check_open)
        self._entries.clear()
        self._bytes = 0

    @classmethod
    def from_params(
        cls, params: dict[str, Any], registry: CollectorRegistry | None = None
    ) -> MemoryStore:
        """The ``memory`` factory: ``max_events``, ``batch_size``, ``name``."""
        p = Params(params, cls.TYPE, _EXAMPLE)
        max_events = p.get_int("max_events", 1000, minimum=1, unit="events")
        batch_size = p.get_int("batch_size", 100, minimum=1, unit="events")
        name = p.get_optional_str("name")
        p.finish()
        return cls(max_events, batch_size, registry=registry, name=name)

    @property
    def metrics_label(self) -> str:
        """The ``store`` label value of this store's metric series."""
        return self._metrics.label

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("memory backing store is closed; create a new store")

    def _publish_gauges(self) -> None:
        self._metrics.set_events(len(self._entries))
        self._metrics.set_size_bytes(self._bytes)

    def write(self, event: Event) -> None:
        self.write_many((event,))

    def write_many(self, events: Sequence[Event]) -> None:
        # TypeError here: nothing stored. The id as _dumps sees the event (a copy for
        # a mapping that is not a dict).
        entries = []
        for e in events:
            event = e if isinstance(e, dict) else dict(e)
            entries.append((_dumps(event), _event_id(event)))
        self._append(entries)

    def write_many_encoded(self, bodies: Sequence[bytes]) -> None:
        """The bytes as given (Rule 10 of base.py), each parsed once: this store has
        no dead-letter place, so it must never take a body it could not hand back as
        an event. The parse also yields the id its reads hand out."""
        if _writes_overridden(self, MemoryStore):
            super().write_many_encoded(bodies)
            return
        what = "memory backing store"
        _check_encoded(bodies, what)
        self._append([(body, _event_id(_parse_encoded(body, what))) for body in bodies])

    def _append(self, payloads: list[tuple[bytes, str | None]]) -> None:
        """Store (JSON, id) pairs, all or none (Rule 1)."""
        with self._lock:
            self._check_open()
            if len(self._entries) + len(payloads) > self._max_events:
                self._metrics.error("write_full")
                raise BackingStoreFull(
                    f"memory backing store is full: {len(self._entries)} of max_events="
                    f"{self._max_events} events buffered, {len(payloads)} more refused; "
                    "drain it (deliver and commit) or raise max_events"
                )
            for payload, mid in payloads:
                self._entries.append((self._next_seq, payload, mid))
                self._next_seq += 1
                self._bytes += len(payload)
            self._metrics.wrote(len(payloads))
            self._publish_gauges()

    def room(self, event_size: int) -> int:
        """Free places of ``max_events`` (Rule 8; the size does not matter here)."""
        with self._lock:
            return max(0, self._max_events - len(self._entries))

    def read_batch(
        self, max_events: int | None = None
    ) -> tuple[list[dict[str, Any]], Commit | None]:
        taken, commit = self._take(max_events)
        return [orjson.loads(payload) for _, payload, _ in taken], commit

    def read_encoded_up_to(
        self, max_events: int
    ) -> tuple[list[bytes], list[str | None], Commit | None]:
        """The stored bytes themselves (see BackingStore) and the ids kept with them: no
        parse. A subclass that overrides read_batch gets the default, which reads
        through it."""
        if type(self).read_batch is not MemoryStore.read_batch:
            return super().read_encoded_up_to(max_events)
        taken, commit = self._take(max_events)
        return [payload for _, payload, _ in taken], [mid for _, _, mid in taken], commit

    def _take(self, max_events: int | None
              ) -> tuple[list[tuple[int, bytes, str | None]], Commit | None]:
        """The oldest entries (at most ``max_events``) and their commit."""
        limit = batch_limit(max_events, self._batch_size, "memory backing store")
        with self._lock:
            self._check_open()
            self._batches.drop()
            if not self._entries:
                return [], None
            n = min(limit, len(self._entries))
            taken = [self._entries[i] for i in range(n)]
            last_seq = taken[-1][0]
            self._metrics.read(len(taken))

            def do_commit() -> None:
                # Only entries of this batch can be at the head with seq <= last_seq:
                # later writes have larger numbers.
                while self._entries and self._entries[0][0] <= last_seq:
                    _, payload, _ = self._entries.popleft()
                    self._bytes -= len(payload)
                self._publish_gauges()

            return taken, self._batches.issue(do_commit)

    def pending(self) -> int:
        """Events held now, including a batch read but not committed."""
        with self._lock:
            self._check_open()
            return len(self._entries)

    def update_metrics(self) -> None:
        with self._lock:
            if not self._closed:
                self._publish_gauges()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._batches.drop()
            self._entries.clear()
            self._bytes = 0
        self._metrics.release()

    def __len__(self) -> int:
        """Events buffered now."""
        with self._lock:
            return len(self._entries)


_STORES: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _forked() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_forked)
