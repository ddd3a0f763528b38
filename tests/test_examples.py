"""The examples (examples/, README "Web services"), started with the commands the README
documents, against the real broker (issue 20, part 4).

``examples/flask_app.py`` under gunicorn and ``examples/fastapi_app.py`` under uvicorn,
each with several worker processes, each worker with its own Auditor from the same
``EXAMPLE_AUDIT_*`` environment (a queue of this test's own, a file store directory in
the test's temporary directory). The requests, sent a few at a time so that several
workers serve them, are of every kind the example knows: creates, updates, deletes,
failed updates, by a project-scoped user, a domain-scoped one and an unauthenticated
client, plus the ones it does not audit (GETs, ``/healthz``, heartbeats). Then:

- the queue holds exactly one event per audited request, with the fields its request
  gave (action from the method, outcome and reason from the status the client got,
  target, initiator from keystonemiddleware's headers, the client's address and agent,
  the path without its query string), and nothing else: none for the others;
- no token reached an event;
- while it ran, every worker had a log of its own in the shared directory;
- SIGTERM stops the server with exit status 0, and no log (no undelivered backlog) is
  left in the directory.

Which worker served which request is not observable from outside and not asserted.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import childenv
import orjson
import pytest
from amqptools import consume_all, message_count
from servertools import free_port, request, stop, tail, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"

USER_TYPE = "service/security/account/user"
AGENT = "segmentlog-examples-test/1"


@dataclass(frozen=True)
class Example:
    module: str  # examples/<module>.py
    server: str  # the program of its documented command
    workers_flag: str  # the server's option for the number of worker processes
    observer: str  # the name its Observer gives


EXAMPLES_RUN = [
    Example("flask_app", "gunicorn", "-w", "example-flask"),
    Example("fastapi_app", "uvicorn", "--workers", "example-fastapi"),
]


def documented_command(example: Example) -> list[str]:
    """The README's command line that starts ``example`` (its first word the server's
    program, naming the example's module)."""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith(example.server + " "):
            words = shlex.split(line, comments=True)
            if f"{example.module}:app" in words:
                return words
    raise AssertionError(f"README.md has no command line starting {example.module} "
                         f"with {example.server}")


@pytest.mark.parametrize("example", EXAMPLES_RUN, ids=lambda e: e.module)
def test_the_readme_documents_each_example_as_its_docstring_does(example: Example) -> None:
    command = documented_command(example)
    source = (EXAMPLES / f"{example.module}.py").read_text(encoding="utf-8")
    assert shlex.join(command) in source, f"{example.module}.py's docstring runs it otherwise"
    workers = int(command[command.index(example.workers_flag) + 1])
    assert workers > 1, "the example is about several worker processes"


# ----------------------------------------------------------------- the requests
IDENTITIES: list[dict[str, str]] = [
    # a project-scoped token
    {"X-Identity-Status": "Confirmed", "X-User-Id": "u-alice", "X-User-Name": "alice",
     "X-User-Domain-Name": "Default", "X-Project-Id": "p-1"},
    # a domain-scoped token
    {"X-Identity-Status": "Confirmed", "X-User-Id": "u-bob", "X-User-Name": "bob",
     "X-User-Domain-Name": "Default", "X-Domain-Id": "d-1"},
    # an unauthenticated client (keystonemiddleware's delay_auth_decision)
    {"X-Identity-Status": "Invalid"},
]
ROUNDS = 4  # each identity sends each kind of request this often


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # with the query string, as sent
    identity: int  # index into IDENTITIES
    body: Any = None
    audited: bool = True
    refused: bool = False  # a 4xx is expected (else a 2xx)

    def send(self, port: int) -> int:
        headers = {"User-Agent": AGENT, "X-Auth-Token": f"secret-token-{self.identity}",
                   **IDENTITIES[self.identity]}
        data = None
        if self.body is not None:
            data = json.dumps(self.body).encode()
            headers["Content-Type"] = "application/json"
        return request(port, self.method, self.path, headers, data)


def calls() -> list[Call]:
    out = []
    for r in range(ROUNDS):
        for who in range(len(IDENTITIES)):
            server = f"/v1/servers/s-{r}-{who}"
            out += [
                Call("POST", "/v1/servers", who, {"name": f"vm-{r}"}),
                Call("PUT", server, who, {"name": f"vm-{r}-renamed"}),
                Call("PUT", server, who, {"nom": "no name"}, refused=True),  # still audited
                Call("DELETE", f"{server}?force=true", who),  # the query is not recorded
                Call("GET", server, who, audited=False),  # a safe method
                Call("GET", "/healthz", who, audited=False),
                Call("PUT", f"{server}/heartbeat", who, audited=False),  # excluded path
            ]
    return out


