"""segmentlog: a durable, checksummed, segmented log, and the audit pipeline built on it.

``SegmentLog`` is the engine (segmentlog.log); ``segmentlog.store`` the pluggable backing
stores; ``segmentlog.amqp`` the confirm-mode publisher; ``segmentlog.audit`` the Auditor.
``segmentlog.backend`` names the live backend: "native" (the C core) or "pure".
"""

from __future__ import annotations

from segmentlog._backend import NAME as backend
from segmentlog.errors import (
    BackingStoreError,
    BackingStoreFull,
    BrokerUnavailableError,
    ConfigError,
    CorruptionError,
    DurabilityError,
    LogClosedError,
    LogFullError,
    LogLockedError,
    PublishError,
    RecordTooLargeError,
    SegmentLogError,
)
from segmentlog.log import Batch, SegmentLog

__version__ = "0.1.0"

__all__ = [
    "BackingStoreError",
    "BackingStoreFull",
    "Batch",
    "BrokerUnavailableError",
    "ConfigError",
    "CorruptionError",
    "DurabilityError",
    "LogClosedError",
    "LogFullError",
    "LogLockedError",
    "PublishError",
    "RecordTooLargeError",
    "SegmentLog",
    "SegmentLogError",
    "__version__",
    "backend",
]
