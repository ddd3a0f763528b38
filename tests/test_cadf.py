"""The CADF model and the mapping check (no broker needed).

One test per rule of segmentlog/cadf.py: ids and times are filled (Rule 1), what is not
CADF is refused naming the field (Rule 2), serialisation is orjson once (Rule 3), and the
original's ToCADF outcome rule.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from segmentlog.cadf import (
    _MAX_DEPTH,
    CADF_EVENT_TYPE_URI,
    Address,
    Attachment,
    Event,
    Host,
    Observer,
    Reason,
    Resource,
    check_event_mapping,
    dump_event,
    new_event_id,
    now_cadf,
    outcome_for,
    parse_rfc3339,
    parse_time,
)
from segmentlog.errors import InvalidEventError, SegmentLogError

OBSERVER = Observer("service/resources", "limes", "0a1b2c3d-observer")
USER = Resource(type_uri="service/security/account/user", id="u-42", name="alice",
                domain="example", host=Host(address="10.0.0.1", agent="curl/8"))
PROJECT = Resource(type_uri="service/resources/project", id="p-1", project_id="p-1")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def _mapping(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "typeURI": CADF_EVENT_TYPE_URI,
        "id": str(uuid.uuid4()),
        "eventTime": "2025-01-31T12:34:56.123456+00:00",
        "eventType": "activity",
        "action": "update/set",
        "outcome": "success",
        "initiator": {"typeURI": "service/security/account/user", "id": "u-42"},
        "target": {"typeURI": "service/resources/project", "id": "p-1"},
        "observer": {"typeURI": "service/resources", "id": "obs"},
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP: Any = object()


# ------------------------------------------------------------------ ids and times (Rule 1)
def test_new_event_id_is_a_random_version_4_uuid() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_now_cadf_is_utc_with_microseconds_like_the_original() -> None:
    text = now_cadf()
    assert TIME_RE.match(text), text
    assert abs(datetime.fromisoformat(text) - datetime.now(timezone.utc)) < timedelta(seconds=5)


def test_model_fills_id_and_time_when_absent_and_keeps_given_ones() -> None:
    a = Event(action="read", outcome="success", initiator=USER, target=PROJECT)
    b = Event(action="read", outcome="success", initiator=USER, target=PROJECT)
    assert a.id != b.id and uuid.UUID(a.id).version == 4
    assert TIME_RE.match(a.event_time)
    c = Event(action="read", outcome="success", initiator=USER, target=PROJECT, id="my-id",
              event_time="2025-01-31T12:34:56Z")
    assert (c.id, c.event_time) == ("my-id", "2025-01-31T12:34:56Z")


def test_model_converts_an_aware_datetime_to_utc_text() -> None:
    moment = datetime(2025, 1, 31, 13, 34, 56, 500, tzinfo=timezone(timedelta(hours=1)))
    e = Event(action="read", outcome="success", initiator=USER, target=PROJECT,
              event_time=moment)  # type: ignore[arg-type]
    assert e.event_time == "2025-01-31T12:34:56.000500+00:00"


def test_mapping_check_fills_id_time_and_observer_on_a_copy() -> None:
    original = _mapping(id=_DROP, eventTime=_DROP, observer=_DROP)
    before = dict(original)
    out = check_event_mapping(original, OBSERVER.to_dict())
    assert original == before, "the caller's mapping must not be modified"
    assert uuid.UUID(out["id"]).version == 4
    assert TIME_RE.match(out["eventTime"])
    assert out["observer"] == {"typeURI": "service/resources", "name": "limes",
                               "id": "0a1b2c3d-observer"}


def test_mapping_check_returns_a_complete_dict_itself_without_copying() -> None:
    event = _mapping()
    assert check_event_mapping(event) is event


def test_mapping_check_treats_none_id_as_absent() -> None:
    out = check_event_mapping(_mapping(id=None))
    assert uuid.UUID(out["id"])


# ------------------------------------------------------------ time strings (every Python)
UTC = timezone.utc
# Known answers: the forms the Go original writes (trailing zeros of the fraction trimmed,
# 1 to 9 digits; "Z" or an offset). Python 3.10's fromisoformat refused all but 3 and 6
# digits and "Z" (issue 19: "2024-05-06T12:53:20.12+00:00" raised InvalidEventError).
TIME_VECTORS = [
    ("2024-05-06T12:53:20+00:00", datetime(2024, 5, 6, 12, 53, 20, tzinfo=UTC)),
    ("2024-05-06T12:53:20.1+00:00", datetime(2024, 5, 6, 12, 53, 20, 100000, tzinfo=UTC)),
    ("2024-05-06T12:53:20.12+00:00", datetime(2024, 5, 6, 12, 53, 20, 120000, tzinfo=UTC)),
    ("2024-05-06T12:53:20.123+00:00", datetime(2024, 5, 6, 12, 53, 20, 123000, tzinfo=UTC)),
    ("2024-05-06T12:53:20.1234+00:00", datetime(2024, 5, 6, 12, 53, 20, 123400, tzinfo=UTC)),
    ("2024-05-06T12:53:20.12345Z", datetime(2024, 5, 6, 12, 53, 20, 123450, tzinfo=UTC)),
    ("2024-05-06T12:53:20.123456Z", datetime(2024, 5, 6, 12, 53, 20, 123456, tzinfo=UTC)),
    ("2024-05-06T12:53:20.1234567Z", datetime(2024, 5, 6, 12, 53, 20, 123456, tzinfo=UTC)),
    ("2024-05-06T12:53:20.12345678Z", datetime(2024, 5, 6, 12, 53, 20, 123456, tzinfo=UTC)),
    ("2024-05-06T12:53:20.999999999Z", datetime(2024, 5, 6, 12, 53, 20, 999999, tzinfo=UTC)),
    ("2024-05-06T12:53:20Z", datetime(2024, 5, 6, 12, 53, 20, tzinfo=UTC)),
    ("2024-05-06T14:53:20.5+02:00",
     datetime(2024, 5, 6, 14, 53, 20, 500000, tzinfo=timezone(timedelta(hours=2)))),
    ("2024-05-06T07:23:20.05-05:30",
     datetime(2024, 5, 6, 7, 23, 20, 50000, tzinfo=timezone(-timedelta(hours=5, minutes=30)))),
    ("2024-05-06T12:53:20.12", datetime(2024, 5, 6, 12, 53, 20, 120000)),  # no zone: naive
]
NOT_TIMES = ["2024-05-06T12:53:20.12+24:00", "2024-13-06T12:53:20.12Z",
             "2024-05-06T12:53:20.12Z trailing", "noon", ""]
# Refused by the RFC 3339 parser; fromisoformat takes some of them on some versions
# (3.11+ reads "+01:60" as +02:00), and parse_time keeps what fromisoformat takes.
NOT_RFC3339 = ["2024-05-06T12:53:20.+00:00", "2024-05-06T12:53:20.1234567890Z",
               "2024-05-06T12:53:20.12+01:60", "2024-05-06T12:53:20,12Z"]


@pytest.mark.parametrize(("text", "expected"), TIME_VECTORS)
def test_time_strings_the_original_writes_parse_on_every_python(
        text: str, expected: datetime) -> None:
    for parse in (parse_time, parse_rfc3339):  # the second is 3.10's path, on every version
        got = parse(text)
        assert (got, got.utcoffset()) == (expected, expected.utcoffset()), parse
    if expected.tzinfo is not None:
        check_event_mapping(_mapping(eventTime=text))
        Event(action="a", outcome="success", initiator=USER, target=PROJECT,
              observer=OBSERVER, event_time=text)


@pytest.mark.parametrize("text", NOT_TIMES + NOT_RFC3339)
def test_malformed_time_strings_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)
    if text in NOT_TIMES:
        with pytest.raises(ValueError):
            parse_time(text)
        with pytest.raises(InvalidEventError) as exc:
            check_event_mapping(_mapping(eventTime=text))
        assert exc.value.field == "eventTime"


# ------------------------------------------------------------------ refusals (Rule 2)
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": 42}, "id"),
        ({"id": ""}, "id"),
        ({"id": "x" * 256}, "id"),
        ({"eventTime": "yesterday"}, "eventTime"),
        ({"eventTime": "2025-01-31T12:34:56"}, "eventTime"),
        ({"eventTime": 1700000000}, "eventTime"),
        ({"typeURI": _DROP}, "typeURI"),
        ({"eventType": 3}, "eventType"),
        ({"action": ""}, "action"),
        ({"outcome": "ok"}, "outcome"),
        ({"initiator": "alice"}, "initiator"),
        ({"initiator": {"typeURI": "user"}}, "initiator.id"),
        ({"target": {"id": "p-1"}}, "target.typeURI"),
        ({"target": {"typeURI": "t", "id": "p", "host": "h"}}, "target.host"),
        ({"observer": {"typeURI": "s", "id": 7}}, "observer.id"),
        ({"reason": "HTTP 200"}, "reason"),
        ({"reason": {"reasonType": "HTTP", "reasonCode": 200}}, "reason.reasonCode"),
        ({"attachments": {"typeURI": "x"}}, "attachments"),
        ({"attachments": [{"content": 1}]}, "attachments[0].typeURI"),
        ({"requestPath": ["/v1"]}, "requestPath"),
    ],
)
def test_mapping_check_refuses_invalid_cadf_naming_the_field(
        overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        check_event_mapping(_mapping(**overrides))
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SegmentLogError)


def test_mapping_without_observer_and_no_default_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="observer is missing"):
        check_event_mapping(_mapping(observer=_DROP))


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="CADF Event or a mapping"):
        check_event_mapping(["not", "an", "event"])  # type: ignore[arg-type]


def test_unserialisable_values_are_refused_with_invalid_event_error() -> None:
    event = _mapping(attachments=[{"typeURI": "x", "content": {1, 2}}])
    checked = check_event_mapping(event)
    with pytest.raises(InvalidEventError, match="not JSON-serialisable"):
        dump_event(checked)
    with pytest.raises(InvalidEventError, match="not JSON-serialisable"):
        dump_event(_mapping(extra={1: "non-string key"}))


_DEEP: dict[str, Any] = {}
_node = _DEEP
for _ in range(300):
    _node["k"] = {}
    _node = _node["k"]
_CYCLE: dict[str, Any] = {}
_CYCLE["self"] = _CYCLE


@pytest.mark.parametrize(
    ("extra", "field", "problem"),
    [
        # Issue 15 item 8: orjson writes NaN and infinity as null, silently...
        ({"ratio": float("nan")}, "ext.ratio", "finite number"),
        ({"list": [1.0, float("-inf")]}, "ext.list[1]", "finite number"),
        # ...and refuses the rest without saying where.
        ({"name": "caf\udce9"}, "ext.name", "lone surrogate"),
        ({"big": 2**70}, "ext.big", "64 bits"),
        ({"raw": b"bytes"}, "ext.raw", "got bytes"),
        ({"set": {1, 2}}, "ext.set", "got set"),
        ({"map": {1: "one"}}, "ext.map[1]", "string keys"),
        # The event is level 1, ext 2, "deep" 3: the first container too deep is named.
        ({"deep": _DEEP}, "ext.deep" + ".k" * (_MAX_DEPTH - 2), "levels deep"),
        ({"cycle": _CYCLE}, "ext.cycle" + ".self" * (_MAX_DEPTH - 2), "levels deep"),
    ],
)
def test_what_json_cannot_carry_is_refused_naming_the_field(
        extra: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(InvalidEventError, match=problem) as info:
        dump_event(_mapping(ext=extra))
    assert info.value.field == field, str(info.value)
    assert "not JSON-serialisable" in str(info.value)


def test_a_null_that_is_a_none_is_kept_and_a_nan_is_not_taken_for_one() -> None:
    # The walk after a "null" in the bytes only refuses floats that are not finite.
    body = dump_event(_mapping(ext={"gone": None, "text": "null"}))
    assert orjson.loads(body)["ext"] == {"gone": None, "text": "null"}


@pytest.mark.parametrize(
    ("build", "field"),
    [
        # A model is checked when built: a constant one is serialised later, off the
        # caller's thread, where an error could only be logged (issue 15 item 8).
        (lambda: Resource(type_uri="t", id="x", name="caf\udce9"), "resource.name"),
        (lambda: Host(agent="\ud800"), "host.agent"),
        (lambda: Event(action="read\udfff", outcome="success", initiator=USER,
                       target=PROJECT), "action"),
        (lambda: Event(action="a", outcome="success", initiator=USER, target=PROJECT,
                       request_path="/p/\udc80"), "requestPath"),
        (lambda: Attachment(type_uri="t", content=float("nan")), "attachments[].content"),
        (lambda: Attachment(type_uri="t", content=float("inf")), "attachments[].content"),
        (lambda: Attachment(type_uri="t", content=2**70), "attachments[].content"),
        (lambda: Attachment(type_uri="t", content="\udc80"), "attachments[].content"),
    ],
)
def test_model_refuses_what_json_cannot_carry_when_built(build: Any, field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        build()
    assert info.value.field == field, str(info.value)


def test_a_container_attachment_is_checked_when_the_event_is_serialised() -> None:
    event = Event(action="a", outcome="success", initiator=USER, target=PROJECT,
                  observer=OBSERVER, attachments=[
                      Attachment(type_uri="t", content={"ok": 1}),
                      Attachment(type_uri="t", content={"r": [float("nan")]})])
    assert not event.constant
    with pytest.raises(InvalidEventError, match="finite number") as info:
        event.to_json()
    assert info.value.field == "attachments[1].content.r[0]"


def test_size_bound_of_a_constant_event_is_at_least_its_serialised_size() -> None:
    for event in (
        Event.from_request(action="update/set", reason_code=200, initiator=USER,
                           target=PROJECT, request_path="/v1/\n\x01\u00e9\U0001f600"),
        Event(action="a" * 1000, outcome="unknown", initiator=USER, target=PROJECT,
              observer=OBSERVER, attachments=[Attachment(type_uri="t", content="\x00" * 99),
                                              Attachment(type_uri="t", content=1.5e300)]),
    ):
        assert event.constant
        own = len(event.to_json(OBSERVER.to_dict()))
        assert event.size_bound >= own - (0 if event.observer else
                                          len(orjson.dumps(OBSERVER.to_dict())) + 12)
    assert Event(action="a", outcome="success", initiator=USER, target=PROJECT, attachments=[
        Attachment(type_uri="t", content=[1])]).size_bound == -1


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Resource(type_uri="", id="x"), "resource.typeURI"),
        (lambda: Resource(type_uri="t", id=5), "resource.id"),  # type: ignore[arg-type]
        (lambda: Resource(type_uri="t", id="x", host="h"), "resource.host"),  # type: ignore[arg-type]
        (lambda: Resource(type_uri="t", id="x", addresses="u"), "resource.addresses"),  # type: ignore[arg-type]
        (lambda: Host(address=1), "host.address"),  # type: ignore[arg-type]
        (lambda: Address(url=""), "addresses[].url"),
        (lambda: Attachment(type_uri="", content=1), "attachments[].typeURI"),
        (lambda: Reason(reason_type="HTTP", reason_code=200), "reason.reasonCode"),  # type: ignore[arg-type]
        (lambda: Observer("t", "", "id"), "observer.name"),
        (lambda: Event(action="", outcome="success", initiator=USER, target=PROJECT), "action"),
        (lambda: Event(action="a", outcome="yes", initiator=USER, target=PROJECT), "outcome"),
        (lambda: Event(action="a", outcome="success", initiator={"id": 1},  # type: ignore[arg-type]
                       target=PROJECT), "initiator"),
        (lambda: Event(action="a", outcome="success", initiator=USER, target=PROJECT,
                       id="x" * 300), "id"),
        (lambda: Event(action="a", outcome="success", initiator=USER, target=PROJECT,
                       event_time="noon"), "eventTime"),
        (lambda: Event(action="a", outcome="success", initiator=USER, target=PROJECT,
                       event_time=datetime(2025, 1, 1)), "eventTime"),  # type: ignore[arg-type]
        (lambda: Event.from_request(action="a", reason_code="200",  # type: ignore[arg-type]
                                    initiator=USER, target=PROJECT), "reason_code"),
    ],
)
def test_model_refuses_wrong_types_when_built(build: Any, field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        build()
    assert info.value.field == field, str(info.value)


def test_model_without_observer_cannot_be_serialised_alone() -> None:
    e = Event(action="a", outcome="success", initiator=USER, target=PROJECT)
    with pytest.raises(InvalidEventError, match="observer is missing"):
        e.to_json()
    assert orjson.loads(e.to_json(OBSERVER.to_dict()))["observer"]["name"] == "limes"


# ------------------------------------------------------------------ ToCADF and serialisation
@pytest.mark.parametrize(
    ("code", "outcome"),
    [(199, "failure"), (200, "success"), (201, "success"), (204, "success"),
     (299, "success"), (300, "failure"), (404, "failure"), (500, "failure"), (0, "failure")],
)
def test_outcome_follows_the_http_reason_code_like_to_cadf(code: int, outcome: str) -> None:
    assert outcome_for(code) == outcome
    e = Event.from_request(action="update", reason_code=code, initiator=USER, target=PROJECT)
    assert e.outcome == outcome
    assert e.reason == Reason(reason_type="HTTP", reason_code=str(code))


def test_from_request_serialises_to_the_originals_wire_format() -> None:
    moment = datetime(2025, 1, 31, 12, 34, 56, 123456, tzinfo=timezone.utc)
    e = Event.from_request(action="update/set", reason_code=200, initiator=USER, target=PROJECT,
                           request_path="/v1/projects/p-1?x=1", time=moment)
    data = orjson.loads(e.to_json(OBSERVER.to_dict()))
    assert data == {
        "typeURI": "http://schemas.dmtf.org/cloud/audit/1.0/event",
        "id": e.id,
        "eventTime": "2025-01-31T12:34:56.123456+00:00",
        "eventType": "activity",
        "action": "update/set",
        "outcome": "success",
        "reason": {"reasonType": "HTTP", "reasonCode": "200"},
        "initiator": {"typeURI": "service/security/account/user", "name": "alice",
                      "domain": "example", "id": "u-42",
                      "host": {"address": "10.0.0.1", "agent": "curl/8"}},
        "target": {"typeURI": "service/resources/project", "id": "p-1", "project_id": "p-1"},
        "observer": {"typeURI": "service/resources", "name": "limes",
                     "id": "0a1b2c3d-observer"},
        "requestPath": "/v1/projects/p-1?x=1",
    }


def test_resource_serialises_every_optional_field_and_omits_empty_ones() -> None:
    r = Resource(type_uri="t", id="i", addresses=[Address(url="https://x", name="pub")],
                 attachments=[Attachment(type_uri="mime:application/json", content={"a": [1]},
                                         name="payload")],
                 domain_id="d", application_credential_id="ac", host=Host())
    assert r.to_dict() == {
        "typeURI": "t", "id": "i", "addresses": [{"url": "https://x", "name": "pub"}],
        "attachments": [{"name": "payload", "typeURI": "mime:application/json",
                         "content": {"a": [1]}}],
        "domain_id": "d", "application_credential_id": "ac"}
    assert isinstance(r.addresses, tuple), "lists are copied into tuples: the model is frozen"


def test_to_dict_is_a_fresh_copy_and_wire_dict_matches_it() -> None:
    e = Event(action="a", outcome="failure", initiator=USER, target=PROJECT, observer=OBSERVER)
    d = e.to_dict()
    d["initiator"]["id"] = "mallory"
    assert e.to_dict()["initiator"]["id"] == "u-42"
    assert orjson.dumps(e.wire_dict()) == e.to_json()


def test_from_dict_round_trips_the_model() -> None:
    e = Event.from_request(action="delete", reason_code=403, initiator=USER, target=PROJECT,
                           observer=OBSERVER.to_resource(), request_path="/v1/x",
                           attachments=[Attachment(type_uri="t", content=[1, "2"])])
    back = Event.from_dict(orjson.loads(e.to_json()))
    assert back == e
    assert back.to_json() == e.to_json()


def test_from_dict_refuses_a_broken_resource_naming_it() -> None:
    data = orjson.loads(Event(action="a", outcome="success", initiator=USER, target=PROJECT,
                              observer=OBSERVER).to_json())
    data["target"] = {"typeURI": "t"}
    with pytest.raises(InvalidEventError, match=r"target\.id"):
        Event.from_dict(data)


def test_unknown_extension_keys_are_kept_in_mappings() -> None:
    out = check_event_mapping(_mapping(x_custom={"k": "v"}))
    assert orjson.loads(dump_event(out))["x_custom"] == {"k": "v"}


def _with(content: object, where: str) -> Event:
    att = (Attachment(type_uri="mime:application/json", content=content),)
    user = Resource(type_uri=USER.type_uri, id=USER.id, attachments=att) if where == "initiator" \
        else USER
    target = Resource(type_uri=PROJECT.type_uri, id=PROJECT.id, attachments=att) \
        if where == "target" else PROJECT
    observer = Resource(type_uri="service/resources", id="obs", attachments=att) \
        if where == "observer" else OBSERVER
    return Event(action="read", outcome="success", initiator=user, target=target,
                 observer=observer, attachments=att if where == "event" else ())


@pytest.mark.parametrize("where", ["event", "initiator", "target", "observer"])
def test_an_event_is_constant_unless_an_attachment_holds_a_container(where: str) -> None:
    # Rule 3: a constant event may be serialised later (by the Auditor's delivery
    # thread); one with a container the caller could change must be serialised at once.
    for content in ("text", 7, 2.5, True, None):
        assert _with(content, where).constant
    for content in ({"k": 1}, [1, 2], bytearray(b"x")):
        assert not _with(content, where).constant
    assert Event.from_request(action="read", reason_code=200, initiator=USER,
                              target=PROJECT).constant
    assert Event(action="read", outcome="success", initiator=USER, target=PROJECT,
                 observer=OBSERVER).constant


def test_constant_is_not_an_argument_and_not_compared() -> None:
    with pytest.raises(TypeError):
        Event(action="read", outcome="success", initiator=USER, target=PROJECT,
              constant=False)  # type: ignore[call-arg]
    plain = _with("x", "event")
    again = dataclasses.replace(plain)  # built anew from the init fields: flag recomputed
    assert again == plain and again.constant
    assert not dataclasses.replace(plain, attachments=(
        Attachment(type_uri="mime:application/json", content={"k": 1}),)).constant
    assert "constant" not in repr(plain)


def test_attachments_given_as_a_list_are_checked_and_kept_as_a_tuple() -> None:
    att = Attachment(type_uri="mime:text/plain", content="x")
    event = Event(action="read", outcome="success", initiator=USER, target=PROJECT,
                  attachments=[att])
    assert event.attachments == (att,) and event.constant
    assert event.size_bound >= len(event.to_json(OBSERVER.to_dict()))
    with pytest.raises(InvalidEventError, match=r"attachments\[1\]"):
        Event(action="read", outcome="success", initiator=USER, target=PROJECT,
              attachments=(att, "not an attachment"))  # type: ignore[arg-type]
