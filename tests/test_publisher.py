"""The confirm-mode publisher against a real RabbitMQ (127.0.0.1:5672), with real faults.

Every test publishes into its own uuid-named queue, then consumes the queue back and
checks the two delivery promises:
1. every message the publisher reported CONFIRMED is in the queue;
2. a message is in the queue twice only if it was in flight (LOST) or confirmed
   behind an unconfirmed one (the caller resends everything after the prefix).

Faults are real: a TCP proxy (tests/tcpproxy.py) that resets or silently drops the
connection, ``rabbitmqctl stop_app``/``start_app``, a memory alarm, a queue policy
that makes the broker nack, a deleted queue that makes it return messages.
Broker-wide changes are always undone in ``finally``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
from amqptools import consume_all, delete_queue
from forktools import fork
from prometheus_client import CollectorRegistry
from tcpproxy import TcpProxy

from segmentlog.amqp import MessageStatus, Publisher, PublishResult, pikainternals
from segmentlog.errors import BrokerUnavailableError, ConfigError, LogClosedError

pytestmark = pytest.mark.rabbitmq

Message = tuple[str, bytes]


# ------------------------------------------------------------------ helpers
def _messages(n: int, prefix: str = "ev") -> list[Message]:
    tag = uuid.uuid4().hex[:8]
    return [(f"{prefix}-{tag}-{i}", b'{"id":"%s-%d","payload":"%s"}' % (tag.encode(), i, b"x" * 64))
            for i in range(n)]


def _blocking(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def _drain_queue(url: str, queue: str) -> list[tuple[str, Any]]:
    """Consume every message of ``queue``; return (message_id, properties) pairs."""
    return [(mid, props) for mid, props, _ in consume_all(url, queue, 3.0, passive=True)]


def _rabbitmqctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.skip("rabbitmqctl is not installed (needed to drive the broker)")
    subprocess.run([exe, "-q", *args], check=True, capture_output=True, timeout=120)


class Ledger:
    """What a well-behaved caller (the drainer) sees: commit the prefix, resend the rest."""

    def __init__(self) -> None:
        self.confirmed: set[str] = set()
        self.may_duplicate: set[str] = set()
        self.results: list[PublishResult] = []
        self.unavailable = 0

    def record(self, batch: Sequence[Message], result: PublishResult) -> None:
        self.results.append(result)
        for (mid, _), status in zip(batch, result.statuses, strict=True):
            if status is MessageStatus.CONFIRMED:
                self.confirmed.add(mid)
        for i, (mid, _) in enumerate(batch):
            status = result.statuses[i]
            if status is MessageStatus.LOST:
                self.may_duplicate.add(mid)  # in flight: stored or not, unknown
            elif i >= result.confirmed_prefix and status is MessageStatus.CONFIRMED:
                self.may_duplicate.add(mid)  # behind the prefix: the caller resends it

    def deliver_all(self, pub: Publisher, messages: Sequence[Message], *,
                    deadline: float = 60.0) -> None:
        remaining = list(messages)
        end = time.monotonic() + deadline
        while remaining:
            assert time.monotonic() < end, f"{len(remaining)} messages still undelivered"
            try:
                result = pub.publish_batch(remaining)
            except BrokerUnavailableError:
                self.unavailable += 1
                pub.wait_available(1.0)
                continue
            self.record(remaining, result)
            remaining = remaining[result.confirmed_prefix:]

    def check_queue(self, url: str, queue: str, messages: Sequence[Message]) -> Counter[str]:
        ids = Counter(mid for mid, _ in _drain_queue(url, queue))
        missing_confirmed = self.confirmed - set(ids)
        assert not missing_confirmed, f"{len(missing_confirmed)} confirmed messages missing"
        assert set(ids) == {mid for mid, _ in messages}, "queue holds unknown or lacks ids"
        dups = {mid for mid, n in ids.items() if n > 1}
        assert dups <= self.may_duplicate, f"{len(dups - self.may_duplicate)} unexplained dups"
        return ids


@pytest.fixture()
def broker_addr(rabbitmq_url: str) -> tuple[str, int]:
    parts = urlsplit(rabbitmq_url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def _publish_in_thread(pub: Publisher, batch: Sequence[Message]) -> tuple[threading.Thread,
                                                                           dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = pub.publish_batch(batch)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _wait_confirmed(pub: Publisher, at_least: float, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while (pub.registry.get_sample_value("segmentlog_publisher_confirmed_total",
                                         pub.metrics.labels) or 0) < at_least:
        assert time.monotonic() < end, "publisher made no progress"
        time.sleep(0.005)


def _log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def _metric(pub: Publisher, name: str) -> float:
    value = pub.registry.get_sample_value(name, pub.metrics.labels)
    assert value is not None, f"metric {name} is not registered"
    return value


def _without(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make the publisher find none of these pika internals (``pikainternals`` names),
    as if a pika release had renamed them: their fallbacks run instead."""
    for name in names:
        monkeypatch.setattr(pikainternals, name, getattr(pikainternals, name) + "_renamed")


