"""What an Auditor is built from: the environment variables and every setting, checked.

Theory of operation
-------------------
An Auditor is configured as the original was, either by ``env_prefix``
(``${PREFIX}_HOSTNAME``, ``_PORT``, ``_USERNAME``, ``_PASSWORD``, ``_QUEUE_NAME``,
``_BACKING_STORE``, and the new ``_QUEUE_ARGUMENTS``) or by ``connection_url`` plus
``queue_name``. This module reads and checks all of it before anything is created.

Rule 1: every bad value raises :class:`~segmentlog.errors.ConfigError` naming the
        variable or parameter, what was found and what is expected, when the Auditor
        is built (never later, behind a broker that refuses the declaration on every
        connect while events pile up in the store).
Rule 2: nothing reaches the broker URL unchecked: a host is a DNS name or an IP address
        only, user and password are quoted.

It never connects, and creates nothing but the backing store ``${PREFIX}_BACKING_STORE``
describes (:func:`open_store`), which the Auditor then owns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client import CollectorRegistry

from .cadf import Observer
from .errors import ConfigError
from .store import BackingStore, BackingStoreFactory, create_backing_store

__all__ = [
    "DRAIN_WINDOW",
    "broker_settings",
    "check_limits",
    "check_observer",
    "connection_from_env",
    "open_store",
    "publisher_kwargs",
    "queue_arguments_from_env",
    "store_limit",
]

#: The confirm window of the auditor's publisher (``publisher_options["window"]`` wins;
#: the Publisher's own default, 1000, suits steady traffic). With 5000-event batches:
#: bare Publisher 11.9k/s at window 1000, 12.6k at 2000, 14.2k at 5000 (one quiet run;
#: interleaved runs vs no-confirm, medians: 0.68x, 0.69x, 0.80x at 3000, 0.74x at
#: 5000); the Auditor's drain (same accounting as above, biased alike for every window):
#: 0.57x, 0.64x, 0.67x, 0.68x. The broker is the bottleneck, so a window beyond the
#: batch adds only confirm latency (Little's law), and one batch in flight whole avoids
#: the stalls of a window smaller than the batch.
DRAIN_WINDOW = 5000


def connection_from_env(
    prefix: str, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """``(amqp_url, queue_name)`` from ``${prefix}_*``, as the original reads them.

    ``_HOSTNAME`` (localhost), ``_PORT`` (5672), ``_USERNAME`` / ``_PASSWORD`` (guest),
    ``_QUEUE_NAME`` (required). A missing or invalid value raises ConfigError naming
    the variable.
    """
    env = os.environ if environ is None else environ
    queue_var = f"{prefix}_QUEUE_NAME"
    queue_name = env.get(queue_var, "")
    if not queue_name:
        raise ConfigError(f"missing required environment variable {queue_var} (the RabbitMQ "
                          "queue the audit events go to)")
    if len(queue_name.encode()) > 255:
        raise ConfigError(f"{queue_var} is longer than 255 bytes (an AMQP queue name)")
    host = _check_host(env.get(f"{prefix}_HOSTNAME") or "localhost", f"{prefix}_HOSTNAME")
    port_var = f"{prefix}_PORT"
    port_text = env.get(port_var) or "5672"
    try:
        port = int(port_text, 10)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"invalid value for {port_var}: {port_text!r}; expected a TCP port "
                          "number 1-65535 (default 5672)")
    user = env.get(f"{prefix}_USERNAME") or "guest"
    password = env.get(f"{prefix}_PASSWORD") or "guest"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    url = f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/%2F"
    return url, queue_name


_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")


def _check_host(host: str, variable: str) -> str:
    """A DNS name or an IP address (an IPv6 one with or without brackets); anything
    else (a URL, user info, a port, spaces) would be spliced into the broker URL."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(bare)
        return bare
    if _HOST_NAME.fullmatch(host):
        return host
    shown = host if len(host) <= 60 else host[:57] + "..."
    raise ConfigError(f"invalid value for {variable}: {shown!r}; expected a host name or an "
                      "IP address only (the port goes in _PORT, the user in _USERNAME)")


