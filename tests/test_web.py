"""The WSGI and ASGI audit middleware (segmentlog/web.py, Rules 1-5), with plain apps:
WSGI apps called with an environ (through wsgiref's PEP 3333 validator), ASGI apps
called directly with scripted receive/send."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from prometheus_client import CollectorRegistry

from segmentlog.audit_doubles import RecordingAuditor
from segmentlog.cadf import Resource
from segmentlog.errors import ConfigError
from segmentlog.web import ASGIAuditMiddleware, WSGIAuditMiddleware

USER_HEADERS = {"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_USER_ID": "u-42",
                "HTTP_X_USER_NAME": "alice", "HTTP_X_PROJECT_ID": "p-7",
                "HTTP_X_AUTH_TOKEN": "tok-secret"}


def failures(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value("segmentlog_web_audit_failures_total",
                                      {"middleware": name})
    assert value is not None
    return value


# ------------------------------------------------------------------ WSGI
def wsgi_env(method: str = "POST", path: str = "/v2/servers") -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                           "REMOTE_ADDR": "192.0.2.10", "HTTP_USER_AGENT": "curl/8",
                           "QUERY_STRING": "", "SCRIPT_NAME": ""}
    env.update(USER_HEADERS)
    setup_testing_defaults(env)
    return env


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status = "201 Created" if environ["REQUEST_METHOD"] == "POST" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"hello"]


def call_wsgi(app: Any, env: dict[str, Any]) -> tuple[str, bytes]:
    got: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        got.append(status)
        return io.BytesIO().write

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return got[-1], data


def test_wsgi_records_a_post_with_the_requests_fields() -> None:
    auditor = RecordingAuditor()
    app = validator(WSGIAuditMiddleware(validator(hello), auditor))
    assert call_wsgi(app, wsgi_env("POST")) == ("201 Created", b"hello")
    [event] = auditor.events
    assert event["action"] == "create"
    assert event["outcome"] == "success"
    assert event["reason"] == {"reasonType": "HTTP", "reasonCode": "201"}
    assert event["requestPath"] == "/v2/servers"
    assert event["initiator"] == {
        "typeURI": "service/security/account/user", "id": "u-42", "name": "alice",
        "project_id": "p-7", "host": {"address": "192.0.2.10", "agent": "curl/8"}}
    assert event["target"] == {"typeURI": "unknown", "id": "/v2/servers"}
    assert "tok-secret" not in str(event)


def test_wsgi_skips_safe_methods_by_default_and_records_them_when_listed() -> None:
    auditor = RecordingAuditor()
    call_wsgi(WSGIAuditMiddleware(hello, auditor), wsgi_env("GET"))
    call_wsgi(WSGIAuditMiddleware(hello, auditor), wsgi_env("HEAD"))
    assert auditor.events == []
    call_wsgi(WSGIAuditMiddleware(hello, auditor, methods=["get"]), wsgi_env("GET"))
    call_wsgi(WSGIAuditMiddleware(hello, auditor, methods=["get"]), wsgi_env("POST"))
    assert [e["action"] for e in auditor.events] == ["read"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_wsgi_records_every_non_safe_method_by_default(method: str) -> None:
    auditor = RecordingAuditor()
    call_wsgi(WSGIAuditMiddleware(hello, auditor), wsgi_env(method))
    assert len(auditor.events) == 1


def test_wsgi_include_and_exclude_patterns_select_paths() -> None:
    auditor = RecordingAuditor()
    app = WSGIAuditMiddleware(hello, auditor, include=[r"/v2/.*"], exclude=[r"/v2/health"])
    for path in ("/v2/servers", "/v2/health", "/v1/servers", "/v2/health/x"):
        call_wsgi(app, wsgi_env("POST", path))
    assert [e["requestPath"] for e in auditor.events] == ["/v2/servers", "/v2/health/x"]


def test_wsgi_target_initiator_and_actions_from_the_callers_functions() -> None:
    auditor = RecordingAuditor()
    app = WSGIAuditMiddleware(
        hello, auditor,
        target=lambda env: Resource(type_uri="compute/server", id=env["PATH_INFO"][-3:]),
        initiator=lambda env: Resource(type_uri="service/security/account/user", id="svc"),
        actions={"POST": "update/add"})
    call_wsgi(app, wsgi_env("POST", "/v2/servers/abc"))
    [event] = auditor.events
    assert event["target"] == {"typeURI": "compute/server", "id": "abc"}
    assert event["initiator"]["id"] == "svc"
    assert event["initiator"]["host"] == {"address": "192.0.2.10", "agent": "curl/8"}
    assert event["action"] == "update/add"


def test_wsgi_body_of_an_eager_app_is_handed_to_the_server_untouched() -> None:
    body = iter([b"a", b"b"])

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        return body

    auditor = RecordingAuditor()
    assert WSGIAuditMiddleware(app, auditor)(wsgi_env(), lambda *a: None) is body
    assert len(auditor.events) == 1  # recorded before a chunk was read


def test_wsgi_streamed_body_is_passed_through_lazily_and_closed() -> None:
    produced: list[int] = []
    closed: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        # called lazily: only when the body is iterated
        start_response("202 Accepted", [("Content-Type", "text/plain")])
        try:
            for i in range(1000):
                produced.append(i)
                yield b"chunk %d\n" % i
        finally:
            closed.append(True)

    auditor = RecordingAuditor()
    statuses: list[str] = []
    body = validator(WSGIAuditMiddleware(validator(app), auditor))(
        wsgi_env(), lambda status, headers, exc_info=None: statuses.append(status))
    assert auditor.events == [] and produced == []
    it = iter(body)
    assert next(it) == b"chunk 0\n"
    assert produced == [0]  # nothing read ahead
    [event] = auditor.events  # the status is known once the first chunk exists
    assert event["reason"]["reasonCode"] == "202"
    assert next(it) == b"chunk 1\n" and produced == [0, 1]
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert len(auditor.events) == 1


def test_wsgi_lazy_app_closed_before_its_first_chunk_is_recorded_once() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"x"

    auditor = RecordingAuditor()
    body = WSGIAuditMiddleware(app, auditor)(wsgi_env(), lambda *a: None)
    body.close()  # type: ignore[attr-defined]
    assert [e["reason"]["reasonCode"] for e in auditor.events] == ["500"]


def test_wsgi_app_failing_before_a_status_is_recorded_as_500_and_raises() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise KeyError("boom")

    auditor = RecordingAuditor()
    with pytest.raises(KeyError, match="boom"):
        WSGIAuditMiddleware(app, auditor)(wsgi_env("DELETE"), lambda *a: None)
    [event] = auditor.events
    assert (event["action"], event["outcome"], event["reason"]["reasonCode"]) == \
        ("delete", "failure", "500")


def test_wsgi_failing_auditor_does_not_fail_the_request(caplog: pytest.LogCaptureFixture) -> None:
    auditor = RecordingAuditor()
    auditor.close()  # record() now raises LogClosedError
    registry = CollectorRegistry()
    app = WSGIAuditMiddleware(hello, auditor, registry=registry, name="api")
    assert failures(registry, "api") == 0  # the series exists from the start
    with caplog.at_level(logging.ERROR, "segmentlog.web"):
        assert call_wsgi(app, wsgi_env()) == ("201 Created", b"hello")
    assert failures(registry, "api") == 1
    assert "was not recorded" in caplog.text and "LogClosedError" in caplog.text


def test_wsgi_failing_target_function_does_not_fail_the_request() -> None:
    def broken(env: Any) -> Resource:
        raise RuntimeError("no such server")

    registry = CollectorRegistry()
    app = WSGIAuditMiddleware(hello, RecordingAuditor(), target=broken, registry=registry)
    assert call_wsgi(app, wsgi_env()) == ("201 Created", b"hello")
    assert failures(registry, "wsgi") == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"methods": "POST"}, "not the single string"),
    ({"methods": ["POST", "GET /x"]}, "must be HTTP method names"),
    ({"include": ["("]}, "include: '\\(' is not a regular expression"),
    ({"exclude": [1]}, "exclude: 1 is not a regular expression"),
    ({"target": "server"}, "target must be a Resource or a function"),
    ({"trusted_proxies": ["proxy.local"]}, "'proxy.local' is not an IP"),
])
def test_bad_middleware_settings_are_a_config_error(kwargs: dict[str, Any], match: str) -> None:
    for cls in (WSGIAuditMiddleware, ASGIAuditMiddleware):
        with pytest.raises(ConfigError, match=match):
            cls(hello, RecordingAuditor(), **kwargs)
    with pytest.raises(ConfigError, match="auditor must be an Auditor"):
        WSGIAuditMiddleware(hello, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ASGIAuditMiddleware: app must be the ASGI application"):
        ASGIAuditMiddleware(None, RecordingAuditor())  # type: ignore[arg-type]


# ------------------------------------------------------------------ ASGI
def http_scope(method: str = "POST", path: str = "/v2/servers") -> dict[str, Any]:
    headers = [(k[5:].lower().replace("_", "-").encode(), v.encode())
               for k, v in USER_HEADERS.items()] + [(b"user-agent", b"curl/8")]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "path": path, "root_path": "", "query_string": b"",
            "client": ("192.0.2.10", 40000), "server": ("127.0.0.1", 8000),
            "headers": headers}


def run_asgi(app: Any, scope: dict[str, Any],
             incoming: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


async def asgi_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_asgi_records_a_post_with_the_requests_fields() -> None:
    auditor = RecordingAuditor()
    sent = run_asgi(ASGIAuditMiddleware(asgi_hello, auditor), http_scope())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    [event] = auditor.events
    assert (event["action"], event["outcome"], event["reason"]["reasonCode"]) == \
        ("create", "success", "201")
    assert event["initiator"]["id"] == "u-42"
    assert event["initiator"]["host"] == {"address": "192.0.2.10", "agent": "curl/8"}
    assert event["requestPath"] == "/v2/servers"
    assert "tok-secret" not in str(event)


def test_asgi_skips_safe_methods_and_excluded_paths() -> None:
    auditor = RecordingAuditor()
    app = ASGIAuditMiddleware(asgi_hello, auditor, exclude=[r"/healthcheck"])
    run_asgi(app, http_scope("GET"))
    run_asgi(app, http_scope("POST", "/healthcheck"))
    assert auditor.events == []
    run_asgi(app, http_scope("PATCH", "/healthcheck/x"))
    assert [e["action"] for e in auditor.events] == ["update"]


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_asgi_non_http_scopes_pass_through_untouched(kind: str) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    auditor = RecordingAuditor()
    scope = {"type": kind, "path": "/ws", "method": "POST"}

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(ASGIAuditMiddleware(app, auditor, methods=["GET", "POST"])(scope, receive, send))
    assert seen == [(scope, receive, send)]
    assert auditor.events == []


def test_asgi_streamed_body_flows_through_message_by_message() -> None:
    auditor = RecordingAuditor()
    chunks = [{"type": "http.response.body", "body": b"%d" % i, "more_body": True}
              for i in range(5)]
    seen_by_client: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i, chunk in enumerate(chunks):
            await send(chunk)
            assert seen_by_client == list(range(i + 1))  # handed on before the next
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Any] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("more_body"):
            seen_by_client.append(len(seen_by_client))

    asyncio.run(ASGIAuditMiddleware(app, auditor)(http_scope(), receive, send))
    assert all(a is b for a, b in zip(sent[1:6], chunks, strict=True))  # the very same messages
    assert len(sent) == 7
    assert len(auditor.events) == 1


def test_asgi_app_failing_before_a_response_is_recorded_as_500_and_raises() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    auditor = RecordingAuditor()
    with pytest.raises(ValueError, match="boom"):
        run_asgi(ASGIAuditMiddleware(app, auditor), http_scope("DELETE"))
    assert [e["reason"]["reasonCode"] for e in auditor.events] == ["500"]


def test_asgi_app_returning_without_a_response_is_recorded_as_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    auditor = RecordingAuditor()
    run_asgi(ASGIAuditMiddleware(app, auditor), http_scope())
    assert [e["outcome"] for e in auditor.events] == ["failure"]


def test_asgi_failing_auditor_does_not_fail_the_request() -> None:
    auditor = RecordingAuditor()
    auditor.close()
    registry = CollectorRegistry()
    sent = run_asgi(ASGIAuditMiddleware(asgi_hello, auditor, registry=registry), http_scope())
    assert [m.get("status") for m in sent] == [201, None]
    assert failures(registry, "asgi") == 1
