"""Helpers of the Auditor tests, and the child process of the SIGKILL test.

As a module: :func:`make_events` (CADF models with known ids and bytes),
:func:`consume` (every message of a queue, in queue order) and :func:`check_delivery`
(the issue's count: ids as sets, first occurrences in recorded order, bytes exactly as
recorded).

As a script (``python tests/audit_child.py MODE``), configured like a service, through
``AUDIT_*`` environment variables (``AUDIT_QUEUE_NAME``, ``AUDIT_HOSTNAME``,
``AUDIT_PORT``, ``AUDIT_BACKING_STORE``):

- ``record``: an Auditor with ``write_ahead=True`` records events forever and prints
  each event's id (flushed) right after ``record()`` returned; the parent kills it.
- ``drain``: an Auditor on the same configuration waits until the backlog it finds is
  delivered, prints ``drained`` and exits 0 (1 on timeout).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Sequence

import orjson

# As a script in a checkout without an install, the checkout's package; never in front of
# an installed one (tests/childenv.py says why), nor when imported by a test.
if importlib.util.find_spec("segmentlog") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from amqptools import consume_all

from segmentlog.audit import Auditor
from segmentlog.cadf import Event, Observer, Resource

OBSERVER = Observer("service/resources", "segmentlog-tests", "11111111-2222-4333-8444-555555555555")
USER = Resource(type_uri="service/security/account/user", id="u-42", name="alice")
PROJECT = Resource(type_uri="service/resources/project", id="p-1", project_id="p-1")


def make_event(i: int, tag: str) -> Event:
    return Event.from_request(action="update/set", reason_code=200 if i % 7 else 500,
                              initiator=USER, target=PROJECT, request_path=f"/v1/{tag}/{i}")


def make_events(n: int, tag: str | None = None) -> list[Event]:
    tag = tag or uuid.uuid4().hex[:8]
    return [make_event(i, tag) for i in range(n)]


def wire(event: Event) -> bytes:
    """The bytes an Auditor with :data:`OBSERVER` publishes for ``event``."""
    body: bytes = event.to_json(OBSERVER.to_dict())
    return body


def consume(url: str, queue: str, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Every message of ``queue`` (consumed and acked), in queue order: (id, body)."""
    return [(mid, body) for mid, _, body in consume_all(url, queue, timeout)]


def check_delivery(messages: Sequence[tuple[str, bytes]],
                   recorded: Sequence[tuple[str, bytes]], exact: bool = True) -> int:
    """Assert the queue holds exactly ``recorded``: returns the number of duplicates.

    Ids as sets (nothing lost, nothing foreign), first occurrences in recorded order,
    each body byte-identical to what was recorded, duplicates byte-identical too.
    ``exact=False`` compares bodies as parsed JSON (the SQL store's jsonb column keeps
    an event's content, not its key order).
    """
    want = {mid: body for mid, body in recorded}
    if not exact:
        want = {mid: orjson.loads(body) for mid, body in recorded}
        messages = [(mid, orjson.loads(body)) for mid, body in messages]
    assert len(want) == len(recorded), "the test recorded duplicate ids"
    got_ids = [mid for mid, _ in messages]
    missing = set(want) - set(got_ids)
    assert not missing, f"{len(missing)} of {len(want)} recorded events missing from the queue"
    foreign = set(got_ids) - set(want)
    assert not foreign, f"{len(foreign)} messages in the queue were never recorded"
    seen: set[str] = set()
    first: list[str] = []
    for mid, body in messages:
        assert body == want[mid], f"message {mid} differs from what was recorded"
        if mid not in seen:
            seen.add(mid)
            first.append(mid)
    order = [mid for mid, _ in recorded]
    if first != order:
        index = next(i for i, (a, b) in enumerate(zip(first, order, strict=True)) if a != b)
        raise AssertionError(f"order broken at event {index} of {len(order)}: queue has "
                             f"{first[index]}, recorded {order[index]}")
    return len(messages) - len(first)


def _auditor(write_ahead: bool) -> Auditor:
    return Auditor(OBSERVER, env_prefix="AUDIT", write_ahead=write_ahead, connect_wait=0.0)


def main(argv: Sequence[str]) -> int:
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "record":
        # AUDIT_WRITE_AHEAD=0 is the negative control (events wait in memory: a kill
        # loses some), for checking by hand that the test can fail.
        auditor = _auditor(write_ahead=os.environ.get("AUDIT_WRITE_AHEAD", "1") != "0")
        tag = uuid.uuid4().hex[:8]
        i = 0
        out = sys.stdout
        while True:
            event = make_event(i, tag)
            auditor.record(event)
            out.write(f"{event.id}\n")
            out.flush()
            i += 1
    if mode == "drain":
        auditor = _auditor(write_ahead=True)
        ok = auditor.flush(float(os.environ.get("AUDIT_DRAIN_TIMEOUT", "60")))
        auditor.close(timeout=10)
        print("drained" if ok else "timeout", flush=True)
        return 0 if ok else 1
    print(f"usage: {argv[0]} record|drain", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