#: Queue arguments whose value RabbitMQ requires to be an integer (checked here, with the
#: variable's name: the broker would refuse the declaration on every connect instead,
#: and events would pile up in the store behind a configuration error).
_INT_QUEUE_ARGUMENTS = frozenset((
    "x-queue-version", "x-max-length", "x-max-length-bytes", "x-message-ttl", "x-expires",
    "x-max-priority", "x-delivery-limit", "x-quorum-initial-group-size",
    "x-max-age-bytes", "x-stream-max-segment-size-bytes"))
_STR_QUEUE_ARGUMENTS = frozenset((
    "x-queue-type", "x-overflow", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-queue-mode", "x-queue-master-locator", "x-queue-leader-locator", "x-max-age",
    "x-dead-letter-strategy"))


def _check_queue_arguments(value: dict[str, Any], variable: str) -> None:
    for key, item in value.items():
        if not key.startswith("x-"):
            raise ConfigError(f"{variable}: key {key!r} is not an x- argument (e.g. "
                              "'x-queue-version', 'x-max-length')")
        if key in _INT_QUEUE_ARGUMENTS:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise ConfigError(f"{variable}: {key!r} must be a JSON integer >= 0, got "
                                  f"{item!r}")
            if key == "x-queue-version" and item not in (1, 2):
                raise ConfigError(f"{variable}: 'x-queue-version' must be 1 or 2, got {item}")
        elif key == "x-single-active-consumer":
            if not isinstance(item, bool):
                raise ConfigError(f"{variable}: {key!r} must be true or false, got {item!r}")
        elif key in _STR_QUEUE_ARGUMENTS:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{variable}: {key!r} must be a non-empty JSON string, "
                                  f"got {item!r}")
        elif (isinstance(item, float) and not math.isfinite(item)) or not isinstance(
                item, str | int | float | bool):
            raise ConfigError(f"{variable}: {key!r} must be a string, number or boolean, "
                              f"got {item!r}")


def queue_arguments_from_env(
    prefix: str, environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """``${prefix}_QUEUE_ARGUMENTS``: a JSON object of ``x-`` queue arguments, or None
    when unset. Invalid JSON, not an object, a key without ``x-`` or a value of the
    wrong type for a known argument (``x-queue-version`` 1 or 2, ``x-max-length`` an
    integer...) raises ConfigError naming the variable."""
    env = os.environ if environ is None else environ
    variable = f"{prefix}_QUEUE_ARGUMENTS"
    text = env.get(variable, "").strip()
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON in {variable}: {exc}; expected an object such as "
                          '{"x-queue-version": 2}') from None
    if not isinstance(value, dict):
        raise ConfigError(f"{variable} must be a JSON object such as "
                          f'{{"x-queue-version": 2}}, got {type(value).__name__}')
    _check_queue_arguments(value, variable)
    return value


def check_seconds(name: str, value: object, hint: str) -> float:
    """A number of seconds >= 0 and finite, else ConfigError naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise ConfigError(f"Auditor: {name}={value!r} must be a finite number of seconds "
                          f">= 0 {hint}")
    return float(value)


def store_limit(store: BackingStore) -> int | None:
    """The store's ``max_event_size`` (Rule 7 of segmentlog.store.base), checked."""
    limit = store.max_event_size
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ConfigError(f"Auditor: the backing store's max_event_size is {limit!r}; it "
                          f"must be an integer >= 1 or None ({type(store).__name__})")
    return limit


def check_observer(observer: object) -> Observer:
    """``observer``, if it is an :class:`~segmentlog.cadf.Observer`; else ConfigError."""
    if not isinstance(observer, Observer):
        raise ConfigError(
            "Auditor: observer must be segmentlog.cadf.Observer(type_uri, name, id) "
            f"identifying this process, got {type(observer).__name__}")
    return observer


