"""Choosing a store from ``${PREFIX}_BACKING_STORE``: every bad config case, factories,
the default, and the metric label scheme."""

from __future__ import annotations

import os
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from segmentlog.errors import BackingStoreFull, ConfigError
from segmentlog.store import (
    BackingStore,
    Commit,
    Event,
    FileStore,
    MemoryStore,
    SQLiteStore,
    StoreMetrics,
    backing_store_from_env,
    create_backing_store,
    sql_store_factory,
)

VAR = "MYAPP_AUDIT_BACKING_STORE"


def bad(config: Any, *fragments: str, **kw: Any) -> str:
    """Assert ``config`` is refused with ConfigError naming the variable and fragments."""
    with pytest.raises(ConfigError) as info:
        create_backing_store(config, registry=CollectorRegistry(), source=VAR, **kw)
    message = str(info.value)
    assert message.startswith(VAR + ":"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# -- the JSON envelope --------------------------------------------------------------------


def test_invalid_json_names_the_variable_and_the_expected_shape() -> None:
    bad('{"type": "file", params: {}}', "not valid JSON", '"type"', '"params"')


@pytest.mark.parametrize("config", ['"file"', "[]", "42", "null"])
def test_config_that_is_not_an_object_is_refused(config: str) -> None:
    bad(config, "must be a JSON object", '"type"')


def test_missing_type_is_refused() -> None:
    bad('{"params": {"directory": "/tmp/x"}}', 'needs "type"')


def test_non_string_type_is_refused() -> None:
    bad('{"type": 3}', 'needs "type"', "3")


def test_params_that_are_not_an_object_are_refused() -> None:
    bad('{"type": "memory", "params": [1]}', '"params" must be a JSON object')


def test_unknown_top_level_key_is_refused_with_a_hint() -> None:
    bad('{"type": "memory", "max_events": 5}', "'max_events'", 'go inside "params"')


def test_unknown_type_lists_the_known_types() -> None:
    bad('{"type": "fs"}', "unknown backing store type 'fs'", "file, memory, sql, sqlite")


def test_unknown_type_list_includes_application_factories() -> None:
    bad('{"type": "fs"}', "db, file", factories={"db": lambda p, r: MemoryStore(registry=r)})


# -- parameters ---------------------------------------------------------------------------


def test_file_store_without_directory_is_refused() -> None:
    bad('{"type": "file", "params": {}}', "'directory' is required", '"directory"')


def test_sqlite_store_without_path_is_refused() -> None:
    bad('{"type": "sqlite"}', "'path' is required")


def test_sql_store_without_dsn_or_connection_is_refused() -> None:
    bad('{"type": "sql", "params": {"max_events": 5}}', "'dsn' is required",
        "sql_store_factory")


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ('{"type":"file","params":{"directory":"D","max_file_size":-1}}', "'max_file_size'"),
        ('{"type":"file","params":{"directory":"D","max_total_size":-5}}', "'max_total_size'"),
        ('{"type":"file","params":{"directory":"D","max_file_size":1.5}}', "'max_file_size'"),
        ('{"type":"file","params":{"directory":"D","max_file_size":"10MiB"}}',
         "'max_file_size'"),
        ('{"type":"file","params":{"directory":"D","batch_size":0}}', "'batch_size'"),
        ('{"type":"memory","params":{"max_events":-1}}', "'max_events'"),
        ('{"type":"memory","params":{"max_events":true}}', "'max_events'"),
        ('{"type":"memory","params":{"max_events":10.5}}', "'max_events'"),
        ('{"type":"sqlite","params":{"path":"P","max_events":0}}', "'max_events'"),
        ('{"type":"sql","params":{"dsn":"x","batch_size":-3}}', "'batch_size'"),
        ('{"type":"sql","params":{"dsn":"x","max_events":"many"}}', "'max_events'"),
    ],
)
def test_negative_or_non_integer_sizes_are_refused(config: str, fragment: str) -> None:
    bad(config, fragment, "integer")


def test_exponent_float_size_says_how_to_write_it() -> None:
    bad('{"type":"file","params":{"directory":"D","max_total_size":1e9}}',
        "write 1000000000 without a fraction or exponent")


@pytest.mark.parametrize(
    ("config", "typo", "meant"),
    [
        ('{"type":"file","params":{"directory":"D","max_file_sise":1}}', "max_file_sise",
         "max_file_size"),
        ('{"type":"memory","params":{"max_event":1}}', "max_event", "max_events"),
        ('{"type":"sqlite","params":{"path":"P","tablename":"t"}}', "tablename", "table_name"),
        ('{"type":"sql","params":{"dsn":"x","batchsize":5}}', "batchsize", "batch_size"),
    ],
)
def test_unknown_parameter_is_refused_and_the_near_name_suggested(
    config: str, typo: str, meant: str
) -> None:
    bad(config, f"unknown parameter '{typo}'", f"did you mean '{meant}'")


