"""Broker URLs: checked before use, and never shown with their password.

Rule 1: a URL is checked before pika parses it (:func:`check_url`): a URL without a host
(``amqp://user:password``, the ``@host`` forgotten) would be read as host ``user``,
port ``password``, and the parser's error would show the password.
Rule 2: a password never appears in a log line or an error message: URLs are passed
through :func:`redact_url` and every error text through a :class:`Redactor` that knows
the configured passwords (as written and percent-decoded, longest first, so a
password that contains another is hidden whole).

Pure string work: no pika, no socket. Used by the publisher's constructor and its
connection (:mod:`segmentlog.amqp.connection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from segmentlog.errors import ConfigError

__all__ = ["Redactor", "check_url", "redact_url", "scrub_url"]


def check_url(url: object) -> None:
    """Refuse a broker URL without a host, naming it redacted: ``amqp://user:password``
    (the ``@host`` forgotten) would otherwise be read as host ``user``, port
    ``password``, and the parser's error would show the password."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"Publisher: a broker URL must be a non-empty string, got "
                          f"{type(url).__name__}; expected amqp[s]://user:password@host:port/vhost")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("amqp", "amqps"):
        raise ConfigError(f"Publisher: broker URL {redact_url(url)} must start with amqp:// "
                          "or amqps://; expected amqp[s]://user:password@host:port/vhost")
    _, at, hostpart = rest.rpartition("@")
    hostport = hostpart.split("/", 1)[0].split("?", 1)[0]
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        port = tail[1:] if tail.startswith(":") else ""
        host += "]"
    elif ":" in hostport:
        host, port = hostport.rsplit(":", 1)
    if at and not host:
        raise ConfigError(f"Publisher: broker URL {redact_url(url)} has no host after '@'; "
                          "expected amqp[s]://user:password@host:port/vhost")
    if port and not port.isdigit():
        # Without '@' this is most likely user:password with the host left out.
        raise ConfigError(f"Publisher: broker URL {redact_url(url)} has no valid host:port "
                          "(is '@host' missing after user:password?); expected "
                          "amqp[s]://user:password@host:port/vhost")


def redact_url(url: str) -> str:
    """Return ``url`` with the password replaced by ``***`` (user and host kept).

    Works on the raw string (not ``urlsplit``) so an unencoded ``/`` or ``@`` in the
    password cannot push part of it into the "path": everything up to the last ``@``
    after the scheme is user info, and everything after its first ``:`` is hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    prefix = f"{scheme}://" if sep else ""
    if not at:
        # No user info: "host:port". A "port" that is not a number may be a password
        # whose "@host" was left out (amqp://user:password): hide it.
        hostport, slash, path = rest.partition("/")
        host, colon, port = hostport.rpartition(":")
        if colon and port and not port.isdigit() and not hostport.endswith("]"):
            return f"{prefix}{host}:***{slash}{path}"
        return url
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{prefix}{user}:***@{hostpart}"


def _passwords(urls: Sequence[str]) -> list[str]:
    out = []
    for url in urls:
        rest = url.partition("://")[2] or url
        userinfo, at, _ = rest.rpartition("@")
        if at and ":" in userinfo:
            pw = userinfo.split(":", 1)[1]
            if pw:
                out.append(pw)
                # the percent-decoded form is what pika sends and might echo
                out.append(unquote(pw))
    return sorted(set(out), key=len, reverse=True)


def scrub_url(text: str, url: str) -> str:
    """``text`` (an error about ``url``) with the URL redacted and its password hidden."""
    for secret in _passwords([url]):
        text = text.replace(secret, "***")
    return text.replace(url, redact_url(url))


class Redactor:
    """The configured URLs' passwords, and error texts with them hidden (Rule 2)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.redacted = [redact_url(u) for u in urls]
        self._secrets = _passwords(urls)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException | None) -> str:
        """``Type: text`` of the innermost cause of ``exc``, passwords hidden."""
        if exc is None:
            return "closed"
        # pika wraps the real cause (refused, TLS verification, auth...) in workflow
        # exceptions whose str() is empty or generic: name the innermost one.
        for _ in range(5):
            inner = getattr(exc, "exceptions", None)
            if isinstance(inner, (list, tuple)) and inner:
                exc = inner[-1]
                continue
            inner = getattr(exc, "exception", None)
            if isinstance(inner, BaseException):
                exc = inner
                continue
            if len(exc.args) == 1 and isinstance(exc.args[0], BaseException):
                exc = exc.args[0]
                continue
            break
        text = str(exc) or repr(exc)
        return self.scrub(f"{type(exc).__name__}: {text}")
