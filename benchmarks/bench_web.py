"""Audit middleware cost per request: the same app with and without it, same run.

Usage: python benchmarks/bench_web.py [--url URL] [--requests 20000] [--rounds 5] [--json]

A plain WSGI app (start_response, one-chunk body) is called with a POST environ
carrying keystonemiddleware's headers, bare and through ``WSGIAuditMiddleware``; a plain
ASGI app likewise through ``ASGIAuditMiddleware`` (receive/send are no-op coroutines,
one event loop). The auditor is a real Auditor (memory store, broker up), so the cost
includes building the event and ``record()`` / ``await arecord()``; the delivery thread
runs concurrently, as in a service. Bare and wrapped runs alternate in ``--rounds``
rounds; per request ``perf_counter_ns`` around the call. Printed: the median of each and
the difference (target: < 10 us per request), plus p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import _target  # noqa: F401  (the segmentlog to measure: Rule 1 there)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from amqptools import delete_queue  # noqa: E402

from segmentlog.audit import Auditor  # noqa: E402
from segmentlog.cadf import Observer, Resource  # noqa: E402
from segmentlog.web import ASGIAuditMiddleware, WSGIAuditMiddleware  # noqa: E402

DEFAULT_URL = os.environ.get("SEGMENTLOG_TEST_RABBITMQ_URL",
                             "amqp://guest:guest@127.0.0.1:5672/%2F")
OBSERVER = Observer("service/compute", "bench-web", "bench-web-observer-1")
TARGET = Resource(type_uri="compute/server", id="srv-1")
HEADERS = {"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_USER_ID": "u-42",
           "HTTP_X_USER_NAME": "alice", "HTTP_X_USER_DOMAIN_NAME": "Default",
           "HTTP_X_PROJECT_ID": "p-7", "HTTP_USER_AGENT": "openstacksdk/4.0",
           "HTTP_X_AUTH_TOKEN": "gAAAAAB-token"}


def environ() -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "",
                           "PATH_INFO": "/v2/servers", "QUERY_STRING": "",
                           "REMOTE_ADDR": "192.0.2.10", "SERVER_NAME": "bench",
                           "SERVER_PORT": "80"}
    env.update(HEADERS)
    return env


def scope() -> dict[str, Any]:
    headers = [(k[5:].lower().replace("_", "-").encode(), v.encode())
               for k, v in HEADERS.items()]
    return {"type": "http", "method": "POST", "path": "/v2/servers", "root_path": "",
            "query_string": b"", "client": ("192.0.2.10", 40000), "headers": headers}


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("201 Created", [("Content-Type", "application/json")])
    return [b"{}"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


def time_wsgi(app: Any, n: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        env = environ()
        t0 = clock()
        for _chunk in app(env, _start_response):
            pass
        samples.append(clock() - t0)
    return samples


async def time_asgi(app: Any, n: int) -> list[int]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        sc = scope()
        t0 = clock()
        await app(sc, receive, send)
        samples.append(clock() - t0)
    return samples


def _stats(samples: list[int]) -> dict[str, float]:
    samples = sorted(samples)
    return {"median_us": statistics.median(samples) / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    queue = f"segmentlog-bench-web-{uuid.uuid4().hex[:10]}"
    results: dict[str, Any] = {}
    try:
        with Auditor(OBSERVER, connection_url=args.url, queue_name=queue,
                     queue_size=max(50_000, args.requests)) as auditor:
            wrapped_wsgi = WSGIAuditMiddleware(wsgi_app, auditor, target=TARGET)
            wrapped_asgi = ASGIAuditMiddleware(asgi_app, auditor, target=TARGET)
            runs: dict[str, list[int]] = {k: [] for k in ("wsgi_bare", "wsgi_audited",
                                                          "asgi_bare", "asgi_audited")}
            loop = asyncio.new_event_loop()
            try:
                for _ in range(args.rounds):
                    runs["wsgi_bare"] += time_wsgi(wsgi_app, args.requests)
                    runs["wsgi_audited"] += time_wsgi(wrapped_wsgi, args.requests)
                    runs["asgi_bare"] += loop.run_until_complete(
                        time_asgi(asgi_app, args.requests))
                    runs["asgi_audited"] += loop.run_until_complete(
                        time_asgi(wrapped_asgi, args.requests))
                    assert auditor.flush(60)
            finally:
                loop.close()
        for kind in ("wsgi", "asgi"):
            bare, audited = _stats(runs[f"{kind}_bare"]), _stats(runs[f"{kind}_audited"])
            results[kind] = {"bare": bare, "audited": audited,
                             "cost_median_us": audited["median_us"] - bare["median_us"]}
    finally:
        delete_queue(args.url, queue)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for kind, r in results.items():
            print(f"{kind}: bare median {r['bare']['median_us']:.2f} us, audited median "
                  f"{r['audited']['median_us']:.2f} us (p99 {r['audited']['p99_us']:.2f}), "
                  f"middleware cost {r['cost_median_us']:.2f} us per request "
                  f"(target < 10 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
