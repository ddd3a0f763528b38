"""The CADF event model the Auditor records, and the check every recorded event passes.

Theory of operation
-------------------
CADF (DMTF DSP0262) events travel as JSON objects with camel-case keys (``typeURI``,
``eventTime``, ``requestPath``) plus the OpenStack extensions the Go original sends
(``project_id``, ``domain_id``, ``application_credential_id``). This module offers two
ways to build one, and one gate both pass:

* the model: frozen dataclasses :class:`Event`, :class:`Resource`, :class:`Host`,
  :class:`Attachment`, :class:`Reason`, :class:`Observer`, with Python names. Their
  types are checked when they are built, so recording an instance costs only its
  serialisation. :meth:`Event.from_request` is the original's ``ToCADF``: the outcome
  follows the HTTP reason code (2xx success, anything else failure).
* a plain mapping already in CADF form (``{"typeURI": ..., "initiator": {...}}``),
  checked structurally by :func:`check_event_mapping` when it is recorded.

Rule 1: an event always has an ``id`` (a random UUID when absent) and an ``eventTime``
        (now, UTC, microseconds, ``+00:00``) when it is recorded; the model fills them
        when it is built, the mapping check when it is recorded (on a copy: the
        caller's mapping is never modified).
Rule 2: what is not valid CADF raises :class:`~segmentlog.errors.InvalidEventError`
        naming the field (``target.typeURI``, ``attachments[0].content.ratio``) and
        what was expected, before anything is buffered. Keys this module does not
        know are kept as they are (CADF allows extensions), but JSON must carry them:
        no lone surrogate, NaN or infinity (orjson would write ``null``), integer
        beyond 64 bits, bytes, non-string key or nesting deeper than orjson's limit.
        A model checks its strings and plain attachment contents when built (so a
        constant one always serialises); containers are checked when serialised.
Rule 3: serialisation is orjson, once, and an event mutated by the caller after
        ``record()`` is delivered as it was recorded: a mapping, or a model whose
        attachments hold containers, is serialised inside ``record()``; a model that
        cannot change (:attr:`Event.constant`: frozen fields, attachments of plain
        values only) may be serialised later, by the Auditor's delivery thread, to
        the same bytes.

This module never does I/O; it only builds, checks and serialises events.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from datetime import time as dt_time
from typing import TYPE_CHECKING, Any

import orjson

from .errors import InvalidEventError

if TYPE_CHECKING:
    from .cadf_http import TrustedProxies

__all__ = [
    "CADF_EVENT_TYPE_URI",
    "OUTCOMES",
    "Address",
    "Attachment",
    "Event",
    "Host",
    "Observer",
    "Reason",
    "Resource",
    "check_event_mapping",
    "dump_event",
    "new_event_id",
    "now_cadf",
    "outcome_for",
    "parse_time",
]

#: ``typeURI`` of every CADF event.
CADF_EVENT_TYPE_URI = "http://schemas.dmtf.org/cloud/audit/1.0/event"
#: The ``eventType`` of every event the original sends.
EVENT_TYPE = "activity"

#: The CADF outcome taxonomy.
OUTCOMES = frozenset(("success", "failure", "pending", "unknown"))

_OBSERVER = "observer"


# Random bytes for ids come from os.urandom in blocks (one system call per 256 ids).
# A forked child must not reuse its parent's unused block: it would repeat its ids.
_ID_BLOCK = 16 * 256
_id_lock = threading.Lock()
_id_pool = b""
_id_pos = 0


def _reset_id_pool() -> None:
    global _id_pool, _id_pos
    _id_pool, _id_pos = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_id_pool)


def new_event_id() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())`` at a third of the cost."""
    global _id_pool, _id_pos
    with _id_lock:
        pos = _id_pos
        if pos >= len(_id_pool):
            _id_pool, pos = os.urandom(_ID_BLOCK), 0
        h = _id_pool[pos:pos + 16].hex()
        _id_pos = pos + 16
    # Version nibble 4 and variant bits 10xx (RFC 4122), set on the hex text.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_now_cache: tuple[int, str] = (-1, "")


def now_cadf() -> str:
    """Now, in the original's CADF time format: ``2025-01-31T12:34:56.123456+00:00``."""
    global _now_cache
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    cached_sec, prefix = _now_cache  # one tuple: threads see a consistent pair
    if sec != cached_sec:
        prefix = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _now_cache = (sec, prefix)
    return f"{prefix}.{ns // 1000:06d}+00:00"


