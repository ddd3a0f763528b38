"""Choosing and configuring a backing store from one JSON string.

Theory of operation
-------------------
A service picks its store without code changes, through the environment variable the
Go original used, ``${PREFIX}_BACKING_STORE``::

    MYAPP_AUDIT_BACKING_STORE='{"type":"file","params":{"directory":"/var/lib/myapp/audit"}}'

:func:`create_backing_store` parses that string, looks the type up among the built-in
factories (``file``, ``memory``, ``sql``, ``sqlite``) and the application's own
(``factories={"db": my_factory}``; an application factory of the same name replaces the
built-in one, which is how an application hands the ``sql`` store its connection pool),
and calls ``factory(params, registry)``. No config (``None`` or a blank string) gives
the original's default: a memory store of 1000 events.

Rule 1: configuration errors are found when the store is created, never later, and
        raise :class:`~segmentlog.errors.ConfigError` naming the variable (``source``),
        the parameter, what was found and the expected shape.
Rule 2: unknown parameter names are errors (a typo such as ``max_file_sise`` must not
        silently fall back to a default); the message suggests the closest known name.
Rule 3: sizes and counts are JSON integers; ``1.5``, ``"10"``, ``true`` and negative
        numbers are refused (``1e9`` is a float in JSON and is refused too: write
        ``1000000000``).

:class:`Params` is the typed reader every built-in store's ``from_params`` uses; custom
factories may use it as well. This module never opens files or connections itself.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .base import BackingStore

__all__ = [
    "ENV_SUFFIX",
    "BackingStoreFactory",
    "Params",
    "backing_store_from_env",
    "builtin_factories",
    "check_table_name",
    "create_backing_store",
    "parse_config",
]

#: The variable read by :func:`backing_store_from_env` is ``PREFIX + ENV_SUFFIX``.
ENV_SUFFIX = "_BACKING_STORE"

#: ``factory(params, registry) -> BackingStore``; params is the parsed ``"params"`` object.
BackingStoreFactory = Callable[[dict[str, Any], "CollectorRegistry | None"], "BackingStore"]

_SHAPE = '{"type": "<store type>", "params": {...}}'


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


class Params:
    """Typed, validated access to one store's params.

    Read every parameter with the ``get_*`` methods, then call :meth:`finish`, which
    refuses the names nobody asked for.
    """

    def __init__(self, params: Mapping[str, Any], store_type: str, example: str = "") -> None:
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"backing store {store_type!r}: \"params\" must be a JSON object, "
                f"got {type(params).__name__}; expected {example or _SHAPE}"
            )
        self._params = dict(params)
        self._type = store_type
        self._example = example
        self._known: list[str] = []

    def _fail(self, name: str, problem: str) -> ConfigError:
        shape = f"; expected e.g. {self._example}" if self._example else ""
        return ConfigError(
            f"backing store {self._type!r}: parameter {name!r} {problem}{shape}"
        )

    def _take(self, name: str) -> Any:
        self._known.append(name)
        return self._params.get(name)

    def require_str(self, name: str, what: str = "a non-empty string") -> str:
        value = self._take(name)
        if value is None:
            raise self._fail(name, f"is required ({what})")
        if not isinstance(value, str) or not value:
            raise self._fail(name, f"must be {what}, got {value!r}")
        return value

    def get_str(self, name: str, default: str) -> str:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self._fail(name, f"must be a non-empty string, got {value!r}")
        return value

    def get_optional_str(self, name: str) -> str | None:
        value = self._take(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self._fail(name, f"must be a non-empty string, got {value!r}")
        return value

    def get_int(self, name: str, default: int, *, minimum: int = 0, unit: str = "") -> int:
        value = self._take(name)
        if value is None:
            return default
        return check_int(value, name, minimum=minimum, unit=unit, fail=self._fail)

    def get_optional_int(self, name: str, *, minimum: int = 0, unit: str = "") -> int | None:
        value = self._take(name)
        if value is None:
            return None
        return check_int(value, name, minimum=minimum, unit=unit, fail=self._fail)

    def get_number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self._fail(name, f"must be a number >= {minimum}, got {value!r}")
        return float(value)

    def get_bool(self, name: str, default: bool) -> bool:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(name, f"must be true or false, got {value!r}")
        return value

    def get_choice(self, name: str, choices: Iterable[str], default: str) -> str:
        options = list(choices)
        value = self._take(name)
        if value is None:
            return default
        if value not in options:
            raise self._fail(name, f"must be one of {', '.join(map(repr, options))}, got {value!r}")
        assert isinstance(value, str)
        return value

    def finish(self) -> None:
        """Refuse parameter names that no ``get_*`` call asked for (typos)."""
        unknown = sorted(set(self._params) - set(self._known))
        if not unknown:
            return
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, self._known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        shape = f"; expected e.g. {self._example}" if self._example else ""
        raise ConfigError(
            f"backing store {self._type!r}: unknown parameter {', '.join(hints)}; "
            f"known parameters: {', '.join(sorted(set(self._known)))}{shape}"
        )


def check_int(
    value: object,
    name: str,
    *,
    minimum: int = 0,
    unit: str = "",
    fail: Callable[[str, str], ConfigError] | None = None,
) -> int:
    """Return ``value`` if it is an integer >= ``minimum``, else raise ConfigError.

    Shared by :class:`Params` and the stores' keyword constructors, so a bad value is
    refused the same way from JSON and from Python.
    """
    suffix = f" ({unit})" if unit else ""
    if isinstance(value, bool) or not isinstance(value, int):
        problem = f"must be an integer{suffix}, got {value!r}"
        if isinstance(value, float) and value.is_integer():
            problem += f" (write {int(value)} without a fraction or exponent)"
    elif value < minimum:
        problem = f"must be an integer >= {minimum}{suffix}, got {value}"
    else:
        return value
    if fail is not None:
        raise fail(name, problem)
    raise ConfigError(f"parameter {name!r} {problem}")


# An unquoted lower-case identifier, optionally schema-qualified. Lower case only, so the
# name means the same quoted (as the stores send it) and unquoted (as people type it in
# psql). At most 52 characters, so "<table>_deadletter" fits PostgreSQL's 63.
_TABLE_NAME = re.compile(r"(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,51}")


def check_table_name(value: object, name: str = "table_name") -> str:
    """Return ``value`` if it is a valid table name for the SQL stores, else raise."""
    if not isinstance(value, str) or not _TABLE_NAME.fullmatch(value):
        raise ConfigError(
            f"parameter {name!r} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at "
            f"most 52 characters, optionally 'schema.table'), got {value!r}"
        )
    return value


def parse_config(
    config: str | Mapping[str, Any], source: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Split ``{"type": ..., "params": {...}}`` into ``(type, params)``."""
    where = _where(source)
    if isinstance(config, str):
        try:
            parsed = orjson.loads(config)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(
                f"{where}backing store config is not valid JSON ({exc}); expected {_SHAPE}, "
                'e.g. {"type":"file","params":{"directory":"/var/lib/app/audit"}}'
            ) from None
    else:
        parsed = config
    if not isinstance(parsed, Mapping):
        raise ConfigError(
            f"{where}backing store config must be a JSON object, got "
            f"{type(parsed).__name__}; expected {_SHAPE}"
        )
    extra = sorted(set(parsed) - {"type", "params"})
    if extra:
        raise ConfigError(
            f"{where}backing store config has unknown key(s) {', '.join(map(repr, extra))}; "
            f"expected {_SHAPE} (store parameters go inside \"params\")"
        )
    store_type = parsed.get("type")
    if not isinstance(store_type, str) or not store_type:
        raise ConfigError(
            f"{where}backing store config needs \"type\" (a non-empty string), got "
            f"{store_type!r}; expected {_SHAPE}"
        )
    params = parsed.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(
            f"{where}backing store config: \"params\" must be a JSON object, got "
            f"{type(params).__name__}; expected {_SHAPE}"
        )
    return store_type, dict(params)


