"""Shared fixtures: real services, or a skip that says why (a failure under CI).

Tests that need RabbitMQ or PostgreSQL ask for the ``rabbitmq`` or ``postgres_dsn``
fixture. On a machine without the service they skip with the reason; with
``SEGMENTLOG_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing service is a failure.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from amqptools import delete_queue
from tcpproxy import TcpProxy

RABBITMQ_HOST = os.environ.get("SEGMENTLOG_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("SEGMENTLOG_TEST_RABBITMQ_PORT", "5672"))
RABBITMQ_URL = os.environ.get(
    "SEGMENTLOG_TEST_RABBITMQ_URL", f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/%2F"
)
POSTGRES_DSN = os.environ.get(
    "SEGMENTLOG_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres"
)


def _services_required() -> bool:
    return os.environ.get("SEGMENTLOG_REQUIRE_SERVICES", "") not in ("", "0")


def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _missing(what: str) -> None:
    reason = f"{what} is not reachable"
    if _services_required():
        pytest.fail(f"{reason}, and SEGMENTLOG_REQUIRE_SERVICES=1 demands it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """An AMQP URL of a live broker (guest/guest on 127.0.0.1:5672 by default)."""
    if not _reachable(RABBITMQ_HOST, RABBITMQ_PORT):
        _missing(f"RabbitMQ on {RABBITMQ_HOST}:{RABBITMQ_PORT}")
    return RABBITMQ_URL


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A libpq DSN of a live PostgreSQL server with database ``test``."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is in the test extra
        _missing("psycopg (pip install 'segmentlog[sql]')")
        raise
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        _missing(f"PostgreSQL ({POSTGRES_DSN}: {exc.__class__.__name__})")
    return POSTGRES_DSN


@pytest.fixture()
def queue(rabbitmq_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name of this test's own (the test module's name and a random part), the
    queue deleted afterwards: tests never see each other's messages."""
    module = request.module.__name__.removeprefix("test_").replace("_", "-")
    name = f"segmentlog-{module}-{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(rabbitmq_url, name)


@pytest.fixture()
def proxy(rabbitmq_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the broker that a test can cut, silence or restore."""
    parts = urlsplit(rabbitmq_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as p:
        yield p


@pytest.fixture()
def logdir(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A fresh directory for one log."""
    path = os.path.join(os.fspath(tmp_path), "log")
    yield path
