"""Pluggable backing stores: where an Auditor buffers events while the broker is down.

Theory of operation
-------------------
:class:`BackingStore` (base.py) is the interface and its rules (``read_batch(max_events)``,
``read_batch_up_to`` and ``read_encoded_up_to`` for drainers, ``pending()``); each
built-in store is
one module: ``file`` (the segment log, file.py), ``memory`` (memory.py), ``sql``
(PostgreSQL via psycopg 3, sql.py) and ``sqlite`` (embedded, sqlite.py).
:func:`create_backing_store` (config.py) builds one from the JSON string of the
original's ``${PREFIX}_BACKING_STORE`` variable; applications add their own types with
``factories={name: factory}``. Metrics (metrics.py) keep the original's
``audittools_backing_store_*`` names, with a ``store`` label so several stores can
share one registry.

Importing this package does not import psycopg: the ``sql`` store loads it when one is
created (``pip install 'segmentlog[sql]'``).
"""

from __future__ import annotations

from ..errors import BackingStoreError, BackingStoreFull
from .base import BackingStore, Commit, Event, batch_limit
from .config import (
    ENV_SUFFIX,
    BackingStoreFactory,
    Params,
    backing_store_from_env,
    builtin_factories,
    create_backing_store,
)
from .file import FileStore
from .memory import MemoryStore
from .metrics import OPERATIONS, StoreMetrics
from .sql import SQLStore, sql_store_factory
from .sqlite import SQLiteStore

__all__ = [
    "ENV_SUFFIX",
    "OPERATIONS",
    "BackingStore",
    "BackingStoreError",
    "BackingStoreFactory",
    "BackingStoreFull",
    "Commit",
    "Event",
    "FileStore",
    "MemoryStore",
    "Params",
    "SQLStore",
    "SQLiteStore",
    "StoreMetrics",
    "backing_store_from_env",
    "batch_limit",
    "builtin_factories",
    "create_backing_store",
    "sql_store_factory",
]

