"""Store parameters: typed, validated access to a store's ``params`` object, shared by
every store and by the configuration (config.py), which imports the stores; the stores
import this module, never config.py (no import circle)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .base import BackingStore

__all__ = ["BackingStoreFactory", "Params", "check_int", "check_table_name"]

#: The shape of a store configuration, quoted in errors.
_SHAPE = '{"type": "<store type>", "params": {...}}'

#: ``factory(params, registry) -> BackingStore``; params is the parsed ``"params"`` object.
BackingStoreFactory = Callable[[dict[str, Any], "CollectorRegistry | None"], "BackingStore"]


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