def check_limits(*, queue_size: object, batch_size: object, drain_batch_size: object,
                 full_timeout: object, connect_wait: object) -> None:
    """The Auditor's sizes (integers >= 1) and seconds (finite, >= 0; ``full_timeout``
    may be None)."""
    for name, value in (("queue_size", queue_size), ("batch_size", batch_size),
                        ("drain_batch_size", drain_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Auditor: {name}={value!r} must be an integer >= 1")
    if full_timeout is not None:
        check_seconds("full_timeout", full_timeout, "or None to block until there is room")
    check_seconds("connect_wait", connect_wait, "(0: do not wait)")


def broker_settings(
    env_prefix: str | None,
    connection_url: str | Sequence[str] | None,
    queue_name: str | None,
    environ: Mapping[str, str] | None,
) -> tuple[list[str], str, dict[str, Any] | None]:
    """``(urls, queue_name, queue_arguments)``: an explicit ``connection_url`` (one URL
    or a list, for failover) with ``queue_name`` wins over ``env_prefix``; the queue
    arguments come from ``${PREFIX}_QUEUE_ARGUMENTS`` (None when unset)."""
    if connection_url is not None:
        urls = [connection_url] if isinstance(connection_url, str) else list(connection_url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ConfigError("Auditor: connection_url must be a non-empty amqp:// URL "
                              "(or a list of them)")
        if not queue_name:
            raise ConfigError("Auditor: missing required value queue_name (needed with "
                              "connection_url)")
    elif env_prefix:
        url, queue_name = connection_from_env(env_prefix, environ)
        urls = [url]
    else:
        raise ConfigError("Auditor: give env_prefix (read ${PREFIX}_HOSTNAME, _PORT, "
                          "_USERNAME, _PASSWORD, _QUEUE_NAME) or connection_url and "
                          "queue_name")
    queue_arguments = queue_arguments_from_env(env_prefix, environ) if env_prefix else None
    return urls, queue_name, queue_arguments


def open_store(
    backing_store: BackingStore | None,
    env_prefix: str | None,
    environ: Mapping[str, str] | None,
    factories: Mapping[str, BackingStoreFactory] | None,
    registry: CollectorRegistry,
) -> BackingStore:
    """The Auditor's store: ``backing_store`` (the caller's), else the one
    ``${PREFIX}_BACKING_STORE`` describes (``factories`` add types), else a memory
    store of 1000 events. The caller owns the store it did not pass in."""
    if backing_store is not None:
        if not isinstance(backing_store, BackingStore):
            raise ConfigError("Auditor: backing_store must be a segmentlog.store."
                              f"BackingStore, got {type(backing_store).__name__}")
        return backing_store
    if env_prefix:
        variable = f"{env_prefix}_BACKING_STORE"
        env = os.environ if environ is None else environ
        return create_backing_store(env.get(variable), factories, registry, source=variable)
    return create_backing_store(None, registry=registry)


def publisher_kwargs(
    label: str,
    queue_arguments: dict[str, Any] | None,
    options: Mapping[str, Any] | None,
    registry: CollectorRegistry,
) -> dict[str, Any]:
    """Keyword arguments of the Auditor's Publisher: ``heartbeat=2``, ``backoff_max=0.5``
    (a recovered broker is found within 0.5 s), ``window=DRAIN_WINDOW``, the metrics
    label and the queue arguments, overridden by the caller's ``options``; the
    registry is always the Auditor's."""
    result: dict[str, Any] = {"heartbeat": 2, "backoff_max": 0.5, "window": DRAIN_WINDOW,
                              "metrics_name": label}
    if queue_arguments is not None:
        result["queue_arguments"] = queue_arguments
    result.update(options or {})
    result["registry"] = registry
    return result
