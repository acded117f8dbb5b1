"""Serving the browser overlay (clients/overlay/) on the event server's own port.

The overlay is a few static files; serving them from the WebSocket port means one address to open
(or to paste into OBS) and no second server. The websockets server calls `process_request` before
each handshake: a WebSocket upgrade goes on to the event stream, a GET for an overlay file gets the
file, anything else a 404.

The page is served with a Content-Security-Policy that allows only its own script and stylesheet
(it has no inline script or style, and loads nothing from elsewhere), WebSocket connections back to
the host it was loaded from, and nothing else; `Referrer-Policy: no-referrer` keeps its URL (which
may carry ?token=) out of any request it makes. It may be framed (OBS, dashboards embed it).
"""
from __future__ import annotations

import http
import re
from importlib import resources
from typing import Protocol
from urllib.parse import urlparse

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = ["OVERLAY_FILES", "content_security_policy", "is_websocket_upgrade", "overlay_response", "overlay_url",
           "process_request"]

# Request path -> (file in merc.clients' overlay/, content type). Only these are ever served.
OVERLAY_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/overlay.js": ("overlay.js", "text/javascript; charset=utf-8"),
    "/overlay.css": ("overlay.css", "text/css; charset=utf-8"),
    "/capture.js": ("capture.js", "text/javascript; charset=utf-8"),  # join mode (merc-serve)
    "/capture-worklet.js": ("capture-worklet.js", "text/javascript; charset=utf-8"),  # its AudioWorklet
}


# A Host header fit to be quoted in the policy: a name or address, and a port (anything else: 'self' only).
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def content_security_policy(host: str | None) -> str:
    """The overlay's policy: its own files, and WebSocket connections to `host` (the Host it was
    loaded from: ws:// and wss://; 'self' alone when there is none or it looks odd)."""
    connect = ["'self'"]
    if host and _HOST.fullmatch(host.strip()):
        host = host.strip().lower()
        connect += [f"ws://{host}", f"wss://{host}"]
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {' '.join(connect)}; base-uri 'none'; form-action 'none'")


def overlay_response(path: str) -> tuple[int, str, bytes] | None:
    """(status, content type, body) of the overlay file at request `path` (its query ignored), or
    None when the path is not one of the overlay's."""
    entry = OVERLAY_FILES.get(urlparse(path).path)
    if entry is None:
        return None
    name, content_type = entry
    body = (resources.files("merc.clients") / "overlay" / name).read_bytes()
    return 200, content_type, body


def is_websocket_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """The websockets `process_request` hook: None lets a WebSocket handshake proceed; a plain GET
    is answered with an overlay file or 404, and the connection closes after it."""
    if is_websocket_upgrade(request):
        return None
    found = overlay_response(request.path)
    if found is None:
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found: the overlay is at /\n")
    status, content_type, body = found
    hosts = request.headers.get_all("Host")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                       ("Content-Security-Policy", content_security_policy(hosts[0] if len(hosts) == 1 else None)),
                       ("Referrer-Policy", "no-referrer"), ("Connection", "close")])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


class _Bound(Protocol):
    host: str
    port: int


def overlay_url(server: _Bound, token: str | None = None) -> str:
    """The address to open the overlay at: a wildcard bind (0.0.0.0, ::) is shown as this machine's
    host name, which a browser can reach; the token, if any, is passed on."""
    import socket
    from urllib.parse import quote

    host = server.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{server.port}/" + (f"?token={quote(token)}" if token else "")
