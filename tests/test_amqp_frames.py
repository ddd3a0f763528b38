"""The publisher's frame encoder (segmentlog/amqp/frames.py): the bytes pika would send.

A hand-checked vector pins the wire format itself (AMQP 0-9-1, section 4.2.3), so the
encoder and pika cannot agree on a mistake; the property test holds it to
``pika.frame`` for any message id, body and frame size.
"""

from __future__ import annotations

import pika.frame
import pika.spec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentlog.amqp.frames import PublishFrames


def _pika(channel: int, queue: str, mid: str, body: bytes, frame_max: int,
          mandatory: bool = True) -> bytes:
    """What pika's Connection._send_message marshals for the same publish."""
    out = [
        pika.frame.Method(channel, pika.spec.Basic.Publish(
            exchange="", routing_key=queue, mandatory=mandatory)).marshal(),
        pika.frame.Header(channel, len(body), pika.spec.BasicProperties(
            delivery_mode=2, content_type="application/json", message_id=mid)).marshal(),
    ]
    step = frame_max - 8
    out += [pika.frame.Body(channel, body[i:i + step]).marshal()
            for i in range(0, len(body), step)]
    return b"".join(out)


def test_known_answer_vector() -> None:
    got = PublishFrames(1, "q", 4096).encode("m1", b"{}")
    method = (b"\x01\x00\x01\x00\x00\x00\x0a"      # method frame, channel 1, 10 bytes
              b"\x00\x3c\x00\x28"                  # class 60 (basic), method 40 (publish)
              b"\x00\x00\x00\x01q\x01"             # ticket 0, exchange "", key "q", mandatory
              b"\xce")
    header = (b"\x02\x00\x01\x00\x00\x00\x23"      # header frame, channel 1, 35 bytes
              b"\x00\x3c\x00\x00"                  # class 60, weight 0
              b"\x00\x00\x00\x00\x00\x00\x00\x02"  # body size 2
              b"\x90\x80"                          # content-type, delivery-mode, message-id
              b"\x10application/json\x02\x02m1"
              b"\xce")
    body = b"\x03\x00\x01\x00\x00\x00\x02{}\xce"
    assert got == method + header + body


@pytest.mark.parametrize("size", [0, 1, 514, 4087, 4088, 4089, 8176, 8177, 20_000])
def test_bodies_of_every_size_match_pika(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    for mandatory in (True, False):
        frames = PublishFrames(7, "segmentlog-é", 4096, mandatory=mandatory)
        assert frames.encode("id-é", body) == _pika(7, "segmentlog-é", "id-é", body, 4096,
                                                     mandatory)


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(1, 65535), queue=st.text(max_size=40),
       mid=st.text(max_size=60), body=st.binary(max_size=9000),
       frame_max=st.integers(4096, 10_000))
def test_any_publish_matches_pika(channel: int, queue: str, mid: str, body: bytes,
                                  frame_max: int) -> None:
    frames = PublishFrames(channel, queue, frame_max)
    assert frames.encode(mid, body) == _pika(channel, queue, mid, body, frame_max)


def test_too_long_strings_are_refused_with_the_limit() -> None:
    frames = PublishFrames(1, "q", 4096)
    with pytest.raises(ValueError, match=r"message_id is 256 bytes.*at most 255"):
        frames.encode("x" * 256, b"")
    with pytest.raises(ValueError, match="message_id is 256 bytes"):
        frames.encode("é" * 128, b"")  # 128 characters, 256 bytes
    assert frames.encode("x" * 255, b"").count(b"x" * 255) == 1
    with pytest.raises(ValueError, match="routing key is 300 bytes"):
        PublishFrames(1, "q" * 300, 4096)


@pytest.mark.parametrize(("channel", "frame_max", "match"), [
    (0, 4096, "channel 0"), (65536, 4096, "channel 65536"), (1, 4095, "frame_max 4095")])
def test_bad_channel_or_frame_size_is_refused(channel: int, frame_max: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PublishFrames(channel, "q", frame_max)