#: The send paths: the fast one, and each fallback forced (pikainternals).
SEND_PATHS = {
    "encoded_frames": (),
    "pika_basic_publish": ("FRAMES_WRITER",),
    "pika_basic_publish_unjoined": ("FRAMES_WRITER", "TX_BUFFERS"),
}


# ------------------------------------------------------------- normal runs
@pytest.mark.parametrize("missing", list(SEND_PATHS.values()), ids=list(SEND_PATHS))
def test_normal_run_delivers_every_message_once_persistent_json(
        rabbitmq_url: str, queue: str, missing: tuple[str, ...],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, *missing)
    messages = _messages(5000)
    with Publisher(rabbitmq_url, queue, window=200) as pub:
        pub.connect()
        assert pub.is_available()
        paths = pub._link.paths
        assert (paths.write_frames is None) is ("FRAMES_WRITER" in missing)
        assert (paths.tx_buffers is None) is ("TX_BUFFERS" in missing)
        ledger = Ledger()
        for start in range(0, len(messages), 1000):
            batch = messages[start:start + 1000]
            result = pub.publish_batch(batch)
            assert result.delivered and result.confirmed_prefix == len(batch)
            ledger.record(batch, result)
        assert _metric(pub, "segmentlog_publisher_published_total") == 5000
        assert _metric(pub, "segmentlog_publisher_confirmed_total") == 5000
        assert _metric(pub, "segmentlog_publisher_inflight_messages") == 0
        assert _metric(pub, "segmentlog_publisher_confirm_latency_seconds_count") == 5000
        assert _metric(pub, "segmentlog_publisher_reconnects_total") == 0
        assert _metric(pub, "segmentlog_publisher_nacked_total") == 0
    drained = _drain_queue(rabbitmq_url, queue)
    assert sorted(mid for mid, _ in drained) == sorted(mid for mid, _ in messages)
    for mid, props in drained[:50]:
        assert props.delivery_mode == 2
        assert props.content_type == "application/json"
        assert props.message_id == mid


