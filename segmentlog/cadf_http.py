"""CADF events from HTTP requests: what :meth:`Event.from_wsgi` and :meth:`Event.from_asgi`
read from a WSGI environ or an ASGI scope.

Theory of operation
-------------------
The Go original builds an event per request from the request and the caller's token:
the initiator is the token's user (``service/security/account/user``: user id, name and
domain name, the project or domain the token is scoped to) with the request's host
address and user agent; the outcome and reason follow the response status. Python
services behind keystonemiddleware find that token's identity in the request headers
``X-User-Id``, ``X-User-Name``, ``X-User-Domain-Name``, ``X-Project-Id`` and
``X-Domain-Id`` (keystonemiddleware removes these headers from what clients send and
sets them from the validated token). It also sets ``X-User-Domain-Id``,
``X-Project-Domain-Id``, ``X-Project-Name`` and ``X-Domain-Name``, which are not read:
the original's initiator has no field for them (it carries the user's domain by name
and the token's scope by id), and events must look like the original's. A service that
wants them passes an ``initiator`` function (attachments can carry them).

Rule 1: secrets never enter an event. Only the headers named above, ``User-Agent``,
        ``X-Identity-Status`` and (from trusted proxies) ``Forwarded`` and
        ``X-Forwarded-For`` are read; tokens (``X-Auth-Token``, ``X-Subject-Token``,
        ``X-Service-Token``), ``Authorization`` and cookies are never looked at. The
        request path is recorded without its query string, which may carry signatures
        (Swift's ``temp_url_sig``) or tokens.
Rule 2: the host address is the peer (``REMOTE_ADDR``, the scope's ``client``) unless
        the peer is a configured trusted proxy: then the forwarded chain is walked from
        the nearest hop outwards, past trusted proxies, and the first address not
        trusted is the client. Forwarded headers from anyone else are ignored (a client
        could write anything there).
Rule 3: a request keystonemiddleware marked ``X-Identity-Status: Invalid`` (its
        ``delay_auth_decision`` mode), or one without ``X-User-Id``, has the initiator
        id ``unknown``: the event is still recorded, nothing is invented.
Rule 4: the action follows the method (POST create, PUT and PATCH update, DELETE
        delete, GET, HEAD and OPTIONS read, anything else ``unknown``) unless the caller
        gives an action or a mapping of its own.

This module never does I/O: it reads mappings and builds models.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from .cadf import Host, Reason, Resource
from .errors import ConfigError

__all__ = ["DEFAULT_ACTIONS", "USER_TYPE_URI", "TrustedProxies"]

#: ``typeURI`` of the initiator built from keystonemiddleware's headers (the original's).
USER_TYPE_URI = "service/security/account/user"

#: Rule 4: the CADF action of each HTTP method.
DEFAULT_ACTIONS: Mapping[str, str] = {
    "POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete",
    "GET": "read", "HEAD": "read", "OPTIONS": "read",
}

UNKNOWN = "unknown"

# What may stay unescaped in a recorded path: RFC 3986 path characters.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose ``Forwarded`` / ``X-Forwarded-For`` headers are believed (Rule 2).

    ``TrustedProxies(["10.0.0.0/8", "::1"])``: addresses or networks, parsed once;
    a bad entry is a :class:`~segmentlog.errors.ConfigError` naming it.
    """

    __slots__ = ("_networks",)

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        if isinstance(proxies, (str, bytes)):
            raise ConfigError(f"trusted_proxies must be a list of addresses or networks, "
                              f"not the single string {proxies!r}; write [{proxies!r}]")
        networks: list[_Network] = []
        for entry in proxies:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except (TypeError, ValueError):
                raise ConfigError(f"trusted_proxies: {entry!r} is not an IP address or "
                                  "network (e.g. '10.0.0.0/8' or '::1')") from None
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client(self, peer: str | None, forwarded: str | None,
               x_forwarded_for: str | None) -> str | None:
        """The client's address (Rule 2): ``peer`` unless it is trusted and forwarded."""
        if peer is None or not self._networks or not self.trusts(peer):
            return peer
        if forwarded:
            hops = _forwarded_for(forwarded)
        elif x_forwarded_for:
            hops = [h.strip() for h in x_forwarded_for.split(",")]
        else:
            return peer
        address = peer
        for hop in reversed(hops):
            hop = _strip_port(hop)
            if not _is_ip(hop):
                # "unknown" or an obfuscated name: the client is beyond what anyone
                # trusted can tell; the last trusted hop is what is known.
                return address
            address = hop
            if not self.trusts(hop):
                return hop
        return address


_NO_PROXIES = TrustedProxies()


