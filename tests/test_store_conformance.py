"""One conformance suite, run against every store type (base.py's rules, one test each).

Kinds: ``memory``, ``file``, ``sqlite``, and the PostgreSQL store through each of its
connection sources (``sql-dsn``, ``sql-pool``, ``sql-connection``) on the real server.
Each test gets a ``Maker``: ``make(**params)`` opens a store on the test's own location
(directory, file or uuid-named table), so a second ``make()`` reopens the same data.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from segmentlog.errors import (
    BackingStoreError,
    BackingStoreFull,
    ConfigError,
    InvalidEventError,
    LogClosedError,
    RecordTooLargeError,
)
from segmentlog.store import (
    BackingStore,
    Commit,
    FileStore,
    MemoryStore,
    SQLiteStore,
    SQLStore,
    create_backing_store,
)

KINDS = ["memory", "file", "sqlite", "sql-dsn", "sql-pool", "sql-connection"]
DURABLE = ["file", "sqlite", "sql-dsn", "sql-pool", "sql-connection"]

# A real CADF event, as the Auditor stores it.
CADF = {
    "typeURI": "http://schemas.dmtf.org/cloud/audit/1.0/event",
    "id": "d6a8c9b1-2f1e-4a53-9f0c-6b1f0e9b7d11",
    "eventTime": "2025-11-29T22:58:00.123456+00:00",
    "eventType": "activity",
    "action": "update/set",
    "outcome": "success",
    "reason": {"reasonType": "HTTP", "reasonCode": "200"},
    "initiator": {
        "typeURI": "service/security/account/user",
        "id": "3a1b2c",
        "name": "alice",
        "domain": "default",
        "project_id": "p-123",
        "host": {"address": "10.0.0.7", "agent": "python-requests/2.32"},
    },
    "target": {"typeURI": "service/resources/quota", "id": "q-456", "attachments": []},
    "observer": {"typeURI": "service/resources", "id": "limes", "name": "limes"},
    "requestPath": "/v1/domains/d1/projects/p-123",
}


def ev(i: int, **extra: Any) -> dict[str, Any]:
    return {**CADF, "id": f"event-{i}", "seq": i, **extra}


class PgPool:
    """A minimal real pool (getconn/putconn), what psycopg_pool offers the store."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._dsn = dsn
        self._idle: list[psycopg.Connection[Any]] = []
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self.borrowed = 0

    def getconn(self) -> Any:
        import psycopg

        with self._lock:
            self.borrowed += 1
            if self._idle:
                return self._idle.pop()
        conn = psycopg.connect(self._dsn)
        with self._lock:
            self._all.append(conn)
        return conn

    def putconn(self, conn: Any) -> None:
        if not conn.closed and int(conn.info.transaction_status) != 0:
            conn.rollback()  # what psycopg_pool does with a connection returned mid-transaction
        with self._lock:
            self.borrowed -= 1
            self._idle.append(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()


def drop_tables(dsn: str, table: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for suffix in ("", "_meta", "_deadletter"):
            conn.execute(f'DROP TABLE IF EXISTS "{table}{suffix}"')


class Maker:
    """Opens stores of one kind on one location; closes them all at teardown."""

    def __init__(self, kind: str, tmp_path: Any, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.registry = CollectorRegistry()
        self.stores: list[BackingStore] = []
        self.cleanups: list[Callable[[], None]] = []
        self.directory = str(tmp_path / "store")
        self.path = str(tmp_path / "store.db")
        self.table = "conf_" + uuid.uuid4().hex[:12]
        self.dsn: str | None = None
        if kind.startswith("sql-"):
            self.dsn = request.getfixturevalue("postgres_dsn")
            dsn = self.dsn
            table = self.table
            self.cleanups.append(lambda: drop_tables(dsn, table))
            if kind == "sql-pool":
                self.pool = PgPool(self.dsn)
                self.cleanups.insert(0, self.pool.close)

    def __call__(
        self, registry: CollectorRegistry | None = None, /, **params: Any
    ) -> BackingStore:
        reg = self.registry if registry is None else registry
        store: BackingStore
        if self.kind == "memory":
            store = MemoryStore(registry=reg, **params)
        elif self.kind == "file":
            store = FileStore(self.directory, registry=reg, **params)
        elif self.kind == "sqlite":
            store = SQLiteStore(self.path, registry=reg, **params)
        else:
            import psycopg

            assert self.dsn is not None
            params.setdefault("table_name", self.table)
            conn: Any
            if self.kind == "sql-dsn":
                store = SQLStore.from_params({"dsn": self.dsn, **params}, reg)
                self.stores.append(store)
                return store
            if self.kind == "sql-pool":
                conn = self.pool
            else:
                conn = psycopg.connect(self.dsn, autocommit=True)
                self.cleanups.insert(0, conn.close)
            store = SQLStore(conn, registry=reg, **params)
        self.stores.append(store)
        return store

    def small(self, registry: CollectorRegistry | None = None) -> BackingStore:
        """A store that is full after a few events (10 for counted stores)."""
        if self.kind == "file":
            # Two segments of two pages: a handful of CADF events.
            return self(registry, max_file_size=8192, max_total_size=16384)
        return self(registry, max_events=10)

    def close(self) -> None:
        for store in self.stores:
            store.close()
        for cleanup in self.cleanups:
            cleanup()


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Maker]:
    maker = Maker(request.param, tmp_path, request)
    try:
        yield maker
    finally:
        maker.close()


def drain(store: BackingStore) -> list[dict[str, Any]]:
    """Read and commit every batch; return the events in order."""
    out: list[dict[str, Any]] = []
    for _ in range(10_000):
        events, commit = store.read_batch()
        if not events:
            assert commit is None
            return out
        assert commit is not None
        out.extend(events)
        commit()
    raise AssertionError("store never ran empty")


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# -- reading and committing -------------------------------------------------------------


def test_empty_store_reads_nothing_and_no_commit(make: Maker) -> None:
    store = make()
    assert store.read_batch() == ([], None)
    assert store.read_batch() == ([], None)


def test_a_store_says_whether_it_is_durable(make: Maker) -> None:
    # The Auditor asked isinstance(store, MemoryStore); a store now says it itself.
    assert make().durable is (make.kind in DURABLE)


def test_events_come_back_in_write_order_and_commit_removes_them(make: Maker) -> None:
    store = make(batch_size=7)
    store.write(ev(0))
    store.write_many([ev(i) for i in range(1, 20)])
    for i in range(20, 25):
        store.write(ev(i))
    got = drain(store)
    assert seqs(got) == list(range(25))
    assert got[3] == ev(3)  # the whole event survives the round trip
    assert store.read_batch() == ([], None)


def test_encoded_read_is_the_same_batch_as_json_bytes_and_ids(make: Maker) -> None:
    """read_encoded_up_to (what the Auditor's drain reads): the batch read_batch_up_to
    gives, each event as JSON bytes that parse back to it, with its id; reading again
    without commit gives the same, the commit removes exactly those."""
    store = make(batch_size=3)
    events = [dict(ev(i), id=f"id-{i}") for i in range(7)]
    events[2]["id"] = 17  # not a string: no id for the drain to use
    store.write_many(events)
    bodies, ids, _ = store.read_encoded_up_to(5)
    again, ids_again, commit = store.read_encoded_up_to(5)
    assert (again, ids_again) == (bodies, ids)
    assert [orjson.loads(b) for b in bodies] == events[:5]
    assert ids == ["id-0", "id-1", None, "id-3", "id-4"]
    assert commit is not None
    commit()
    rest, commit = store.read_batch_up_to(10)
    assert rest == events[5:] and commit is not None
    commit()
    assert store.read_encoded_up_to(5) == ([], [], None)


def test_batches_hold_at_most_batch_size_events(make: Maker) -> None:
    store = make(batch_size=4)
    store.write_many([ev(i) for i in range(10)])
    sizes = []
    while True:
        events, commit = store.read_batch()
        if commit is None:
            break
        sizes.append(len(events))
        commit()
    assert sizes == [4, 4, 2]


def test_read_again_without_commit_returns_the_same_events(make: Maker) -> None:
    store = make(batch_size=5)
    store.write_many([ev(i) for i in range(12)])
    first, _ = store.read_batch()
    again, commit = store.read_batch()
    assert seqs(first) == seqs(again) == [0, 1, 2, 3, 4]
    assert commit is not None
    commit()
    nxt, _ = store.read_batch()
    assert seqs(nxt) == [5, 6, 7, 8, 9]


def test_commit_removes_only_its_batch_not_later_writes(make: Maker) -> None:
    store = make(batch_size=100)
    store.write_many([ev(i) for i in range(3)])
    events, commit = store.read_batch()
    assert seqs(events) == [0, 1, 2]
    store.write_many([ev(3), ev(4)])  # written while the batch is being delivered
    assert commit is not None
    commit()
    assert seqs(drain(store)) == [3, 4]


def test_stale_commit_raises_and_removes_nothing(make: Maker) -> None:
    store = make(batch_size=3)
    store.write_many([ev(i) for i in range(6)])
    _, stale = store.read_batch()
    _, latest = store.read_batch()
    assert stale is not None and latest is not None
    with pytest.raises(BackingStoreError, match="stale"):
        stale()
    latest()
    assert seqs(drain(store)) == [3, 4, 5]


def test_commit_called_twice_removes_the_batch_once(make: Maker) -> None:
    store = make(batch_size=2)
    store.write_many([ev(i) for i in range(4)])
    _, commit = store.read_batch()
    assert commit is not None
    commit()
    commit()
    assert seqs(drain(store)) == [2, 3]


def test_max_events_overrides_batch_size_upwards_and_downwards(make: Maker) -> None:
    store = make(batch_size=4)
    store.write_many([ev(i) for i in range(30)])
    big, _ = store.read_batch(max_events=10)
    assert seqs(big) == list(range(10))
    small, commit = store.read_batch(max_events=2)  # a reread starts at the same oldest
    assert seqs(small) == [0, 1]
    assert commit is not None
    commit()
    default, commit = store.read_batch()  # None: the configured batch_size again
    assert seqs(default) == [2, 3, 4, 5]
    assert commit is not None
    commit()
    rest, commit = store.read_batch(max_events=1000)  # more than stored: what is there
    assert seqs(rest) == list(range(6, 30))
    assert commit is not None
    commit()
    assert store.read_batch(max_events=5) == ([], None)


def test_read_batch_up_to_passes_max_events_to_every_built_in_store(make: Maker) -> None:
    store = make(batch_size=3)
    store.write_many([ev(i) for i in range(20)])
    events, commit = store.read_batch_up_to(15)
    assert seqs(events) == list(range(15))
    assert commit is not None
    commit()
    assert seqs(drain(store)) == list(range(15, 20))


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "10"])
def test_max_events_below_one_or_not_an_integer_is_a_config_error_and_reads_nothing(
    make: Maker, bad: Any
) -> None:
    store = make(batch_size=2)
    store.write_many([ev(0), ev(1), ev(2)])
    with pytest.raises(ConfigError, match="max_events"):
        store.read_batch(max_events=bad)
    assert seqs(drain(store)) == [0, 1, 2]


