"""Who may open the event stream: a token off this machine, and an Origin allow-list for browsers.

Sans-I/O: `AccessPolicy.check` looks at a handshake's path and headers and says what to refuse
(401 without exactly one right token, 403 from a foreign Origin); the server turns that into the
HTTP response. `FailureThrottle` remembers the addresses that keep failing the token (429 for a
while), in a table of bounded size.
Why both: the token keeps other machines out when the service listens beyond loopback; the Origin
check keeps other web pages in this machine's browser from reading the stream (cross-site
WebSocket hijacking, DNS rebinding), since a browser sends Origin on every WebSocket and a page
cannot forge it. Clients that send no Origin are not browsers and are let in.
"""
from __future__ import annotations

import hmac
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = ["LOOPBACK_NAMES", "AccessPolicy", "Denial", "FailureThrottle", "HeaderLookup", "exposure_problem",
           "is_loopback"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_MAX_QUERY_FIELDS = 100


class HeaderLookup(Protocol):
    def get_all(self, key: str) -> list[str]: ...


def is_loopback(host: str) -> bool:
    """True for names only this machine can reach (localhost, 127.0.0.0/8, ::1); "" and 0.0.0.0 are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_problem(host: str, token: str | None) -> str | None:
    """Why serving on `host` with `token` is refused (None when it is fine)."""
    if is_loopback(host) or token:
        return None
    return (f"serving events on {host or 'every interface'} lets other machines read them: give a token "
            "(--token T or $MERC_TOKEN; clients connect with ?token=T or 'Authorization: Bearer T'), or bind "
            "127.0.0.1")


@dataclass(frozen=True)
class Denial:
    status: int  # 401 or 403
    reason: str


TOKEN_REQUIRED = "exactly one token is required: connect with ?token=T or 'Authorization: Bearer T'"


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@dataclass(frozen=True)
class AccessPolicy:
    """What a handshake needs on a server bound to `host`:`port`.

    `allow_origins` adds exact origins ("https://example.org:8443", "null" for file:// pages, "*" for
    any) to the default: no Origin, or the server's own origin. The server's own origin is its
    loopback names when bound to loopback (so a rebound DNS name is refused), else the Host the
    client connected to (those clients also need the token).
    """

    host: str
    port: int
    token: str | None = None
    allow_origins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def create(cls, host: str, port: int, token: str | None = None, allow_origins: Iterable[str] = ()) -> AccessPolicy:
        return cls(host, port, token or None, frozenset(_normal_origin(o) for o in allow_origins))

    def check(self, path: str, headers: HeaderLookup) -> Denial | None:
        """None to let the handshake through, else what to answer."""
        if self.token is not None and not self._authorized(path, headers):
            return Denial(401, TOKEN_REQUIRED)
        origins = headers.get_all("Origin")
        if len(origins) > 1 or (origins and not self._origin_allowed(origins[0], headers)):
            return Denial(403, f"origin {origins[0][:100] if origins else ''!r} is not allowed (see --allow-origin)")
        return None

    def _authorized(self, path: str, headers: HeaderLookup) -> bool:
        """Exactly one token: one ?token= or one bearer header (or both, the same), compared in
        constant time. More than one, or two that disagree, is refused whatever they hold."""
        if self.token is None:
            return True
        try:
            query = parse_qs(urlsplit(path).query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
        except ValueError:  # more fields than any client of ours sends
            return False
        in_query = query.get("token", [])
        split = [value.strip().partition(" ") for value in headers.get_all("Authorization")]
        in_header = [credential.strip() for scheme, _, credential in split if scheme.lower() == "bearer"]
        given = in_query + in_header
        if not given or len(in_query) > 1 or len(in_header) > 1 or len(set(given)) != 1:
            return False
        return hmac.compare_digest(given[0].encode("utf-8", "surrogatepass"), self.token.encode("utf-8"))

    def _origin_allowed(self, origin: str, headers: HeaderLookup) -> bool:
        origin = _normal_origin(origin)
        if "*" in self.allow_origins or origin in self.allow_origins:
            return True
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or origin_host is None:
            return False
        if is_loopback(self.host):
            names = {*LOOPBACK_NAMES, self.host.strip("[]").lower()}
            return origin_host in names and origin_port == self.port
        hosts = headers.get_all("Host")
        return len(hosts) == 1 and parts.netloc == hosts[0].strip().lower()



class FailureThrottle:
    """Addresses that failed the token `max_failures` times within `window` seconds are refused for
    `block` seconds (the server answers 429 with Retry-After). Times are passed in (monotonic
    seconds). At most `max_addresses` are remembered, the least recently failing forgotten first,
    so a flood of addresses costs bounded memory; an IPv6 address counts by its /64 (one client
    usually holds a whole /64)."""

    def __init__(self, max_failures: int = 10, window: float = 60.0, block: float = 60.0,
                 max_addresses: int = 4096) -> None:
        if max_failures < 1 or window <= 0 or block <= 0 or max_addresses < 1:
            raise ValueError("max_failures, window, block and max_addresses must be positive")
        self.max_failures, self.window, self.block, self.max_addresses = max_failures, window, block, max_addresses
        # key -> [first failure in the window, failures in it, blocked until]
        self._table: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def retry_after(self, address: str | None, now: float) -> int:
        """Whole seconds until `address` may try again (0: now)."""
        entry = self._table.get(_client_key(address))
        if entry is None or entry[2] <= now:
            return 0
        return max(1, math.ceil(entry[2] - now))

    def fail(self, address: str | None, now: float) -> None:
        key = _client_key(address)
        entry = self._table.get(key)
        if entry is None or now - entry[0] > self.window:
            entry = [now, 0.0, entry[2] if entry is not None else 0.0]
        entry[1] += 1
        if entry[1] >= self.max_failures:
            entry[2] = now + self.block
        self._table[key] = entry
        self._table.move_to_end(key)
        while len(self._table) > self.max_addresses:
            self._table.popitem(last=False)


def _client_key(address: str | None) -> str:
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