def format_time(moment: datetime) -> str:
    """``moment`` in UTC, CADF format; a naive datetime is refused (its zone is unknown)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidEventError(
            "eventTime: a naive datetime has no time zone; pass an aware one, e.g. "
            "datetime.now(timezone.utc)", "eventTime")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


# RFC 3339 date-time, the form the Go original writes: Go trims trailing zeros of the
# fraction ("12:53:20.12+00:00") and RFC3339Nano writes up to 9 digits and "Z", which
# Python 3.10's fromisoformat refuses (it takes 3 or 6 digits, and no "Z").
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d\d):(\d\d))?")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time string as a datetime (aware when it names a zone); ValueError if
    it is not one.

    On every version the RFC 3339 forms the original writes: fractions of 1 to 9 digits
    (beyond microseconds truncated, as fromisoformat does from 3.11), ``Z`` or ``z``,
    ``+HH:MM``/``-HH:MM``; and whatever ``datetime.fromisoformat`` takes on this Python
    (from 3.11 more ISO 8601 forms, and some lenient readings such as ``+01:60``).
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return parse_rfc3339(text)


def parse_rfc3339(text: str) -> datetime:
    """The RFC 3339 forms of :func:`parse_time`, without fromisoformat (tested apart, so
    the path Python 3.10 takes is tested on every version)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micro = int((m[7] or "").ljust(6, "0")[:6])
    zone: timezone | None = None
    if m[8]:
        zone = timezone.utc
    elif m[9]:
        zone_hours, zone_minutes = int(m[10]), int(m[11])
        if zone_hours > 23 or zone_minutes > 59:
            raise ValueError(f"not an RFC 3339 time (offset out of range): {text!r}")
        offset = timedelta(hours=zone_hours, minutes=zone_minutes)
        zone = timezone(-offset if m[9] == "-" else offset)
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)


def outcome_for(reason_code: int) -> str:
    """The original's rule: an HTTP status 200-299 is ``success``, anything else ``failure``."""
    return "success" if 200 <= reason_code < 300 else "failure"


# ------------------------------------------------------------------ type checks
def _fail(name: str, expected: str, value: object) -> InvalidEventError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InvalidEventError(
        f"invalid CADF event: {name} must be {expected}, got {type(value).__name__} {shown}",
        name)


def _req_str(value: object, name: str) -> None:
    if type(value) is not str or not value:
        raise _fail(name, "a non-empty string", value)
    if not value.isascii():
        _check_text(value, name)


def _check_text(value: str, name: str) -> None:
    """Refuse a string that is not valid Unicode text (a lone surrogate, e.g. from
    ``surrogateescape``): JSON cannot carry it, and a model is checked when built."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEventError(
            f"invalid CADF event: {name} must be valid Unicode text, got a lone surrogate "
            f"{value[exc.start]!r} at index {exc.start}; decode bytes with errors='replace' "
            "or send them base64-encoded", name) from None


def _check_id(value: object, name: str = "id") -> None:
    # The id becomes the AMQP message_id (consumers dedupe by it): a short string.
    if type(value) is not str or not value:
        raise _fail(name, "a non-empty string of at most 255 bytes (a UUID)", value)
    if not value.isascii():
        _check_text(value, name)
    if len(value) > 63 and len(value.encode()) > 255:
        raise _fail(name, "a non-empty string of at most 255 bytes (a UUID)", value)


def _opt_str(value: object, name: str) -> None:
    if value is not None:
        if type(value) is not str:
            raise _fail(name, "a string (or omitted)", value)
        if not value.isascii():
            _check_text(value, name)


def _check_parts(action: object, target: object, observer: object,
                 attachments: object) -> tuple[Attachment, ...]:
    """The caller's parts of an event checked; its attachments as a tuple."""
    _req_str(action, "action")
    if not isinstance(target, Resource):
        raise _fail("target", "a Resource", target)
    if observer is not None and not isinstance(observer, (Resource, Observer)):
        raise _fail("observer", "a Resource or an Observer (or omitted)", observer)
    if type(attachments) is tuple and not attachments:  # the usual case: none
        return attachments
    return _tuple_of(attachments, Attachment, "attachments")


