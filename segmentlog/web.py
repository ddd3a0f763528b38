"""Audit middleware for Python web services: one CADF event per matching HTTP request.

Theory of operation
-------------------
``WSGIAuditMiddleware(app, auditor)`` and ``ASGIAuditMiddleware(app, auditor)`` wrap an
application; each request the rules select becomes one event, built by
:meth:`Event.from_wsgi` / :meth:`Event.from_asgi` (initiator from keystonemiddleware's
headers unless a function is given; see segmentlog.cadf_http) and recorded once the
response status is known.

Rule 1: by default every request with a method that changes something (POST, PUT,
        PATCH, DELETE) is recorded; safe methods only when listed in ``methods``.
        ``include`` (if given) and ``exclude`` are regular expressions the whole path
        (mount point included, as decoded by the server) must match / must not match.
Rule 2: the event is recorded when the status is known: WSGI, once the application
        returned with ``start_response`` called (the usual case: the body is handed to
        the server as it is, untouched), else at the body's first chunk (or its end, or
        ``close()``: a generator application calls ``start_response`` lazily); ASGI,
        right after ``http.response.start`` was sent, with ``await auditor.arecord``
        (a full buffer never blocks the event loop). Response bodies are never read
        or held: a streamed body flows through chunk by chunk.
Rule 3: an application that fails before a status is known is recorded with 500 (what
        the server answers), and its exception propagates unchanged.
Rule 4: auditing never fails a request. An error building or recording the event (a
        caller's function raising, ``BackingStoreFull`` after ``full_timeout``, a
        closed auditor) is counted in ``segmentlog_web_audit_failures_total`` (label
        ``middleware``, on the auditor's registry or prometheus-client's default one)
        and logged; the response goes on.
Rule 5: ASGI scopes other than ``http`` (``websocket``, ``lifespan``) pass through
        untouched, as do requests the rules do not select.

This module never touches the response body or the network itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.registry import Collector

from .audit_doubles import AuditorBase
from .cadf import Event, Resource
from .cadf_http import DEFAULT_ACTIONS, TrustedProxies, as_trusted_proxies
from .errors import ConfigError
from .metrics import MetricSet, shared_set

__all__ = ["DEFAULT_METHODS", "ASGIAuditMiddleware", "WSGIAuditMiddleware"]

LOG = logging.getLogger("segmentlog.web")

#: Rule 1: the methods recorded by default (those that change something).
DEFAULT_METHODS = ("POST", "PUT", "PATCH", "DELETE")

ResourceSource = Resource | Callable[[Mapping[str, Any]], Resource] | None

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _WebMetrics(MetricSet):
    def __init__(self) -> None:
        super().__init__()
        self.failures = Counter(
            "segmentlog_web_audit_failures",
            "Requests whose audit event could not be built or recorded (the request "
            "went on; see the segmentlog.web log).", ["middleware"], registry=None)

    def collectors(self) -> tuple[Collector, ...]:
        return (self.failures,)


def _patterns(value: Iterable[str | re.Pattern[str]] | None, name: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, re.Pattern)):
        value = [value]
    parts = []
    for item in value:
        try:
            pattern = item if isinstance(item, re.Pattern) else re.compile(item)
        except (TypeError, re.error) as exc:
            raise ConfigError(f"{name}: {item!r} is not a regular expression ({exc}); "
                              "give a list of patterns such as [r'/v2/servers(/.*)?']") from None
        parts.append(f"(?:{pattern.pattern})")
    return re.compile("|".join(parts)) if parts else None


class _Auditing:
    """What both middlewares share: the rules (Rule 1), the event's settings and the
    failure counter (Rule 4)."""

    def __init__(
        self,
        auditor: AuditorBase,
        name: str,
        methods: Iterable[str],
        include: Iterable[str | re.Pattern[str]] | None,
        exclude: Iterable[str | re.Pattern[str]] | None,
        target: ResourceSource,
        initiator: ResourceSource,
        actions: Mapping[str, str] | None,
        trusted_proxies: TrustedProxies | Iterable[str] | None,
        registry: CollectorRegistry | None,
    ) -> None:
        if not (callable(getattr(auditor, "record", None))
                and callable(getattr(auditor, "arecord", None))):
            raise ConfigError(f"audit middleware: auditor must be an Auditor (or another "
                              f"AuditorBase), got {type(auditor).__name__}")
        if isinstance(methods, str):
            raise ConfigError(f"methods must be a list of HTTP methods, not the single "
                              f"string {methods!r}; write [{methods!r}]")
        self.methods = frozenset(m.upper() for m in methods)
        if not all(isinstance(m, str) and m.isalpha() for m in self.methods):
            raise ConfigError(f"methods: {sorted(self.methods)!r} must be HTTP method names "
                              "such as 'POST'")
        self.include = _patterns(include, "include")
        self.exclude = _patterns(exclude, "exclude")
        for source, what in ((target, "target"), (initiator, "initiator")):
            if source is not None and not (isinstance(source, Resource) or callable(source)):
                raise ConfigError(f"{what} must be a Resource or a function of the request "
                                  f"returning one, got {type(source).__name__}")
        self.target = target
        self.initiator = initiator
        self.actions = DEFAULT_ACTIONS if actions is None else dict(actions)
        self.proxies = as_trusted_proxies(trusted_proxies)
        self.auditor = auditor
        self.name = name
        if registry is None:
            registry = getattr(auditor, "registry", None)
            if not isinstance(registry, CollectorRegistry):
                registry = REGISTRY
        self.failures = shared_set(registry, _WebMetrics).failures.labels(name)

    def wants(self, method: str, path: str) -> bool:
        return (method in self.methods
                and (self.include is None or self.include.fullmatch(path) is not None)
                and (self.exclude is None or self.exclude.fullmatch(path) is None))

    def failed(self, request: Mapping[str, Any]) -> None:
        self.failures.inc()
        LOG.exception("%s: the audit event of %s %s was not recorded (the request went on)",
                      self.name, request.get("REQUEST_METHOD") or request.get("method"),
                      request.get("PATH_INFO") or request.get("path"))


class _AuditMiddleware:
    """The constructor both middlewares share (their keyword arguments are one set)."""

    _kind = ""

    def __init__(
        self,
        app: Any,
        auditor: AuditorBase,
        *,
        methods: Iterable[str] = DEFAULT_METHODS,
        include: Iterable[str | re.Pattern[str]] | None = None,
        exclude: Iterable[str | re.Pattern[str]] | None = None,
        target: ResourceSource = None,
        initiator: ResourceSource = None,
        actions: Mapping[str, str] | None = None,
        trusted_proxies: TrustedProxies | Iterable[str] | None = None,
        registry: CollectorRegistry | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(app):
            raise ConfigError(f"{type(self).__name__}: app must be the {self._kind} "
                              f"application to wrap (a callable), got {type(app).__name__}")
        self.app = app
        self._audit = _Auditing(auditor, name or self._kind.lower(), methods, include,
                                exclude, target, initiator, actions, trusted_proxies,
                                registry)


class WSGIAuditMiddleware(_AuditMiddleware):
    """Records one CADF event per selected request of a WSGI ``app`` on ``auditor``.

    :param methods: methods recorded (Rule 1; default :data:`DEFAULT_METHODS`).
    :param include: regular expressions; when given, only paths matching one are recorded.
    :param exclude: regular expressions; paths matching one are never recorded.
    :param target: the event's target: a Resource or a function of the environ returning
        one (default: ``typeURI`` ``unknown``, the request path as id).
    :param initiator: a Resource or a function of the environ (default: the user
        keystonemiddleware put into the request).
    :param actions: HTTP method to CADF action (default
        :data:`~segmentlog.cadf_http.DEFAULT_ACTIONS`).
    :param trusted_proxies: addresses or networks whose forwarded headers are believed.
    :param registry: where the failure counter lives (default: the auditor's registry,
        else prometheus-client's default one).
    :param name: the ``middleware`` label of that counter and the name in log messages
        (default ``wsgi``; ``asgi`` for the ASGI middleware).
    """

    _kind = "WSGI"
    app: WSGIApp

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        audit = self._audit
        if not audit.wants(environ.get("REQUEST_METHOD", ""),
                           environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        status: list[str] = []

        def audited_start_response(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[:] = [status_line]  # a later call (with exc_info) replaces the status
            if exc_info is None:
                return start_response(status_line, headers)
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, audited_start_response)
        except BaseException:
            self.record(environ, status)  # Rule 3
            raise
        if status:
            self.record(environ, status)  # Rule 2: the body goes to the server untouched
            return body
        return _AuditedBody(self, environ, status, body)

    def record(self, environ: dict[str, Any], status: list[str]) -> None:
        """Record the event of ``environ`` (Rule 4: never raises an Exception)."""
        audit = self._audit
        try:
            code = int(status[0].split(None, 1)[0]) if status else 500
            event = Event.from_wsgi(environ, status=code, target=audit.target,
                                    initiator=audit.initiator, actions=audit.actions,
                                    trusted_proxies=audit.proxies)
            audit.auditor.record(event)
        except Exception:
            audit.failed(environ)


class _AuditedBody:
    """The body of an application that had not called ``start_response`` when it
    returned: passed through chunk by chunk; the event is recorded at the first chunk,
    the end, an error or ``close()``, whichever comes first (Rule 2)."""

    __slots__ = ("_body", "_environ", "_it", "_owner", "_pending", "_status")

    def __init__(self, owner: WSGIAuditMiddleware, environ: dict[str, Any],
                 status: list[str], body: Iterable[bytes]) -> None:
        self._owner = owner
        self._environ = environ
        self._status = status
        self._body = body
        self._it: Iterator[bytes] | None = None
        self._pending = True

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._it is None:
            self._it = iter(self._body)
        try:
            chunk = next(self._it)
        except BaseException:  # the end (StopIteration) or an error (Rule 3)
            self._finish()
            raise
        if self._pending:
            self._finish()
        return chunk

    def _finish(self) -> None:
        if self._pending:
            self._pending = False
            self._owner.record(self._environ, self._status)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


class ASGIAuditMiddleware(_AuditMiddleware):
    """Records one CADF event per selected HTTP request of an ASGI ``app`` on
    ``auditor``; the keyword arguments are those of :class:`WSGIAuditMiddleware`
    (functions receive the scope). ``websocket`` and ``lifespan`` scopes pass through."""

    _kind = "ASGI"
    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        audit = self._audit
        if scope.get("type") != "http":  # Rule 5
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and not path.startswith(root):
            path = root + path
        if not audit.wants(scope.get("method", ""), path):
            await self.app(scope, receive, send)
            return
        pending = True

        async def audited_send(message: Message) -> None:
            nonlocal pending
            await send(message)
            if pending and message.get("type") == "http.response.start":
                pending = False
                await self.record(scope, message.get("status", 500))

        try:
            await self.app(scope, receive, audited_send)
        except BaseException:
            if pending:  # Rule 3
                pending = False
                await self.record(scope, 500)
            raise
        if pending:  # the app returned without a response: the server answers 500
            await self.record(scope, 500)

    async def record(self, scope: Scope, status: int) -> None:
        """Record the event of ``scope`` (Rule 4: never raises an Exception)."""
        audit = self._audit
        try:
            event = Event.from_asgi(scope, status=status, target=audit.target,
                                    initiator=audit.initiator, actions=audit.actions,
                                    trusted_proxies=audit.proxies)
            await audit.auditor.arecord(event)  # a full buffer never blocks the loop
        except Exception:
            audit.failed(scope)
