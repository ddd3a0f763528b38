"""The broker's own ceiling: publishes whose frames are encoded before the clock starts,
written to a plain socket.

A client that costs nothing per message: the frames of every message are built first
(segmentlog.amqp.frames.PublishFrames, the publisher's own encoder, so the bytes are
the ones the Publisher sends), then written in chunks of 100 messages; in confirm mode
a reader thread counts ``basic.ack`` frames and the writer keeps at most ``window``
messages unanswered. Whatever rate this reaches is the broker's, not a client's: no
client library publishes faster. Benchmarks only (no reconnects, no heartbeats, no
TLS); it fails loudly on any unexpected frame.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pika.frame
import pika.spec

from segmentlog.amqp.frames import PublishFrames

_CHUNK = 100


class _Conn:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "localhost", parts.port or 5672),
                                             timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(pika.spec.Connection.Start)
        self.send(0, pika.spec.Connection.StartOk(
            client_properties={"product": "segmentlog raw_amqp bench"}, mechanism="PLAIN",
            response=f"\0{user}\0{password}"))
        tune = self.expect(pika.spec.Connection.Tune)
        self.frame_max = min(tune.frame_max or 131072, 131072)
        self.send(0, pika.spec.Connection.TuneOk(tune.channel_max, self.frame_max, 0))
        self.send(0, pika.spec.Connection.Open(vhost))
        self.expect(pika.spec.Connection.OpenOk)
        self.send(1, pika.spec.Channel.Open())
        self.expect(pika.spec.Channel.OpenOk)

    def send(self, channel: int, method: object) -> None:
        self.sock.sendall(pika.frame.Method(channel, method).marshal())

    def frame(self) -> object:
        while True:
            used, frame = pika.frame.decode_frame(self.buf)
            if frame is not None:
                self.buf = self.buf[used:]
                return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("raw_amqp: the broker closed the connection")
            self.buf += data

    def expect(self, kind: type) -> Any:
        frame = self.frame()
        method = getattr(frame, "method", None)
        if not isinstance(method, kind):
            raise RuntimeError(f"raw_amqp: expected {kind.__name__}, got {frame!r}")
        return method

    def close(self) -> None:
        try:
            self.send(0, pika.spec.Connection.Close(200, "bench done", 0, 0))
            while not isinstance(getattr(self.frame(), "method", None),
                                 pika.spec.Connection.CloseOk):
                pass
        finally:
            self.sock.close()


def publish(url: str, queue: str, messages: Sequence[tuple[str, bytes]], *,
            window: int | None, done: Callable[[], None] | None = None) -> float:
    """Publish ``messages`` to ``queue``; return messages per second.

    ``window=None``: no confirm mode; the clock stops once ``done()`` returns (the
    caller's check that the queue holds them all). Else confirm mode with at most
    ``window`` unanswered; the clock stops at the last ack.
    """
    conn = _Conn(url)
    try:
        encode = PublishFrames(1, queue, conn.frame_max).encode
        frames = [encode(mid, body) for mid, body in messages]
        chunks = [b"".join(frames[i:i + _CHUNK]) for i in range(0, len(frames), _CHUNK)]
        n = len(frames)
        if window is None:
            start = time.perf_counter()
            for chunk in chunks:
                conn.sock.sendall(chunk)
            if done is not None:
                done()
            return n / (time.perf_counter() - start)
        conn.send(1, pika.spec.Confirm.Select())
        conn.expect(pika.spec.Confirm.SelectOk)
        acked = 0
        failure: list[str] = []
        cond = threading.Condition()

        def reader() -> None:
            nonlocal acked
            try:
                while acked < n:
                    method = getattr(conn.frame(), "method", None)
                    if isinstance(method, pika.spec.Basic.Ack):
                        with cond:
                            acked = method.delivery_tag if method.multiple else acked + 1
                            cond.notify()
                    elif method is not None:
                        raise RuntimeError(f"raw_amqp: unexpected {method!r}")
            except Exception as exc:  # reported by the writer
                with cond:
                    failure.append(str(exc))
                    cond.notify()

        thread = threading.Thread(target=reader, daemon=True)
        start = time.perf_counter()
        thread.start()
        sent = 0
        per = window if window < _CHUNK else _CHUNK
        while sent < n:
            with cond:
                while sent - acked + per > window and not failure:
                    cond.wait()
            if failure:
                raise RuntimeError(failure[0])
            k = min(per, n - sent)
            conn.sock.sendall(b"".join(frames[sent:sent + k]))
            sent += k
        with cond:
            while acked < n and not failure:
                cond.wait()
        if failure:
            raise RuntimeError(failure[0])
        elapsed = time.perf_counter() - start
        thread.join()
        return n / elapsed
    finally:
        conn.close()