def _tuple_of(value: object, kind: type, name: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(name, f"a sequence of {kind.__name__}", value)
    items = tuple(value)
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise _fail(f"{name}[{i}]", f"a {kind.__name__}", item)
    return items


#: An event's keys, quotes, separators and outcome: more than they take in its JSON.
_EVENT_FRAME = 256

#: Attachment contents that cannot change after the event is built.
_IMMUTABLE_CONTENT = frozenset((str, int, float, bool, type(None)))


def _constant_attachments(attachments: Sequence[Attachment]) -> bool:
    """Whether every attachment's content is a str, number, bool or None (no container
    the caller could change)."""
    return all(type(a.content) in _IMMUTABLE_CONTENT for a in attachments)


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value:
        out[key] = value


# ------------------------------------------------------------------ the model
@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """``host`` of a resource; every field optional."""

    id: str | None = None
    address: str | None = None
    agent: str | None = None
    platform: str | None = None

    def __post_init__(self) -> None:
        _opt_str(self.id, "host.id")
        _opt_str(self.address, "host.address")
        _opt_str(self.agent, "host.agent")
        _opt_str(self.platform, "host.platform")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "id", self.id)
        _put(out, "address", self.address)
        _put(out, "agent", self.agent)
        _put(out, "platform", self.platform)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """One entry of a resource's ``addresses``."""

    url: str
    name: str | None = None

    def __post_init__(self) -> None:
        _req_str(self.url, "addresses[].url")
        _opt_str(self.name, "addresses[].name")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        _put(out, "name", self.name)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """A self-describing extension: ``typeURI`` plus any JSON ``content``."""

    type_uri: str
    content: Any
    name: str | None = None
    #: Bytes of the serialised attachment, or -1 when its content is a container
    #: (serialised, and checked, when an event holding it is recorded).
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _req_str(self.type_uri, "attachments[].typeURI")
        _opt_str(self.name, "attachments[].name")
        size = -1
        if type(self.content) in _IMMUTABLE_CONTENT:
            # Plain content never changes: checked now, so an event holding it is
            # constant and may be serialised later, off the caller's thread (Rule 3).
            bad = _find_unencodable(self.content, "attachments[].content", 1)
            if bad is not None:
                raise _unencodable_error(*bad)
            size = len(orjson.dumps(self.to_dict()))
        object.__setattr__(self, "size", size)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "name", self.name)
        out["typeURI"] = self.type_uri
        out["content"] = self.content
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """A CADF resource (initiator, target or observer): ``typeURI`` and ``id`` required."""

    type_uri: str
    id: str
    name: str | None = None
    domain: str | None = None
    addresses: Sequence[Address] = ()
    host: Host | None = None
    attachments: Sequence[Attachment] = ()
    project_id: str | None = None
    domain_id: str | None = None
    application_credential_id: str | None = None
    _wire: dict[str, Any] = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _req_str(self.type_uri, "resource.typeURI")
        _req_str(self.id, "resource.id")
        _opt_str(self.name, "resource.name")
        _opt_str(self.domain, "resource.domain")
        if self.host is not None and not isinstance(self.host, Host):
            raise _fail("resource.host", "a Host", self.host)
        # Stored as tuples: a frozen model must not share a list the caller mutates.
        object.__setattr__(self, "addresses",
                           _tuple_of(self.addresses, Address, "resource.addresses"))
        object.__setattr__(self, "attachments",
                           _tuple_of(self.attachments, Attachment, "resource.attachments"))
        _opt_str(self.project_id, "resource.project_id")
        _opt_str(self.domain_id, "resource.domain_id")
        _opt_str(self.application_credential_id, "resource.application_credential_id")
        # Built once: a resource is immutable and often shared by many events (the
        # observer, a service's own targets), and this halves the cost of record().
        wire = self.to_dict()
        object.__setattr__(self, "_wire", wire)
        # Its serialised size, for the size check of a constant event (-1: an
        # attachment holds a container, so the event is serialised inside record()).
        object.__setattr__(self, "_size", len(orjson.dumps(wire))
                           if _constant_attachments(self.attachments) else -1)

    def to_dict(self) -> dict[str, Any]:
        """The CADF mapping (fresh dicts, safe to modify)."""
        out: dict[str, Any] = {"typeURI": self.type_uri}
        _put(out, "name", self.name)
        _put(out, "domain", self.domain)
        out["id"] = self.id
        if self.addresses:
            out["addresses"] = [a.to_dict() for a in self.addresses]
        if self.host is not None:
            host = self.host.to_dict()
            _put(out, "host", host)
        if self.attachments:
            out["attachments"] = [a.to_dict() for a in self.attachments]
        _put(out, "project_id", self.project_id)
        _put(out, "domain_id", self.domain_id)
        _put(out, "application_credential_id", self.application_credential_id)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "resource") -> Resource:
        """Parse a CADF resource mapping (unknown keys are ignored)."""
        if not isinstance(data, Mapping):
            raise _fail(name, "a JSON object", data)
        try:
            host = data.get("host")
            return cls(
                type_uri=data.get("typeURI"),  # type: ignore[arg-type]
                id=data.get("id"),  # type: ignore[arg-type]
                name=data.get("name"),
                domain=data.get("domain"),
                addresses=tuple(Address(url=a.get("url"), name=a.get("name"))
                                for a in data.get("addresses") or ()),
                host=Host(**{k: host.get(k) for k in ("id", "address", "agent", "platform")})
                if isinstance(host, Mapping) else None,
                attachments=tuple(_attachment_from(a, f"{name}.attachments")
                                  for a in data.get("attachments") or ()),
                project_id=data.get("project_id"),
                domain_id=data.get("domain_id"),
                application_credential_id=data.get("application_credential_id"),
            )
        except AttributeError as exc:
            raise InvalidEventError(f"invalid CADF event: {name}: {exc}", name) from None
        except InvalidEventError as exc:
            raise InvalidEventError(str(exc).replace("resource.", f"{name}.", 1),
                                    name) from None


