"""Every exception segmentlog raises, in one hierarchy.

Rule 1: everything derives from :class:`SegmentLogError`, so ``except SegmentLogError``
catches all of ours and nothing else.
Rule 2: bad arguments are also ``ValueError``; storage failures are also ``OSError``,
so callers' existing handlers keep working.
Rule 3: a message names the thing that failed (setting, path, offset) and the fix.
"""

from __future__ import annotations


class SegmentLogError(Exception):
    """Base class of every error raised by segmentlog."""


class ConfigError(SegmentLogError, ValueError):
    """A setting, parameter or environment variable is missing or invalid."""


class RecordTooLargeError(SegmentLogError, ValueError):
    """A record does not fit in one segment."""


class LogFullError(SegmentLogError):
    """The log reached ``max_total_size``; consume (commit) records or raise the limit."""


class LogLockedError(SegmentLogError):
    """Another process holds the writer lock on the directory."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class LogClosedError(SegmentLogError):
    """The log (or store, publisher, auditor) was used after ``close()``."""


class CorruptionError(SegmentLogError):
    """Bytes on disk do not form a valid segmentlog structure."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset
        self.kind = kind


class DurabilityError(SegmentLogError, OSError):
    """A write, fsync or other storage operation failed; data may not be durable.

    After this error the log refuses further writes: reopen it once the disk is fixed.
    """


class BackingStoreFull(SegmentLogError):
    """A backing store reached its configured limit. No other error means "full"."""


class BackingStoreError(SegmentLogError):
    """A backing store failed for a reason other than being full."""


class PublishError(SegmentLogError):
    """The broker refused or could not take messages."""


class BrokerUnavailableError(PublishError):
    """No broker address could be reached (or the connection is blocked by an alarm)."""


class InvalidEventError(SegmentLogError, ValueError):
    """An audit event is not valid CADF (a missing field, a wrong type, not JSON).

    Raised by ``Auditor.record()`` before anything is buffered; the message names the
    field (e.g. ``initiator.typeURI``) and what was expected.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EventTooLargeError(InvalidEventError, RecordTooLargeError):
    """An audit event is larger than its backing store or the broker can ever take.

    Raised by ``Auditor.record()`` before anything is buffered (both an
    :class:`InvalidEventError` and a :class:`RecordTooLargeError`); the message gives
    the size, the limit and the setting that sets it.
    """


class UndeliveredEventsError(SegmentLogError):
    """``Auditor.close()`` could neither deliver nor store some recorded events.

    ``count`` is how many; ``events`` holds each one's ``(id, JSON bytes)``, so the
    caller can still keep them elsewhere. The message says why (e.g. the store full
    with the broker down, or the memory store's events at close).
    """

    def __init__(self, message: str, events: list[tuple[str, bytes]]) -> None:
        super().__init__(message)
        self.events = events
        self.count = len(events)


__all__ = [
    "BackingStoreError",
    "BackingStoreFull",
    "BrokerUnavailableError",
    "ConfigError",
    "CorruptionError",
    "DurabilityError",
    "EventTooLargeError",
    "InvalidEventError",
    "LogClosedError",
    "LogFullError",
    "LogLockedError",
    "PublishError",
    "RecordTooLargeError",
    "SegmentLogError",
    "UndeliveredEventsError",
]