def builtin_factories() -> dict[str, BackingStoreFactory]:
    """The built-in store types: ``file``, ``memory``, ``sql``, ``sqlite``."""
    # Imported here: the store modules import this one for Params.
    from .file import FileStore
    from .memory import MemoryStore
    from .sql import SQLStore
    from .sqlite import SQLiteStore

    return {
        "file": FileStore.from_params,
        "memory": MemoryStore.from_params,
        "sql": SQLStore.from_params,
        "sqlite": SQLiteStore.from_params,
    }


def create_backing_store(
    config: str | Mapping[str, Any] | None,
    factories: Mapping[str, BackingStoreFactory] | None = None,
    registry: CollectorRegistry | None = None,
    *,
    source: str | None = None,
) -> BackingStore:
    """Create the store ``config`` describes (see the module docstring).

    ``source`` names where the config came from (e.g. ``"MYAPP_AUDIT_BACKING_STORE"``)
    and prefixes every error message. ``registry`` is where the store's metrics go
    (``None``: prometheus-client's global registry, as in the original).
    """
    if config is None or (isinstance(config, str) and not config.strip()):
        # The original's default: no configuration means a bounded memory store.
        from .memory import MemoryStore

        return MemoryStore(registry=registry)
    store_type, params = parse_config(config, source)
    known = builtin_factories()
    if factories:
        known.update(factories)
    factory = known.get(store_type)
    if factory is None:
        raise ConfigError(
            f"{_where(source)}unknown backing store type {store_type!r}; known types: "
            f"{', '.join(sorted(known))} (an application adds its own with "
            "factories={name: factory})"
        )
    try:
        return factory(params, registry)
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from exc
        raise


def backing_store_from_env(
    prefix: str,
    factories: Mapping[str, BackingStoreFactory] | None = None,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> BackingStore:
    """Create the store configured in ``${prefix}_BACKING_STORE`` (memory store if unset)."""
    variable = prefix + ENV_SUFFIX
    env = os.environ if environ is None else environ
    return create_backing_store(env.get(variable), factories, registry, source=variable)
