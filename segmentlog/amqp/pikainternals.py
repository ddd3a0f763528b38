"""The private pika internals the publisher uses: each looked up once, each with a fallback.

pika 1.x has no public API for four things the publisher does, so it reaches into
pika for them. This module is the only place that names them:

- ``Connection._output_marshaled_frames`` writes the frames :mod:`~segmentlog.amqp.frames`
  encoded, a slice of messages in one call. Fallback: ``channel.basic_publish`` per
  message (the same bytes on the wire, ~9x the CPU per message).
- ``Connection._transport._tx_buffers`` (``basic_publish`` path only): the frames pika
  queued are joined into one ``send()``. Fallback: leave them, one ``send()`` per frame
  as pika does (more CPU, more and smaller TCP segments).
- ``Connection._terminate_stream`` aborts at once, without a close handshake (the peer
  may be silent). Fallback: ``Connection.close()`` and forget the connection at once:
  the batch ends and a new connection starts now, as after an abort; the old one ends
  when the broker answers the close, or when pika's heartbeat check gives up on it.
- ``Connection._transport._sock``: a forked child closes its copy of the parent's
  socket without a word on it. Fallback: the child leaves its copy open, so a parent
  killed with SIGKILL is noticed by the broker's heartbeat, not by the closed socket.

Rule 1: the internals are looked up by :func:`probe`, by the names below, once per
connection when it opens (the transport exists from then on); nothing else in
segmentlog touches a pika object's underscore attributes.
Rule 2: a fallback keeps the publisher's guarantees (every message confirmed or
reported, an abort ends the batch and reconnects), only slower or later; the tests
force each one by renaming the name looked up, as a pika release would.
Rule 3: each :class:`~segmentlog.amqp.publisher.Publisher` logs once which paths it
uses (:meth:`PikaPaths.describe`), so a slow fallback never goes unnoticed.

Tested against pika 1.3.0 (the oldest the pin allows) and the newest 1.x (README).
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika

__all__ = ["PikaPaths", "probe"]

#: The private names looked up (module attributes: the tests rename them to force each
#: fallback).
FRAMES_WRITER = "_output_marshaled_frames"
TERMINATE = "_terminate_stream"
TRANSPORT = "_transport"
TX_BUFFERS = "_tx_buffers"
SOCKET = "_sock"


@dataclass(frozen=True)
class PikaPaths:
    """What one pika connection offers; ``None`` where the fallback is used."""

    #: Writes already-encoded frames (``Connection._output_marshaled_frames``).
    write_frames: Callable[[Sequence[bytes]], None] | None
    #: Ends the connection without a handshake (``Connection._terminate_stream``).
    terminate: Callable[[Exception], None] | None
    #: The frames waiting for the socket (the transport's ``_tx_buffers``).
    tx_buffers: deque[bytes] | None
    #: The connection's socket (the transport's ``_sock``).
    sock: socket.socket | None

    def describe(self) -> str:
        """Which path each job takes, for the publisher's one log line."""
        send = ("encoded frames through Connection._output_marshaled_frames"
                if self.write_frames is not None else
                "channel.basic_publish (fallback: Connection._output_marshaled_frames "
                "missing, ~9x the CPU per message)")
        if self.write_frames is None:
            send += ("; frames joined through the transport's _tx_buffers"
                     if self.tx_buffers is not None else
                     "; frames sent one by one (fallback: transport _tx_buffers missing)")
        abort = ("Connection._terminate_stream" if self.terminate is not None else
                 "Connection.close(), forgetting the connection at once (fallback: "
                 "Connection._terminate_stream missing)")
        fork = ("closes its copy of the socket" if self.sock is not None else
                "keeps its copy of the socket open (fallback: transport _sock missing)")
        return (f"pika {pika.__version__}: sends {send}; aborts with {abort}; "
                f"a forked child {fork}")

    def coalesce(self) -> None:
        """Join the frames pika has queued for the socket into one buffer.

        pika's transport sends each queued frame with its own ``send()``: three per
        message (method, header, body), each a TCP segment the broker reads on its own.
        Joined, a window's worth goes out in a few large writes. Measured (100 k
        persistent messages, window 5000, 3 interleaved runs, benchmarks/README.md):
        20-25% less publisher CPU per message, ~4% less broker CPU, 3-6% more
        messages/s. Without ``_tx_buffers`` this does nothing (the fallback).
        """
        buffers = self.tx_buffers
        if buffers is not None and len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)

    def close_inherited_socket(self) -> bool:
        """In a forked child: close the child's copy of the socket without a word on it
        (a Connection.Close would end the parent's connection). False when there is no
        socket to close (the fallback, or the connection is already gone)."""
        sock = self.sock
        if sock is None or sock.fileno() < 0:
            return False
        os.close(sock.detach())
        return True


def probe(conn: Any) -> PikaPaths:
    """Look up the internals of ``conn``, a pika ``SelectConnection`` (Rule 1)."""
    write_frames = getattr(conn, FRAMES_WRITER, None)
    terminate = getattr(conn, TERMINATE, None)
    transport = getattr(conn, TRANSPORT, None)
    tx_buffers = getattr(transport, TX_BUFFERS, None)
    sock = getattr(transport, SOCKET, None)
    return PikaPaths(
        write_frames=write_frames if callable(write_frames) else None,
        terminate=terminate if callable(terminate) else None,
        tx_buffers=tx_buffers if isinstance(tx_buffers, deque) else None,
        sock=sock if isinstance(sock, socket.socket) else None,
    )