def as_trusted_proxies(value: TrustedProxies | Iterable[str] | None) -> TrustedProxies:
    if isinstance(value, TrustedProxies):
        return value
    return _NO_PROXIES if value is None else TrustedProxies(value)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _strip_port(hop: str) -> str:
    hop = hop.strip().strip('"')
    if hop.startswith("["):  # [v6] or [v6]:port
        end = hop.find("]")
        return hop[1:end] if end > 0 else hop
    if hop.count(":") == 1:  # v4:port (a bare v6 address has several colons)
        return hop.partition(":")[0]
    return hop


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, nearest hop last."""
    hops = []
    for element in header.split(","):
        for pair in element.split(";"):
            key, _, value = pair.strip().partition("=")
            if key.strip().lower() == "for":
                hops.append(value.strip())
    return hops


# What is built from a request and shared by later requests with the same input: paths,
# initiators and default targets are immutable, and a service sees the same paths and
# users from the same addresses again and again (building them costs more than the rest
# of the event). Each cache is bounded: emptied when it fills.
_CACHE_MAX = 4096
_WSGI_PATHS: dict[str, str] = {}
_ASGI_PATHS: dict[str, str] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def wsgi_path(environ: Mapping[str, Any]) -> str:
    """The request path of a WSGI environ, percent-encoded, without the query string."""
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    found = _WSGI_PATHS.get(raw)
    if found is None:
        # PEP 3333: the server decoded the path bytes as latin-1; these are those bytes.
        found = quote(raw.encode("latin-1", "replace"), safe=_PATH_SAFE) or "/"
        _remember(_WSGI_PATHS, raw, found)
    return found


def asgi_path(scope: Mapping[str, Any]) -> str:
    """The request path of an ASGI scope, percent-encoded, without the query string."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and not path.startswith(root):  # servers differ on whether path includes it
        path = root + path
    found = _ASGI_PATHS.get(path)
    if found is None:
        found = quote(path.encode("utf-8", "replace"), safe=_PATH_SAFE) or "/"
        _remember(_ASGI_PATHS, path, found)
    return found


_INITIATORS: dict[tuple[str | None, ...], Resource] = {}


def initiator_from(get: Callable[[str], str | None], address: str | None,
                   agent: str | None) -> Resource:
    """The initiator from keystonemiddleware's headers (Rules 1 and 3); ``get`` reads one
    header by its WSGI name (``HTTP_X_USER_ID``)."""
    user_id = get("HTTP_X_USER_ID")
    status = get("HTTP_X_IDENTITY_STATUS")
    if not user_id or (status is not None and status.lower() != "confirmed"):
        key: tuple[str | None, ...] = (None, address, agent)
    else:
        key = (user_id, address, agent, get("HTTP_X_USER_NAME"),
               get("HTTP_X_USER_DOMAIN_NAME"), get("HTTP_X_PROJECT_ID"),
               get("HTTP_X_DOMAIN_ID"))
    found = _INITIATORS.get(key)
    if found is None:
        found = _build_initiator(key)
        _remember(_INITIATORS, key, found)
    return found


def _build_initiator(key: tuple[str | None, ...]) -> Resource:
    user_id, address, agent = key[:3]
    host = Host(address=address, agent=agent) if address or agent else None
    if user_id is None:
        return Resource(type_uri=USER_TYPE_URI, id=UNKNOWN, host=host)
    name, domain, project_id, domain_id = key[3:]
    return Resource(
        type_uri=USER_TYPE_URI,
        id=user_id,
        name=name or None,
        domain=domain or None,
        host=host,
        # the token's scope: only one of the two is set
        project_id=project_id or None,
        domain_id=domain_id or None,
    )


_TARGETS: dict[str, Resource] = {}


def target_for(path: str) -> Resource:
    """The default target: ``typeURI`` ``unknown`` with the request path as id."""
    found = _TARGETS.get(path)
    if found is None:
        found = Resource(type_uri=UNKNOWN, id=path)
        _remember(_TARGETS, path, found)
    return found


_REASONS: dict[int, Reason] = {}


def reason_for(status: int) -> Reason:
    """The ``HTTP`` reason of ``status`` (one shared, immutable instance per code)."""
    found = _REASONS.get(status)
    if found is None:
        found = Reason(reason_type="HTTP", reason_code=str(status))
        if 100 <= status < 600:  # a bounded set: anything else is built each time
            _REASONS[status] = found
    return found


def with_host(resource: Resource, address: str | None, agent: str | None) -> Resource:
    """``resource`` with the request's host, unless the caller's function gave one."""
    if resource.host is not None or not (address or agent):
        return resource
    return Resource(
        type_uri=resource.type_uri, id=resource.id, name=resource.name,
        domain=resource.domain, addresses=resource.addresses,
        host=Host(address=address, agent=agent), attachments=resource.attachments,
        project_id=resource.project_id, domain_id=resource.domain_id,
        application_credential_id=resource.application_credential_id)


def action_for(method: str, action: str | None, actions: Mapping[str, str] | None) -> str:
    if action is not None:
        return action
    return (DEFAULT_ACTIONS if actions is None else actions).get(method.upper(), UNKNOWN)


def asgi_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The few headers this module reads, by WSGI name, from an ASGI scope (Rule 1:
    nothing else is decoded)."""
    out: dict[str, str] = {}
    read = _ASGI_READ
    for name, value in scope.get("headers") or ():
        try:
            key = read.get(name)
        except TypeError:  # a bytearray name (unhashable): read below
            key = None
        if key is None:
            # Servers send names as lower-case bytes (the ASGI spec).
            if type(name) is bytes and name.islower():
                continue
            key = read.get(bytes(name).lower())
            if key is None:
                continue
        text = (value if type(value) is bytes else bytes(value)).decode("latin-1")
        # Repeated headers are one comma-separated list (RFC 9110).
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


_ASGI_READ = {
    name.encode(): "HTTP_" + name.upper().replace("-", "_")
    for name in ("x-user-id", "x-user-name", "x-user-domain-name", "x-project-id",
                 "x-domain-id", "x-identity-status", "user-agent", "forwarded",
                 "x-forwarded-for")
}
