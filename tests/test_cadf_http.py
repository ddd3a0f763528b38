"""Events from WSGI environs and ASGI scopes (segmentlog/cadf_http.py, Rules 1-4)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from segmentlog.cadf import Attachment, Event, Host, Observer, Resource
from segmentlog.cadf_http import USER_TYPE_URI, TrustedProxies
from segmentlog.errors import ConfigError, InvalidEventError

OBSERVER = Observer("service/compute", "nova", "obs-1")
TARGET = Resource(type_uri="compute/server", id="srv-1")

SECRETS = ("tok-AUTH-secret", "tok-SUBJECT-secret", "tok-SERVICE-secret",
           "Bearer-secret-xyz", "session=cookie-secret", "sig-secret-123")

KEYSTONE = {
    "HTTP_X_IDENTITY_STATUS": "Confirmed",
    "HTTP_X_USER_ID": "u-42",
    "HTTP_X_USER_NAME": "alice",
    "HTTP_X_USER_DOMAIN_ID": "d-1",
    "HTTP_X_USER_DOMAIN_NAME": "Default",
    "HTTP_X_PROJECT_ID": "p-7",
    "HTTP_X_PROJECT_DOMAIN_ID": "d-1",
}


def environ(method: str = "POST", path: str = "/v2/servers", **extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": "temp_url_sig=sig-secret-123", "REMOTE_ADDR": "192.0.2.10",
        "HTTP_USER_AGENT": "openstacksdk/4.0",
        "HTTP_X_AUTH_TOKEN": "tok-AUTH-secret", "HTTP_X_SUBJECT_TOKEN": "tok-SUBJECT-secret",
        "HTTP_X_SERVICE_TOKEN": "tok-SERVICE-secret",
        "HTTP_AUTHORIZATION": "Bearer-secret-xyz", "HTTP_COOKIE": "session=cookie-secret",
    }
    env.update(KEYSTONE)
    env.update(extra)
    return env


def scope(method: str = "POST", path: str = "/v2/servers",
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    base = {
        "user-agent": "openstacksdk/4.0", "x-auth-token": "tok-AUTH-secret",
        "x-subject-token": "tok-SUBJECT-secret", "x-service-token": "tok-SERVICE-secret",
        "authorization": "Bearer-secret-xyz", "cookie": "session=cookie-secret",
    }
    base.update({k[5:].lower().replace("_", "-"): v for k, v in KEYSTONE.items()})
    base.update(headers or {})
    return {"type": "http", "method": method, "path": path, "root_path": "",
            "query_string": b"temp_url_sig=sig-secret-123", "client": ("192.0.2.10", 50123),
            "headers": [(k.encode(), v.encode()) for k, v in base.items()]}


def test_from_wsgi_builds_the_originals_initiator_from_keystonemiddleware_headers() -> None:
    event = Event.from_wsgi(environ(), status=202, target=TARGET)
    data = event.to_dict(OBSERVER.to_dict())
    assert data["initiator"] == {
        "typeURI": USER_TYPE_URI, "id": "u-42", "name": "alice", "domain": "Default",
        "host": {"address": "192.0.2.10", "agent": "openstacksdk/4.0"}, "project_id": "p-7"}
    assert data["action"] == "create"
    assert data["outcome"] == "success"
    assert data["reason"] == {"reasonType": "HTTP", "reasonCode": "202"}
    assert data["requestPath"] == "/v2/servers"
    assert data["target"] == {"typeURI": "compute/server", "id": "srv-1"}


def test_from_asgi_gives_the_same_event_as_from_wsgi() -> None:
    def strip(event: Event) -> dict[str, Any]:
        data = event.to_dict(OBSERVER.to_dict())
        del data["id"], data["eventTime"]
        return data

    assert (strip(Event.from_asgi(scope(), status=202, target=TARGET))
            == strip(Event.from_wsgi(environ(), status=202, target=TARGET)))


@pytest.mark.parametrize("build", [
    lambda: Event.from_wsgi(environ(), status=401, target=TARGET),
    lambda: Event.from_asgi(scope(), status=401, target=TARGET),
    lambda: Event.from_wsgi(environ(), status=200, target=lambda env: Resource(
        type_uri="t", id=env["PATH_INFO"]), initiator=lambda env: Resource(
            type_uri="u", id=env["HTTP_X_USER_ID"])),
], ids=["wsgi", "asgi", "wsgi-functions"])
def test_secrets_never_enter_an_event(build: Any) -> None:
    body = build().to_json(OBSERVER.to_dict())
    for secret in SECRETS:
        assert secret.encode() not in body
    assert b"temp_url_sig" not in body  # the query string is left out (Rule 1)


@pytest.mark.parametrize(("method", "action"), [
    ("POST", "create"), ("PUT", "update"), ("PATCH", "update"), ("DELETE", "delete"),
    ("GET", "read"), ("HEAD", "read"), ("OPTIONS", "read"), ("PROPFIND", "unknown")])
def test_action_follows_the_method(method: str, action: str) -> None:
    assert Event.from_wsgi(environ(method), status=200).action == action
    assert Event.from_asgi(scope(method), status=200).action == action


def test_action_mapping_and_fixed_action_override_the_method() -> None:
    mapping = {"POST": "update/add"}
    assert Event.from_wsgi(environ("POST"), status=200, actions=mapping).action == "update/add"
    assert Event.from_wsgi(environ("PUT"), status=200, actions=mapping).action == "unknown"
    assert Event.from_asgi(scope("POST"), status=200, action="authenticate").action == \
        "authenticate"


@pytest.mark.parametrize(("status", "outcome"), [(200, "success"), (299, "success"),
                                                 (302, "failure"), (500, "failure")])
def test_outcome_follows_the_status(status: int, outcome: str) -> None:
    assert Event.from_wsgi(environ(), status=status).outcome == outcome


def test_invalid_identity_status_gives_an_unknown_initiator_not_the_headers() -> None:
    event = Event.from_wsgi(environ(HTTP_X_IDENTITY_STATUS="Invalid"), status=401)
    assert event.initiator == Resource(type_uri=USER_TYPE_URI, id="unknown", host=Host(
        address="192.0.2.10", agent="openstacksdk/4.0"))


def test_a_request_without_user_headers_gives_an_unknown_initiator() -> None:
    env = {"REQUEST_METHOD": "DELETE", "PATH_INFO": "/x"}
    event = Event.from_wsgi(env, status=204)
    assert event.initiator == Resource(type_uri=USER_TYPE_URI, id="unknown")
    assert event.target == Resource(type_uri="unknown", id="/x")


def test_caller_initiator_gets_the_request_host_unless_it_has_one() -> None:
    plain = Resource(type_uri="service/security/account/user", id="svc")
    assert Event.from_wsgi(environ(), status=200, initiator=plain).initiator.host == Host(
        address="192.0.2.10", agent="openstacksdk/4.0")
    own = Resource(type_uri="u", id="svc", host=Host(address="10.9.9.9"))
    assert Event.from_asgi(scope(), status=200, initiator=own).initiator is own


def test_forwarded_headers_are_ignored_from_an_untrusted_peer() -> None:
    env = environ(HTTP_X_FORWARDED_FOR="203.0.113.5", HTTP_FORWARDED="for=203.0.113.6")
    assert Event.from_wsgi(env, status=200).initiator.host.address == "192.0.2.10"  # type: ignore[union-attr]
    assert Event.from_wsgi(env, status=200, trusted_proxies=["10.0.0.0/8"]) \
        .initiator.host.address == "192.0.2.10"  # type: ignore[union-attr]


@pytest.mark.parametrize(("xff", "forwarded", "client"), [
    ("203.0.113.5", None, "203.0.113.5"),
    ("198.51.100.1, 203.0.113.5, 10.0.0.3", None, "203.0.113.5"),  # spoofed left entry
    ("10.0.0.4, 10.0.0.3", None, "10.0.0.4"),  # every hop trusted: the farthest
    (None, 'for="[2001:db8::7]:4711";proto=https, for=10.0.0.3', "2001:db8::7"),
    ("203.0.113.9", "for=203.0.113.6:8080", "203.0.113.6"),  # Forwarded wins
    (None, "for=unknown, for=10.0.0.3", "10.0.0.3"),
    (None, None, "10.0.0.2"),
])
def test_forwarded_headers_from_a_trusted_proxy_name_the_client(
        xff: str | None, forwarded: str | None, client: str) -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    env = environ(REMOTE_ADDR="10.0.0.2")
    headers = {}
    if xff is not None:
        env["HTTP_X_FORWARDED_FOR"] = xff
        headers["x-forwarded-for"] = xff
    if forwarded is not None:
        env["HTTP_FORWARDED"] = forwarded
        headers["forwarded"] = forwarded
    sc = scope(headers=headers)
    sc["client"] = ("10.0.0.2", 1234)
    for event in (Event.from_wsgi(env, status=200, trusted_proxies=proxies),
                  Event.from_asgi(sc, status=200, trusted_proxies=["10.0.0.0/8"])):
        assert event.initiator.host is not None
        assert event.initiator.host.address == client


def test_paths_are_percent_encoded_and_include_the_mount_point() -> None:
    env = environ(path="/caf\xc3\xa9 x", SCRIPT_NAME="/api")  # PEP 3333: latin-1 of UTF-8
    assert Event.from_wsgi(env, status=200).request_path == "/api/caf%C3%A9%20x"
    sc = scope(path="/api/café x")
    sc["root_path"] = "/api"
    assert Event.from_asgi(sc, status=200).request_path == "/api/caf%C3%A9%20x"
    sc["path"] = "/café x"
    assert Event.from_asgi(sc, status=200).request_path == "/api/caf%C3%A9%20x"


@pytest.mark.parametrize(("build", "match"), [
    (lambda: Event.from_wsgi(environ(), status="200 OK"), "status must be an HTTP status"),
    (lambda: Event.from_wsgi(environ(), status=True), "status must be an HTTP status"),
    (lambda: Event.from_wsgi([], status=200), "environ must be a WSGI environ"),
    (lambda: Event.from_asgi(None, status=200), "scope must be an ASGI scope"),
    (lambda: Event.from_wsgi(environ(), status=200, initiator=lambda e: "alice"),
     "initiator must be a Resource"),
    (lambda: Event.from_wsgi(environ(), status=200, target=lambda e: {"id": "x"}),
     "target must be a Resource"),
], ids=["str-status", "bool-status", "environ", "scope", "initiator", "target"])
def test_bad_arguments_are_refused_naming_them(build: Any, match: str) -> None:
    with pytest.raises(InvalidEventError, match=match):
        build()


@pytest.mark.parametrize(("proxies", "match"), [
    ("10.0.0.1", "not the single string"), (["10.0.0.300"], "'10.0.0.300' is not an IP"),
    ([None], "None is not an IP")])
def test_bad_trusted_proxies_are_a_config_error(proxies: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Event.from_wsgi(environ(), status=200, trusted_proxies=proxies)


def test_event_from_a_request_serialises_and_round_trips() -> None:
    event = Event.from_asgi(scope("DELETE"), status=204, target=TARGET,
                            observer=OBSERVER.to_resource())
    assert event.constant
    assert Event.from_dict(orjson.loads(event.to_json())) == event


def test_asgi_header_names_in_upper_case_are_read_too() -> None:
    sc = scope()
    sc["headers"] = [(b"X-User-Id", b"u-9"), (b"User-Agent", b"ua"), (b"x-user-name", b"bob")]
    initiator = Event.from_asgi(sc, status=200).initiator
    assert (initiator.id, initiator.name) == ("u-9", "bob")
    assert initiator.host == Host(address="192.0.2.10", agent="ua")


def test_initiators_are_shared_per_user_and_address_and_the_cache_is_bounded() -> None:
    from segmentlog import cadf_http

    a = Event.from_wsgi(environ(), status=200).initiator
    assert Event.from_wsgi(environ(), status=201).initiator is a
    assert Event.from_wsgi(environ(REMOTE_ADDR="192.0.2.11"), status=200).initiator.host \
        == Host(address="192.0.2.11", agent="openstacksdk/4.0")
    assert Event.from_wsgi(environ(HTTP_X_PROJECT_ID="p-8"), status=200).initiator \
        .project_id == "p-8"
    for i in range(cadf_http._CACHE_MAX + 10):
        Event.from_wsgi(environ(HTTP_X_USER_ID=f"user-{i}"), status=200)
        assert len(cadf_http._INITIATORS) <= cadf_http._CACHE_MAX


def test_default_targets_are_shared_per_path_and_the_cache_is_bounded() -> None:
    from segmentlog import cadf_http

    a = Event.from_wsgi(environ(), status=200).target
    assert (a.type_uri, a.id) == ("unknown", "/v2/servers")
    assert Event.from_wsgi(environ(), status=201).target is a
    assert Event.from_wsgi(environ(PATH_INFO="/v2/flavors"), status=200).target.id \
        == "/v2/flavors"
    for i in range(cadf_http._CACHE_MAX + 10):
        assert Event.from_wsgi(environ(PATH_INFO=f"/v2/servers/{i}"), status=200) \
            .target.id == f"/v2/servers/{i}"
        assert len(cadf_http._TARGETS) <= cadf_http._CACHE_MAX
        assert len(cadf_http._WSGI_PATHS) <= cadf_http._CACHE_MAX
    # A path read again comes from the cache, encoded as the first time.
    odd = "/v2/caf\xc3\xa9 x"  # PEP 3333: the bytes of "café x" decoded as latin-1
    for _ in range(2):
        assert Event.from_wsgi(environ(PATH_INFO=odd), status=200).request_path \
            == "/v2/caf%C3%A9%20x"


@pytest.mark.parametrize("status", [200, 204, 302, 404, 503])
@pytest.mark.parametrize("extra", ["none", "attachments", "observer", "container"])
def test_a_request_event_is_the_event_the_checked_constructor_builds(
        status: int, extra: str) -> None:
    # from_wsgi/from_asgi skip the checks of what they made themselves: the event, its
    # `constant` flag and its size bound must still be those of Event(...).
    att = (Attachment(type_uri="mime:text/plain", content="note"),) if extra == "attachments" \
        else (Attachment(type_uri="mime:application/json", content={"k": [1]}),) \
        if extra == "container" else ()
    observer = OBSERVER if extra == "observer" else None
    for event in (Event.from_wsgi(environ(), status=status, attachments=list(att),
                                  observer=observer),
                  Event.from_asgi(scope(), status=status, attachments=list(att),
                                  observer=observer)):
        again = Event(action=event.action, outcome=event.outcome, reason=event.reason,
                      initiator=event.initiator, target=event.target, observer=observer,
                      request_path=event.request_path, attachments=att, id=event.id,
                      event_time=event.event_time)
        assert event == again and type(event.attachments) is tuple
        assert (event.constant, event.size_bound) == (again.constant, again.size_bound)
        assert event.constant == (extra != "container")
        assert event.outcome == ("success" if status < 300 else "failure")
        assert event.to_json(OBSERVER.to_dict()) == again.to_json(OBSERVER.to_dict())


def test_the_callers_parts_of_a_request_event_are_checked() -> None:
    with pytest.raises(InvalidEventError, match="target"):
        Event.from_wsgi(environ(), status=200, target=lambda env: "srv-1")  # type: ignore
    with pytest.raises(InvalidEventError, match="action"):
        Event.from_wsgi(environ(), status=200, action="")
    with pytest.raises(InvalidEventError, match="observer"):
        Event.from_asgi(scope(), status=200, observer="nova")  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match=r"attachments\[0\]"):
        Event.from_asgi(scope(), status=200, attachments=["x"])  # type: ignore[list-item]


def test_a_subclass_of_event_is_built_through_its_own_checks() -> None:
    class Tagged(Event):
        def __post_init__(self) -> None:
            super().__post_init__()
            if self.action == "delete":
                raise InvalidEventError("no deletes here", "action")

    assert type(Tagged.from_wsgi(environ(), status=201)) is Tagged
    with pytest.raises(InvalidEventError, match="no deletes"):
        Tagged.from_wsgi(environ(method="DELETE"), status=204)


def test_asgi_headers_in_any_case_and_as_bytearray_are_read() -> None:
    sc = scope()
    sc["headers"] = [(bytearray(b"X-User-Id"), bytearray(b"u-3")),
                     (b"x-user-name", memoryview(b"carol")), (b"Accept", b"*/*"),
                     (b"user-agent", b"a"), (b"User-Agent", b"b")]
    initiator = Event.from_asgi(sc, status=200).initiator
    assert (initiator.id, initiator.name) == ("u-3", "carol")
    assert initiator.host == Host(address="192.0.2.10", agent="a, b")
