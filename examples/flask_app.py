"""A Flask API whose changes are audited with segmentlog, served by gunicorn.

From the checkout's root, with RabbitMQ on localhost (README, "Web services"):

    export EXAMPLE_AUDIT_QUEUE_NAME=example-audit
    export EXAMPLE_AUDIT_BACKING_STORE='{"type":"file","params":{"directory":"/tmp/example-audit"}}'
    gunicorn -w 3 --chdir examples flask_app:app

Every worker imports this module and so builds its own Auditor from the same
``EXAMPLE_AUDIT_*`` variables; with a file store, each one writes a log of its own
inside the one directory (``<directory>/logs/<name>/``), and what a worker could not
deliver before it stopped is delivered by another. ``write_ahead=True``: an event is
stored before its response goes out, so a client that got an answer has its audit
event kept even if the broker is away and the worker is killed. Each worker's Auditor
closes when the worker exits (the Auditor does that at exit by itself), delivering
what is left or leaving it in its log.

The routes: ``GET /healthz`` and ``GET /v1/servers/<id>`` (not audited: safe methods),
``POST /v1/servers``, ``PUT`` and ``DELETE /v1/servers/<id>`` (audited, with the user
keystonemiddleware put into the request headers), and ``PUT
/v1/servers/<id>/heartbeat`` (a change, but excluded: agents call it every few seconds
and it changes nothing anyone audits). The handlers keep no state: the audit trail is
the point of this example.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, abort, request

from segmentlog.audit import Auditor
from segmentlog.cadf import Observer, Resource
from segmentlog.web import WSGIAuditMiddleware

app = Flask(__name__)

# The observer names this service in every event; its id is the service's, not the
# process's (every worker reports as the same service).
auditor = Auditor(Observer("service/compute", "example-flask",
                           "4f2a0c6e-2b1d-4b8e-9a55-2d1f8e0f6a01"),
                  env_prefix="EXAMPLE_AUDIT", write_ahead=True)

SERVER_PATH = re.compile(r"/v1/servers/(?P<id>[^/]+)")


def target(environ: Mapping[str, Any]) -> Resource:
    """What a request acts on: one server, or the project's collection of servers."""
    found = SERVER_PATH.match(environ.get("PATH_INFO", ""))
    if found:
        return Resource(type_uri="compute/server", id=found["id"],
                        project_id=environ.get("HTTP_X_PROJECT_ID"))
    return Resource(type_uri="compute/servers", id=environ.get("HTTP_X_PROJECT_ID") or "unknown")


# Behind keystonemiddleware, which sets X-User-Id, X-User-Name, X-Project-Id... from the
# validated token (and removes what clients sent): the middleware's default initiator.
app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, auditor,
    exclude=[r"/healthz", r"/v1/servers/[^/]+/heartbeat"],
    target=target)


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.get("/v1/servers/<server_id>")
def show_server(server_id: str) -> dict[str, Any]:
    return {"server": {"id": server_id}}


def _name() -> str:
    body = request.get_json(silent=True)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        abort(400, description='the body must be {"name": "..."}')
    return name


@app.post("/v1/servers")
def create_server() -> tuple[dict[str, Any], int]:
    return {"server": {"id": str(uuid.uuid4()), "name": _name()}}, 201


@app.put("/v1/servers/<server_id>")
def update_server(server_id: str) -> dict[str, Any]:
    return {"server": {"id": server_id, "name": _name()}}


@app.delete("/v1/servers/<server_id>")
def delete_server(server_id: str) -> tuple[str, int]:
    return "", 204


@app.put("/v1/servers/<server_id>/heartbeat")
def heartbeat(server_id: str) -> tuple[str, int]:
    return "", 204