@pytest.mark.parametrize("missing", list(SEND_PATHS.values()), ids=list(SEND_PATHS))
def test_bodies_of_every_size_arrive_byte_for_byte(
        rabbitmq_url: str, queue: str, missing: tuple[str, ...],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, *missing)
    # empty, one byte, both sides of one full frame (frame_max 131072 - 8), several frames
    sizes = [0, 1, 131_063, 131_064, 131_065, 400_000] + [514] * 300
    tag = uuid.uuid4().hex[:8]
    messages = [(f"size-{tag}-{i}", bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    with Publisher(rabbitmq_url, queue, window=150) as pub:
        assert pub.publish_batch(messages).delivered
    got = consume_all(rabbitmq_url, queue, 3.0, passive=True)
    assert [(mid, body) for mid, _, body in got] == messages


# ---------------------------------------------------------- pika internals
#: What the log line says for each internal, found and missing (pikainternals).
_PATH_WORDS = {
    "FRAMES_WRITER": ("encoded frames through Connection._output_marshaled_frames",
                      "channel.basic_publish (fallback"),
    "TX_BUFFERS": (None, "frames sent one by one (fallback"),
    "TERMINATE": ("aborts with Connection._terminate_stream",
                  "Connection.close(), forgetting the connection at once (fallback"),
    "SOCKET": ("closes its copy of the socket", "keeps its copy of the socket open (fallback"),
}


@pytest.mark.parametrize("missing", [(), tuple(_PATH_WORDS)], ids=["internals", "fallbacks"])
def test_the_send_and_abort_paths_are_logged_once_per_publisher(
        rabbitmq_url: str, queue: str, broker_addr: tuple[str, int], missing: tuple[str, ...],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line per Publisher, not per connection, naming pika's version and, for each
    internal, the path taken; every message gets through on either."""
    _without(monkeypatch, *missing)
    caplog.set_level(logging.INFO, logger="segmentlog.amqp.publisher")
    messages = _messages(600)
    ledger = Ledger()
    with TcpProxy(*broker_addr) as proxy, \
            Publisher(proxy.url(), queue, window=100, backoff_initial=0.05) as pub:
        pub.connect()
        ledger.deliver_all(pub, messages[:300])
        proxy.cut()
        end = time.monotonic() + 30
        while _metric(pub, "segmentlog_publisher_reconnects_total") < 1:
            assert time.monotonic() < end, "the publisher did not reconnect"
            pub.wait_available(0.1)
        ledger.deliver_all(pub, messages[300:])
    ledger.check_queue(rabbitmq_url, queue, messages)
    lines = [m for m in _log_messages(caplog) if f"pika {pika.__version__}: sends " in m]
    assert len(lines) == 1, lines
    for name, (found, fallback) in _PATH_WORDS.items():
        if name in missing:
            assert fallback in lines[0], (name, lines[0])
        elif found is not None:
            assert found in lines[0], (name, lines[0])
            assert "fallback" not in lines[0], lines[0]


def test_the_installed_pika_offers_every_internal_the_publisher_uses(
        rabbitmq_url: str, queue: str) -> None:
    """Without them every fallback still works (the tests above force each), but the
    send path costs ~9x the CPU: a pika release that renames one shows here first."""
    with Publisher(rabbitmq_url, queue) as pub:
        pub.connect()
        paths = pub._link.paths
        assert paths.write_frames is not None
        assert paths.terminate is not None
        assert paths.tx_buffers is not None
        assert paths.sock is not None


def _fork_and_forget(pub: Publisher, fd: int) -> bool:
    """Fork; the child forgets ``pub``'s connection as the Auditor's after-fork hook
    does, and says whether its copy of descriptor ``fd`` is still open."""
    read_end, write_end = os.pipe()

    def child() -> None:
        pub._forget_in_child()
        try:
            os.fstat(fd)
            os.write(write_end, b"open")
        except OSError:
            os.write(write_end, b"closed")

    pid = fork(child)
    os.close(write_end)
    try:
        said = os.read(read_end, 16)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said in (b"open", b"closed"), said
    return said == b"open"


@pytest.mark.parametrize("missing", [(), ("SOCKET",)], ids=["socket_closed", "socket_kept"])
def test_a_forked_child_forgets_the_connection_without_ending_the_parents(
        rabbitmq_url: str, queue: str, missing: tuple[str, ...],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sock_name = pikainternals.SOCKET
    _without(monkeypatch, *missing)
    messages = _messages(200)
    with Publisher(rabbitmq_url, queue) as pub:
        pub.connect()
        # the descriptor's number, straight from pika (the publisher may not know it)
        fd = getattr(pub._link.conn._transport, sock_name).fileno()
        assert _fork_and_forget(pub, fd) is bool(missing)
        # the child said nothing on the connection: the parent's goes on as it was
        assert pub.publish_batch(messages).delivered
        assert _metric(pub, "segmentlog_publisher_reconnects_total") == 0
    assert len(_drain_queue(rabbitmq_url, queue)) == len(messages)


def test_queue_is_declared_durable_and_survives_redeclare(rabbitmq_url: str, queue: str) -> None:
    with Publisher(rabbitmq_url, queue) as pub:
        pub.connect()
    conn = _blocking(rabbitmq_url)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)  # equivalent: accepted
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="durable"):
            conn.channel().queue_declare(queue, durable=False)
    finally:
        conn.close()


@pytest.mark.parametrize(("options", "declared", "refused"), [
    ({"quorum": True}, {"x-queue-type": "quorum"}, {"x-queue-type": "classic"}),
    ({"queue_arguments": {"x-queue-version": 2}}, {"x-queue-version": 2},
     {"x-queue-version": 1}),
], ids=["quorum", "classic_v2"])
def test_queue_declared_as_asked_delivers_every_message(
        rabbitmq_url: str, queue: str, options: dict[str, Any], declared: dict[str, Any],
        refused: dict[str, Any]) -> None:
    """quorum / queue_arguments reach the declaration: the broker accepts the queue
    re-declared with those arguments, refuses it with others, and every message is in
    it."""
    messages = _messages(1000)
    with Publisher(rabbitmq_url, queue, **options) as pub:
        pub.connect()
        ledger = Ledger()
        ledger.deliver_all(pub, messages)
        assert all(r.delivered for r in ledger.results)
    conn = _blocking(rabbitmq_url)
    try:
        conn.channel().queue_declare(queue, durable=True, arguments=declared)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match=next(iter(refused))):
            conn.channel().queue_declare(queue, durable=True, arguments=refused)
    finally:
        conn.close()
    ledger.check_queue(rabbitmq_url, queue, messages)


def test_queue_arguments_that_differ_from_the_existing_queue_are_reported(
        rabbitmq_url: str, queue: str) -> None:
    """The queue exists without arguments: the declaration is refused, connect() says
    why (the broker's own words name the argument), and nothing is published."""
    conn = _blocking(rabbitmq_url)
    try:
        conn.channel().queue_declare(queue, durable=True)
    finally:
        conn.close()
    with Publisher(rabbitmq_url, queue, queue_arguments={"x-queue-version": 2},
                   backoff_max=0.2) as pub:
        with pytest.raises(BrokerUnavailableError, match="inequivalent arg 'x-queue-version'"):
            pub.connect(timeout=2.0)
        assert not pub.is_available()
    assert not _drain_queue(rabbitmq_url, queue)


def test_empty_batch_returns_an_empty_delivered_result(rabbitmq_url: str, queue: str) -> None:
    with Publisher(rabbitmq_url, queue) as pub:
        pub.connect()
        result = pub.publish_batch([])
        assert result.delivered and len(result) == 0


def test_malformed_messages_raise_config_error(rabbitmq_url: str, queue: str) -> None:
    with Publisher(rabbitmq_url, queue) as pub:
        with pytest.raises(ConfigError, match="message 1 must be"):
            pub.publish_batch([("ok", b"{}"), ("no-body",)])  # type: ignore[list-item]
        with pytest.raises(ConfigError, match="255 bytes"):
            pub.publish_batch([("x" * 300, b"{}")])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"window": 0}, "window=0"),
    ({"heartbeat": 0}, "heartbeat=0"),
    ({"connect_timeout": 0}, "connect_timeout=0"),
    ({"max_attempts": 0}, "max_attempts=0"),
    ({"queue_arguments": [("x-queue-version", 2)]}, "queue_arguments must be a mapping"),
    ({"queue_arguments": {"queue-version": 2}}, "'queue-version' is not an x- argument"),
    ({"queue_arguments": {"x-max-length": [1]}}, "must be a string, number or boolean"),
    ({"queue_arguments": {"x-queue-type": "classic"}, "quorum": True},
     "quorum=True contradicts queue_arguments x-queue-type='classic'"),
])
def test_bad_settings_raise_config_error_naming_the_setting(
        kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Publisher("amqp://guest:guest@127.0.0.1:5672/%2F", "q", **kwargs)


def test_bad_url_raises_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        Publisher("ftp://user:canary-pw-1@host/", "q")
    assert "canary-pw-1" not in str(info.value)
    assert "amqp" in str(info.value)
    with pytest.raises(ConfigError, match="urls is empty"):
        Publisher([], "q")


def test_use_after_close_raises_and_double_close_is_harmless(
        rabbitmq_url: str, queue: str) -> None:
    pub = Publisher(rabbitmq_url, queue)
    pub.connect()
    pub.close()
    pub.close()
    assert not pub.is_available()
    with pytest.raises(LogClosedError, match="closed"):
        pub.publish_batch(_messages(1))
    with pytest.raises(LogClosedError):
        pub.connect()


def test_two_publishers_keep_separate_metrics_and_use_a_given_registry(
        rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    with Publisher(rabbitmq_url, queue, registry=registry) as a, \
            Publisher(rabbitmq_url, queue) as b:
        assert a.registry is registry and b.registry is not registry
        assert a.metrics.label == b.metrics.label == queue  # label: the queue name
        a.connect()
        b.connect()
        a.publish_batch(_messages(10))
        assert registry.get_sample_value(
            "segmentlog_publisher_confirmed_total", {"publisher": queue}) == 10
        assert _metric(b, "segmentlog_publisher_confirmed_total") == 0
        for name in ("published", "confirmed", "nacked", "returned", "retried", "reconnects"):
            assert _metric(b, f"segmentlog_publisher_{name}_total") == 0


def test_publishers_sharing_a_registry_get_their_own_series_and_free_them_on_close(
        rabbitmq_url: str, queue: str) -> None:
    registry = CollectorRegistry()
    names = ("published", "confirmed", "nacked", "returned", "retried", "lost_in_flight",
             "reconnects", "connect_failures")
    with Publisher(rabbitmq_url, queue, registry=registry) as a:
        b = Publisher(rabbitmq_url, queue, registry=registry)
        c = Publisher(rabbitmq_url, queue, registry=registry, metrics_name="drain")
        try:
            assert (a.metrics.label, b.metrics.label, c.metrics.label) == (
                queue, queue + "-2", "drain")
            # Every series of every label exists from the start, at 0.
            for pub in (a, b, c):
                for name in names:
                    assert _metric(pub, f"segmentlog_publisher_{name}_total") == 0, name
                assert _metric(pub, "segmentlog_publisher_inflight_messages") == 0
                assert _metric(pub, "segmentlog_publisher_confirm_latency_seconds_count") == 0
            a.connect()
            b.connect()
            assert a.publish_batch(_messages(7)).delivered
            assert b.publish_batch(_messages(3)).delivered
            assert _metric(a, "segmentlog_publisher_confirmed_total") == 7
            assert _metric(b, "segmentlog_publisher_confirmed_total") == 3
            assert _metric(c, "segmentlog_publisher_confirmed_total") == 0
            assert _metric(a, "segmentlog_publisher_connected") == 1
            assert _metric(c, "segmentlog_publisher_connected") == 0
        finally:
            b.close()
            c.close()
        second = {"publisher": queue + "-2"}
        assert registry.get_sample_value("segmentlog_publisher_connected", second) is None
        assert registry.get_sample_value(
            "segmentlog_publisher_confirmed_total", second) == 3  # counters stay
        with Publisher(rabbitmq_url, queue, registry=registry) as again:
            assert again.metrics.label == queue + "-2"  # freed by close, reused
            again.connect()
            assert again.publish_batch(_messages(2)).delivered
            assert _metric(again, "segmentlog_publisher_confirmed_total") == 5  # continues
    assert len(_drain_queue(rabbitmq_url, queue)) == 12


# --------------------------------------------------------- nacks, returns
def test_returned_messages_redeclare_the_queue_and_are_retried(
        rabbitmq_url: str, queue: str) -> None:
    messages = _messages(200)
    with Publisher(rabbitmq_url, queue) as pub:
        pub.connect()
        delete_queue(rabbitmq_url, queue)  # someone deletes the queue: unroutable now
        result = pub.publish_batch(messages)
        assert result.delivered
        assert _metric(pub, "segmentlog_publisher_returned_total") >= 1
        assert _metric(pub, "segmentlog_publisher_retried_total") >= 1
        assert _metric(pub, "segmentlog_publisher_confirmed_total") == 200
    ids = Counter(mid for mid, _ in _drain_queue(rabbitmq_url, queue))
    assert set(ids) == {mid for mid, _ in messages} and max(ids.values()) == 1


def test_returned_messages_are_reported_when_retries_run_out(
        rabbitmq_url: str, queue: str) -> None:
    with Publisher(rabbitmq_url, queue, max_attempts=1) as pub:
        pub.connect()
        delete_queue(rabbitmq_url, queue)
        result = pub.publish_batch(_messages(5))
        assert result.confirmed_prefix == 0
        assert set(result.statuses) == {MessageStatus.RETURNED}
        assert _metric(pub, "segmentlog_publisher_confirmed_total") == 0


def test_nacked_messages_are_retried_then_reported_and_never_duplicated(
        rabbitmq_url: str, queue: str) -> None:
    messages = _messages(10)
    policy = f"segmentlog-test-{queue}"
    with Publisher(rabbitmq_url, queue, max_attempts=2, retry_delay=0.01) as pub:
        pub.connect()
        _rabbitmqctl("set_policy", "--apply-to", "queues", policy, f"^{queue}$",
                     '{"max-length":5,"overflow":"reject-publish"}')
        try:
            # the policy reaches the queue process asynchronously: fill until refused
            end = time.monotonic() + 10
            while pub.publish_batch(_messages(6, "fill")).delivered:
                assert time.monotonic() < end, "the max-length policy never took effect"
                time.sleep(0.1)
            _drain_queue(rabbitmq_url, queue)  # empty again, policy active
            result = pub.publish_batch(messages)
            assert result.statuses[:5] == (MessageStatus.CONFIRMED,) * 5
            assert result.statuses[5:] == (MessageStatus.NACKED,) * 5
            assert result.confirmed_prefix == 5
            assert _metric(pub, "segmentlog_publisher_retried_total") >= 5
            ledger = Ledger()
            ledger.record(messages, result)
        finally:
            _rabbitmqctl("clear_policy", policy)
        time.sleep(0.5)
        ledger.deliver_all(pub, messages[result.confirmed_prefix:])
    ledger.check_queue(rabbitmq_url, queue, messages)


# ----------------------------------------------------------------- faults
@pytest.mark.slow
def test_connection_cut_mid_batch_keeps_every_confirmed_message(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    messages = _messages(20000)
    with Publisher(proxy.url(), queue, backoff_initial=0.05) as pub:
        pub.connect()
        thread, box = _publish_in_thread(pub, messages)
        _wait_confirmed(pub, 3000)
        proxy.cut()
        thread.join(30)
        assert "error" not in box, box.get("error")  # a mid-batch failure is a result
        first: PublishResult = box["result"]
        assert 3000 <= first.confirmed_prefix < len(messages)
        assert MessageStatus.LOST in first.statuses
        ledger = Ledger()
        ledger.record(messages, first)
        ledger.deliver_all(pub, messages[first.confirmed_prefix:])
        assert _metric(pub, "segmentlog_publisher_reconnects_total") >= 1
    ledger.check_queue(rabbitmq_url, queue, messages)


#: The abort paths: pika's _terminate_stream, and the close-and-forget fallback.
ABORT_PATHS = {"terminate_stream": (), "close_and_forget": ("TERMINATE",)}


@pytest.mark.slow
@pytest.mark.parametrize("missing", list(ABORT_PATHS.values()), ids=list(ABORT_PATHS))
def test_silent_partition_is_detected_by_the_liveness_watchdog(
        rabbitmq_url: str, queue: str, proxy: TcpProxy, missing: tuple[str, ...],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, *missing)
    messages = _messages(20000)
    caplog.set_level(logging.WARNING, logger="segmentlog.amqp.publisher")
    # default heartbeat/liveness settings: the requirement (found within 15 s) is about
    # the defaults; test_publisher_policy.py holds the liveness check to it with a fake
    # clock, and this test shows that check is what ends the batch.
    with Publisher(proxy.url(), queue, backoff_initial=0.05) as pub:
        pub.connect()
        thread, box = _publish_in_thread(pub, messages)
        _wait_confirmed(pub, 2000)
        proxy.go_silent()
        thread.join(30)
        assert not thread.is_alive(), "publish_batch hung on a silent connection"
        assert "error" not in box, box.get("error")
        aborts = [m for m in _log_messages(caplog) if "aborting connection" in m]
        assert aborts and "(liveness_timeout=10 s): silent partition?" in aborts[0], aborts
        assert not pub.is_available()
        assert (pub._link.paths.terminate is None) is bool(missing)
        first: PublishResult = box["result"]
        assert not first.delivered
        proxy.restore()
        ledger = Ledger()
        ledger.record(messages, first)
        ledger.deliver_all(pub, messages[first.confirmed_prefix:])
    ledger.check_queue(rabbitmq_url, queue, messages)


@pytest.mark.parametrize("missing", list(ABORT_PATHS.values()), ids=list(ABORT_PATHS))
def test_a_broker_that_stops_confirming_is_dropped_after_confirm_timeout(
        rabbitmq_url: str, queue: str, broker_addr: tuple[str, int], missing: tuple[str, ...],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker stays alive (heartbeats and every other frame flow) but its confirms
    never arrive: publish_batch must not wait forever, must not call anything in flight
    confirmed, and the messages must all get through once confirms flow again."""
    _without(monkeypatch, *missing)
    messages = _messages(3000)
    ledger = Ledger()
    caplog.set_level(logging.WARNING, logger="segmentlog.amqp.publisher")
    with TcpProxy(*broker_addr, amqp=True) as proxy, \
            Publisher(proxy.url(), queue, window=500, confirm_timeout=1.0,
                      backoff_initial=0.05) as pub:
        pub.connect()
        first = pub.publish_batch(messages[:500])
        assert first.delivered
        ledger.record(messages[:500], first)
        proxy.withhold_confirms()
        stuck = pub.publish_batch(messages[500:1500])
        assert proxy.confirms_withheld > 0
        assert not stuck.delivered and stuck.confirmed_prefix == 0
        assert set(stuck.statuses) <= {MessageStatus.LOST, MessageStatus.UNSENT}
        assert MessageStatus.LOST in stuck.statuses
        # The confirm watchdog ended the batch (not the liveness check, not close()),
        # once, with the unanswered messages LOST. When it fires is the policy's to
        # decide: test_publisher_policy.py pins that with a fake clock.
        aborts = [m for m in _log_messages(caplog) if "aborting connection" in m]
        assert len(aborts) == 1, aborts
        match = re.search(r"no confirm for ([0-9.]+) s with (\d+) message\(s\) in flight "
                          r"\(confirm_timeout=1 s\)$", aborts[0])
        assert match is not None, aborts[0]
        assert float(match.group(1)) > 1.0
        assert _metric(pub, "segmentlog_publisher_lost_in_flight_total") == int(match.group(2))
        assert stuck.statuses.count(MessageStatus.LOST) == int(match.group(2))
        ledger.record(messages[500:1500], stuck)
        proxy.release_confirms()
        ledger.deliver_all(pub, messages[500:])
    ledger.check_queue(rabbitmq_url, queue, messages)


@pytest.mark.slow
def test_broker_restart_mid_batch_keeps_every_confirmed_message(
        rabbitmq_url: str, queue: str) -> None:
    messages = _messages(20000)
    with Publisher(rabbitmq_url, queue, backoff_initial=0.1, backoff_max=1.0) as pub:
        pub.connect()
        thread, box = _publish_in_thread(pub, messages)
        _wait_confirmed(pub, 2000)
        try:
            _rabbitmqctl("stop_app")
            thread.join(30)
            assert "error" not in box, box.get("error")
            first: PublishResult = box["result"]
            assert not first.delivered
            with pytest.raises(BrokerUnavailableError, match=r"guest:\*\*\*@"):
                pub.publish_batch(messages[:1])
        finally:
            _rabbitmqctl("start_app")
            _rabbitmqctl("await_startup")
        assert pub.wait_available(30), pub.last_error
        ledger = Ledger()
        ledger.record(messages, first)
        ledger.deliver_all(pub, messages[first.confirmed_prefix:])
        assert _metric(pub, "segmentlog_publisher_reconnects_total") >= 1
    ledger.check_queue(rabbitmq_url, queue, messages)


def test_failover_from_a_dead_address_to_a_live_one(
        rabbitmq_url: str, queue: str, broker_addr: tuple[str, int]) -> None:
    with TcpProxy(*broker_addr) as dead, TcpProxy(*broker_addr) as live:
        dead.refuse()
        with Publisher([dead.url(), live.url()], queue, connect_timeout=2) as pub:
            pub.connect()
            assert pub.connected_url == live.url().replace(":guest@", ":***@")
            assert pub.publish_batch(_messages(100)).delivered
            assert _metric(pub, "segmentlog_publisher_connect_failures_total") == 1
    assert len(_drain_queue(rabbitmq_url, queue)) == 100


@pytest.mark.slow
def test_failover_mid_run_when_the_connected_address_dies(
        rabbitmq_url: str, queue: str, broker_addr: tuple[str, int]) -> None:
    messages = _messages(10000)
    with TcpProxy(*broker_addr) as a, TcpProxy(*broker_addr) as b, \
            Publisher([a.url(), b.url()], queue, backoff_initial=0.05) as pub:
        pub.connect()
        assert pub.connected_url is not None and str(a.port) in pub.connected_url
        thread, box = _publish_in_thread(pub, messages)
        _wait_confirmed(pub, 1000)
        a.refuse()
        thread.join(30)
        first: PublishResult = box["result"]
        ledger = Ledger()
        ledger.record(messages, first)
        ledger.deliver_all(pub, messages[first.confirmed_prefix:])
        assert pub.connected_url is not None and str(b.port) in pub.connected_url
        assert b.accepted == 1
        assert _metric(pub, "segmentlog_publisher_reconnects_total") == 1
    ledger.check_queue(rabbitmq_url, queue, messages)


def test_no_reachable_broker_raises_and_recovers_in_the_background(
        rabbitmq_url: str, queue: str, proxy: TcpProxy) -> None:
    proxy.refuse()
    with Publisher(proxy.url(), queue, connect_timeout=1, backoff_initial=0.05,
                   backoff_max=0.2) as pub:
        with pytest.raises(BrokerUnavailableError, match="no RabbitMQ broker reachable"):
            pub.connect()
        assert not pub.is_available()
        with pytest.raises(BrokerUnavailableError):
            pub.publish_batch(_messages(3))
        proxy.accept()
        assert pub.wait_available(10), pub.last_error
        assert pub.publish_batch(_messages(3)).delivered
    assert len(_drain_queue(rabbitmq_url, queue)) == 3


@pytest.mark.slow
def test_resource_alarm_blocks_the_publisher_until_it_clears(
        rabbitmq_url: str, queue: str) -> None:
    sent: list[Message] = []
    with Publisher(rabbitmq_url, queue, blocked_grace=0.5) as pub:
        pub.connect()
        ledger = Ledger()
        try:
            _rabbitmqctl("set_vm_memory_high_watermark", "0.000001")
            # The broker blocks a connection once it publishes during the alarm: the
            # batch stops mid-way and reports what was not confirmed.
            partial = None
            end = time.monotonic() + 20
            while partial is None:
                assert time.monotonic() < end, "broker never blocked the connection"
                messages = _messages(2000)
                try:
                    result = pub.publish_batch(messages)
                except BrokerUnavailableError:
                    break
                sent.extend(messages)
                ledger.record(messages, result)
                if not result.delivered:
                    partial = result
            assert partial is not None, "the alarm hit between batches, not during one"
            assert MessageStatus.UNSENT in partial.statuses
            assert not pub.is_available()
            assert _metric(pub, "segmentlog_publisher_blocked") == 1
            with pytest.raises(BrokerUnavailableError, match="resource alarm"):
                pub.publish_batch(messages)
        finally:
            _rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        assert pub.wait_available(20), pub.last_error
        remaining = messages[partial.confirmed_prefix:]
        ledger.deliver_all(pub, remaining)
        assert _metric(pub, "segmentlog_publisher_reconnects_total") == 0
        assert _metric(pub, "segmentlog_publisher_blocked") == 0
    ledger.check_queue(rabbitmq_url, queue, sent)


# ------------------------------------------------------------- TLS, secrets
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_amqps_url_connects_over_tls(rabbitmq_url: str, queue: str,
                                     broker_addr: tuple[str, int], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    with TcpProxy(*broker_addr, server_ssl_context=server) as tls:
        url = tls.url("amqps", host="localhost")
        with Publisher(url, queue, ssl_context=client) as pub:
            pub.connect()
            assert pub.publish_batch(_messages(50)).delivered
        # without the CA the certificate is refused: TLS really is in use
        with Publisher(url, queue, connect_timeout=2) as untrusted, \
                pytest.raises(BrokerUnavailableError, match=r"(?i)certificate|ssl"):
            untrusted.connect()
    assert len(_drain_queue(rabbitmq_url, queue)) == 50


def test_password_never_appears_in_logs_or_errors(
        rabbitmq_url: str, queue: str, broker_addr: tuple[str, int], proxy: TcpProxy,
        caplog: pytest.LogCaptureFixture) -> None:
    canary = "Canary-Secret-8e1f"
    host, port = broker_addr
    dead = TcpProxy(host, port)
    dead.refuse()
    urls = [f"amqp://guest:{canary}@{host}:{port}/%2F", dead.url(password=canary)]
    caplog.set_level(logging.DEBUG)
    try:
        with Publisher(urls, queue, connect_timeout=1, backoff_max=0.2) as pub:
            with pytest.raises(BrokerUnavailableError) as info:
                pub.connect()
            assert "guest:***@" in str(info.value)
            assert canary not in str(info.value) and canary not in pub.last_error
            with pytest.raises(BrokerUnavailableError) as again:
                pub.publish_batch(_messages(1))
            assert canary not in str(again.value)
            time.sleep(0.3)  # let background rounds log too
    finally:
        dead.close()
    assert "ACCESS_REFUSED" in caplog.text or "Authentication" in caplog.text
    assert canary not in caplog.text
    for record in caplog.records:
        assert canary not in record.getMessage()
