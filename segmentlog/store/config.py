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

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError
from .params import _SHAPE, BackingStoreFactory, Params, _where, check_table_name

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
