"""Helpers for tests that count messages back from a real RabbitMQ queue."""

from __future__ import annotations

import contextlib
from typing import Any

import pika


def consume_all(url: str, queue: str, timeout: float = 5.0,
                passive: bool = False) -> list[tuple[str, Any, bytes]]:
    """Consume (and ack) every message of ``queue``: (message_id, properties, body) in
    queue order. ``passive``: the queue must exist already; else it is declared durable.
    Fails if fewer messages arrive than the queue announced."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        declared = (ch.queue_declare(queue, passive=True) if passive
                    else ch.queue_declare(queue, durable=True))
        expected = declared.method.message_count
        out: list[tuple[str, Any, bytes]] = []
        if expected:
            ch.basic_qos(prefetch_count=2000)
            for method, props, body in ch.consume(queue, auto_ack=True,
                                                  inactivity_timeout=timeout):
                if method is None:
                    break
                out.append((props.message_id, props, body))
                if len(out) >= expected:
                    break
            ch.cancel()
        assert len(out) == expected, f"queue {queue} announced {expected}, consumed {len(out)}"
        return out
    finally:
        conn.close()


def message_count(url: str, queue: str) -> int:
    """How many messages ``queue`` holds now (0 while it is not declared)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0  # not declared yet
    finally:
        if conn.is_open:
            conn.close()


def delete_queue(url: str, queue: str) -> None:
    """Delete ``queue`` if the broker is reachable (test clean-up: never raises)."""
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            conn.channel().queue_delete(queue)
        finally:
            conn.close()
