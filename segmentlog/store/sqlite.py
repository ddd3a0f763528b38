"""The sqlite store: the SQL store's schema on an embedded SQLite file (stdlib sqlite3).

Theory of operation
-------------------
For services with a volume but no database server. One database file (``path``) in WAL
mode with ``synchronous=FULL``, so a write returns after its commit is fsynced. Tables:

* ``<table>`` ``(id INTEGER PRIMARY KEY AUTOINCREMENT, event_data BLOB, created_at TEXT)``
  holds the events; AUTOINCREMENT never reuses an id, so id order is write order, also
  across restarts and across processes writing to the same file.
* ``<table>_meta`` is one row with the number of buffered events, changed in the same
  transaction as every insert and delete. A write checks the limit against it instead
  of counting the table (the original counted every row on every write: O(n)).
  Writers are serialised by SQLite's write lock, so the check is exact.
* ``<table>_deadletter`` keeps rows that do not parse as a JSON object, with the reason.

Rule 1: ``write_many`` is one ``BEGIN IMMEDIATE`` transaction: all or nothing, one fsync.
Rule 2: one process drains a file at a time. ``read_batch`` takes a non-blocking
        ``flock`` on ``<path>-drain.lock`` and holds it until the batch is committed (or
        the store closed); a second drainer meanwhile reads nothing (``([], None)``),
        which is safe: the first one delivers those events. So no event is handed to two
        drainers, and writers from any number of processes are never blocked by a drain.
Rule 3: the database file, its WAL and the lock file are created 0600 (SQLite gives the
        WAL and shared-memory files the database file's mode).
Rule 4: ``pending()`` reads the meta counter (one single-row SELECT; a WAL reader never
        waits for writers). It includes a batch read but not committed.

This store never holds a transaction open between calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import BackingStoreError, BackingStoreFull, ConfigError, LogClosedError
from .base import (
    BackingStore,
    BatchTracker,
    Commit,
    Event,
    _check_encoded,
    _dumps,
    _writes_overridden,
    batch_limit,
)
from .metrics import StoreMetrics
from .params import Params, check_int, check_table_name

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["SQLiteStore"]

_EXAMPLE = (
    '{"type":"sqlite","params":{"path":"/var/lib/app/audit.db","table_name":"audit_events",'
    '"batch_size":100,"max_events":10000}}'
)
_SYNCHRONOUS = ("full", "normal")


def _quote(identifier: str) -> str:
    # check_table_name allows only [a-z0-9_.]; quote each part so keywords are safe too.
    return ".".join(f'"{part}"' for part in identifier.split("."))


class SQLiteStore(BackingStore):
    """Embedded SQL store on one SQLite file (``type: "sqlite"``).

    :param path: the database file (created 0600; its directory 0700 if missing).
    :param table_name: events table (default ``audit_events``).
    :param batch_size: most events one ``read_batch()`` returns (default 100; a drainer
        may ask for more with ``read_batch(max_events=n)``).
    :param max_events: most events buffered (default 10000), strictly enforced.
    :param skip_migration: do not create tables (the schema is managed elsewhere;
        see :meth:`schema_sql`).
    :param synchronous: ``"full"`` (default: every commit fsynced) or ``"normal"``
        (WAL mode: survives a process crash, may lose the last commits on power loss).
    """

    TYPE = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table_name: str = "audit_events",
        batch_size: int = 100,
        max_events: int = 10000,
        skip_migration: bool = False,
        synchronous: str = "full",
        registry: CollectorRegistry | None = None,
        name: str | None = None,
    ) -> None:
        self._path = os.fspath(path)
        if not self._path:
            raise ConfigError("sqlite backing store: parameter 'path' must be a file path")
        self._table = check_table_name(table_name)
        self._batch_size = check_int(batch_size, "batch_size", minimum=1, unit="events")
        self._max_events = check_int(max_events, "max_events", minimum=1, unit="events")
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError(
                f"sqlite backing store: parameter 'synchronous' must be one of "
                f"{', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        t = _quote(self._table)
        self._sql_meta = _quote(self._table + "_meta")
        self._sql_table = t
        self._sql_dead = _quote(self._table + "_deadletter")
        self._what = f"sqlite backing store {self._path}:{self._table}"
        self._lock = threading.Lock()
        self._closed = False
        self._drain_fd: int | None = None
        self._batches = BatchTracker(self._lock, self._what, self._check_open)

        self._create_files()
        try:
            self._db = sqlite3.connect(
                self._path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise BackingStoreError(f"{self._what}: cannot open the database: {exc}") from exc
        try:
            mode = self._journal_mode_wal()
            if str(mode).lower() != "wal":
                raise BackingStoreError(
                    f"{self._what}: cannot switch to WAL mode (got {mode!r}); is the file on "
                    "a filesystem without shared memory support (e.g. NFS)?"
                )
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            if not skip_migration:
                self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise BackingStoreError(f"{self._what}: cannot prepare the schema: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        try:
            self._metrics = StoreMetrics(registry, self.TYPE, name)
        except BaseException:
            self._db.close()
            raise
        self.update_metrics()

    @classmethod
    def from_params(
        cls, params: dict[str, Any], registry: CollectorRegistry | None = None
    ) -> SQLiteStore:
        """The ``sqlite`` factory."""
        p = Params(params, cls.TYPE, _EXAMPLE)
        path = p.require_str("path", "the database file path")
        table_name = p.get_str("table_name", "audit_events")
        batch_size = p.get_int("batch_size", 100, minimum=1, unit="events")
        max_events = p.get_int("max_events", 10000, minimum=1, unit="events")
        skip_migration = p.get_bool("skip_migration", False)
        synchronous = p.get_choice("synchronous", _SYNCHRONOUS, "full")
        name = p.get_optional_str("name")
        p.finish()
        try:
            check_table_name(table_name)
        except ConfigError as exc:
            raise ConfigError(f"backing store 'sqlite': {exc}; expected e.g. {_EXAMPLE}") from None
        return cls(
            path,
            table_name=table_name,
            batch_size=batch_size,
            max_events=max_events,
            skip_migration=skip_migration,
            synchronous=synchronous,
            registry=registry,
            name=name,
        )

    @staticmethod
    def schema_sql(table_name: str = "audit_events") -> str:
        """The DDL the store runs at start (for ``skip_migration`` deployments)."""
        check_table_name(table_name)
        t = _quote(table_name)
        meta = _quote(table_name + "_meta")
        dead = _quote(table_name + "_deadletter")
        return f"""\
