"""The SQL store: events buffered in a PostgreSQL table (psycopg 3).

Theory of operation
-------------------
For services with a PostgreSQL database and no volume. Tables (see :meth:`SQLStore.schema_sql`):

* ``<table>`` ``(id bigserial primary key, event_data jsonb not null, created_at
  timestamptz)`` -- the original's schema, so a table it left behind is drained as is.
  jsonb keeps an event's content, not its bytes: a buffered event is published with
  jsonb's key order and spacing (the same JSON object; the file and SQLite stores keep
  the bytes).
* ``<table>_meta`` -- one row, the number of buffered events.
* ``<table>_deadletter`` -- rows that do not parse as a JSON object, with the reason.

Rule 1 (the limit without COUNT(*)): every write is ONE statement that bumps the meta
        counter only if the result stays within ``max_events`` and inserts the events
        only if the bump happened (a data-modifying CTE). The counter row's lock
        serialises writers for the length of that statement, and PostgreSQL re-checks
        the condition against the latest row version after a wait, so the limit is exact
        under any number of writing processes. A commit decrements the counter in the
        same transaction as its delete. Cost per write: O(1), one round trip, one commit
        (the original ran ``COUNT(*)`` over the whole table on every write). The counter
        is set from ``COUNT(*)`` once, when the meta table is created; after rows were
        deleted behind the store's back, :meth:`SQLStore.recount` fixes it.
Rule 2 (several drainers): ``read_batch`` opens a transaction and selects the oldest
        rows ``FOR UPDATE SKIP LOCKED``; the transaction stays open until the batch is
        committed (delete + counter, then COMMIT), so a second drainer skips those rows
        and takes the next ones: no event goes to two drainers. Reading again without
        committing rolls the transaction back and selects again. If the drainer dies,
        PostgreSQL ends its transaction and the rows are unlocked for the others.
Rule 3 (writes never wait for a drain): writes and the drain transaction use different
        sessions. A drain holds row locks on old rows only; inserts never touch them, and
        the counter row is locked only for the instant of the final decrement.
Rule 4: a row that does not parse is moved to ``<table>_deadletter`` within the drain
        transaction (so a rolled-back read moves nothing), never deleted silently.
Rule 5: ``pending()`` reads the meta counter: one indexed single-row SELECT on the
        write session, which never waits for writers or a drain (MVCC). It counts the
        rows of a batch read but not committed (they are still stored), and, for the
        same reason, the unparseable rows such a batch moved in its open transaction.

Connections: the store needs two sessions, so it takes a *source* of connections:

* ``dsn`` (JSON param, the env-config case): the store opens its own two connections
  and reopens them after a failure;
* ``connection=`` a pool (anything with ``getconn()``/``putconn(conn)``, e.g.
  ``psycopg_pool.ConnectionPool``): writes borrow a connection per write, the drain
  borrows one from ``read_batch`` until ``commit``;
* ``connection=`` a callable returning a new ``psycopg.Connection``;
* ``connection=`` a ``psycopg.Connection``: used for writes (it must not be inside a
  transaction of the application's when the store writes, or the write would only be
  as durable as that transaction; the store checks and refuses), and the drain opens a
  second connection with the same parameters.

Applications with their own pool register it through a factory closure::

    create_backing_store(env_value, factories={"sql": sql_store_factory(pool)})

This module imports psycopg only when an SQL store is created (``segmentlog[sql]``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from ..errors import BackingStoreError, BackingStoreFull, ConfigError, LogClosedError
from .base import BackingStore, BatchTracker, Commit, Event, _dumps, batch_limit
from .metrics import StoreMetrics
from .params import BackingStoreFactory, Params, check_int, check_table_name

if TYPE_CHECKING:
    import psycopg
    from prometheus_client import CollectorRegistry
    from psycopg import sql as pgsql

__all__ = ["ConnectionPoolLike", "SQLStore", "sql_store_factory"]

_EXAMPLE = (
    '{"type":"sql","params":{"dsn":"host=db dbname=app","table_name":"audit_events",'
    '"batch_size":100,"max_events":10000}}'
)


@runtime_checkable
class ConnectionPoolLike(Protocol):
    """What the store needs of a pool (``psycopg_pool.ConnectionPool`` has it)."""

    def getconn(self) -> psycopg.Connection[Any]: ...

    def putconn(self, conn: psycopg.Connection[Any]) -> None: ...


ConnectionSource = (
    "psycopg.Connection[Any] | ConnectionPoolLike | Callable[[], psycopg.Connection[Any]]"
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            "the 'sql' backing store needs psycopg 3: pip install 'segmentlog[sql]'"
        ) from None
    return psycopg


def _idle(conn: psycopg.Connection[Any]) -> bool:
    return int(conn.info.transaction_status) == 0  # pq.TransactionStatus.IDLE


class _Sessions:
    """Where the store's two sessions come from (see the module docstring)."""

    def __init__(self, source: Any, what: str) -> None:
        pg = _psycopg()
        self._what = what
        self._pool: ConnectionPoolLike | None = None
        self._connect: Callable[[], psycopg.Connection[Any]] | None = None
        self._shared: psycopg.Connection[Any] | None = None
        if isinstance(source, pg.Connection):
            self._shared = source
            shared = source

            def reconnect() -> psycopg.Connection[Any]:
                conn: psycopg.Connection[Any] = pg.connect(
                    shared.info.dsn, password=shared.info.password or None
                )
                return conn

            self._connect = reconnect
        elif isinstance(source, ConnectionPoolLike):
            self._pool = source
        elif callable(source):
            self._connect = source
        else:
            raise ConfigError(
                f"{what}: connection must be a psycopg.Connection, a pool with "
                f"getconn()/putconn(), or a callable returning a connection; got "
                f"{type(source).__name__}"
            )
        self._writer: psycopg.Connection[Any] | None = None
        self._spare: psycopg.Connection[Any] | None = None  # the drain session, between batches
        self._writer_lock = threading.Lock()

    def _fresh(self) -> psycopg.Connection[Any]:
        assert self._connect is not None
        conn = self._connect()
        return conn

    @contextlib.contextmanager
    def writer(self) -> Iterator[psycopg.Connection[Any]]:
        """A session for one short transaction (writes, metrics, migration)."""
        if self._pool is not None:
            conn = self._pool.getconn()
            try:
                yield conn
            finally:
                self._pool.putconn(conn)
            return
        with self._writer_lock:
            if self._shared is not None:
                conn = self._shared
                if not _idle(conn):
                    raise BackingStoreError(
                        f"{self._what}: the connection given to the store is inside a "
                        "transaction, so a write would only be as durable as that "
                        "transaction; give the store a pool, a connect function or a "
                        "connection of its own"
                    )
            else:
                if self._writer is None or self._writer.closed or self._writer.broken:
                    self._writer = self._fresh()
                conn = self._writer
            yield conn

    def take_drainer(self) -> psycopg.Connection[Any]:
        """A session for a drain transaction, held until :meth:`give_back_drainer`."""
        if self._pool is not None:
            return self._pool.getconn()
        spare, self._spare = self._spare, None
        if spare is not None and not spare.closed and not spare.broken:
            return spare
        return self._fresh()

    def give_back_drainer(self, conn: psycopg.Connection[Any]) -> None:
        if self._pool is not None:
            self._pool.putconn(conn)
        elif not conn.closed and not conn.broken and _idle(conn) and self._spare is None:
            self._spare = conn  # reused by the next read_batch: no reconnect per batch
        else:
            conn.close()

    def close(self) -> None:
        with self._writer_lock:
            for conn in (self._writer, self._spare):
                if conn is not None:
                    conn.close()
            self._writer = None
            self._spare = None


