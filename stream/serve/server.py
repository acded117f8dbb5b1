"""merc-serve's WebSocket service: every connection that sends media is a session of its own.

One port serves everything:

    ws://HOST:PORT/session      a media client (the overlay's join mode, a Python client, the
                                benchmark): a new session on the shared models. The client sends
                                binary media frames (media.py) and the JSON messages of stream/wire
                                (ping, control); it receives that session's events only: `hello`
                                (its envelope's `session` is the session id), `turn.partial`,
                                `turn`, `turn.update`, `error`, and a final `status` ("session
                                ended") once the audio it sent is all processed, after which the
                                connection is closed (1000). An audio frame with no samples says the
                                client stopped capturing: the turn in progress is finished and the
                                status follows.
    ws://HOST:PORT/?session=ID  watch a running session's events (another screen, a dashboard),
                                closed (1000) after its "session ended" status.
    GET /healthz                "ok" with the open and maximum session counts (JSON)
    GET /metrics                Prometheus text format (metrics.py)
    GET /, /overlay.js, ...     the overlay (stream/wire/overlay_http.py); /?join=1 is its join mode

Access is stream/wire's, per handshake: the Origin allow-list, and tokens, now several: every
`--token` (or line of `--tokens-file`) admits its holder, so each client or room can be given its
own and have it revoked alone. Beyond `max_sessions` sessions a /session handshake gets HTTP 503
(Retry-After), as does any handshake beyond `max_connections`.

Limits per session: `max_queued_seconds` of audio received but not yet processed (beyond it the
oldest is dropped and the client told, once per second, code audio_dropped), frames of at most
64 KiB (media.py: 1 s of audio, a 60 KiB JPEG), and MEDIA_RATE frames per second (a 512-sample
audio frame is 31/s; beyond the rate frames are dropped and the client told). A session runs on a
thread of its own; model calls go through the shared batchers, where each waits only for its own
results, so a slow or dead session never holds up another.
"""
from __future__ import annotations

import asyncio
import http
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from merc.stream.serve.media import AUDIO, HEADER, MAGIC, MEDIA_VERSION, VIDEO, MediaFrameError, parse_frame
from merc.stream.serve.metrics import CONTENT_TYPE, ServeMetrics
from merc.stream.serve.sessions import MediaSession, SharedModels
from merc.stream.wire.access import AccessPolicy, Denial, exposure_problem
from merc.stream.wire.delivery import ClientQueue, Outgoing
from merc.stream.wire.events import EventBus
from merc.stream.wire.messages import Hello, error, stamp
from merc.stream.wire.overlay_http import process_request as overlay_request
from merc.stream.wire.protocol import Connection, RateLimiter, TokenBucket
from merc.stream.wire.server import (
    DEFAULT_MAX_CONNECTIONS,
    MAX_MESSAGE_BYTES,
    SEND_SLICE,
    SERVER_HEADER,
    SHUTDOWN_GRACE_S,
    ServerError,
)

__all__ = ["ENDED", "MEDIA_BURST", "MEDIA_RATE", "SESSION_PATH", "SessionServer"]

log = logging.getLogger(__name__)

SESSION_PATH = "/session"
ENDED = "session ended"  # the last status of a session (its clients are closed with 1000 after it)
MEDIA_RATE = 1000.0  # media frames per second and session (512-sample audio is 31/s in real time, video 5-10/s)
MEDIA_BURST = 5000  # a client may send a few minutes of a file ahead (with --max-queued-seconds to hold it)
WARN_EVERY_S = 1.0  # a session's client hears about dropped media at most this often
_END_OF_AUDIO = MAGIC + bytes([MEDIA_VERSION, AUDIO])  # an audio frame with no samples: the client stopped


