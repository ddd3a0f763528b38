"""What every auditor offers, and the two that deliver nothing: for tests and for
deployments without a broker.

:class:`AuditorBase` is the interface (``record(event)``, ``close()``, ``flush()``,
a context manager, and for asyncio ``await arecord(event)``, ``aclose()``, ``aflush()``,
which never block the event loop); :class:`~segmentlog.audit.Auditor` is the one that ships events.
:class:`NullAuditor` checks every event and throws it away; :class:`RecordingAuditor`
keeps what it was given for a test to compare. Both check events exactly as the Auditor
does (same :class:`~segmentlog.errors.InvalidEventError`), so a service tested against
one does not start failing when given the real one. They never touch a broker or a
store. All three are importable from ``segmentlog.audit`` as well.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import orjson

from .audit_config import check_observer
from .cadf import Event, Observer, check_event_mapping, dump_event
from .errors import LogClosedError

__all__ = ["AuditorBase", "EventLike", "NullAuditor", "RecordingAuditor"]

LOG = logging.getLogger("segmentlog.audit")  # the Auditor's logger, as before the split

_A = TypeVar("_A", bound="AuditorBase")

#: Anything ``record()`` accepts.
EventLike = Event | Mapping[str, Any]


class AuditorBase(ABC):
    """What every auditor offers: ``record(event)``, ``close()``, ``flush()`` and their
    asyncio forms ``arecord``, ``aclose``, ``aflush``."""

    @abstractmethod
    def record(self, event: EventLike) -> None:
        """Accept one CADF event (a model instance or a mapping in CADF form)."""

    def close(self, timeout: float = 10.0) -> None:  # noqa: B027 - nothing to release
        """Deliver or persist what was recorded; release connections."""

    def flush(self, timeout: float) -> bool:
        """Wait until what was recorded so far was delivered; False if ``timeout`` passed
        first. An auditor that delivers nothing has nothing to wait for."""
        return True

    # asyncio: a coroutine must never block its event loop. These run the blocking call
    # in a worker thread (asyncio.to_thread); auditors that never block override them.
    async def arecord(self, event: EventLike) -> None:
        """``record(event)`` for a coroutine: waits for room without blocking the loop."""
        await asyncio.to_thread(self.record, event)

    async def aclose(self, timeout: float = 10.0) -> None:
        """``close(timeout)`` for a coroutine, in a worker thread."""
        await asyncio.to_thread(self.close, timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:
        """``flush(timeout)`` for a coroutine, in a worker thread."""
        return await asyncio.to_thread(self.flush, timeout)

    def __enter__(self: _A) -> _A:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _prepare(event: EventLike, observer: Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(event, Event):
        return event.wire_dict(observer)
    return check_event_mapping(event, observer)


class NullAuditor(AuditorBase):
    """Checks events and throws them away (debug log): for deployments without a broker.

    Bad events still raise :class:`~segmentlog.errors.InvalidEventError`, so a service
    tested against a NullAuditor does not start failing when given a real one.
    """

    def __init__(self, observer: Observer | None = None) -> None:
        self._observer = None if observer is None else check_observer(observer).to_dict()

    def record(self, event: EventLike) -> None:
        body = dump_event(_prepare(event, self._observer or _NULL_OBSERVER))
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("audit event discarded (NullAuditor): %s", body.decode())

    async def arecord(self, event: EventLike) -> None:
        self.record(event)  # never blocks: nothing is buffered

    async def aclose(self, timeout: float = 10.0) -> None:
        self.close(timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:
        return True


_NULL_OBSERVER: dict[str, Any] = {"typeURI": "unknown", "id": "unknown"}


class RecordingAuditor(AuditorBase):
    """A test double: keeps every recorded event (as the CADF dict that would be sent).

    ``expect_events(*expected)`` asserts the recorded events equal ``expected`` (models
    or mappings), ignoring ``id``, ``eventTime`` and ``observer`` (the original's
    MockAuditor ignores them too), then forgets them. ``ignore_events_until_now()``
    forgets without checking.
    """

    def __init__(self, observer: Observer | None = None) -> None:
        self._observer = (Observer("service", "recording-auditor", "recording-auditor")
                          if observer is None else check_observer(observer)).to_dict()
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._closed = False

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the events recorded since the last expect/ignore call."""
        with self._lock:
            return [orjson.loads(orjson.dumps(e)) for e in self._events]

    def record(self, event: EventLike) -> None:
        body = dump_event(_prepare(event, self._observer))
        with self._lock:
            if self._closed:
                raise LogClosedError("RecordingAuditor is closed")
            self._events.append(orjson.loads(body))

    @staticmethod
    def _normalize(event: EventLike) -> dict[str, Any]:
        data = _prepare(event, _NULL_OBSERVER)
        data = dict(orjson.loads(dump_event(data)))
        for key in ("id", "eventTime", "observer"):
            data.pop(key, None)
        return data

    def expect_events(self, *expected: EventLike) -> None:
        with self._lock:
            got = [self._normalize(e) for e in self._events]
            self._events = []
        want = [self._normalize(e) for e in expected]
        if got != want:
            lines = [f"recorded {len(got)} event(s), expected {len(want)}"]
            for i in range(max(len(got), len(want))):
                g = got[i] if i < len(got) else None
                w = want[i] if i < len(want) else None
                if g != w:
                    lines.append(f"  event {i}: recorded {g!r}")
                    lines.append(f"  event {i}: expected {w!r}")
            raise AssertionError("\n".join(lines))

    def ignore_events_until_now(self) -> None:
        with self._lock:
            self._events = []

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True

    # The lock is held only to append or copy a list: these never block an event loop.
    async def arecord(self, event: EventLike) -> None:
        self.record(event)

    async def aclose(self, timeout: float = 10.0) -> None:
        self.close(timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:
        return True