def _run(conn: psycopg.Connection[Any], query: pgsql.Composed, params: Any) -> int:
    """Run one statement atomically and durably; return its rowcount."""
    if conn.autocommit:
        # A single statement is its own transaction: one round trip.
        return conn.execute(query, params).rowcount
    with conn.transaction():
        return conn.execute(query, params).rowcount


class SQLStore(BackingStore):
    """PostgreSQL store (``type: "sql"``).

    :param connection: a connection source (see the module docstring).
    :param table_name: events table, a lower-case identifier (default ``audit_events``).
    :param batch_size: most events one ``read_batch()`` returns (default 100; a drainer
        may ask for more with ``read_batch(max_events=n)``).
    :param max_events: most events buffered (default 10000), strictly enforced.
    :param skip_migration: do not create tables (see :meth:`schema_sql`).
    """

    TYPE = "sql"

    def __init__(
        self,
        connection: Any,
        *,
        table_name: str = "audit_events",
        batch_size: int = 100,
        max_events: int = 10000,
        skip_migration: bool = False,
        registry: CollectorRegistry | None = None,
        name: str | None = None,
    ) -> None:
        pg = _psycopg()
        self._table = check_table_name(table_name)
        self._batch_size = check_int(batch_size, "batch_size", minimum=1, unit="events")
        self._max_events = check_int(max_events, "max_events", minimum=1, unit="events")
        self._what = f"sql backing store {self._table}"
        self._sessions = _Sessions(connection, self._what)
        self._pg = pg
        self._q = _Queries(self._table)
        self._lock = threading.Lock()  # the drain state (one drainer per store object)
        self._drainer: psycopg.Connection[Any] | None = None
        self._closed = False
        self._batches = BatchTracker(self._lock, self._what, self._check_open)
        try:
            with self._sessions.writer() as conn:
                if not skip_migration:
                    with conn.transaction():
                        conn.execute(self._q.lock, (self._table,))
                        for statement in self._q.schema:
                            conn.execute(statement)
                row = self._execute_fetch(conn, self._q.events, None)
        except pg.Error as exc:
            self._sessions.close()
            raise BackingStoreError(
                f"{self._what}: cannot prepare the tables: {exc}; create them with "
                "SQLStore.schema_sql() or drop skip_migration"
            ) from exc
        except BaseException:
            self._sessions.close()
            raise
        if row is None:
            self._sessions.close()
            raise BackingStoreError(
                f"{self._what}: {self._table}_meta has no row; run SQLStore.schema_sql("
                f"{self._table!r}) (it initialises the counter) or drop skip_migration"
            )
        try:
            self._metrics = StoreMetrics(registry, self.TYPE, name)
        except BaseException:
            self._sessions.close()
            raise
        self._metrics.set_files(0)
        self._metrics.set_events(row[0])

    @classmethod
    def from_params(
        cls,
        params: dict[str, Any],
        registry: CollectorRegistry | None = None,
        *,
        connection: Any = None,
    ) -> SQLStore:
        """The ``sql`` factory: ``dsn`` or an application-given ``connection``."""
        p = Params(params, cls.TYPE, _EXAMPLE)
        dsn = p.get_optional_str("dsn")
        table_name = p.get_str("table_name", "audit_events")
        batch_size = p.get_int("batch_size", 100, minimum=1, unit="events")
        max_events = p.get_int("max_events", 10000, minimum=1, unit="events")
        skip_migration = p.get_bool("skip_migration", False)
        name = p.get_optional_str("name")
        p.finish()
        try:
            check_table_name(table_name)
        except ConfigError as exc:
            raise ConfigError(f"backing store 'sql': {exc}; expected e.g. {_EXAMPLE}") from None
        if connection is not None and dsn is not None:
            raise ConfigError(
                "backing store 'sql': parameter 'dsn' given, but the application supplies "
                "the connection (sql_store_factory); remove 'dsn' from the params"
            )
        if connection is None:
            if dsn is None:
                raise ConfigError(
                    "backing store 'sql': parameter 'dsn' is required (a libpq connection "
                    "string) unless the application registers its own connection with "
                    "factories={'sql': sql_store_factory(pool)}; expected e.g. " + _EXAMPLE
                )
            pg = _psycopg()
            conn_dsn = dsn

            def connect() -> psycopg.Connection[Any]:
                conn: psycopg.Connection[Any] = pg.connect(conn_dsn, autocommit=True)
                return conn

            connection = connect
        return cls(
            connection,
            table_name=table_name,
            batch_size=batch_size,
            max_events=max_events,
            skip_migration=skip_migration,
            registry=registry,
            name=name,
        )

    @staticmethod
    def schema_sql(table_name: str = "audit_events") -> str:
        """The DDL the store runs at start, as text (for ``skip_migration`` deployments)."""
        check_table_name(table_name)
        return ";\n".join(_Queries.schema_text(table_name)) + ";\n"

    @property
    def metrics_label(self) -> str:
        return self._metrics.label

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self._what} is closed; create a new store")

    @staticmethod
    def _execute_fetch(
        conn: psycopg.Connection[Any], query: pgsql.Composed, params: Any
    ) -> Any:
        if conn.autocommit:
            return conn.execute(query, params).fetchone()
        with conn.transaction():
            return conn.execute(query, params).fetchone()

    # -- writes -------------------------------------------------------------------------

    def write(self, event: Event) -> None:
        data = _dumps(event).decode()  # TypeError here: nothing stored
        self._write(self._q.insert_one, {"n": 1, "max": self._max_events, "data": data}, 1)

    def write_many(self, events: Sequence[Event]) -> None:
        if not events:
            return
        # One JSON array, one parameter: the server splits it (jsonb_array_elements).
        # A text[] parameter would be escaped element by element on the client, which
        # costs more than the insert itself. TypeError here: nothing stored.
        data = orjson.dumps([e if isinstance(e, dict) else dict(e) for e in events]).decode()
        n = len(events)
        self._write(self._q.insert_many, {"n": n, "max": self._max_events, "data": data}, n)

    def _write(self, query: pgsql.Composed, params: dict[str, Any], n: int) -> None:
        self._check_open()
        try:
            with self._sessions.writer() as conn:
                inserted = _run(conn, query, params)
                if inserted == n:
                    self._metrics.wrote(n)
                    return
                # Nothing inserted: the counter check failed (or the meta row is gone).
                row = self._execute_fetch(conn, self._q.events, None)
        except self._pg.Error as exc:
            self._metrics.error("write")
            raise BackingStoreError(f"{self._what}: write failed: {exc}") from exc
        if row is None:
            self._metrics.error("write")
            raise BackingStoreError(
                f"{self._what}: {self._table}_meta has no row; recreate it with "
                "SQLStore.schema_sql() (or restart without skip_migration)"
            )
        self._metrics.error("write_full")
        raise BackingStoreFull(
            f"{self._what} is full: {row[0]} of max_events={self._max_events} events "
            f"buffered, {n} more refused; drain it (deliver and commit) or raise max_events"
        )

    # -- the drain ------------------------------------------------------------------------

    def _end_drain(self, commit: bool) -> None:
        """Finish the drain transaction (lock held) and give the session back."""
        conn = self._drainer
        if conn is None:
            return
        self._drainer = None
        try:
            if commit:
                conn.commit()
            elif not conn.closed:
                conn.rollback()
        finally:
            with contextlib.suppress(self._pg.Error):
                self._sessions.give_back_drainer(conn)

    def read_batch(
        self, max_events: int | None = None
    ) -> tuple[list[dict[str, Any]], Commit | None]:
        limit = batch_limit(max_events, self._batch_size, self._what)
        with self._lock:
            self._check_open()
            self._batches.drop()
            try:
                # A previous batch not committed: roll it back (it unlocks its rows and
                # undoes its dead-letter moves) and select again from the oldest row. A
                # failed rollback means the session is gone, and the server has already
                # ended that transaction: nothing of it can survive.
                with contextlib.suppress(self._pg.Error):
                    self._end_drain(commit=False)
                return self._read_locked(limit)
            except self._pg.Error as exc:
                self._metrics.error("read")
                with contextlib.suppress(self._pg.Error):
                    self._end_drain(commit=False)
                raise BackingStoreError(f"{self._what}: read failed: {exc}") from exc

    def _read_locked(self, limit: int) -> tuple[list[dict[str, Any]], Commit | None]:
        while True:
            conn = self._sessions.take_drainer()
            self._drainer = conn
            if conn.autocommit:
                conn.execute("BEGIN")  # else psycopg begins implicitly
            rows = conn.execute(self._q.select, (limit,)).fetchall()
            if not rows:
                self._end_drain(commit=False)
                return [], None
            ids: list[int] = []
            events: list[dict[str, Any]] = []
            bad: list[tuple[int, str, str, Any]] = []
            for row_id, text, created_at in rows:
                try:
                    event = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    bad.append((row_id, text, f"invalid JSON: {exc}", created_at))
                    continue
                if not isinstance(event, dict):
                    bad.append((row_id, text, "not a JSON object", created_at))
                    continue
                ids.append(row_id)
                events.append(event)
            if bad:
                # Moved within the drain transaction; the counter follows at commit.
                with conn.cursor() as cur:
                    cur.executemany(self._q.dead_insert, bad)
                conn.execute(self._q.delete_ids, ([b[0] for b in bad],))
            if not events:
                # Only unparseable rows: commit their move now and read on.
                conn.execute(self._q.decrement, {"ids": [], "extra": len(bad)})
                self._end_drain(commit=True)
                self._metrics.error("read_unmarshal", len(bad))
                continue
            if bad:
                self._metrics.error("read_unmarshal", len(bad))
            self._metrics.read(len(events))
            return events, self._batches.issue(self._committer(conn, ids, len(bad)))

    def _committer(
        self, conn: psycopg.Connection[Any], ids: list[int], dead: int
    ) -> Callable[[], None]:
        """The commit of one batch: delete its rows, fix the counter, end the drain."""

        def do_commit() -> None:
            try:
                assert self._drainer is conn, "a live batch owns the drain session"
                conn.execute(self._q.decrement, {"ids": ids, "extra": dead})
                self._end_drain(commit=True)
            except self._pg.Error as exc:
                self._metrics.error("commit")
                with contextlib.suppress(self._pg.Error):
                    self._end_drain(commit=False)
                raise BackingStoreError(
                    f"{self._what}: commit failed ({exc}); the batch stays stored and "
                    "will be read again"
                ) from exc

        return do_commit

    def room(self, event_size: int) -> int:
        """Free places under ``max_events`` (Rule 8 of base.py; one counter read). Other
        writers of the same table may take them meanwhile: a reading, not a promise."""
        return max(0, self._max_events - self.pending())

    def pending(self) -> int:
        """The meta counter: events stored and not committed (Rule 5; one round trip)."""
        self._check_open()
        try:
            with self._sessions.writer() as conn:
                row = self._execute_fetch(conn, self._q.events, None)
        except self._pg.Error as exc:
            self._metrics.error("read")
            raise BackingStoreError(f"{self._what}: cannot read the event counter: "
                                    f"{exc}") from exc
        if row is None:
            raise BackingStoreError(
                f"{self._what}: {self._table}_meta has no row; recreate it with "
                "SQLStore.schema_sql() (or restart without skip_migration)"
            )
        return int(row[0])

    def recount(self) -> int:
        """Set the event counter from ``COUNT(*)`` (O(n); after manual deletes only)."""
        self._check_open()
        with self._sessions.writer() as conn, conn.transaction():
            conn.execute(self._q.lock_meta)  # writers and decrements wait: exact
            (count,) = conn.execute(self._q.count).fetchone() or (0,)
            conn.execute(self._q.set_events, (count,))
        self._metrics.set_events(count)
        return int(count)

    def update_metrics(self) -> None:
        if self._closed:
            return
        try:
            with self._sessions.writer() as conn:
                row = self._execute_fetch(conn, self._q.metrics, (self._table,))
        except (self._pg.Error, BackingStoreError):
            self._metrics.error("update_metrics")
            return
        if row is not None:
            self._metrics.set_events(row[0])
            self._metrics.set_size_bytes(row[1])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._batches.drop()
            with contextlib.suppress(self._pg.Error):
                self._end_drain(commit=False)
            with contextlib.suppress(self._pg.Error):
                self._sessions.close()
        self._metrics.release()