def test_original_path_param_of_the_review_thread_is_not_silently_ignored() -> None:
    # The PR thread's example used "path" for the file store; the merged one "directory".
    bad('{"type":"file","params":{"path":"/var/cache/audit"}}', "'directory' is required")


@pytest.mark.parametrize(
    "table", ["Audit", "audit-events", "1audit", "a;drop table x", "a" * 53, "a.b.c"]
)
def test_invalid_sql_table_name_is_refused(table: str) -> None:
    bad(f'{{"type":"sql","params":{{"dsn":"x","table_name":"{table}"}}}}', "'table_name'",
        "identifier")


def test_invalid_sqlite_table_name_is_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "a.db")
    bad(f'{{"type":"sqlite","params":{{"path":"{path}","table_name":"x y"}}}}',
        "'table_name'")
    assert not os.path.exists(path)  # refused before anything was created


def test_bad_fsync_choice_is_refused() -> None:
    bad('{"type":"file","params":{"directory":"D","fsync":"sometimes"}}', "'fsync'",
        "'always', 'interval', 'never'")


def test_file_store_total_size_below_two_segments_is_refused(tmp_path: Any) -> None:
    d = str(tmp_path / "d")
    bad(f'{{"type":"file","params":{{"directory":"{d}","max_file_size":8192,'
        f'"max_total_size":10000}}}}', "max_total_size")


def test_keyword_constructors_refuse_bad_values_too(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="max_events"):
        MemoryStore(max_events=0, registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="table_name"):
        SQLiteStore(str(tmp_path / "x.db"), table_name="Bad", registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="max_file_size"):
        FileStore(str(tmp_path / "f"), max_file_size=-1, registry=CollectorRegistry())


# -- choosing a store ------------------------------------------------------------------------


def test_no_config_gives_the_original_default_memory_store_of_1000_events() -> None:
    reg = CollectorRegistry()
    for config in (None, "", "   "):
        store = create_backing_store(config, registry=reg)
        assert isinstance(store, MemoryStore)
        store.write_many([{"i": i} for i in range(1000)])
        with pytest.raises(BackingStoreFull):
            store.write({"i": 1000})
        store.close()


def test_each_builtin_type_is_created_from_its_json(tmp_path: Any) -> None:
    reg = CollectorRegistry()
    f = create_backing_store(
        f'{{"type":"file","params":{{"directory":"{tmp_path / "f"}","max_file_size":65536,'
        '"max_total_size":0,"fsync":"interval","batch_size":10}}',
        registry=reg,
    )
    m = create_backing_store('{"type":"memory","params":{"max_events":3}}', registry=reg)
    s = create_backing_store(
        f'{{"type":"sqlite","params":{{"path":"{tmp_path / "s.db"}"}}}}', registry=reg
    )
    assert (type(f), type(m), type(s)) == (FileStore, MemoryStore, SQLiteStore)
    for store in (f, m, s):
        store.close()


def test_params_may_be_omitted_or_null() -> None:
    for config in ('{"type":"memory"}', '{"type":"memory","params":null}'):
        store = create_backing_store(config, registry=CollectorRegistry())
        assert isinstance(store, MemoryStore)
        store.close()