def test_pending_counts_stored_events_until_their_batch_is_committed(make: Maker) -> None:
    store = make(batch_size=3)
    assert store.pending() == 0
    store.write(ev(0))
    store.write_many([ev(i) for i in range(1, 7)])
    assert store.pending() == 7
    events, commit = store.read_batch()
    assert len(events) == 3
    assert store.pending() == 7  # read, not committed: still stored
    store.read_batch()  # superseded and reread: nothing removed
    _, commit = store.read_batch()
    assert commit is not None
    commit()
    assert store.pending() == 4
    store.write(ev(7))
    assert store.pending() == 5
    drain(store)
    assert store.pending() == 0


# Stores whose data several store objects (processes) can write at once; a memory store's
# data belongs to one object, a file store's directory is locked by one (LogLockedError).
SHARED = ["sqlite", "sql-dsn", "sql-pool", "sql-connection"]


@pytest.mark.parametrize("kind", SHARED)
def test_pending_follows_another_writer_of_the_same_data(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    maker = Maker(kind, tmp_path, request)
    try:
        store = maker()
        other = maker()
        store.write_many([ev(0), ev(1)])
        other.write_many([ev(2), ev(3), ev(4)])
        assert store.pending() == other.pending() == 5
        drain(other)
        assert store.pending() == 0
    finally:
        maker.close()


@pytest.mark.parametrize("kind", DURABLE)
def test_pending_after_reopen_counts_what_was_left_uncommitted(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    maker = Maker(kind, tmp_path, request)
    try:
        store = maker(batch_size=4)
        store.write_many([ev(i) for i in range(10)])
        _, commit = store.read_batch()
        assert commit is not None
        commit()
        store.read_batch()  # never committed (crash mid-delivery)
        store.close()
        again = maker()
        assert again.pending() == 6
        assert seqs(drain(again)) == list(range(4, 10))
        assert again.pending() == 0
    finally:
        maker.close()


class OldStyleStore(BackingStore):
    """A custom store written before ``max_events``: ``read_batch(self)``, no ``pending``."""

    def __init__(self, batch_size: int) -> None:
        self.inner = MemoryStore(max_events=1000, batch_size=batch_size,
                                 registry=CollectorRegistry())

    def write(self, event: Any) -> None:
        self.inner.write(event)

    def read_batch(self) -> tuple[list[dict[str, Any]], Commit | None]:  # type: ignore[override]
        return self.inner.read_batch()

    def close(self) -> None:
        self.inner.close()


class KeywordsStore(OldStyleStore):
    """A custom store whose ``read_batch`` takes ``**kwargs``: it gets ``max_events``."""

    def read_batch(self, **kwargs: Any) -> tuple[list[dict[str, Any]], Commit | None]:  # type: ignore[override]
        return self.inner.read_batch(**kwargs)


def test_old_style_custom_store_is_read_in_its_own_batch_size_and_pending_is_unknown() -> None:
    with OldStyleStore(batch_size=3) as store:
        store.write_many([ev(i) for i in range(8)])
        events, commit = store.read_batch_up_to(100)
        assert seqs(events) == [0, 1, 2]  # its own batch size, events in order
        assert commit is not None
        commit()
        assert store.pending() is None
        assert seqs(drain(store)) == list(range(3, 8))


def test_custom_store_taking_keywords_gets_max_events() -> None:
    with KeywordsStore(batch_size=3) as store:
        store.write_many([ev(i) for i in range(8)])
        events, _ = store.read_batch_up_to(6)
        assert seqs(events) == list(range(6))


# -- writing ------------------------------------------------------------------------------


def test_write_many_of_nothing_stores_nothing(make: Maker) -> None:
    store = make()
    store.write_many([])
    assert store.read_batch() == ([], None)


def test_unserialisable_event_raises_type_error_and_stores_nothing(make: Maker) -> None:
    store = make()
    with pytest.raises(TypeError):
        store.write({"when": object()})
    with pytest.raises(TypeError):
        store.write_many([ev(0), {"bad": {1, 2}}])
    assert store.read_batch() == ([], None)


def test_event_mutated_after_write_is_stored_as_written(make: Maker) -> None:
    store = make()
    event = ev(1)
    store.write(event)
    event["action"] = "changed"
    (got,), _ = store.read_batch()
    assert got["action"] == "update/set"


def test_full_store_raises_backing_store_full_and_keeps_its_events(make: Maker) -> None:
    store = make.small()
    written = 0
    with pytest.raises(BackingStoreFull):
        for i in range(1000):
            store.write(ev(i))
            written += 1
    if make.kind != "file":
        assert written == 10  # max_events is exact
    assert written > 0
    assert seqs(drain(store)) == list(range(written))


def test_full_store_accepts_writes_again_after_commit(make: Maker) -> None:
    store = make.small()
    with pytest.raises(BackingStoreFull):
        for i in range(1000):
            store.write(ev(i))
    drain(store)
    store.write(ev(9999))
    assert seqs(drain(store)) == [9999]


def test_room_is_what_still_fits_and_comes_back_after_commit(make: Maker) -> None:
    # Rule 8: the Auditor holds no more events in memory than this (issue 15 item 3).
    store = make.small()
    size = len(orjson.dumps(ev(0)))
    room = store.room(size)
    assert room is not None and room > 0
    store.write_many([ev(i) for i in range(room)])  # all it promised fits
    assert store.room(size) == 0
    if make.kind != "file":  # counted stores are exact; the file store errs low
        with pytest.raises(BackingStoreFull):
            store.write(ev(room))
    drain(store)
    if make.kind == "file":  # whole consumed segments come back, the active one's tail not
        assert 0 < store.room(size) <= room
    else:
        assert store.room(size) == room


def test_write_many_that_does_not_fit_stores_none_of_it(make: Maker) -> None:
    store = make.small()
    store.write(ev(0))
    with pytest.raises(BackingStoreFull):
        store.write_many([ev(i) for i in range(1, 500)])
    assert seqs(drain(store)) == [0]


# -- writing JSON bytes (Rule 10) ---------------------------------------------------------

#: Stores that keep a body's bytes and hand them back (the others keep its content).
KEEP_BYTES = ["memory", "file"]


def test_encoded_write_is_read_back_as_written_with_its_id(make: Maker) -> None:
    """write_many_encoded (the Auditor's spill and write-ahead) stores each body as one
    event: read_encoded_up_to hands back the very bytes, with their ids, in order (the
    SQL store: the same JSON objects; jsonb keeps content, not bytes), read_batch the
    events, and the commit removes them."""
    store = make(batch_size=3)
    events = [dict(ev(i), id=f"id-{i}") for i in range(6)]
    events[2]["id"] = 17  # not a string: no id for the drain to use
    bodies = [orjson.dumps(e) for e in events]  # what record() makes
    # Spacing and an escape that a decode and re-encode would not keep.
    bodies[4] = (bodies[4].replace(b'"action":', b'"action" : ')
                 .replace(b"update", b"\\u0075pdate"))
    store.write_many_encoded(bodies[:1])
    store.write_many_encoded(bodies[1:])
    assert store.pending() in (6, None)
    got, ids, commit = store.read_encoded_up_to(10)
    assert ids == ["id-0", "id-1", None, "id-3", "id-4", "id-5"]
    if make.kind in KEEP_BYTES:
        assert got == bodies
    else:
        assert [orjson.loads(b) for b in got] == events
        if make.kind == "sqlite":  # it keeps the bytes but reads through read_batch
            assert got[:4] == bodies[:4] and got[5] == bodies[5]
    assert commit is not None
    events_again, commit = store.read_batch_up_to(10)  # not committed: read again
    assert events_again == events and commit is not None
    commit()
    assert store.read_encoded_up_to(10) == ([], [], None)
    store.write_many_encoded([])
    assert store.read_batch() == ([], None)


@pytest.mark.parametrize("body", ["{}", {"a": 1}, bytearray(b"{}"), None])
def test_encoded_write_of_what_is_not_bytes_raises_type_error_and_stores_nothing(
        make: Maker, body: Any) -> None:
    store = make()
    with pytest.raises(TypeError, match="write_many_encoded takes bytes"):
        store.write_many_encoded([orjson.dumps(ev(0)), body])
    assert store.read_batch() == ([], None)


@pytest.mark.parametrize("body", [b"", b"[1]", b"1", b'"{}"', b' {"a":1}', b'{"a":1}\n',
                                  b"null"])
def test_encoded_write_of_what_is_not_framed_as_one_object_is_refused_and_stores_nothing(
        make: Maker, body: bytes) -> None:
    store = make()
    with pytest.raises(InvalidEventError, match="not the JSON encoding of one JSON object"):
        store.write_many_encoded([orjson.dumps(ev(0)), body])
    assert store.read_batch() == ([], None)


@pytest.mark.parametrize("body", [b"{not json}", b'{"a":1},{"b":2}', b'{"a":"\xff"}'])
def test_encoded_body_that_is_not_json_is_refused_or_dead_lettered_never_handed_out(
        make: Maker, body: bytes) -> None:
    """Within its braces a body is taken on trust by the stores that do not parse it
    (file, SQLite): their readers parse every event, so it is dead-lettered and counted
    there. The memory store parses it at once (it has no dead-letter place), the SQL
    store through the default: refused, nothing stored."""
    reg = CollectorRegistry()
    store = make(reg)
    good = [orjson.dumps(ev(0)), orjson.dumps(ev(2))]
    if make.kind in ("file", "sqlite"):
        store.write_many_encoded([good[0], body, good[1]])
        assert seqs(drain(store)) == [0, 2]
        assert sample(reg, "audittools_backing_store_errors_total",
                      store=make.kind, operation="read_unmarshal") == 1
    else:
        with pytest.raises(InvalidEventError, match="is not JSON"):
            store.write_many_encoded([good[0], body, good[1]])
        assert store.read_batch() == ([], None)


def test_encoded_write_that_does_not_fit_stores_none_of_it(make: Maker) -> None:
    store = make.small()
    store.write_many_encoded([orjson.dumps(ev(0))])
    with pytest.raises(BackingStoreFull):
        store.write_many_encoded([orjson.dumps(ev(i)) for i in range(1, 500)])
    assert seqs(drain(store)) == [0]


def test_encoded_event_larger_than_the_file_store_takes_is_record_too_large(
        tmp_path: Any) -> None:
    # Rule 2's one-event refusal, as write_many gives it for the same event.
    with FileStore(tmp_path / "store", max_file_size=8192,
                   registry=CollectorRegistry()) as store:
        big = orjson.dumps(ev(0, blob="x" * 10_000))
        with pytest.raises(RecordTooLargeError, match="max_file_size"):
            store.write_many_encoded([orjson.dumps(ev(1)), big])
        assert store.read_batch() == ([], None)


def test_custom_store_without_write_many_encoded_gets_the_events_decoded() -> None:
    # The default: decoded, then the store's own write_many (here BackingStore's loop
    # of write); the same refusals as the built-in stores, before anything is written.
    with OldStyleStore(batch_size=10) as store:
        store.write_many_encoded([orjson.dumps(ev(i)) for i in range(3)])
        assert drain(store) == [ev(i) for i in range(3)]
        with pytest.raises(TypeError):
            store.write_many_encoded([orjson.dumps(ev(3)), "{}"])  # type: ignore[list-item]
        with pytest.raises(InvalidEventError):
            store.write_many_encoded([orjson.dumps(ev(3)), b"[1]"])
        with pytest.raises(InvalidEventError):
            store.write_many_encoded([orjson.dumps(ev(3)), b"{oops}"])
        assert store.read_batch() == ([], None)


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
def test_a_built_in_store_subclass_that_overrides_write_many_still_gets_every_event(
        kind: str, tmp_path: Any) -> None:
    """A subclass of a store that keeps the bytes, overriding write_many (or write):
    write_many_encoded is then the default, so its override still sees every event."""
    base = {"memory": MemoryStore, "file": FileStore, "sqlite": SQLiteStore}[kind]
    seen: list[Any] = []

    class Watching(base):  # type: ignore[valid-type,misc]
        def write_many(self, events: Any) -> None:
            seen.extend(events)
            super().write_many(events)

    args = {"memory": (), "file": (tmp_path / "store",), "sqlite": (tmp_path / "s.db",)}
    with Watching(*args[kind], registry=CollectorRegistry()) as store:
        store.write_many_encoded([orjson.dumps(ev(i)) for i in range(3)])
        assert seen == [ev(i) for i in range(3)]
        assert drain(store) == seen


# -- closing ------------------------------------------------------------------------------


def test_use_after_close_raises_log_closed_error_and_double_close_is_fine(make: Maker) -> None:
    store = make()
    store.write(ev(0))
    _, commit = store.read_batch()
    store.close()
    store.close()
    assert commit is not None
    for call in (
        lambda: store.write(ev(1)),
        lambda: store.write_many([ev(1)]),
        lambda: store.write_many_encoded([orjson.dumps(ev(1))]),
        store.read_batch,
        lambda: store.read_batch(max_events=10),
        store.pending,
        commit,
    ):
        with pytest.raises(LogClosedError):
            call()
    store.update_metrics()  # a closed store's metrics hook is a no-op, not a crash


def test_store_is_a_context_manager(make: Maker) -> None:
    with make() as store:
        store.write(ev(0))
    with pytest.raises(LogClosedError):
        store.write(ev(1))


@pytest.mark.parametrize("kind", DURABLE)
def test_reopen_keeps_uncommitted_events_and_drops_committed_ones(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    maker = Maker(kind, tmp_path, request)
    try:
        store = maker(batch_size=3)
        store.write_many([ev(i) for i in range(8)])
        _, commit = store.read_batch()
        assert commit is not None
        commit()  # 0..2 delivered
        events, _ = store.read_batch()  # 3..5 read, never committed (crash mid-delivery)
        assert seqs(events) == [3, 4, 5]
        store.close()
        again = maker(batch_size=100)
        assert seqs(drain(again)) == [3, 4, 5, 6, 7]
    finally:
        maker.close()


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing_and_keep_their_own_order(make: Maker) -> None:
    store = make(batch_size=50, **({} if make.kind == "file" else {"max_events": 100_000}))
    threads, per_thread = 4, 60
    errors: queue.Queue[BaseException] = queue.Queue()
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(0, per_thread, 3):
                store.write(ev(i, thread=t))
                store.write_many([ev(i + 1, thread=t), ev(i + 2, thread=t)])
        except BaseException as exc:
            errors.put(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert errors.empty(), errors.get()
    got = drain(store)
    assert len(got) == threads * per_thread
    for t in range(threads):
        assert seqs([e for e in got if e["thread"] == t]) == list(range(per_thread))


def test_drain_while_writers_write_delivers_each_event_once(make: Maker) -> None:
    store = make(batch_size=16, **({} if make.kind == "file" else {"max_events": 100_000}))
    total = 300
    done = threading.Event()

    def writer() -> None:
        for i in range(total):
            store.write(ev(i))
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    got: list[dict[str, Any]] = []
    while True:
        finished = done.is_set()  # before the read: an empty read then means drained
        events, commit = store.read_batch()
        if commit is not None:
            got.extend(events)
            commit()
        elif finished:
            break
    th.join()
    assert seqs(got) == list(range(total))


# -- metrics ------------------------------------------------------------------------------


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_metrics_follow_a_known_sequence_of_operations(make: Maker) -> None:
    reg = CollectorRegistry()
    store = make.small(reg)
    label = make.kind.split("-")[0]
    store.write(ev(0))
    store.write_many([ev(1), ev(2)])
    store.update_metrics()
    assert sample(reg, "audittools_backing_store_writes_total", store=label) == 3
    assert sample(reg, "audittools_backing_store_events", store=label) == 3
    size = sample(reg, "audittools_backing_store_size_bytes", store=label)
    assert size is not None and size > 0
    for op in ("write", "write_full", "read", "commit", "read_unmarshal", "read_corrupt",
               "update_metrics"):
        assert sample(reg, "audittools_backing_store_errors_total", store=label,
                      operation=op) == 0, op
    events, commit = store.read_batch()
    assert len(events) == 3 and commit is not None
    commit()
    store.update_metrics()
    assert sample(reg, "audittools_backing_store_reads_total", store=label) == 3
    assert sample(reg, "audittools_backing_store_events", store=label) == 0
    accepted = 0
    with pytest.raises(BackingStoreFull):
        for i in range(1000):
            store.write(ev(i))
            accepted += 1
    assert sample(reg, "audittools_backing_store_errors_total", store=label,
                  operation="write_full") == 1
    # A refused write is not counted as written.
    assert sample(reg, "audittools_backing_store_writes_total", store=label) == 3 + accepted
    # Full: the file store holds >= 2 segments now (read after this update; the last one
    # counted the background preparer's next segment only when it had made it already).
    store.update_metrics()
    files = sample(reg, "audittools_backing_store_files_count", store=label)
    if make.kind == "file":
        assert files is not None and files >= 2
    elif make.kind == "sqlite":
        assert files is not None and files >= 1
    else:
        assert files == 0
    store.close()
    # A closed store buffers nothing: its gauges are gone, its counters stay.
    assert sample(reg, "audittools_backing_store_events", store=label) is None
    assert sample(reg, "audittools_backing_store_writes_total", store=label) == 3 + accepted


def test_two_stores_on_one_registry_get_their_own_series(make: Maker, tmp_path: Any) -> None:
    reg = CollectorRegistry()
    first = make(reg)
    other = create_backing_store('{"type":"memory","params":{"max_events":5}}', registry=reg)
    second_label = "memory-2" if make.kind == "memory" else "memory"
    first.write(ev(0))
    other.write_many([ev(1), ev(2)])
    first_label = make.kind.split("-")[0]
    assert sample(reg, "audittools_backing_store_writes_total", store=first_label) == 1
    assert sample(reg, "audittools_backing_store_writes_total", store=second_label) == 2
    other.close()