class _Queries:
    """Every statement of one table, composed once with quoted identifiers."""

    def __init__(self, table: str) -> None:
        from psycopg import sql

        t = _ident(table)
        meta = _ident(table + "_meta")
        dead = _ident(table + "_deadletter")
        self.schema = [sql.SQL(s) for s in self.schema_text(table)]
        self.lock = sql.SQL("SELECT pg_advisory_xact_lock(hashtext(%s))")
        self.events = sql.SQL("SELECT events FROM {} WHERE id = 1").format(meta)
        self.insert_one = sql.SQL(
            "WITH c AS (UPDATE {meta} SET events = events + %(n)s "
            "WHERE id = 1 AND events + %(n)s <= %(max)s RETURNING 1) "
            "INSERT INTO {t} (event_data) SELECT %(data)s::jsonb FROM c"
        ).format(meta=meta, t=t)
        self.insert_many = sql.SQL(
            "WITH c AS (UPDATE {meta} SET events = events + %(n)s "
            "WHERE id = 1 AND events + %(n)s <= %(max)s RETURNING 1) "
            "INSERT INTO {t} (event_data) "
            "SELECT v.value FROM c, "
            "jsonb_array_elements(%(data)s::jsonb) WITH ORDINALITY AS v(value, ord) "
            "ORDER BY v.ord"  # ids follow list order
        ).format(meta=meta, t=t)
        self.select = sql.SQL(
            "SELECT id, event_data::text, created_at FROM {} "
            "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
        ).format(t)
        self.dead_insert = sql.SQL(
            "INSERT INTO {} (id, event_data, reason, created_at) VALUES (%s, %s, %s, %s)"
        ).format(dead)
        self.delete_ids = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t)
        self.decrement = sql.SQL(
            "WITH d AS (DELETE FROM {t} WHERE id = ANY(%(ids)s::bigint[]) RETURNING 1) "
            "UPDATE {meta} SET events = GREATEST(0, events - (SELECT count(*) FROM d) "
            "- %(extra)s) WHERE id = 1"
        ).format(t=t, meta=meta)
        self.lock_meta = sql.SQL("SELECT events FROM {} WHERE id = 1 FOR UPDATE").format(meta)
        self.count = sql.SQL("SELECT count(*) FROM {}").format(t)
        self.set_events = sql.SQL("UPDATE {} SET events = %s WHERE id = 1").format(meta)
        self.metrics = sql.SQL(
            "SELECT events, pg_total_relation_size(%s::regclass) FROM {} WHERE id = 1"
        ).format(meta)

    @staticmethod
    def schema_text(table: str) -> list[str]:
        t = _quoted(table)
        meta = _quoted(table + "_meta")
        dead = _quoted(table + "_deadletter")
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (\n"
            "    id BIGSERIAL PRIMARY KEY,\n"
            "    event_data JSONB NOT NULL,\n"
            "    created_at TIMESTAMPTZ NOT NULL DEFAULT now()\n)",
            f"CREATE TABLE IF NOT EXISTS {meta} (\n"
            "    id INT PRIMARY KEY CHECK (id = 1),\n"
            "    events BIGINT NOT NULL\n)",
            f"INSERT INTO {meta} (id, events) SELECT 1, count(*) FROM {t} "
            "ON CONFLICT (id) DO NOTHING",
            f"CREATE TABLE IF NOT EXISTS {dead} (\n"
            "    id BIGINT NOT NULL,\n"
            "    event_data TEXT NOT NULL,\n"
            "    reason TEXT NOT NULL,\n"
            "    created_at TIMESTAMPTZ,\n"
            "    deadlettered_at TIMESTAMPTZ NOT NULL DEFAULT now()\n)",
        ]


def _quoted(table: str) -> str:
    # check_table_name allows only [a-z0-9_.]; quoting keeps keywords (e.g. "order") safe.
    return ".".join(f'"{part}"' for part in table.split("."))


def _ident(table: str) -> pgsql.Identifier:
    from psycopg import sql

    return sql.Identifier(*table.split("."))


def sql_store_factory(connection: Any) -> BackingStoreFactory:
    """A ``sql`` factory bound to the application's pool, connect function or connection.

    ``factories={"sql": sql_store_factory(pool)}``: the JSON params then configure the
    table and limits, and must not contain ``dsn``.
    """

    def factory(params: dict[str, Any], registry: CollectorRegistry | None) -> BackingStore:
        return SQLStore.from_params(params, registry, connection=connection)

    return factory
