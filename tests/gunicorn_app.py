"""A WSGI app for tests/test_gunicorn.py: one audit event per request.

The Auditor is made at import, in gunicorn's master with ``--preload`` (as services do
with a module-level auditor), so every worker gets it through fork(). Configuration from
the environment (AUDIT_*), the file store with ``write_ahead=True``: an event is stored
before the response goes out, so a 2xx means the event is kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from segmentlog.audit import Auditor
from segmentlog.cadf import Event, Observer, Resource

auditor = Auditor(Observer("service/resources", "gunicorn-test", "gunicorn-test"),
                  env_prefix="AUDIT", write_ahead=True, connect_wait=0)
USER = Resource(type_uri="service/security/account/user", id="u-1")
TARGET = Resource(type_uri="service/resources/project", id="p-1")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    event = Event.from_request(action="update/set", reason_code=200, initiator=USER,
                               target=TARGET, request_path=environ.get("PATH_INFO", "/"))
    auditor.record(event)
    body = f"{event.id} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
