"""A FastAPI API whose changes are audited with segmentlog, served by uvicorn.

From the checkout's root, with RabbitMQ on localhost (README, "Web services"):

    export EXAMPLE_AUDIT_QUEUE_NAME=example-audit
    export EXAMPLE_AUDIT_BACKING_STORE='{"type":"file","params":{"directory":"/tmp/example-audit"}}'
    uvicorn --workers 2 --app-dir examples fastapi_app:app

uvicorn starts each worker with ``spawn``: every worker imports this module and builds
its own Auditor from the same ``EXAMPLE_AUDIT_*`` variables; with a file store, each one
writes a log of its own inside the one directory (``<directory>/logs/<name>/``).
``write_ahead=True``: an event is stored before its response's body goes out. The
middleware records with ``await auditor.arecord(...)``, which never blocks the event
loop, and the app's lifespan closes the Auditor with ``await auditor.aclose()`` when
the worker shuts down (delivering what is left, or leaving it in its log for another
process).

The routes are those of ``flask_app.py``: ``GET /healthz`` and ``GET
/v1/servers/{id}`` (not audited: safe methods), ``POST /v1/servers``, ``PUT`` and
``DELETE /v1/servers/{id}`` (audited, with the user keystonemiddleware put into the
request headers), and ``PUT /v1/servers/{id}/heartbeat`` (excluded: agents call it
every few seconds). The handlers keep no state: the audit trail is the point.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from segmentlog.audit import Auditor
from segmentlog.cadf import Observer, Resource
from segmentlog.web import ASGIAuditMiddleware

# The observer names this service in every event; its id is the service's, not the
# process's (every worker reports as the same service).
auditor = Auditor(Observer("service/compute", "example-fastapi",
                           "0b7d5f3c-8e44-4c1a-b1de-6a0f3c9e2d17"),
                  env_prefix="EXAMPLE_AUDIT", write_ahead=True)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await auditor.aclose()  # in a worker thread: the loop goes on serving meanwhile


app = FastAPI(lifespan=lifespan)

SERVER_PATH = re.compile(r"/v1/servers/(?P<id>[^/]+)")


def target(scope: Mapping[str, Any]) -> Resource:
    """What a request acts on: one server, or the project's collection of servers."""
    project = next((value.decode("latin-1") for name, value in scope["headers"]
                    if name == b"x-project-id"), None)
    found = SERVER_PATH.match(scope["path"])
    if found:
        return Resource(type_uri="compute/server", id=found["id"], project_id=project)
    return Resource(type_uri="compute/servers", id=project or "unknown")


# Behind keystonemiddleware, which sets X-User-Id, X-User-Name, X-Project-Id... from the
# validated token (and removes what clients sent): the middleware's default initiator.
app.add_middleware(ASGIAuditMiddleware, auditor=auditor,
                   exclude=[r"/healthz", r"/v1/servers/[^/]+/heartbeat"], target=target)


class ServerBody(BaseModel):
    name: str = Field(min_length=1)


@app.get("/healthz")
async def healthz() -> str:
    return "ok"


@app.get("/v1/servers/{server_id}")
async def show_server(server_id: str) -> dict[str, Any]:
    return {"server": {"id": server_id}}


@app.post("/v1/servers", status_code=201)
async def create_server(body: ServerBody) -> dict[str, Any]:
    return {"server": {"id": str(uuid.uuid4()), "name": body.name}}


@app.put("/v1/servers/{server_id}")
async def update_server(server_id: str, body: ServerBody) -> dict[str, Any]:
    return {"server": {"id": server_id, "name": body.name}}


@app.delete("/v1/servers/{server_id}", status_code=204)
async def delete_server(server_id: str) -> Response:
    return Response(status_code=204)


@app.put("/v1/servers/{server_id}/heartbeat", status_code=204)
async def heartbeat(server_id: str) -> Response:
    return Response(status_code=204)
