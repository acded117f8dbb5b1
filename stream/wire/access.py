"""Who may open the event stream: a token off this machine, and an Origin allow-list for browsers.

Sans-I/O: `AccessPolicy.check` looks at a handshake's path and headers and says what to refuse
(401 without the token, 403 from a foreign Origin); the server turns that into the HTTP response.
Why both: the token keeps other machines out when the service listens beyond loopback; the Origin
check keeps other web pages in this machine's browser from reading the stream (cross-site
WebSocket hijacking, DNS rebinding), since a browser sends Origin on every WebSocket and a page
cannot forge it. Clients that send no Origin are not browsers and are let in.
"""
from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = ["LOOPBACK_NAMES", "AccessPolicy", "Denial", "HeaderLookup", "exposure_problem", "is_loopback"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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
            return Denial(401, "a token is required: connect with ?token=T or 'Authorization: Bearer T'")
        origins = headers.get_all("Origin")
        if len(origins) > 1 or (origins and not self._origin_allowed(origins[0], headers)):
            return Denial(403, f"origin {origins[0][:100] if origins else ''!r} is not allowed (see --allow-origin)")
        return None

    def _authorized(self, path: str, headers: HeaderLookup) -> bool:
        if self.token is None:
            return True
        candidates = parse_qs(urlsplit(path).query).get("token", [])
        for value in headers.get_all("Authorization"):
            scheme, _, credential = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                candidates.append(credential.strip())
        expected = self.token.encode("utf-8")
        matched = False
        for candidate in candidates:  # constant time in the token's content; every candidate is compared
            matched |= hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), expected)
        return matched

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