class SessionServer:
    """Serve sessions on `models` over WebSocket on HOST:PORT (port 0 picks a free one)."""

    def __init__(self, models: SharedModels, *, host: str = "127.0.0.1", port: int = 8765,
                 tokens: Iterable[str] = (), allow_origins: Iterable[str] = (), max_sessions: int = 8,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, max_queued_seconds: float = 10.0,
                 queue_size: int = 1024, metrics: ServeMetrics | None = None,
                 face_model: Path | None = None) -> None:
        if max_sessions < 1 or max_connections < 1:
            raise ValueError("max_sessions and max_connections must be at least 1")
        self.models = models
        self.host, self.port = host, port
        self.tokens = tuple(t for t in tokens if t)
        self.allow_origins = tuple(allow_origins)
        self.max_sessions = max_sessions
        self.max_connections = max_connections
        self.max_queued_seconds = max_queued_seconds
        self.queue_size = queue_size
        self.metrics = metrics or ServeMetrics()
        self.face_model = face_model
        self.sessions: dict[str, MediaSession] = {}
        self._lock = threading.Lock()  # self.sessions: the loop adds, session threads remove
        self._policies: list[AccessPolicy] = []
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def start(self) -> str:
        """Bind and serve in a background thread; returns the URL once clients can connect."""
        problem = exposure_problem(self.host, self.tokens[0] if self.tokens else None)
        if problem:
            raise ServerError(f"refusing to serve on {self.host}:{self.port}: {problem}")
        self._thread = threading.Thread(target=self._run, name="session-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise ServerError(f"cannot serve on {self.host}:{self.port}: {self._error}") from self._error
        log.info("sessions on %s%s", self.url, SESSION_PATH.lstrip("/"))
        return self.url

    def stop(self) -> None:
        """Close every connection (1001) and end every session (its queued audio is still processed)."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        for session in list(self.sessions.values()):
            session.end()
            session.join(timeout=10)

    def session_count(self) -> int:
        with self._lock:
            return len(self.sessions)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # reported to start()
            self._error = err
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stopping = asyncio.Event()
        async with serve(self._connection, self.host, self.port, max_size=MAX_MESSAGE_BYTES,
                         process_request=self._process_request, server_header=SERVER_HEADER) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._policies = [AccessPolicy.create(self.host, self.port, t, self.allow_origins)
                              for t in self.tokens or (None,)]
            self._ready.set()
            await self._stopping.wait()
            server.close(close_connections=True)
            try:
                await asyncio.wait_for(asyncio.shield(server.wait_closed()), SHUTDOWN_GRACE_S)
            except TimeoutError:
                for connection in server.all_connections:
                    if connection.transport is not None:
                        connection.transport.abort()
                await server.wait_closed()

    # -- handshakes -------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        upgrade = any("websocket" in v.lower() for v in request.headers.get_all("Upgrade"))
        if not upgrade:
            if path == "/healthz":
                return _json_response(200, {"status": "ok", "sessions": self.session_count(),
                                            "max_sessions": self.max_sessions})
            if path == "/metrics":
                return self._metrics_response()
            return overlay_request(connection, request)
        if not self._policies:
            return connection.respond(503, "starting\n")
        denial = self._denial(request)
        if denial is not None:
            log.info("refused a connection: %d %s", denial.status, denial.reason)
            response = connection.respond(denial.status, denial.reason + "\n")
            if denial.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if self._open >= self.max_connections:
            return _busy(connection, "too many connections")
        if path == SESSION_PATH and self.session_count() >= self.max_sessions:
            self.metrics.refused.inc()
            log.info("refused a session: %d sessions open (--max-sessions)", self.max_sessions)
            return _busy(connection, f"{self.max_sessions} sessions open (the server's maximum)")
        if path not in (SESSION_PATH, "/"):
            return connection.respond(404, f"not found: sessions are at {SESSION_PATH}\n")
        return None

    def _denial(self, request: Request) -> Denial | None:
        """None when any token's policy admits the handshake (each token is one client's or room's)."""
        denials = [policy.check(request.path, request.headers) for policy in self._policies]
        if any(d is None for d in denials):
            return None
        return next((d for d in denials if d is not None and d.status == 403), denials[0])

    def _metrics_response(self) -> Response:
        with self._lock:
            queued = sum(s.source.queued_seconds for s in self.sessions.values())
        body = self.metrics.render(queued, self.models.queue_depth, self.models.partials_shed)
        headers = Headers([("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-cache"), ("Connection", "close")])
        return Response(200, "OK", headers, body)

    # -- connections ------------------------------------------------------------------------------

    async def _connection(self, websocket: ServerConnection) -> None:
        request_path = websocket.request.path if websocket.request else "/"
        self._open += 1
        try:
            if urlsplit(request_path).path == SESSION_PATH:
                await self._media_connection(websocket, request_path)
            else:
                await self._watch_connection(websocket, request_path)
        except Exception as err:  # a connection's failure ends that connection only
            log.debug("connection closed: %s", err)
        finally:
            self._open -= 1

    async def _media_connection(self, websocket: ServerConnection, path: str) -> None:
        loop = asyncio.get_running_loop()
        session_id = f"s-{secrets.token_hex(6)}"
        media = MediaSession(session_id, self.models, self.max_queued_seconds, on_done=self._ended,
                             face_model=self.face_model)
        with self._lock:
            self.sessions[session_id] = media
        media.bus.subscribe(self.metrics.observe_event)
        self.metrics.sessions_started.inc()
        self.metrics.sessions.inc()
        log.info("session %s started (%d open)", session_id, self.session_count())
        client = self._client(websocket, media)
        subscription = self._subscribe(loop, client, media.bus)
        media.start()
        frames = TokenBucket(MEDIA_RATE, MEDIA_BURST)
        warned = _Warnings()
        try:
            await self._open_client(client, media.bus, path)
            sender = asyncio.create_task(self._send_loop(client))
            try:
                async for message in websocket:
                    if isinstance(message, bytes):
                        self._media(client, media, message, frames, warned, loop.time())
                    else:
                        await self._message(client, media.bus, message, loop.time())
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            media.bus.unsubscribe(subscription)
            media.end()  # the client is gone: what it sent is still processed, then the thread ends

    def _media(self, client: _Client, media: MediaSession, message: bytes, frames: TokenBucket, warned: _Warnings,
               now: float) -> None:
        """One binary frame: into the session, or dropped with a (throttled) error to the client."""
        problem = None
        if message[:4] == _END_OF_AUDIO and len(message) == HEADER.size:  # never dropped: it ends the session
            media.end()
            return
        if not frames.take(now):
            problem = f"more than {MEDIA_RATE:g} frames/s"
        else:
            try:
                frame = parse_frame(message)
            except MediaFrameError as err:
                problem = str(err)
            else:
                dropped = media.source.dropped_seconds
                media.push(frame)
                if frame.kind == VIDEO:
                    self.metrics.video.inc()
                if media.source.dropped_seconds > dropped:
                    self.metrics.dropped.inc(media.source.dropped_seconds - dropped)
                    if warned.due("audio", now):
                        self._direct(client, media.bus, error("audio_dropped", seconds=media.source.dropped_seconds))
                return
        if warned.due("media", now):
            self._direct(client, media.bus, error("bad_media", problem=problem))

    async def _watch_connection(self, websocket: ServerConnection, path: str) -> None:
        """A watcher of `?session=ID`; without one (or an unknown id) it gets its hello and an error."""
        loop = asyncio.get_running_loop()
        wanted = parse_qs(urlsplit(path).query).get("session", [""])[0]
        with self._lock:
            media = self.sessions.get(wanted)
        if media is None:
            problem = stamp(error("no_session"), seq=0, session="none", sent=time.time(), direct=True)
            await websocket.send(json.dumps(problem))
            await websocket.close(1008, "no such session")
            return
        client = self._client(websocket, media)
        subscription = self._subscribe(loop, client, media.bus)
        try:
            await self._open_client(client, media.bus, path)
            sender = asyncio.create_task(self._send_loop(client))
            try:
                async for message in websocket:
                    if isinstance(message, str):
                        await self._message(client, media.bus, message, loop.time())
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            media.bus.unsubscribe(subscription)

    def _client(self, websocket: ServerConnection, media: MediaSession) -> _Client:
        protocol = Connection(media.id, Hello.of(media.session.hello()), on_control=media.session.control,
                              limiter=RateLimiter())
        return _Client(websocket, protocol, ClientQueue(self.queue_size))

    def _subscribe(self, loop: asyncio.AbstractEventLoop, client: _Client,
                   bus: EventBus) -> Callable[[dict[str, Any]], None]:
        def deliver(event: dict[str, Any]) -> None:  # on the session's thread: one hand-off, never blocks
            try:
                loop.call_soon_threadsafe(self._push, client, event)
            except RuntimeError:  # the loop closed
                pass

        bus.subscribe(deliver)
        return deliver

    def _push(self, client: _Client, event: dict[str, Any]) -> None:
        if event.get("type") == "status" and str(event.get("message", "")).startswith(ENDED):
            client.ending = True  # closed (1000) once everything before it is sent
        if client.queue.push(Outgoing.of(event)):
            client.ready.set()
        elif client.closing is None:
            client.closing = asyncio.ensure_future(client.websocket.close(1008, "client too slow"))

    async def _open_client(self, client: _Client, bus: EventBus, path: str) -> None:
        opened = client.protocol.open(path, last_seq=bus.last_seq, sent=time.time())
        for reply in opened.replies:
            await client.websocket.send(json.dumps(reply))
        if opened.resume is not None:
            client.queue.resume(Outgoing.of(e) for e in bus.history(opened.resume, self.queue_size))
            client.ready.set()

    async def _message(self, client: _Client, bus: EventBus, message: str, now: float) -> None:
        outcome = client.protocol.receive(message, now=now, sent=time.time(), last_seq=bus.last_seq)
        if outcome.resume is not None:
            client.queue.resume(Outgoing.of(e) for e in bus.history(outcome.resume, self.queue_size))
            client.ready.set()
        for reply in outcome.replies:
            await client.websocket.send(json.dumps(reply))
        if outcome.close is not None:
            await client.websocket.close(outcome.close.code, outcome.close.reason)

    def _direct(self, client: _Client, bus: EventBus, event: Any) -> None:
        """A reply to this client alone, ahead of its queue (sent from the loop, not awaited here)."""
        reply = stamp(event, seq=bus.last_seq, session=bus.session, sent=time.time(), direct=True)
        asyncio.ensure_future(client.websocket.send(json.dumps(reply)))

    @staticmethod
    async def _send_loop(client: _Client) -> None:
        while True:
            if not len(client.queue):
                if client.ending:  # its session ended and everything was sent: nothing more will come
                    await client.websocket.close(1000, ENDED)
                    return
                client.ready.clear()
                await client.ready.wait()
                continue
            for _ in range(SEND_SLICE):
                item = client.queue.pop()
                if item is None:
                    break
                await client.websocket.send(item.text)
            await asyncio.sleep(0)

    def _ended(self, media: MediaSession) -> None:
        """A session's pipeline finished (on its thread): say so to its clients and forget it."""
        media.bus.publish({"type": "status", "devices": {"microphone": False},
                           "message": f"{ENDED}: {media.pipeline.turns} turns"})
        with self._lock:
            self.sessions.pop(media.id, None)
        self.metrics.sessions.dec()


@dataclass(eq=False)
class _Client:
    websocket: ServerConnection
    protocol: Connection
    queue: ClientQueue
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Future[None] | None = None
    ending: bool = False
    """Its session ended: close the connection once the queue is sent."""


@dataclass
class _Warnings:
    """When a connection was last told about each kind of dropped media."""

    last: dict[str, float] = field(default_factory=dict)

    def due(self, kind: str, now: float) -> bool:
        if now - self.last.get(kind, -WARN_EVERY_S) < WARN_EVERY_S:
            return False
        self.last[kind] = now
        return True


def _busy(connection: ServerConnection, reason: str) -> Response:
    response = connection.respond(503, f"{reason}: try again later\n")
    response.headers["Retry-After"] = "5"
    return response


def _json_response(status: int, body: dict[str, Any]) -> Response:
    data = (json.dumps(body) + "\n").encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Cache-Control", "no-cache"), ("Connection", "close")])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)