def expected_event(call: Call, status: int, observer: str) -> dict[str, Any]:
    """The fields of ``call``'s event (those that do not vary from run to run)."""
    identity = IDENTITIES[call.identity]
    project = identity.get("X-Project-Id")
    initiator: dict[str, Any] = {"typeURI": USER_TYPE,
                                 "host": {"address": "127.0.0.1", "agent": AGENT}}
    if "X-User-Id" in identity:
        initiator.update(id=identity["X-User-Id"], name=identity["X-User-Name"],
                         domain=identity["X-User-Domain-Name"])
        if project:
            initiator["project_id"] = project
        if "X-Domain-Id" in identity:
            initiator["domain_id"] = identity["X-Domain-Id"]
    else:
        initiator["id"] = "unknown"
    path = call.path.partition("?")[0]
    if path == "/v1/servers":
        target = {"typeURI": "compute/servers", "id": project or "unknown"}
    else:
        target = {"typeURI": "compute/server", "id": path.rsplit("/", 1)[1]}
        if project:
            target["project_id"] = project
    return {
        "typeURI": "http://schemas.dmtf.org/cloud/audit/1.0/event",
        "eventType": "activity",
        "action": {"POST": "create", "PUT": "update", "DELETE": "delete"}[call.method],
        "outcome": "success" if 200 <= status < 300 else "failure",
        "reason": {"reasonType": "HTTP", "reasonCode": str(status)},
        "requestPath": path,
        "initiator": initiator,
        "target": target,
        "observer": observer,
    }


def _logs(store: Path) -> list[str]:
    logs = store / "logs"
    return sorted(p.name for p in logs.iterdir()) if logs.exists() else []


def _canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


# ----------------------------------------------------------------- the test
@pytest.mark.rabbitmq
@pytest.mark.parametrize("example", EXAMPLES_RUN, ids=lambda e: e.module)
def test_example_audits_each_change_once_and_nothing_else(
        example: Example, rabbitmq_url: str, queue: str, tmp_path: Path) -> None:
    command = documented_command(example)
    workers = int(command[command.index(example.workers_flag) + 1])
    broker = urlsplit(rabbitmq_url)
    store = tmp_path / "audit"
    port = free_port()
    env = dict(
        os.environ,
        # the venv's gunicorn / uvicorn, and the segmentlog these tests import
        PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        PYTHONPATH=childenv.pythonpath(),
        EXAMPLE_AUDIT_HOSTNAME=broker.hostname or "127.0.0.1",
        EXAMPLE_AUDIT_PORT=str(broker.port or 5672),
        EXAMPLE_AUDIT_USERNAME=broker.username or "guest",
        EXAMPLE_AUDIT_PASSWORD=broker.password or "guest",
        EXAMPLE_AUDIT_QUEUE_NAME=queue,
        EXAMPLE_AUDIT_BACKING_STORE=json.dumps(
            {"type": "file", "params": {"directory": str(store)}}),
        # The port, as the README says to move them; gunicorn's control socket (gunicorn
        # 23+) in this test's directory, not shared with other gunicorns under $HOME.
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        UVICORN_HOST="127.0.0.1",
        UVICORN_PORT=str(port),
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    output = str(tmp_path / "server.log")
    with open(output, "wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until_serving(server, port, "/healthz", output)
        # Every worker built its Auditor, each on a log of its own in the one directory.
        deadline = time.monotonic() + 60
        while len(_logs(store)) < workers:
            assert server.poll() is None and time.monotonic() < deadline, (
                f"{len(_logs(store))} of {workers} workers have a log:\n" + tail(output))
            time.sleep(0.1)
        assert len(_logs(store)) == workers, _logs(store)

        todo = calls()
        with ThreadPoolExecutor(4) as pool:  # a few at a time: several workers serve
            statuses = list(pool.map(lambda call: call.send(port), todo))
        for call, status in zip(todo, statuses, strict=True):
            refused = 400 <= status < 500
            assert (refused if call.refused else 200 <= status < 300), (
                f"{call} answered {status}:\n{tail(output)}")
        audited = [(c, s) for c, s in zip(todo, statuses, strict=True) if c.audited]

        # Delivered while the server runs (not only when it stops).
        deadline = time.monotonic() + 60
        while message_count(rabbitmq_url, queue) < len(audited):
            assert time.monotonic() < deadline, (
                f"{message_count(rabbitmq_url, queue)} of {len(audited)} events arrived")
            time.sleep(0.1)
    finally:
        status = stop(server)
    log = tail(output)
    assert status == 0, f"exit status {status}:\n{log}"
    assert "Traceback" not in log, log
    assert _logs(store) == [], f"undelivered logs left in {store}"

    messages = consume_all(rabbitmq_url, queue, passive=True)
    events = [orjson.loads(body) for _, _, body in messages]
    assert [mid for mid, _, _ in messages] == [e["id"] for e in events]
    assert not any(b"secret-token" in body for _, _, body in messages)
    got = []
    for event in events:
        assert event.pop("id") and event.pop("eventTime")
        observer = event.pop("observer")
        assert observer["name"] == example.observer, observer
        got.append(_canonical({**event, "observer": observer["name"]}))
    want = [_canonical(expected_event(c, s, example.observer)) for c, s in audited]
    # Exactly these events, once each (nothing for the requests not audited).
    assert Counter(got) == Counter(want)
