"""A small threaded TCP proxy for fault-injection tests (no mocks: real sockets).

``TcpProxy(target_host, target_port)`` listens on 127.0.0.1 (an ephemeral port) and
forwards every accepted connection to the target, one pair of pump threads per
connection. Faults:

- ``cut()``: reset every open connection (RST, ``SO_LINGER`` 0); new ones still work.
- ``go_silent()``: keep every socket open but forward nothing in either direction
  (bytes read are dropped, like packets lost in a partition); new connections are
  accepted and stay silent too. ``restore()`` forwards again; connections that lost
  bytes while silent are useless by then, so ``restore()`` also cuts them.
- ``refuse()``: close the listener and cut every connection: the address is dead
  (connection refused). ``accept()`` (re)opens the listener on the same port.
- ``withhold_confirms()`` (with ``amqp=True``): the broker-to-client stream is cut into
  AMQP frames, and ``basic.ack``/``basic.nack`` frames are dropped while every other
  frame (heartbeats, channel traffic) passes: a broker that is alive but never
  confirms. ``release_confirms()`` forwards them again (the dropped ones are gone).

``server_ssl_context`` makes the proxy terminate TLS (the test's broker speaks plain
AMQP), which lets a test exercise ``amqps://`` without a TLS broker listener.

Usage: ``with TcpProxy("127.0.0.1", 5672) as proxy: url = proxy.url("amqp", ...)``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from types import TracebackType

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, server_ssl_context: ssl.SSLContext | None = None,
                 amqp: bool = False) -> None:
        self.target = (target_host, target_port)
        self._amqp = amqp
        self._withhold = threading.Event()
        self.confirms_withheld = 0
        self.listen_host = listen_host
        self._ssl = server_ssl_context
        self._lock = threading.Lock()
        self._silent = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = False
        self.accepted = 0  # connections accepted so far (all time)
        self.bytes_forwarded = 0
        self.port = self._listen(listen_port)

    # -------------------------------------------------------------- control
    def url(self, scheme: str = "amqp", user: str = "guest", password: str = "guest",
            vhost: str = "%2F", host: str | None = None) -> str:
        return f"{scheme}://{user}:{password}@{host or self.listen_host}:{self.port}/{vhost}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> None:
        """Reset every open connection; keep accepting new ones."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _reset(a)
            _reset(b)

    def go_silent(self) -> None:
        """Stop forwarding in both directions without closing anything."""
        self._silent.set()

    def restore(self) -> None:
        """Forward again (after go_silent); connections that lost bytes are cut."""
        if self._silent.is_set():
            self._silent.clear()
            self.cut()

    def withhold_confirms(self) -> None:
        """Drop the broker's basic.ack/basic.nack frames from now on (``amqp=True``)."""
        if not self._amqp:
            raise ValueError("withhold_confirms() needs TcpProxy(..., amqp=True)")
        self._withhold.set()

    def release_confirms(self) -> None:
        """Forward confirms again (those dropped meanwhile stay dropped)."""
        self._withhold.clear()

    def refuse(self) -> None:
        """The address goes dead: no listener (connection refused), every connection cut."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
            self._accept_thread = None
        self.cut()

    def accept(self) -> None:
        """Listen again on the same port after refuse()."""
        if self._listener is None:
            self._listen(self.port)

    def close(self) -> None:
        self._stopped = True
        self._silent.clear()
        self.refuse()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, port))
        listener.listen(64)
        listener.settimeout(0.2)  # so refuse() can stop the accept loop promptly
        with self._lock:
            self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                               name=f"tcpproxy-accept-{port}", daemon=True)
        self._accept_thread.start()
        return int(listener.getsockname()[1])

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._open_pair, args=(client,), daemon=True).start()

    def _open_pair(self, client: socket.socket) -> None:
        try:
            if self._ssl is not None:
                client = self._ssl.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._listener is None or self._stopped:
                _reset(client)
                _reset(upstream)
                return
            self._pairs.append((client, upstream))
            self.accepted += 1
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, self._amqp),
                         daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, frames: bool = False) -> None:
        pending = bytearray()  # with frames: bytes of a frame not complete yet
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._silent.is_set():
                    continue  # dropped, like packets lost in a partition
                if frames:
                    pending += data
                    data = self._filter_frames(pending)
                dst.sendall(data)
                self.bytes_forwarded += len(data)
        except (OSError, ValueError):
            pass  # cut() or the peer closed: the other pump sees it too
        with self._lock:
            pair = next((p for p in self._pairs if src in p), None)
            if pair is not None:
                self._pairs.remove(pair)
        _close(dst)
        _close(src)


    def _filter_frames(self, pending: bytearray) -> bytes:
        """Take the complete AMQP frames off ``pending``; return them minus the confirms
        (while withholding). A frame: type u8, channel u16, size u32, payload, 0xCE."""
        out = bytearray()
        while len(pending) >= 7:
            kind, _, size = struct.unpack_from(">BHI", pending, 0)
            end = 7 + size + 1
            if len(pending) < end:
                break
            frame = bytes(pending[:end])
            del pending[:end]
            if (kind == 1 and frame[7:11] in _CONFIRM_METHODS
                    and self._withhold.is_set()):
                self.confirms_withheld += 1
                continue
            out += frame
        return bytes(out)


# basic.ack (class 60, method 80) and basic.nack (class 60, method 120) method frames.
_CONFIRM_METHODS = (struct.pack(">HH", 60, 80), struct.pack(">HH", 60, 120))


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), like a crashed peer or a firewall reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
