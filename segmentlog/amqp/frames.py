"""The AMQP 0-9-1 frames of one publish, encoded in one step.

Every message the :class:`~segmentlog.amqp.publisher.Publisher` sends is the same
``basic.publish`` (default exchange, the queue as routing key, ``mandatory``) with the
same properties but its ``message_id`` (``content_type`` application/json,
``delivery_mode`` 2). pika builds three frame objects per message and marshals each
field through generic code, half the publisher's CPU (benchmarks/README.md). This
encodes the same bytes with the constant parts computed once: the method frame
whole, the header frame but for its body size and message id.

The output is byte for byte what pika sends (``tests/test_amqp_frames.py`` holds it to
``pika.frame`` for bodies empty, small, exactly one frame and several frames).

Wire format (AMQP 0-9-1, section 4.2.3): a frame is type (octet), channel (short),
payload size (long), payload, 0xCE. Method payload: class 60, method 40, reserved
short, exchange and routing key (short strings), one octet of bits (mandatory = 1).
Content header payload: class 60, weight 0, body size (long long), property flags
(short), then the present properties in flag order: content-type (short string),
delivery-mode (octet), message-id (short string). Body frames carry at most
``frame_max - 8`` bytes each; an empty body has none.
"""

from __future__ import annotations

import struct

__all__ = ["CONTENT_TYPE", "PublishFrames"]

_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC_CLASS, _PUBLISH_METHOD = 60, 40
#: Property flags: content-type (bit 15), delivery-mode (bit 12), message-id (bit 7).
_FLAGS = 0x8000 | 0x1000 | 0x0080
#: The content type of every message (the Publisher's fallback path sends it too).
CONTENT_TYPE = "application/json"
_FRAME_HEAD = struct.Struct(">BHI")
#: Header frame: frame head, then class, weight, body size, flags.
_HEADER_HEAD = struct.Struct(">BHIHHQH")
_SHORT_STR_MAX = 255


def _short_string(value: str, what: str) -> bytes:
    data = value.encode()
    if len(data) > _SHORT_STR_MAX:
        raise ValueError(f"{what} is {len(data)} bytes encoded; AMQP short strings hold at "
                         f"most {_SHORT_STR_MAX}")
    return bytes((len(data),)) + data


class PublishFrames:
    """Encodes persistent JSON publishes to one routing key on one channel.

    ``frame_max`` is the connection's negotiated maximum frame size (bodies longer than
    ``frame_max - 8`` bytes are split into several body frames, as the protocol asks).
    """

    __slots__ = ("_body_max", "_channel", "_method", "_props_head")

    def __init__(self, channel: int, routing_key: str, frame_max: int, *,
                 exchange: str = "", mandatory: bool = True) -> None:
        if not 0 < channel < 65536:
            raise ValueError(f"channel {channel} must be 1-65535")
        if frame_max < 4096:
            raise ValueError(f"frame_max {frame_max} is below the protocol's minimum 4096")
        payload = (struct.pack(">HHH", _BASIC_CLASS, _PUBLISH_METHOD, 0)
                   + _short_string(exchange, "exchange")
                   + _short_string(routing_key, "routing key")
                   + bytes((1 if mandatory else 0,)))
        self._method = _FRAME_HEAD.pack(_METHOD, channel, len(payload)) + payload + _FRAME_END
        self._props_head = _short_string(CONTENT_TYPE, "content type") + b"\x02"
        self._channel = channel
        self._body_max = frame_max - _FRAME_HEAD.size - len(_FRAME_END)

    def encode(self, message_id: str, body: bytes) -> bytes:
        """The method, header and body frames of one message, as one ``bytes``.

        Raises ValueError for a ``message_id`` over 255 bytes encoded.
        """
        mid = message_id.encode()
        if len(mid) > _SHORT_STR_MAX:
            raise ValueError(f"message_id is {len(mid)} bytes encoded; AMQP short strings "
                             f"hold at most {_SHORT_STR_MAX}")
        channel = self._channel
        size = len(body)
        props = self._props_head + bytes((len(mid),)) + mid
        header = _HEADER_HEAD.pack(_HEADER, channel, 14 + len(props), _BASIC_CLASS, 0, size,
                                   _FLAGS)
        if 0 < size <= self._body_max:
            return b"".join((self._method, header, props, _FRAME_END,
                             _FRAME_HEAD.pack(_BODY, channel, size), body, _FRAME_END))
        parts: list[bytes | memoryview] = [self._method, header, props, _FRAME_END]
        view = memoryview(body)
        step = self._body_max
        for start in range(0, size, step):
            chunk = view[start:start + step]
            parts += (_FRAME_HEAD.pack(_BODY, channel, len(chunk)), chunk, _FRAME_END)
        return b"".join(parts)
