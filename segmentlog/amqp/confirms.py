"""Publisher-confirm bookkeeping for one AMQP channel: a pure state machine, no I/O.

Theory of operation
-------------------
RabbitMQ numbers every message published on a channel in confirm mode with a delivery
tag (1, 2, 3, ... per channel) and later answers each tag exactly once with
``basic.ack`` (stored) or ``basic.nack`` (not stored). One answer may cover every
tag up to and including its own (``multiple=True``). A message published with
``mandatory=True`` that no queue takes first comes back as ``basic.return`` (carrying
its properties, not its tag) and is *then* acked: that ack means "handled", not
"stored".

:class:`ConfirmTracker` turns those frames into one status per message of the batch
being published, and into the one number the caller acts on: the *confirmed prefix*,
how many leading messages of the batch are known to be stored. The caller may commit
its buffer exactly that far; everything after it is retried.

Rule 1: only ``basic.ack`` for a message that was not returned makes it CONFIRMED.
Rule 2: a message we stopped waiting for (connection lost, batch abandoned) is LOST,
never CONFIRMED: the broker may or may not hold it, so it is retried and may arrive
twice. Consumers drop duplicates by ``message_id``; losing it would be worse.
Rule 3: tags count every publish on the channel, including retries and messages of
abandoned batches, so the tracker must see every publish. Late answers for an
abandoned batch only retire their tags; they never touch the current batch.
Rule 4: returns carry no tag, so they are matched by ``message_id`` to the oldest
unanswered, not-yet-returned publish of that id (the broker returns in publish order).

It never touches a socket, clock or metric: callers pass ``now`` in and read counts out,
so every branch is tested with scripted frame sequences (tests/test_confirms.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from segmentlog.errors import ConfigError

__all__ = ["ConfirmTracker", "MessageStatus", "PublishResult", "Settled"]


class MessageStatus(enum.Enum):
    """Where one message of a batch stands."""

    UNSENT = "unsent"  # never published in this batch (batch ended first)
    PENDING = "pending"  # published, no answer yet (only while the batch runs)
    CONFIRMED = "confirmed"  # basic.ack and not returned: the broker stored it
    NACKED = "nacked"  # basic.nack: the broker did not store it
    RETURNED = "returned"  # basic.return: no queue took it (mandatory, unroutable)
    LOST = "lost"  # in flight when we stopped waiting: stored or not, unknown


@dataclass(frozen=True)
class PublishResult:
    """Outcome of one ``publish_batch`` call.

    ``confirmed_prefix`` is the number of leading messages the broker confirmed; the
    caller may commit its buffer exactly that far and must retry the rest.
    ``statuses[i]`` is the final status of message ``i``.
    """

    statuses: tuple[MessageStatus, ...]
    confirmed_prefix: int

    def __len__(self) -> int:
        return len(self.statuses)

    @property
    def delivered(self) -> bool:
        """True when every message of the batch was confirmed."""
        return self.confirmed_prefix == len(self.statuses)

    @property
    def confirmed_count(self) -> int:
        """Confirmed messages anywhere in the batch (may exceed the prefix)."""
        return sum(1 for s in self.statuses if s is MessageStatus.CONFIRMED)

    def unconfirmed_indices(self) -> list[int]:
        """Indices of the messages that are not known to be stored."""
        return [i for i, s in enumerate(self.statuses) if s is not MessageStatus.CONFIRMED]


@dataclass(frozen=True)
class Settled:
    """What one broker frame settled: batch indices and confirm latencies."""

    confirmed: tuple[int, ...] = ()
    nacked: tuple[int, ...] = ()
    # ack of a returned message: settled, but not stored (Rule 1)
    returned_acked: tuple[int, ...] = ()
    latencies: tuple[float, ...] = ()  # seconds from publish to ack, per confirmed message

    def __bool__(self) -> bool:
        return bool(self.confirmed or self.nacked or self.returned_acked)


_ORPHAN = -1  # batch index of a tag whose batch was abandoned (Rule 3)


class ConfirmTracker:
    """Delivery-tag bookkeeping of one confirm-mode channel; see the module docstring.

    Use a new tracker (or :meth:`channel_lost`) for every new channel: tags restart at 1.
    """

    def __init__(self) -> None:
        self._next_tag = 1
        # tag -> batch index (or _ORPHAN); insertion order == tag order
        self._pending: dict[int, int] = {}
        self._order: deque[int] = deque()  # pending tags, ascending, with lazy deletion
        self._sent_at: dict[int, float] = {}
        self._tag_mid: dict[int, str] = {}
        self._by_mid: dict[str, deque[int]] = {}  # mid -> unanswered, unreturned tags
        self._returned_tags: set[int] = set()
        self._ids: Sequence[str] = ()
        self._status: list[MessageStatus] = []
        self._batch_inflight = 0
        self.unknown_answers = 0  # acks/nacks for tags we never sent or already settled
        self.unmatched_returns = 0  # returns whose message_id matched no pending publish

    # ----------------------------------------------------------------- batches
    def start_batch(self, message_ids: Sequence[str]) -> None:
        """Begin tracking a new batch; the previous one must be finished or abandoned."""
        if self._batch_inflight:
            raise ConfigError(
                "ConfirmTracker.start_batch: the previous batch still has messages in "
                "flight; call abandon_batch() or wait for their confirms first"
            )
        self._ids = message_ids
        self._status = [MessageStatus.UNSENT] * len(message_ids)

    def publish(self, index: int, now: float) -> int:
        """Record that batch message ``index`` was just published; return its tag."""
        if self._status[index] is MessageStatus.PENDING:
            raise ConfigError(
                f"ConfirmTracker.publish: message {index} is already in flight; "
                "wait for its answer before republishing it"
            )
        tag = self._next_tag
        self._next_tag += 1
        self._pending[tag] = index
        self._order.append(tag)
        self._sent_at[tag] = now
        mid = self._ids[index]
        self._tag_mid[tag] = mid
        self._by_mid.setdefault(mid, deque()).append(tag)
        self._status[index] = MessageStatus.PENDING
        self._batch_inflight += 1
        return tag

    def on_return(self, message_id: str) -> int | None:
        """Record a basic.return; return the batch index it hit (None: orphan/unknown)."""
        tags = self._by_mid.get(message_id)
        if not tags:
            # Nothing of ours is waiting under that id: nothing to mark. Safe because
            # a return never means "stored", so ignoring it cannot confirm anything.
            self.unmatched_returns += 1
            return None
        tag = tags.popleft()
        if not tags:
            del self._by_mid[message_id]
        self._returned_tags.add(tag)
        index = self._pending[tag]
        if index == _ORPHAN:
            return None
        self._status[index] = MessageStatus.RETURNED
        return index

    def on_ack(self, tag: int, multiple: bool, now: float) -> Settled:
        """Record a basic.ack (covering every pending tag <= ``tag`` when multiple)."""
        return self._answer(tag, multiple, now, ack=True)

    def on_nack(self, tag: int, multiple: bool, now: float) -> Settled:
        """Record a basic.nack (covering every pending tag <= ``tag`` when multiple)."""
        return self._answer(tag, multiple, now, ack=False)

    def abandon_batch(self) -> list[int]:
        """Stop waiting for the current batch (Rule 2); return the indices now LOST.

        Their tags stay pending as orphans so late answers retire them (Rule 3).
        """
        lost: list[int] = []
        for tag, index in self._pending.items():
            if index != _ORPHAN:
                self._pending[tag] = _ORPHAN
                self._status[index] = MessageStatus.LOST
                lost.append(index)
        self._batch_inflight = 0
        return lost

    def channel_lost(self) -> list[int]:
        """The channel died: every unanswered message is LOST; tags restart at 1."""
        lost = self.abandon_batch()
        self._next_tag = 1
        self._pending.clear()
        self._order.clear()
        self._sent_at.clear()
        self._tag_mid.clear()
        self._by_mid.clear()
        self._returned_tags.clear()
        return lost

    # ------------------------------------------------------------------ views
    @property
    def inflight(self) -> int:
        """Messages of the current batch published and not yet answered."""
        return self._batch_inflight

    @property
    def orphans(self) -> int:
        """Unanswered tags of abandoned batches."""
        return len(self._pending) - self._batch_inflight

    @property
    def next_tag(self) -> int:
        return self._next_tag

    def status(self, index: int) -> MessageStatus:
        return self._status[index]

    def indices_with(self, *statuses: MessageStatus) -> list[int]:
        return [i for i, s in enumerate(self._status) if s in statuses]

    def confirmed_prefix(self) -> int:
        n = 0
        for s in self._status:
            if s is not MessageStatus.CONFIRMED:
                break
            n += 1
        return n

    def result(self) -> PublishResult:
        """The batch outcome; call once nothing is in flight (finished or abandoned)."""
        if self._batch_inflight:
            raise ConfigError(
                "ConfirmTracker.result: messages are still in flight; wait for their "
                "answers or call abandon_batch() first"
            )
        return PublishResult(tuple(self._status), self.confirmed_prefix())

    # -------------------------------------------------------------- internals
    def _answer(self, tag: int, multiple: bool, now: float, *, ack: bool) -> Settled:
        if multiple:
            tags: list[int] = []
            order = self._order
            while order and order[0] <= tag:
                t = order.popleft()
                if t in self._pending:  # lazy deletion: single answers leave holes
                    tags.append(t)
        elif tag in self._pending:
            tags = [tag]
        else:
            tags = []
        if not tags:
            # An answer for a tag we never sent or already settled: a broker
            # duplicate or a stale frame. Ignoring it is safe: it cannot make any
            # message of ours CONFIRMED that was not confirmed before.
            self.unknown_answers += 1
            return Settled()
        confirmed: list[int] = []
        nacked: list[int] = []
        returned_acked: list[int] = []
        latencies: list[float] = []
        for t in tags:
            index = self._pending.pop(t)
            sent_at = self._sent_at.pop(t)
            mid = self._tag_mid.pop(t)
            was_returned = t in self._returned_tags
            if was_returned:
                self._returned_tags.discard(t)
            else:
                waiting = self._by_mid.get(mid)
                if waiting is not None:
                    waiting.remove(t)
                    if not waiting:
                        del self._by_mid[mid]
            if index == _ORPHAN:
                continue  # abandoned batch: its messages are already LOST (Rule 3)
            self._batch_inflight -= 1
            if was_returned:
                returned_acked.append(index)  # status stays RETURNED (Rule 1)
            elif ack:
                self._status[index] = MessageStatus.CONFIRMED
                confirmed.append(index)
                latencies.append(now - sent_at)
            else:
                self._status[index] = MessageStatus.NACKED
                nacked.append(index)
        # Keep the head of the order deque on a live tag, so it stays short.
        order = self._order
        while order and order[0] not in self._pending:
            order.popleft()
        return Settled(tuple(confirmed), tuple(nacked), tuple(returned_acked), tuple(latencies))