def _attachment_from(data: Any, name: str) -> Attachment:
    if not isinstance(data, Mapping):
        raise _fail(f"{name}[]", "a JSON object", data)
    return Attachment(type_uri=data.get("typeURI"), content=data.get("content"),  # type: ignore[arg-type]
                      name=data.get("name"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    """Why the outcome is what it is; the original sends ``HTTP`` and the status code."""

    reason_type: str
    reason_code: str
    _wire: dict[str, Any] = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _req_str(self.reason_type, "reason.reasonType")
        _req_str(self.reason_code, "reason.reasonCode")
        object.__setattr__(self, "_wire", self.to_dict())
        # A bound, not a serialisation: a reason is built with every from_request event.
        object.__setattr__(self, "_size",
                           6 * (len(self.reason_type) + len(self.reason_code)) + 40)

    def to_dict(self) -> dict[str, Any]:
        return {"reasonType": self.reason_type, "reasonCode": self.reason_code}


@dataclass(frozen=True, slots=True)
class Observer:
    """The process that records events (the original's ``Observer``): all three required."""

    type_uri: str
    name: str
    id: str
    _dict: dict[str, Any] = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _req_str(self.type_uri, "observer.typeURI")
        _req_str(self.name, "observer.name")
        _req_str(self.id, "observer.id")
        object.__setattr__(self, "_dict",
                           {"typeURI": self.type_uri, "name": self.name, "id": self.id})
        object.__setattr__(self, "_size", len(orjson.dumps(self._dict)))

    def to_dict(self) -> dict[str, Any]:
        """The observer as a CADF resource (a fresh dict each call)."""
        return dict(self._dict)

    def to_resource(self) -> Resource:
        return Resource(type_uri=self.type_uri, id=self.id, name=self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One CADF event. ``id`` and ``event_time`` are filled when omitted (Rule 1).

    ``observer`` may be left out: the Auditor fills in its own, as the original does.
    ``event_time`` takes CADF text or an aware ``datetime``.
    """

    action: str
    outcome: str
    initiator: Resource
    target: Resource
    observer: Resource | Observer | None = None
    reason: Reason | None = None
    attachments: Sequence[Attachment] = ()
    request_path: str | None = None
    id: str = ""
    event_time: str = ""
    event_type: str = EVENT_TYPE
    type_uri: str = CADF_EVENT_TYPE_URI
    #: True when nothing reachable from the event can change after it is built (Rule 3):
    #: every field is checked and frozen, and no attachment (of the event or of its
    #: resources) holds a container. The Auditor may then serialise it on its delivery
    #: thread instead of inside ``record()``: the bytes are the same either way. (Only
    #: for ``Event`` itself: a subclass may carry state this flag cannot see.)
    constant: bool = field(init=False, repr=False, compare=False)
    #: For a constant event: at least the bytes it serialises to, excluding the observer
    #: when it has none of its own (the Auditor adds its own observer's). A cheap bound,
    #: so ``record()`` refuses an event too large for its store or broker without
    #: serialising it. -1 for an event that is not constant (serialised in the call).
    size_bound: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise _fail("outcome", f"one of {', '.join(sorted(OUTCOMES))}", self.outcome)
        if not isinstance(self.initiator, Resource):
            raise _fail("initiator", "a Resource", self.initiator)
        if self.reason is not None and not isinstance(self.reason, Reason):
            raise _fail("reason", "a Reason (or omitted)", self.reason)
        attachments = _check_parts(self.action, self.target, self.observer, self.attachments)
        if attachments is not self.attachments:
            object.__setattr__(self, "attachments", attachments)
        _opt_str(self.request_path, "requestPath")
        if not self.id:
            object.__setattr__(self, "id", new_event_id())
        else:
            _check_id(self.id)
        moment: object = self.event_time
        if isinstance(moment, datetime):
            object.__setattr__(self, "event_time", format_time(moment))
        elif not moment:
            object.__setattr__(self, "event_time", now_cadf())
        else:
            _check_time(moment, "eventTime")
        _req_str(self.event_type, "eventType")
        _req_str(self.type_uri, "typeURI")
        self._seal()

    def _seal(self) -> None:
        """Set ``constant`` and ``size_bound`` from the checked fields."""
        initiator, target, observer = self.initiator, self.target, self.observer
        attachments = self.attachments
        # A resource's _size is -1 when one of its attachments holds a container.
        constant = (initiator._size >= 0 and target._size >= 0
                    and (not isinstance(observer, Resource) or observer._size >= 0)
                    and (not attachments or _constant_attachments(attachments)))
        object.__setattr__(self, "constant", constant)
        bound = -1
        if constant:
            # The event's own strings at 6 bytes a character (orjson's worst case: a
            # control character becomes \u00XX), its keys and punctuation, and the
            # exact sizes its parts took when they were built.
            bound = (6 * (len(self.action) + len(self.id) + len(self.event_time)
                          + len(self.event_type) + len(self.type_uri)
                          + len(self.request_path or ""))
                     + _EVENT_FRAME + initiator._size + target._size
                     + (self.reason._size if self.reason is not None else 0)
                     + (observer._size if observer is not None else 0)
                     + (sum(a.size + 1 for a in attachments) if attachments else 0))
        object.__setattr__(self, "size_bound", bound)

    @classmethod
    def _of_request(cls, action: str, status: int, initiator: Resource, target: Resource,
                    observer: Resource | Observer | None, request_path: str | None,
                    attachments: Sequence[Attachment]) -> Event:
        """``cls(...)`` of an HTTP request answered with ``status``, with a new id and
        the time now: the same event, checked the same way, but what this module made
        itself (outcome, reason, id, time, type) is not checked again (``initiator``
        is a Resource and ``request_path`` a string: the caller made sure)."""
        reason = _http.reason_for(status)
        if cls is not Event:  # a subclass may check more in its own __post_init__
            return cls(action=action, outcome=outcome_for(status), reason=reason,
                       initiator=initiator, target=target, observer=observer,
                       request_path=request_path, attachments=attachments)
        attachments = _check_parts(action, target, observer, attachments)
        event = object.__new__(cls)
        put = object.__setattr__
        put(event, "action", action)
        put(event, "outcome", "success" if 200 <= status < 300 else "failure")
        put(event, "initiator", initiator)
        put(event, "target", target)
        put(event, "observer", observer)
        put(event, "reason", reason)
        put(event, "attachments", attachments)
        put(event, "request_path", request_path)
        put(event, "id", new_event_id())
        put(event, "event_time", now_cadf())
        put(event, "event_type", EVENT_TYPE)
        put(event, "type_uri", CADF_EVENT_TYPE_URI)
        event._seal()
        return event

    @classmethod
    def from_request(
        cls,
        *,
        action: str,
        reason_code: int,
        initiator: Resource,
        target: Resource,
        request_path: str | None = None,
        time: datetime | None = None,
        observer: Resource | Observer | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> Event:
        """The original's ``Event.ToCADF``: outcome and ``reason`` from the HTTP status."""
        if isinstance(reason_code, bool) or not isinstance(reason_code, int):
            raise _fail("reason_code", "an HTTP status code (int)", reason_code)
        return cls(
            action=action,
            outcome=outcome_for(reason_code),
            reason=Reason(reason_type="HTTP", reason_code=str(reason_code)),
            initiator=initiator,
            target=target,
            observer=observer,
            request_path=request_path,
            attachments=attachments,
            event_time=format_time(time) if time is not None else "",
        )

    @classmethod
    def from_wsgi(
        cls,
        environ: Mapping[str, Any],
        *,
        status: int,
        target: Resource | Callable[[Mapping[str, Any]], Resource] | None = None,
        initiator: Resource | Callable[[Mapping[str, Any]], Resource] | None = None,
        action: str | None = None,
        actions: Mapping[str, str] | None = None,
        trusted_proxies: TrustedProxies | Iterable[str] | None = None,
        observer: Resource | Observer | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> Event:
        """The event of one WSGI request, answered with HTTP ``status`` (see
        segmentlog.cadf_http for the rules).

        ``initiator``: a Resource, or a function of the environ returning one; by
        default the user keystonemiddleware put into the request. The request's host
        (address, user agent) is added to it unless it has a host. ``target``: a
        Resource or a function of the environ; by default ``typeURI`` ``unknown`` with
        the request path as id. ``action``: fixed, else ``actions[method]`` (default
        :data:`~segmentlog.cadf_http.DEFAULT_ACTIONS`). ``trusted_proxies``: addresses
        or networks whose ``Forwarded`` / ``X-Forwarded-For`` are believed.
        """
        if not isinstance(environ, Mapping):
            raise _fail("environ", "a WSGI environ (mapping)", environ)
        get = environ.get
        path = _http.wsgi_path(environ)
        address = _http.as_trusted_proxies(trusted_proxies).client(
            get("REMOTE_ADDR") or None, get("HTTP_FORWARDED"), get("HTTP_X_FORWARDED_FOR"))
        return cls._from_http(environ, get, get("REQUEST_METHOD") or "", path, address,
                              status, target, initiator, action, actions, observer,
                              attachments)

    @classmethod
    def from_asgi(
        cls,
        scope: Mapping[str, Any],
        *,
        status: int,
        target: Resource | Callable[[Mapping[str, Any]], Resource] | None = None,
        initiator: Resource | Callable[[Mapping[str, Any]], Resource] | None = None,
        action: str | None = None,
        actions: Mapping[str, str] | None = None,
        trusted_proxies: TrustedProxies | Iterable[str] | None = None,
        observer: Resource | Observer | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> Event:
        """The event of one ASGI HTTP request (``scope["type"] == "http"``), answered
        with ``status``; the arguments are those of :meth:`from_wsgi`, and functions
        given as ``initiator`` or ``target`` receive the scope."""
        if not isinstance(scope, Mapping):
            raise _fail("scope", "an ASGI scope (mapping)", scope)
        headers = _http.asgi_headers(scope)
        get = headers.get
        client = scope.get("client")
        peer = str(client[0]) if client else None
        address = _http.as_trusted_proxies(trusted_proxies).client(
            peer, get("HTTP_FORWARDED"), get("HTTP_X_FORWARDED_FOR"))
        return cls._from_http(scope, get, scope.get("method") or "", _http.asgi_path(scope),
                              address, status, target, initiator, action, actions,
                              observer, attachments)

    @classmethod
    def _from_http(
        cls,
        request: Mapping[str, Any],
        get: Callable[[str], Any],
        method: str,
        path: str,
        address: str | None,
        status: int,
        target: Resource | Callable[[Mapping[str, Any]], Resource] | None,
        initiator: Resource | Callable[[Mapping[str, Any]], Resource] | None,
        action: str | None,
        actions: Mapping[str, str] | None,
        observer: Resource | Observer | None,
        attachments: Sequence[Attachment],
    ) -> Event:
        if isinstance(status, bool) or not isinstance(status, int):
            raise _fail("status", "an HTTP status code (int)", status)
        agent = get("HTTP_USER_AGENT") or None
        if initiator is None:
            who = _http.initiator_from(get, address, agent)
        else:
            given = initiator(request) if callable(initiator) else initiator
            if not isinstance(given, Resource):
                raise _fail("initiator", "a Resource (or a function returning one)", given)
            who = _http.with_host(given, address, agent)
        if target is None:
            what = _http.target_for(path)
        else:
            what = target(request) if callable(target) else target
        return cls._of_request(_http.action_for(method, action, actions), status, who, what,
                               observer, path, attachments)

    def to_dict(self, observer: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The CADF mapping (fresh dicts, safe to modify); ``observer`` is used when the
        event has none of its own."""
        result: dict[str, Any] = orjson.loads(self.to_json(observer))
        return result

    def wire_dict(self, observer: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The CADF mapping for serialising: it shares nested dicts with the model (and
        with ``observer``), so it must not be modified. See :meth:`to_dict`."""
        out: dict[str, Any] = {
            "typeURI": self.type_uri,
            "id": self.id,
            "eventTime": self.event_time,
            "eventType": self.event_type,
            "action": self.action,
            "outcome": self.outcome,
        }
        if self.reason is not None:
            out["reason"] = self.reason._wire
        out["initiator"] = self.initiator._wire
        out["target"] = self.target._wire
        own = self.observer
        if own is not None:
            out[_OBSERVER] = own._wire if isinstance(own, Resource) else own._dict
        elif observer is not None:
            out[_OBSERVER] = observer
        else:
            raise InvalidEventError(
                "invalid CADF event: observer is missing; set Event.observer or record "
                "through an Auditor, which fills in its own", _OBSERVER)
        if self.attachments:
            out["attachments"] = [a.to_dict() for a in self.attachments]
        if self.request_path:
            out["requestPath"] = self.request_path
        return out

    def to_json(self, observer: Mapping[str, Any] | None = None) -> bytes:
        """The event as orjson bytes (see :meth:`to_dict`)."""
        if self.constant and type(self) is Event:
            return _dump_constant(self.wire_dict(observer))
        return dump_event(self.wire_dict(observer))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Parse a CADF mapping into the model (checked as :func:`check_event_mapping`)."""
        if not isinstance(data, Mapping):
            raise _fail("event", "a JSON object (mapping)", data)
        reason = data.get("reason")
        observer = data.get(_OBSERVER)
        try:
            return cls(
                type_uri=data.get("typeURI") or "",
                id=data.get("id") or "",
                event_time=data.get("eventTime") or "",
                event_type=data.get("eventType") or "",
                action=data.get("action"),  # type: ignore[arg-type]
                outcome=data.get("outcome"),  # type: ignore[arg-type]
                reason=Reason(reason_type=reason.get("reasonType"),  # type: ignore[arg-type]
                              reason_code=reason.get("reasonCode"))  # type: ignore[arg-type]
                if isinstance(reason, Mapping) else None,
                initiator=Resource.from_dict(data.get("initiator"), "initiator"),  # type: ignore[arg-type]
                target=Resource.from_dict(data.get("target"), "target"),  # type: ignore[arg-type]
                observer=Resource.from_dict(observer, _OBSERVER) if observer is not None else None,
                attachments=tuple(_attachment_from(a, "attachments")
                                  for a in data.get("attachments") or ()),
                request_path=data.get("requestPath"),
            )
        except TypeError as exc:
            raise InvalidEventError(f"invalid CADF event: {exc}") from None


def _check_time(value: object, name: str) -> None:
    if type(value) is not str:
        raise _fail(name, "an ISO 8601 time string with a zone", value)
    try:
        parsed = parse_time(value)
    except ValueError:
        raise _fail(name, "an ISO 8601 time with a zone, e.g. 2025-01-31T12:34:56.123456"
                    "+00:00", value) from None
    if parsed.tzinfo is None:
        raise _fail(name, "a time with a zone (e.g. +00:00 or Z)", value)


def dump_event(event: Mapping[str, Any]) -> bytes:
    """orjson bytes of an event mapping; what JSON cannot carry is InvalidEventError
    naming the field (Rule 2).

    orjson refuses most of it itself (bytes, sets, integers beyond 64 bits, non-string
    keys, lone surrogates, nesting deeper than 255 levels), without saying where: only
    then is the event walked to name the field. NaN and infinity it writes as ``null``,
    silently, so a body holding ``null`` is walked too (a few microseconds; bodies
    without ``null``, the common case, cost one substring search).
    """
    try:
        body = orjson.dumps(event if type(event) is dict else dict(event))
    except TypeError as exc:
        bad = _find_unencodable(event, "", 1)
        if bad is None:  # refused for a reason the walk does not know: say what orjson said
            raise InvalidEventError(
                f"invalid CADF event: not JSON-serialisable ({exc}); use str, int, float, "
                "bool, None, lists and dicts with string keys", None) from None
        raise _unencodable_error(*bad) from None
    if b"null" in body:
        bad = _find_unencodable(event, "", 1)
        if bad is not None:
            raise _unencodable_error(*bad)
    return body


def _orjson_depth_limit() -> int:
    """How many levels of containers orjson serialises (the event itself is level 1):
    found once, by trying, since it is orjson's constant, not JSON's."""
    value: list[Any] = []
    depth = 1
    while depth < 10_000:
        try:
            orjson.dumps(value)
        except TypeError:
            return depth - 1
        value = [value]
        depth += 1
    return depth  # pragma: no cover - no limit worth naming


def _dump_constant(event: dict[str, Any]) -> bytes:
    """:func:`dump_event` for the wire dict of a constant :class:`Event` (its strings and
    plain attachment contents were checked when it was built: no value JSON cannot carry
    is left, so the search for a ``null`` written for a NaN is skipped). Anything else
    goes through :func:`dump_event`."""
    try:
        return orjson.dumps(event)
    except TypeError:  # not constant after all (a bug): name the field as dump_event does
        return dump_event(event)


#: orjson's nesting limit: containers at most this many levels deep.
_MAX_DEPTH = _orjson_depth_limit()
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
#: Types orjson serialises natively besides the JSON ones (not walked into).
_NATIVE = (datetime, date, dt_time, uuid.UUID, enum.Enum)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _find_unencodable(value: Any, path: str, depth: int) -> tuple[str, str, Any] | None:
    """The first value under ``path`` that orjson refuses or writes as ``null`` although
    it is not None: ``(field, what is expected, the value)``; None if there is none."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                return (path or "event",
                        f"valid Unicode text (a lone surrogate at index {exc.start}; decode "
                        "bytes with errors='replace' or send them base64-encoded)", value)
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return (path or "event", "an integer of at most 64 bits (send a larger one as a "
                "string)", value)
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return (path or "event", "a finite number (JSON has no NaN or infinity; orjson "
                "would send null)", value)
    if isinstance(value, dict | list | tuple):
        if depth > _MAX_DEPTH:
            return (path or "event", f"nested at most {_MAX_DEPTH} levels deep (a cycle, "
                    "or data too deep for the serialiser)", value)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return (f"{path or 'event'}[{key!r}]", "a dict with string keys", key)
                if not key.isascii():
                    bad = _find_unencodable(key, path, depth)
                    if bad is not None:  # named escaped: the name itself must print
                        escaped = key.encode("utf-8", "backslashreplace").decode("ascii")
                        return _join(path, escaped), f"a key of {bad[1]}", key
                name = _join(path, key)
                bad = _find_unencodable(item, name, depth + 1)
                if bad is not None:
                    return bad
            return None
        for i, item in enumerate(value):
            bad = _find_unencodable(item, f"{path or 'event'}[{i}]", depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(value, _NATIVE) or dataclasses.is_dataclass(value):
        return None  # orjson writes these itself (a date as ISO text, a dataclass as an object)
    return (path or "event", "str, int, float, bool, None, a list or a dict with string "
            "keys", value)


def _unencodable_error(name: str, expected: str, value: Any) -> InvalidEventError:
    shown = name if len(name) <= 120 else f"{name[:50]}...{name[-50:]}"
    value_text = repr(value)
    if len(value_text) > 60:
        value_text = value_text[:57] + "..."
    return InvalidEventError(
        f"invalid CADF event: {shown} is not JSON-serialisable: it must be {expected}, got "
        f"{type(value).__name__} {value_text}", name)


# ------------------------------------------------------------------ mapping check
_RESOURCES = ("initiator", "target")


def _check_resource(value: object, name: str) -> None:
    if not isinstance(value, Mapping):
        raise _fail(name, "a JSON object with typeURI and id", value)
    _req_str(value.get("typeURI"), f"{name}.typeURI")
    _req_str(value.get("id"), f"{name}.id")
    host = value.get("host")
    if host is not None and not isinstance(host, Mapping):
        raise _fail(f"{name}.host", "a JSON object", host)


def _resource_ok(value: object) -> bool:
    if type(value) is not dict:
        return False
    type_uri = value.get("typeURI")
    rid = value.get("id")
    host = value.get("host")
    return (type(type_uri) is str and type(rid) is str and bool(type_uri) and bool(rid)
            and (host is None or type(host) is dict))


def _looks_valid(event: dict[str, Any]) -> bool:
    """The common case in one expression; False sends the event to the detailed check."""
    get = event.get
    action = get("action")
    event_type = get("eventType")
    type_uri = get("typeURI")
    reason = get("reason")
    path = get("requestPath")
    return (type(type_uri) is str and type(event_type) is str and type(action) is str
            and bool(type_uri) and bool(event_type) and bool(action)
            and get("outcome") in OUTCOMES
            and _resource_ok(get("initiator")) and _resource_ok(get("target"))
            and _resource_ok(get(_OBSERVER))
            and (reason is None or (type(reason) is dict
                                    and type(reason.get("reasonType", "")) is str
                                    and type(reason.get("reasonCode", "")) is str))
            and get("attachments") is None
            and (path is None or type(path) is str))


def check_event_mapping(
    event: Mapping[str, Any], observer: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Check a CADF mapping and return a dict ready to serialise (Rules 1 and 2).

    Fills ``id``, ``eventTime`` and (when given) ``observer`` if they are absent or
    ``None``, on a shallow copy; returns ``event`` itself when it is a complete dict.
    Raises :class:`InvalidEventError` naming the first bad field.
    """
    if type(event) is not dict:
        if not isinstance(event, Mapping):
            raise _fail("event", "a CADF Event or a mapping in CADF form", event)
        event = dict(event)
    get = event.get
    eid = get("id")
    etime = get("eventTime")
    if eid is None or etime is None or (observer is not None and get(_OBSERVER) is None):
        event = dict(event)
        if eid is None:
            event["id"] = new_event_id()
        else:
            _check_id(eid)
        if etime is None:
            event["eventTime"] = now_cadf()  # made here: no need to parse it back
        else:
            _check_time(etime, "eventTime")
        if observer is not None and get(_OBSERVER) is None:
            event[_OBSERVER] = observer
    else:
        _check_id(eid)
        _check_time(etime, "eventTime")
    if not _looks_valid(event):
        _check_details(event)
    return event


def _check_details(event: dict[str, Any]) -> None:
    """Find and report the first invalid field (the slow path of the check)."""
    get = event.get
    _req_str(get("typeURI"), "typeURI")
    _req_str(get("eventType"), "eventType")
    _req_str(get("action"), "action")
    outcome = get("outcome")
    if outcome not in OUTCOMES:
        raise _fail("outcome", f"one of {', '.join(sorted(OUTCOMES))}", outcome)
    for name in _RESOURCES:
        _check_resource(get(name), name)
    obs = get(_OBSERVER)
    if obs is None:
        raise InvalidEventError(
            "invalid CADF event: observer is missing; add an observer resource "
            "(typeURI, id) or record through an Auditor, which fills in its own", _OBSERVER)
    _check_resource(obs, _OBSERVER)
    reason = get("reason")
    if reason is not None:
        if not isinstance(reason, Mapping):
            raise _fail("reason", "a JSON object with reasonType and reasonCode", reason)
        _opt_str(reason.get("reasonType"), "reason.reasonType")
        _opt_str(reason.get("reasonCode"), "reason.reasonCode")
    attachments = get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            raise _fail("attachments", "a list of JSON objects", attachments)
        for i, item in enumerate(attachments):
            if not isinstance(item, Mapping):
                raise _fail(f"attachments[{i}]", "a JSON object with typeURI and content", item)
            _req_str(item.get("typeURI"), f"attachments[{i}].typeURI")
    _opt_str(get("requestPath"), "requestPath")


# Last: cadf_http builds on the models above (Event.from_wsgi / from_asgi use it).
from . import cadf_http as _http  # noqa: E402
