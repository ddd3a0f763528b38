"""Publisher throughput against a real RabbitMQ: windowed confirms vs the two baselines.

Usage: python benchmarks/bench_publisher.py [--url URL] [--messages 100000]
       [--each-messages 10000] [--batch 10000] [--windows 1,10,100,...]
       [--queue-arguments '{"x-queue-version": 2}'] [--queue-version-policy] [--json]

Every run publishes persistent messages (delivery_mode 2, ~514-byte CADF-like JSON)
into its own fresh durable queue, which is deleted afterwards. Rates are messages per
second *stored by the broker*:

- no-confirm: pika BlockingConnection, no confirm mode (the Go original's way); the
  clock stops when the queue holds every message (so client-side buffering does not
  flatter it). Measured before and after the windowed runs; the mean is the baseline.
- confirm-each: BlockingConnection in confirm mode, each publish waits for its own
  confirm (``--each-messages``, it is slow).
- window=W: segmentlog.amqp.Publisher(window=W), ``publish_batch`` in batches of
  ``--batch``; the clock stops when every batch is confirmed. Windows below 100 use
  ``--each-messages`` messages (they run at confirm-each speed).
- raw no-confirm / raw window=W (the default window): the broker's own ceiling, a client
  that costs nothing per message (benchmarks/raw_amqp.py: frames encoded before the
  clock starts, written to a plain socket). The no-confirm baseline above is what a
  user of pika gets; this is what the broker takes. How far the Publisher is from the
  raw window row is the client's share; how far the raw window row is from raw
  no-confirm is what confirms cost the broker.

Every queue of a run, the baselines' included, is declared with ``--queue-arguments``
(default none: the broker's default queue type), so the ratios compare like with like.
``--queue-version-policy`` makes them version 2 classic queues through a broker policy
instead (RabbitMQ 3.10-3.12 defaults to version 1; 3.13 on, to 2), set for the run and
cleared after.

Ratios are computed within this one run, so a busy machine slows all of them alike.
The issue's target: the default window at >= 0.8x no-confirm and >= 7x confirm-each.

CPU per message is printed for this process (the client, pika's I/O thread included)
and, when the broker runs on this machine and /proc shows its ``beam.smp``, for the
broker: which side runs out first is the explanation of every rate.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)
import pika
import raw_amqp

from segmentlog.amqp import Publisher

DEFAULT_URL = os.environ.get("SEGMENTLOG_TEST_RABBITMQ_URL",
                             "amqp://guest:guest@127.0.0.1:5672/%2F")
BODY_SIZE = 514
#: Arguments of every queue this run declares (--queue-arguments).
QUEUE_ARGUMENTS: dict[str, object] = {}


#: The broker policy of --queue-version-policy (every queue this bench declares matches).
POLICY = ("segmentlog-bench-cqv2", "^segmentlog-bench-", '{"queue-version":2}')


@contextlib.contextmanager
def queue_version_policy(on: bool) -> Iterator[None]:
    """--queue-version-policy: the bench's queues become version 2 classic queues through a
    broker policy, the way an operator would on RabbitMQ 3.10-3.12 (no declaration
    argument, so nothing conflicts with other declarations); cleared afterwards, always."""
    if not on:
        yield
        return
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("--queue-version-policy needs rabbitmqctl (the broker's CLI) on this "
                         "machine; or pass --queue-arguments '{\"x-queue-version\": 2}'")
    name, pattern, definition = POLICY
    subprocess.run([ctl, "set_policy", name, pattern, definition, "--apply-to", "queues"],
                   check=True, capture_output=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run([ctl, "clear_policy", name], check=False, capture_output=True,
                       timeout=60)

def make_messages(n: int) -> list[tuple[str, bytes]]:
    run = uuid.uuid4().hex[:12]
    out = []
    for i in range(n):
        mid = f"{run}-{i:08d}"
        head = (
            '{"typeURI":"http://schemas.dmtf.org/cloud/audit/1.0/event","id":"' + mid + '",'
            '"eventTime":"2025-01-01T00:00:00.000000+00:00","action":"update/set",'
            '"eventType":"activity","outcome":"success",'
            '"initiator":{"typeURI":"service/security/account/user","id":"u-42",'
            '"name":"alice","domain":"example","host":{"address":"10.0.0.1"}},'
            '"target":{"typeURI":"service/resources/project","id":"p-1"},'
            '"observer":{"typeURI":"service/resources","id":"limes"},"pad":"')
        pad = BODY_SIZE - len(head) - 2
        body = (head + "x" * max(pad, 0) + '"}').encode()
        out.append((mid, body))
    return out


def _broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM (``beam.smp`` with "rabbit" on its command line)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"beam.smp" in cmd and b"rabbit" in cmd:
            return int(entry)
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` (None: this process), or None if unreadable."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _declare(url: str) -> str:
    name = f"segmentlog-bench-{uuid.uuid4().hex[:10]}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_declare(name, durable=True, arguments=dict(QUEUE_ARGUMENTS))
    conn.close()
    return name


def _delete(url: str, name: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().queue_delete(name)
    finally:
        conn.close()


def _count(ch: pika.adapters.blocking_connection.BlockingChannel, name: str) -> int:
    return int(ch.queue_declare(name, passive=True).method.message_count)


def _wait_stored(probe: pika.adapters.blocking_connection.BlockingChannel, name: str,
                 n: int) -> None:
    """Until the queue holds ``n`` messages (the end of a no-confirm run's clock)."""
    while _count(probe, name) < n:
        time.sleep(0.002)


def run_no_confirm(url: str, messages: list[tuple[str, bytes]]) -> float:
    name = _declare(url)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        start = time.perf_counter()
        for mid, body in messages:
            ch.basic_publish("", name, body, pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=mid))
        _wait_stored(conn.channel(), name, len(messages))
        elapsed = time.perf_counter() - start
        conn.close()
        return len(messages) / elapsed
    finally:
        _delete(url, name)