CREATE TABLE IF NOT EXISTS {t} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_data BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS {meta} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    events INTEGER NOT NULL
);
INSERT OR IGNORE INTO {meta} (id, events) SELECT 1, count(*) FROM {t};
CREATE TABLE IF NOT EXISTS {dead} (
    id INTEGER NOT NULL,
    event_data BLOB NOT NULL,
    reason TEXT NOT NULL,
    created_at TEXT,
    deadlettered_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"""

    @property
    def metrics_label(self) -> str:
        return self._metrics.label

    # -- plumbing ---------------------------------------------------------------------

    def _journal_mode_wal(self) -> object:
        """``PRAGMA journal_mode=WAL``; the mode it answers. Switching needs the database
        to itself, and SQLite may answer "database is locked" at once, without its busy
        timeout, while another process opens the same file: tried again for as long as
        that timeout (the connection's 30 s)."""
        deadline = time.monotonic() + 30.0
        delay = 0.005
        while True:
            try:
                return self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _create_files(self) -> None:
        parent = os.path.dirname(os.path.abspath(self._path))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # An existing file keeps its mode on open; tighten it, we own it.
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BackingStoreError(
                f"{self._what}: cannot create the database file: {exc}; check that the "
                "directory exists and is writable"
            ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self._what} is closed; create a new store")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock now, so the limit check and the insert
        # see the same counter (a deferred transaction could be overtaken in between).
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            for statement in self.schema_sql(self._table).split(";\n"):
                if statement.strip():
                    db.execute(statement)

    # -- the interface ----------------------------------------------------------------

    def write(self, event: Event) -> None:
        self.write_many((event,))

    def write_many(self, events: Sequence[Event]) -> None:
        self._insert([(_dumps(e),) for e in events])  # TypeError here: nothing stored

    def write_many_encoded(self, bodies: Sequence[bytes]) -> None:
        """The bytes as given, one row each (Rule 10 of base.py: not parsed again; the
        reader parses every row and dead-letters one that is not a JSON object)."""
        if _writes_overridden(self, SQLiteStore):
            super().write_many_encoded(bodies)
            return
        _check_encoded(bodies, self._what)
        self._insert([(body,) for body in bodies])

    def _insert(self, payloads: list[tuple[bytes]]) -> None:
        """Insert the rows in one transaction, all or none (Rule 1)."""
        if not payloads:
            return
        n = len(payloads)
        with self._lock:
            self._check_open()
            try:
                with self._transaction() as db:
                    cur = db.execute(
                        f"UPDATE {self._sql_meta} SET events = events + ? "
                        "WHERE id = 1 AND events + ? <= ?",
                        (n, n, self._max_events),
                    )
                    if cur.rowcount != 1:
                        raise BackingStoreFull(
                            f"{self._what} is full: max_events={self._max_events} reached, "
                            f"{n} event(s) refused; drain it (deliver and commit) or raise "
                            "max_events"
                        )
                    db.executemany(
                        f"INSERT INTO {self._sql_table} (event_data) VALUES (?)", payloads
                    )
            except BackingStoreFull:
                self._metrics.error("write_full")
                raise
            except sqlite3.Error as exc:
                self._metrics.error("write")
                raise BackingStoreError(f"{self._what}: write failed: {exc}") from exc
            self._metrics.wrote(n)

    def _take_drain_lock(self) -> bool:
        if self._drain_fd is not None:
            return True
        fd = os.open(self._path + "-drain.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._drain_fd = fd
        return True

    def _release_drain_lock(self) -> None:
        if self._drain_fd is not None:
            os.close(self._drain_fd)  # closing the descriptor releases the flock
            self._drain_fd = None

    def read_batch(
        self, max_events: int | None = None
    ) -> tuple[list[dict[str, Any]], Commit | None]:
        limit = batch_limit(max_events, self._batch_size, self._what)
        with self._lock:
            self._check_open()
            self._batches.drop()
            try:
                if not self._take_drain_lock():
                    # Another store (process) is draining this file and holds its
                    # uncommitted batch; it delivers those events. Nothing to do here.
                    return [], None
                while True:
                    rows = self._db.execute(
                        f"SELECT id, event_data, created_at FROM {self._sql_table} "
                        "ORDER BY id LIMIT ?",
                        (limit,),
                    ).fetchall()
                    if not rows:
                        self._release_drain_lock()
                        return [], None
                    ids: list[int] = []
                    events: list[dict[str, Any]] = []
                    bad: list[tuple[int, bytes, str, Any]] = []
                    for row_id, data, created_at in rows:
                        raw = data.encode() if isinstance(data, str) else bytes(data)
                        try:
                            event = orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            bad.append((row_id, raw, f"invalid JSON: {exc}", created_at))
                            continue
                        if not isinstance(event, dict):
                            bad.append((row_id, raw, "not a JSON object", created_at))
                            continue
                        ids.append(row_id)
                        events.append(event)
                    if bad:
                        self._dead_letter(bad)
                    if events:
                        break
                    # The whole batch was dead-lettered: read the next one.
            except sqlite3.Error as exc:
                self._metrics.error("read")
                raise BackingStoreError(f"{self._what}: read failed: {exc}") from exc
            self._metrics.read(len(events))

            def do_commit() -> None:
                try:
                    with self._transaction() as db:
                        cur = db.executemany(
                            f"DELETE FROM {self._sql_table} WHERE id = ?",
                            [(i,) for i in ids],
                        )
                        db.execute(
                            f"UPDATE {self._sql_meta} SET events = max(0, events - ?) "
                            "WHERE id = 1",
                            (cur.rowcount,),
                        )
                except sqlite3.Error as exc:
                    self._metrics.error("commit")
                    raise BackingStoreError(f"{self._what}: commit failed: {exc}") from exc
                self._release_drain_lock()

            return events, self._batches.issue(do_commit)

    def _dead_letter(self, bad: list[tuple[int, bytes, str, Any]]) -> None:
        # Moved, not deleted: the row leaves the queue (it can never be delivered) but
        # stays inspectable in <table>_deadletter, in the same transaction.
        with self._transaction() as db:
            db.executemany(
                f"INSERT INTO {self._sql_dead} (id, event_data, reason, created_at) "
                "VALUES (?, ?, ?, ?)",
                bad,
            )
            cur = db.executemany(
                f"DELETE FROM {self._sql_table} WHERE id = ?", [(b[0],) for b in bad]
            )
            db.execute(
                f"UPDATE {self._sql_meta} SET events = max(0, events - ?) WHERE id = 1",
                (cur.rowcount,),
            )
        self._metrics.error("read_unmarshal", len(bad))

    def room(self, event_size: int) -> int:
        """Free places under ``max_events`` (Rule 8 of base.py; one counter read). Other
        writers of the same table may take them meanwhile: a reading, not a promise."""
        return max(0, self._max_events - self.pending())

    def pending(self) -> int:
        """The meta counter: events stored and not committed (Rule 4)."""
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute(
                    f"SELECT events FROM {self._sql_meta} WHERE id = 1"
                ).fetchone()
            except sqlite3.Error as exc:
                self._metrics.error("read")
                raise BackingStoreError(
                    f"{self._what}: cannot read the event counter: {exc}") from exc
        if row is None:
            raise BackingStoreError(
                f"{self._what}: {self._table}_meta has no row; recreate it with "
                "SQLiteStore.schema_sql() (or restart without skip_migration)"
            )
        return int(row[0])

    def update_metrics(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                row = self._db.execute(
                    f"SELECT events FROM {self._sql_meta} WHERE id = 1"
                ).fetchone()
            except sqlite3.Error:
                self._metrics.error("update_metrics")
                return
            self._metrics.set_events(row[0] if row else 0)
            size = 0
            files = 0
            for suffix in ("", "-wal"):
                try:
                    size += os.stat(self._path + suffix).st_size
                    files += 1
                except FileNotFoundError:  # no WAL right after a checkpoint: not an error
                    pass
            self._metrics.set_size_bytes(size)
            self._metrics.set_files(files)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._batches.drop()
            self._release_drain_lock()
            self._db.close()
        self._metrics.release()
