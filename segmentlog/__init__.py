"""segmentlog: a durable, checksummed, segmented log, and the audit pipeline built on it.

``SegmentLog`` is the engine (segmentlog.log); ``segmentlog.store`` the pluggable backing
stores; ``segmentlog.amqp`` the confirm-mode publisher; ``segmentlog.audit`` the Auditor.
``segmentlog.backend`` names the live backend: "native" (the C core) or "pure".
"""

from __future__ import annotations

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

try:
    from segmentlog._backend import NAME as backend
except (ConfigError, ImportError) as exc:
    # A bad SEGMENTLOG_BACKEND, or "native" without the C core. The command line promises
    # a one-line reason, never a traceback, and this import runs before any of its code:
    # it exits here when this process is the command; any other program gets the error.
    from segmentlog.cli import exit_if_command_line

    exit_if_command_line(exc)
    raise
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