def run_raw(url: str, messages: list[tuple[str, bytes]], window: int | None) -> float:
    name = _declare(url)
    # Connected before the clock starts, so the no-confirm run times only the publishes.
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        probe = conn.channel()
        return raw_amqp.publish(url, name, messages, window=window,
                                done=lambda: _wait_stored(probe, name, len(messages)))
    finally:
        conn.close()
        _delete(url, name)


def run_confirm_each(url: str, messages: list[tuple[str, bytes]]) -> float:
    name = _declare(url)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.confirm_delivery()
        start = time.perf_counter()
        for mid, body in messages:
            ch.basic_publish("", name, body, pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=mid),
                mandatory=True)
        elapsed = time.perf_counter() - start
        conn.close()
        return len(messages) / elapsed
    finally:
        _delete(url, name)


def run_windowed(url: str, messages: list[tuple[str, bytes]], window: int,
                 batch: int) -> float:
    name = _declare(url)
    try:
        with Publisher(url, name, window=window, queue_arguments=QUEUE_ARGUMENTS) as pub:
            pub.connect()
            start = time.perf_counter()
            for i in range(0, len(messages), batch):
                chunk = messages[i:i + batch]
                result = pub.publish_batch(chunk)
                if not result.delivered:
                    raise SystemExit(f"window={window}: batch at {i} not fully confirmed "
                                     f"({result.confirmed_prefix}/{len(chunk)})")
            elapsed = time.perf_counter() - start
        return len(messages) / elapsed
    finally:
        _delete(url, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--each-messages", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--windows", default="1,10,100,250,500,1000,2000,5000")
    ap.add_argument("--queue-arguments", type=json.loads, default={},
                    help='JSON x- arguments of every queue, e.g. \'{"x-queue-version": 2}\'')
    ap.add_argument("--queue-version-policy", action="store_true",
                    help="make every bench queue a version 2 classic queue through a broker "
                         "policy (as an operator would on RabbitMQ 3.10-3.12), cleared after; "
                         "needs rabbitmqctl")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    with queue_version_policy(args.queue_version_policy):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    QUEUE_ARGUMENTS.update(args.queue_arguments)
    windows = [int(w) for w in args.windows.split(",") if w]
    big = make_messages(args.messages)
    small = big[:args.each_messages]

    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    broker = _broker_pid()
    cpu: dict[str, tuple[float, float | None]] = {}

    def timed(label: str, fn: Callable[[], float], n: int) -> float:
        c0, b0 = _cpu_seconds(None), _cpu_seconds(broker)
        rate = fn()
        c1, b1 = _cpu_seconds(None), _cpu_seconds(broker)
        assert c0 is not None and c1 is not None
        client = (c1 - c0) / n * 1e6
        served = (b1 - b0) / n * 1e6 if b0 is not None and b1 is not None else None
        cpu[label] = (client, served)
        shown = f"{served:6.0f}" if served is not None else "     -"
        log(f"  {label:<22} {n:>8} msgs  {rate:>9.0f} msg/s   CPU/msg: client {client:4.0f} "
            f"us, broker {shown} us")
        return rate

    log(f"RabbitMQ publisher benchmark: {BODY_SIZE}-byte JSON bodies, persistent, durable "
        f"queue{' ' + json.dumps(QUEUE_ARGUMENTS) if QUEUE_ARGUMENTS else ''}, "
        f"batch={args.batch}")
    nc1 = timed("no-confirm (before)", lambda: run_no_confirm(args.url, big), len(big))
    raw_nc = timed("raw no-confirm", lambda: run_raw(args.url, big, None), len(big))
    each = timed("confirm-each", lambda: run_confirm_each(args.url, small), len(small))
    rates: dict[int, float] = {}
    for w in windows:
        msgs = big if w >= 100 else small
        rates[w] = timed(f"window={w}", lambda m=msgs, w=w: run_windowed(  # type: ignore[misc]
            args.url, m, w, args.batch), len(msgs))
    default_w = int(inspect.signature(Publisher).parameters["window"].default)
    raw_w = timed(f"raw window={default_w}", lambda: run_raw(args.url, big, default_w),
                  len(big))
    nc2 = timed("no-confirm (after)", lambda: run_no_confirm(args.url, big), len(big))
    no_confirm = (nc1 + nc2) / 2
    curve = {w: {"rate": r, "vs_no_confirm": r / no_confirm, "vs_confirm_each": r / each}
             for w, r in rates.items()}
    target_w = default_w if default_w in rates else max(rates)
    target = curve[target_w]
    ok = target["vs_no_confirm"] >= 0.8 and target["vs_confirm_each"] >= 7.0
    if args.json:
        print(json.dumps({
            "messages": len(big), "each_messages": len(small), "batch": args.batch,
            "body_bytes": BODY_SIZE, "no_confirm_rate": no_confirm,
            "no_confirm_runs": [nc1, nc2], "confirm_each_rate": each,
            "windows": curve, "target_window": target_w, "target_met": ok,
            "raw_no_confirm_rate": raw_nc, "raw_window_rate": raw_w, "raw_window": default_w,
            "cpu_us_per_message": {k: {"client": c, "broker": b} for k, (c, b) in cpu.items()},
        }, indent=2))
    else:
        print(f"\nno-confirm baseline {no_confirm:.0f} msg/s (mean of {nc1:.0f} and {nc2:.0f}); "
              f"confirm-each {each:.0f} msg/s")
        print(f"{'window':>8} {'msg/s':>9} {'x no-confirm':>13} {'x confirm-each':>15}")
        for w, c in curve.items():
            print(f"{w:>8} {c['rate']:>9.0f} {c['vs_no_confirm']:>13.2f} "
                  f"{c['vs_confirm_each']:>15.1f}")
        print(f"\nthe broker's ceiling (raw socket, frames encoded in advance): no-confirm "
              f"{raw_nc:.0f} msg/s, window={default_w} {raw_w:.0f} msg/s "
              f"({raw_w / raw_nc:.2f}x: what confirms cost the broker)")
        if target_w in rates:
            print(f"Publisher window={target_w}: {rates[target_w] / raw_nc:.2f}x the raw "
                  f"no-confirm ceiling, {rates[target_w] / raw_w:.2f}x the raw window="
                  f"{default_w} (the client's share)")
        print(f"\ntarget (window={target_w}: >= 0.8x no-confirm and >= 7x confirm-each): "
              f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
