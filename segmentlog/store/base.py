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
Rule 4: ``read_batch(max_events=None)`` returns ``([], None)`` when nothing is stored;
        otherwise the oldest events in write order, at most ``max_events`` of them
        (``None``: the store's configured ``batch_size``; a larger number is allowed and
        honoured, so a drainer picks its batch size whatever the store was configured
        with). Reading again without committing starts again from the same events (the
        previous batch's ``commit`` is then stale and raises ``BackingStoreError`` if
        called). ``commit()`` removes exactly the events of its batch; a second call of
        the same ``commit`` does nothing.
Rule 5: after ``close()``, ``write``, ``write_many``, ``read_batch``, ``pending`` and a
        batch's ``commit`` raise :class:`~segmentlog.errors.LogClosedError`;
        ``update_metrics`` and ``close`` do nothing.
Rule 6: ``pending()`` is the number of events stored and not yet committed (a batch
        read but not committed still counts: its events are still stored), or ``None``
        when the store cannot tell cheaply (the default, for custom stores). Built-in
        stores answer in O(1): no scan, no ``COUNT(*)``. Other writers (processes) may
        change it at any moment, so it is a reading, not a reservation.

Rule 7: ``max_event_size`` is the size in bytes of the largest serialised event the
        store can ever take (the file store: a segment's payload), or ``None`` when it
        has no limit of its own (the default). A writer refuses a larger event before
        it buffers it: it could never be stored, and a batch holding it would be
        refused whole (Rule 2). The Auditor refuses it in ``record()``.

Rule 8: ``room(event_size)`` is at least how many more events of ``event_size``
        serialised bytes the store can take now, or ``None`` when it cannot tell (the
        default). Like ``pending()`` it is a reading, not a reservation; it errs low.
        The Auditor holds no more events in memory than a durable store has room for,
        so what it accepts can still be stored if the broker goes away.

Rule 9: ``adopt()`` takes over events that processes which are gone left in a store
        shared by many processes and that no live process would otherwise deliver (the
        file store: the logs of gone processes in its directory); it returns how many
        events it adopted (0 by default: the SQL stores are drained by any process
        already). A drainer calls it every few seconds; adopted events are then read
        like the store's own.

Rule 10: ``write_many_encoded(bodies)`` stores events given as JSON bytes, one JSON
        object each (what ``orjson.dumps`` of a dict returns), as ``write_many`` would
        store their decoded form: same limits, same errors, and a body that is not
        ``bytes`` is a ``TypeError``, one that is not framed as one JSON object
        (``{`` ... ``}``) an :class:`~segmentlog.errors.InvalidEventError`, raised before
        anything is stored. The default decodes and calls ``write_many``, so a custom
        store needs nothing new. The file, SQLite and memory stores keep the bytes as
        given, so what they hand back (``read_encoded_up_to``) is byte-identical to
        what the writer encoded. The file and SQLite stores do not parse a body again:
        their readers parse every stored event anyway, so a body that breaks the
        contract is moved to the dead-letter place and counted when read, never
        handed out or lost. The memory store has no dead-letter place: it parses each
        body once when it is written (and keeps its id, so its reads parse nothing).
        The PostgreSQL store takes the default: its jsonb column keeps an event's
        content, not its bytes, and a body holding two objects (``{...},{...}``)
        would become two rows of one JSON array.

Custom stores written before ``max_events`` existed define ``read_batch(self)``. They
keep working: drainers call :meth:`BackingStore.read_batch_up_to`, which passes
``max_events`` only to a ``read_batch`` whose signature accepts it (checked once per
class, when the class is created) and otherwise calls ``read_batch()``, whose batches
then have the store's own size. Why a helper rather than ``inspect.signature`` in every
caller: the check lives in one place, costs nothing per call, and a caller cannot get
it wrong. Such a store also keeps ``pending() -> None`` (unknown) until it overrides it.

The Auditor's drain reads with :meth:`BackingStore.read_encoded_up_to`: the same batch
as JSON bytes and ids. Its default encodes what ``read_batch_up_to`` returns; the file
and memory stores hand over the bytes they stored, parsed once to validate them and to
take the id (a drain's own work per event fell to under a third: benchmarks/README.md).
A subclass that overrides ``read_batch`` gets the default, so it still reads. The
Auditor writes with :meth:`BackingStore.write_many_encoded` (Rule 10), so an event is
encoded once, in ``record()``, on its way through a store to the broker; a built-in
store's subclass that overrides ``write`` or ``write_many`` gets the default, which
decodes the events for it.

A store never publishes, never retries on its own and never drops an event silently:
an event that cannot be parsed back is moved to a dead-letter place and counted.
"""

from __future__ import annotations

import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import orjson

from ..errors import BackingStoreError, ConfigError, InvalidEventError

__all__ = ["BackingStore", "BatchTracker", "Commit", "Event", "batch_limit"]

#: One audit event: a JSON-serialisable mapping (a CADF event as a dict).
Event = Mapping[str, Any]

#: The callable ``read_batch`` returns with a batch: removes exactly that batch.
Commit = Callable[[], None]

_S = TypeVar("_S", bound="BackingStore")


def batch_limit(max_events: int | None, batch_size: int, what: str) -> int:
    """The number of events a ``read_batch(max_events)`` call may return (Rule 4).

    ``None`` means the store's ``batch_size``; anything else must be an integer >= 1
    (``ConfigError`` otherwise, naming the store ``what``). For custom stores too.
    """
    if max_events is None:
        return batch_size
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
        raise ConfigError(
            f"{what}: read_batch(max_events={max_events!r}): max_events must be an "
            "integer >= 1, or None for the store's batch_size"
        )
    return max_events


def _accepts_max_events(read_batch: Callable[..., Any]) -> bool:
    """Whether ``read_batch`` can be called with the keyword ``max_events``."""
    try:
        parameters = inspect.signature(read_batch).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it the old way
        return False
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if p.name == "max_events" and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            return True
    return False


def _event_id(event: Any) -> str | None:
    """An event's top-level ``"id"`` if it is a string."""
    mid = event.get("id") if isinstance(event, dict) else None
    return mid if isinstance(mid, str) else None


def _dumps(event: Event) -> bytes:
    """The JSON bytes every store keeps for an event (the shared encoding)."""
    # orjson serialises dict (and subclasses) only; other mappings are copied first.
    return orjson.dumps(event if isinstance(event, dict) else dict(event))


def _check_encoded(bodies: Sequence[bytes], what: str) -> None:
    """Refuse, before anything is stored, a body that is not bytes (``TypeError``) or
    not framed as one JSON object (``InvalidEventError``): Rule 10, for stores that
    keep the bytes without parsing them."""
    for body in bodies:
        if not isinstance(body, bytes):
            raise TypeError(
                f"{what}: write_many_encoded takes bytes (one JSON object each, e.g. "
                f"orjson.dumps(event)), got {type(body).__name__}")
        if not (body.startswith(b"{") and body.endswith(b"}")):
            raise InvalidEventError(
                f"{what}: write_many_encoded: {body[:40]!r} (length {len(body)}) is not "
                "the JSON encoding of one JSON object: it must start with '{' and end "
                "with '}', no whitespace around it, as orjson.dumps(dict) returns")


def _parse_encoded(body: bytes, what: str) -> dict[str, Any]:
    """The event of a body that passed :func:`_check_encoded`; ``InvalidEventError``
    when it is not JSON after all."""
    try:
        event: dict[str, Any] = orjson.loads(body)  # framed as an object: a dict
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"{what}: write_many_encoded: {body[:40]!r} (length "
                                f"{len(body)}) is not JSON ({exc})") from None
    return event


def _writes_overridden(store: BackingStore, cls: type[BackingStore]) -> bool:
    """Whether ``store``'s class, a subclass of the built-in store ``cls``, overrides
    ``write`` or ``write_many``: then ``cls.write_many_encoded`` hands the events to the
    default (decoded), so they still go through the override."""
    own = type(store)
    return own.write is not cls.write or own.write_many is not cls.write_many


class BackingStore(ABC):
    """A durable (or, for the memory store, bounded in-memory) FIFO of events."""

    #: Whether what it holds outlives the process (the memory store: False). The Auditor
    #: waits for the broker at close only for a store that is not durable.
    durable: bool = True

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

    def write_many_encoded(self, bodies: Sequence[bytes]) -> None:
        """Persist events given as JSON bytes, one JSON object each, like
        :meth:`write_many` (Rule 10).

        This default decodes them and calls :meth:`write_many`, for custom stores; the
        file, SQLite and memory stores keep the bytes as given.
        """
        what = type(self).__name__
        _check_encoded(bodies, what)
        self.write_many([_parse_encoded(body, what) for body in bodies])

    #: Whether this class's ``read_batch`` takes ``max_events`` (set per class, Rule 4).
    _read_batch_takes_max_events = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._read_batch_takes_max_events = _accepts_max_events(cls.read_batch)

    @abstractmethod
    def read_batch(
        self, max_events: int | None = None
    ) -> tuple[list[dict[str, Any]], Commit | None]:
        """Return the oldest events (at most ``max_events``; ``None``: the store's
        ``batch_size``) and their commit callable, or ``([], None)`` (Rule 4)."""

    def read_batch_up_to(
        self, max_events: int
    ) -> tuple[list[dict[str, Any]], Commit | None]:
        """``read_batch(max_events=max_events)``, or ``read_batch()`` for a custom store
        whose ``read_batch`` predates the parameter (its batches keep its own size)."""
        if self._read_batch_takes_max_events:
            return self.read_batch(max_events=max_events)
        # An old-style store: its own batch size, which Rule 4 still makes correct
        # (only slower to drain); the events and their order are the same.
        read_old: Callable[[], tuple[list[dict[str, Any]], Commit | None]] = self.read_batch
        return read_old()

    def read_encoded_up_to(
        self, max_events: int
    ) -> tuple[list[bytes], list[str | None], Commit | None]:
        """:meth:`read_batch_up_to` for a drainer that publishes the events as JSON: the
        same batch and commit, as each event's JSON bytes plus its top-level ``"id"``
        when that is a string (else None). This default encodes the decoded events with
        orjson; the file and memory stores return the bytes they stored (validated by
        one parse, which also yields the id), so a drain neither decodes into dicts it
        drops nor encodes twice."""
        events, commit = self.read_batch_up_to(max_events)
        bodies = [orjson.dumps(e) for e in events]
        return bodies, [_event_id(e) for e in events], commit

    def pending(self) -> int | None:
        """Events stored and not yet committed, or ``None`` if unknown (Rule 6)."""
        return None

    def room(self, event_size: int) -> int | None:
        """At least how many more events of ``event_size`` bytes fit, or ``None`` if
        unknown (Rule 8)."""
        return None

    @property
    def max_event_size(self) -> int | None:
        """Bytes of the largest serialised event this store can take, or ``None`` when
        it sets no limit of its own (Rule 7)."""
        return None

    def adopt(self) -> int:
        """Take over the backlog of gone processes sharing this store; how many events
        it adopted (Rule 9)."""
        return 0

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
