"""Run a test's worker threads and make sure every one of them finished."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(target: Callable[[int], object], count: int, timeout: float = 60.0) -> None:
    """Start ``count`` threads running ``target(i)``; join them all; fail if any is still
    running after ``timeout`` seconds (a hang: a lost wake-up or a deadlock, not a speed
    check). Exceptions inside ``target`` are the caller's to collect."""
    pool = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout)
    stuck = sum(t.is_alive() for t in pool)
    assert not stuck, f"{stuck} of {count} threads still running after {timeout:g} s"