class ListStore(BackingStore):
    """A custom store that only implements the abstract methods."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.events: list[dict[str, Any]] = []
        self.writes = 0

    def write(self, event: Event) -> None:
        self.writes += 1
        self.events.append(dict(event))

    def read_batch(self) -> tuple[list[dict[str, Any]], Commit | None]:
        if not self.events:
            return [], None
        batch = list(self.events)

        def commit() -> None:
            del self.events[: len(batch)]

        return batch, commit

    def close(self) -> None:
        pass


def test_application_factory_gets_params_and_registry() -> None:
    seen: dict[str, Any] = {}
    reg = CollectorRegistry()

    def factory(params: dict[str, Any], registry: CollectorRegistry | None) -> BackingStore:
        seen["params"], seen["registry"] = params, registry
        return ListStore(params)

    store = create_backing_store(
        '{"type":"db","params":{"x":1}}', factories={"db": factory}, registry=reg
    )
    assert isinstance(store, ListStore)
    assert seen == {"params": {"x": 1}, "registry": reg}


def test_default_write_many_of_a_custom_store_writes_each_event_in_order() -> None:
    store = ListStore({})
    store.write_many([{"i": 0}, {"i": 1}, {"i": 2}])
    assert store.writes == 3
    assert store.read_batch()[0] == [{"i": 0}, {"i": 1}, {"i": 2}]
    store.update_metrics()  # the default hook exists and does nothing


def test_application_factory_replaces_a_builtin_of_the_same_name() -> None:
    store = create_backing_store(
        '{"type":"sql","params":{"table_name":"x"}}',
        factories={"sql": lambda p, r: ListStore(p)},
        registry=CollectorRegistry(),
    )
    assert isinstance(store, ListStore)


def test_config_error_from_an_application_factory_is_prefixed_with_the_variable() -> None:
    def factory(params: dict[str, Any], registry: CollectorRegistry | None) -> BackingStore:
        raise ConfigError("parameter 'schema' is required")

    bad('{"type":"db"}', "parameter 'schema' is required", factories={"db": factory})


def test_sql_factory_closure_refuses_a_dsn_beside_the_application_connection() -> None:
    bad('{"type":"sql","params":{"dsn":"host=x"}}', "remove 'dsn'",
        factories={"sql": sql_store_factory(lambda: None)})


def test_backing_store_from_env_reads_prefix_backing_store(tmp_path: Any) -> None:
    reg = CollectorRegistry()
    env = {"MYAPP_AUDIT_BACKING_STORE": '{"type":"memory","params":{"max_events":2}}'}
    store = backing_store_from_env("MYAPP_AUDIT", registry=reg, environ=env)
    assert isinstance(store, MemoryStore)
    store.write_many([{}, {}])
    with pytest.raises(BackingStoreFull):
        store.write({})
    store.close()
    default = backing_store_from_env("MYAPP_AUDIT", registry=reg, environ={})
    assert isinstance(default, MemoryStore)
    default.close()
    with pytest.raises(ConfigError, match=r"^MYAPP_AUDIT_BACKING_STORE: .*not valid JSON"):
        backing_store_from_env("MYAPP_AUDIT", registry=reg, environ={VAR: "{"})


# -- metrics registration ------------------------------------------------------------------


def test_two_stores_of_one_type_on_one_registry_do_not_collide() -> None:
    reg = CollectorRegistry()
    a = MemoryStore(registry=reg)
    b = MemoryStore(registry=reg)
    named = MemoryStore(registry=reg, name="auditor-b")
    assert (a.metrics_label, b.metrics_label, named.metrics_label) == (
        "memory", "memory-2", "auditor-b")
    a.write({})
    b.write_many([{}, {}])
    assert reg.get_sample_value("audittools_backing_store_writes_total", {"store": "memory"}) == 1
    assert reg.get_sample_value(
        "audittools_backing_store_writes_total", {"store": "memory-2"}) == 2
    a.close()
    # The freed label is reused, and its counter carries on (counters never go back).
    c = MemoryStore(registry=reg)
    assert c.metrics_label == "memory"
    c.write({})
    assert reg.get_sample_value("audittools_backing_store_writes_total", {"store": "memory"}) == 2
    for store in (b, named, c):
        store.close()


def test_stores_on_different_registries_never_touch_each_other() -> None:
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    a, b = MemoryStore(registry=r1), MemoryStore(registry=r2)
    a.write({})
    assert r1.get_sample_value("audittools_backing_store_writes_total", {"store": "memory"}) == 1
    assert r2.get_sample_value("audittools_backing_store_writes_total", {"store": "memory"}) == 0
    a.close()
    b.close()


def test_no_registry_means_the_global_one_and_a_registry_means_not_the_global_one() -> None:
    own = MemoryStore(registry=CollectorRegistry(), name="not-global-check")
    assert REGISTRY.get_sample_value(
        "audittools_backing_store_writes_total", {"store": "not-global-check"}) is None
    own.close()
    glob = MemoryStore(name="global-check")
    try:
        glob.write({})
        assert REGISTRY.get_sample_value(
            "audittools_backing_store_writes_total", {"store": "global-check"}) == 1
    finally:
        glob.close()


def test_custom_store_can_use_the_shared_metric_set() -> None:
    reg = CollectorRegistry()
    metrics = StoreMetrics(reg, "redis")
    metrics.wrote(4)
    metrics.set_events(4)
    metrics.error("write")
    assert reg.get_sample_value("audittools_backing_store_events", {"store": "redis"}) == 4
    assert reg.get_sample_value(
        "audittools_backing_store_errors_total", {"store": "redis", "operation": "write"}) == 1
    metrics.release()
    metrics.release()  # twice is harmless
    assert reg.get_sample_value("audittools_backing_store_events", {"store": "redis"}) is None


def test_every_public_name_of_the_package_resolves() -> None:
    import segmentlog.store as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.BackingStoreFull is BackingStoreFull  # the one from segmentlog.errors
