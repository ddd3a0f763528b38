"""Helpers for tests that start a real HTTP server (gunicorn, uvicorn) as a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, headers: Mapping[str, str] | None = None,
            body: bytes | None = None) -> int:
    """Send one request to 127.0.0.1:``port``; its status (the body is read and dropped),
    0 when nothing answered."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)
    except OSError:
        return 0


def wait_until_serving(server: subprocess.Popen[bytes], port: int, path: str,
                       output: str, timeout: float = 60.0) -> None:
    """Until ``GET path`` answers 200; fails with the server's ``output`` (a file) if the
    server exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while request(port, "GET", path) != 200:
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server did not start (exit status {server.poll()}):\n"
                                 + tail(output))
        time.sleep(0.1)


def stop(server: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM, then the exit status (SIGKILL and -9 if it has not exited in ``timeout``)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return -signal.SIGKILL


def tail(path: str, size: int = 4000) -> str:
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")[-size:]
