"""The WebSocket service: every published event goes to every connected client.

Runs its own asyncio loop in a thread, so the pipeline thread never waits on a socket: the bus
hands each event to the loop once (`call_soon_threadsafe`, whatever the number of clients), the
loop serialises it once and pushes it into each connection's bounded queue (delivery.py), and
each connection drains its own queue. This is the I/O shell only: what a client's message means
and what it gets back is decided by its sans-I/O `protocol.Connection`, which this module feeds
frames and the time, and whose `Outcome` it carries out.

Client messages (JSON objects; parsed in protocol.py, typed in messages.py):
    {"type": "hello", "since": N}   resume: resend the kept events with seq > N, then go live
    {"type": "ping"}                answered with {"type": "pong"}
    {"type": "control", "action": "reset" | "pause" | "resume"}
A client may also resume by connecting to ws://HOST:PORT/?since=N. N is 1-18 ASCII digits, given
once (in JSON: an integer 0 <= N < 10**18); anything else (a Unicode digit, a sign, 19+ digits, two
`since` parameters) gets an `error` event (code bad_message, "since" in its message) and the
connection goes on live without a resume. Anything malformed or unknown gets an `error` event back
(code bad_json, bad_message, unknown_type); a control gets one when it was not done
(control_unavailable without a session handler, control_failed when the handler raised, else the
problem code the handler returned). Errors carry a code and a fixed message from messages.ERRORS,
never exception text or a path. The connection and the session go on.

Access (the opening handshake, in this order; access.py):
    - HTTP 429 (with Retry-After): the client's address failed the token `MAX_AUTH_FAILURES` (10)
      times within 60 s; it is refused, whatever it sends, for 60 s. Addresses are counted by IP
      (IPv6 by /64); at most 4,096 are remembered, the least recently failing forgotten first.
    - Binds 127.0.0.1 by default. Any other host needs a token (refused at start without one); a
      client gives it as ws://HOST:PORT/?token=T or an `Authorization: Bearer T` header. HTTP 401
      unless there is exactly one token: a missing or wrong one, two `token` parameters, two bearer
      headers, or a query token and a header that differ are all refused (the same token in both is
      fine). It is compared in constant time (hmac.compare_digest). On loopback without a token the
      service is open.
    - Browsers: a handshake whose Origin is not the server's own (http(s)://localhost|127.0.0.1|
      [::1]:PORT on loopback, else the Host connected to) or in `allow_origins` is answered HTTP 403.
      No Origin (a non-browser client) is allowed.
    - HTTP 503 (Retry-After: 5) beyond `max_connections` open WebSocket connections, server-wide
      (default `DEFAULT_MAX_CONNECTIONS`, 256; `--max-connections`). Also 503 "starting" before the
      server is ready.
    - websockets itself answers 414/431 to a request line or headers over 8 KiB, and gives up on a
      handshake not done within 10 s.
    - Plain HTTP requests (not upgrades) go to `process_request` (the overlay's static files, sent
      with a Content-Security-Policy and Referrer-Policy: no-referrer; overlay_http.py), which carry
      no events and need no token. Every response says `Server: merc-live`, no library or version.

Limits and close codes:
    - A message over 64 KiB closes the connection with 1009 (message too big): websockets enforces
      it while reading the frame, before it is buffered whole.
    - Each connection may send 20 messages/s (bursts of 40). Beyond that messages are dropped and an
      `error` event with code "rate_limited" says so (at most once a second); the connection stays.
      A client that keeps flooding (400 messages over the rate) is closed with 1008 "rate limit
      exceeded".
    - Resumes: a resume resends at most the last `RESUME_LIMIT` (1,000) events the server keeps;
      when the client asked for older ones, an `error` event with code "resume_truncated" ("only the
      last 1000 events are resent: events A-B are not") comes first. A resume on an open connection
      never resends what that connection was already sent. Each connection may resume (a `hello`
      with since, after the one in its handshake) 1/s, bursts of 3; beyond that the resume is not
      served and an `error` (code rate_limited, about resumes) says so, at most once a second.
      Resent events are paced server-wide at `BACKLOG_RATE` (10,000 events/s, all connections
      together; live events are not paced), and every connection sends at most `SEND_SLICE` (32)
      events before it yields the loop, so replays to some clients cannot hold up live delivery to
      the others. The kept events are serialised once, when published, and a resume slices them
      from the newest end (no copy of the bus's history per resume).
    - Each connection has a bounded queue (`queue_size` events). When it is full the oldest
      non-final events (turn.partial, status, published errors) are dropped first, never a `turn`
      or a `turn.update`;
      when it is full of turns the client is closed with 1008 "client too slow: ...". Its backlog
      (what a resume asked for) is not counted.
    - 1001 (going away) when the server stops; 1000 when the client closes. A connection is never
      closed with 1011: a failure while serving one connection ends that connection only, and is
      logged at debug level without reaching the client.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import State

from merc.models.errors import MercError
from merc.stream.wire.access import AccessPolicy, FailureThrottle, exposure_problem
from merc.stream.wire.delivery import ClientQueue, Outgoing
from merc.stream.wire.events import EventBus
from merc.stream.wire.messages import ControlHandler, Hello, error, stamp
from merc.stream.wire.protocol import Connection, Outcome, RateLimiter, TokenBucket

__all__ = ["BACKLOG_RATE", "DEFAULT_MAX_CONNECTIONS", "MAX_AUTH_FAILURES", "MAX_MESSAGE_BYTES", "RESUME_LIMIT",
           "SEND_BUFFER_BYTES", "SEND_SLICE", "SERVER_HEADER", "SHUTDOWN_GRACE_S", "EventServer", "ProcessRequest",
           "ServerError"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
# The kernel's send buffer per connection, fixed instead of autotuned (up to MiBs): a client that stops
# reading is noticed after this much plus its queue, and holds no more memory than that.
SEND_BUFFER_BYTES = 128 * 1024
# On shutdown only: how long open connections get for their closing handshake before their sockets
# are dropped (in normal operation a dropped client keeps websockets' full close_timeout, so that
# it can still read why it was closed).
SHUTDOWN_GRACE_S = 1.0
DEFAULT_MAX_CONNECTIONS = 256  # open WebSocket connections, server-wide; beyond: 503 at the handshake
MAX_AUTH_FAILURES = 10  # wrong or ambiguous tokens per client address within AUTH_WINDOW_S, then 429 ...
AUTH_WINDOW_S = 60.0
AUTH_BLOCK_S = 60.0  # ... for this long
AUTH_TABLE_SIZE = 4096  # client addresses remembered (least recently failing forgotten first)
RESUME_LIMIT = 1000  # a resume resends at most the last this many events (and says what it left out)
BACKLOG_RATE = 10_000.0  # resent events per second, all connections together (live events are not paced)
SEND_SLICE = 32  # events a connection sends before it lets the loop serve others
SERVER_HEADER = "merc-live"  # the Server header: no library or version

ProcessRequest = Callable[[ServerConnection, Request], Response | None]


class ServerError(MercError, RuntimeError):
    """The server could not start (the message names the address)."""

    code = "server_start"


class EventServer:
    """Serve `bus` over WebSocket on HOST:PORT (port 0 picks a free one; see `url`).

    `hello` is the session's description ({"labels", "model", "modalities"}); `on_control` its
    handler for client controls (see `messages.ControlHandler`).
    """

    def __init__(self, bus: EventBus, hello: Mapping[str, Any], host: str = "127.0.0.1", port: int = 8765,
                 queue_size: int = 1024, on_control: ControlHandler | None = None,
                 process_request: ProcessRequest | None = None, token: str | None = None,
                 allow_origins: Iterable[str] = (), rate: float = 20.0, burst: int = 40,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, max_auth_failures: int = MAX_AUTH_FAILURES,
                 resume_limit: int = RESUME_LIMIT, backlog_rate: float = BACKLOG_RATE) -> None:
        if max_connections < 1 or resume_limit < 1 or backlog_rate <= 0:
            raise ValueError("max_connections, resume_limit and backlog_rate must be positive")
        self.bus = bus
        self.token = token or None
        self.allow_origins = tuple(allow_origins)
        self.rate, self.burst = rate, burst
        self.process_request = process_request  # websockets' hook: plain HTTP on the same port (the overlay)
        self.hello = dict(hello)
        self._hello = Hello.of(hello)
        self.host = host
        self.port = port
        self.queue_size = queue_size
        self.on_control = on_control
        self.connections = 0
        self.max_connections = max_connections
        self.resume_limit = resume_limit
        self._clients: set[_Client] = set()
        self._admitted: set[ServerConnection] = set()  # past the handshake's checks, until their handler ends
        self._throttle = FailureThrottle(max_auth_failures, AUTH_WINDOW_S, AUTH_BLOCK_S, AUTH_TABLE_SIZE)
        # the last `resume_limit` events as sent, on the loop: a resume slices it, never copies the bus
        self._recent: deque[Outgoing] = deque(maxlen=resume_limit)
        self._pacer = TokenBucket(backlog_rate, 2 * resume_limit)
        self._access: AccessPolicy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> str:
        """Bind and serve in a background thread; returns the URL once clients can connect.
        Refuses (ServerError) a host beyond loopback without a token."""
        problem = exposure_problem(self.host, self.token)
        if problem:
            raise ServerError(f"refusing to serve on {self.host}:{self.port}: {problem}")
        self._thread = threading.Thread(target=self._run, name="event-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise ServerError(f"cannot serve on {self.host}:{self.port}: {self._error}") from self._error
        log.info("events on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Close every connection (code 1001, going away; sockets still closing after
        `SHUTDOWN_GRACE_S` are dropped) and the listening socket."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def task_count(self, timeout: float = 5.0) -> int:
        """How many asyncio tasks the server's loop holds now (thread-safe; for leak checks)."""
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1  # not this one

        if self._loop is None or self._loop.is_closed():
            return 0
        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(timeout)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # reported to start(); the thread must not die silently
            self._error = err
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()

        def deliver(event: dict[str, Any]) -> None:  # on the publishing thread: one O(1) hand-off, never blocks
            try:
                loop.call_soon_threadsafe(self._fan_out, event)
            except RuntimeError:  # the loop closed while this publish was under way
                pass

        async with serve(self._connection, self.host, self.port, max_size=MAX_MESSAGE_BYTES,
                         process_request=self._process_request, server_header=SERVER_HEADER) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._access = AccessPolicy.create(self.host, self.port, self.token, self.allow_origins)
            kept = self.bus.subscribe(deliver, since=0, limit=self.resume_limit)
            self._recent.extend(Outgoing.of(event) for event in kept)
            self._ready.set()
            try:
                await self._stopping.wait()
            finally:
                self.bus.unsubscribe(deliver)
            server.close(close_connections=True)
            try:  # each open connection gets a closing handshake (1001), for a while
                await asyncio.wait_for(asyncio.shield(server.wait_closed()), SHUTDOWN_GRACE_S)
            except TimeoutError:  # a client that stopped reading would hold it for close_timeout
                stuck = [c for c in server.all_connections if c.transport is not None]
                log.info("shutting down: aborting %d connection(s) still closing after %.1f s",
                         len(stuck), SHUTDOWN_GRACE_S)
                for connection in stuck:
                    connection.transport.abort()
                await server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a WebSocket handshake from an address that keeps failing the token (429), without
        exactly one right token (401), from a foreign Origin (403) or beyond `max_connections` (503);
        hand everything else to `process_request` (None: go on with the handshake)."""
        if not any("websocket" in value.lower() for value in request.headers.get_all("Upgrade")):
            return self.process_request(connection, request) if self.process_request is not None else None
        if self._access is None:
            return connection.respond(503, "starting\n")
        address, now = _peer(connection), time.monotonic()
        wait = self._throttle.retry_after(address, now)
        if wait:
            log.info("refused a connection: 429 (%s failed the token too often)", address)
            response = connection.respond(429, "too many failed attempts: try again later\n")
            response.headers["Retry-After"] = str(wait)
            return response
        denial = self._access.check(request.path, request.headers)
        if denial is not None:
            log.info("refused a connection: %d %s", denial.status, denial.reason)
            response = connection.respond(denial.status, denial.reason + "\n")
            if denial.status == 401:
                self._throttle.fail(address, now)
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}  # failed after admission
        if len(self._admitted) >= self.max_connections:
            log.info("refused a connection: 503 (%d connections open)", len(self._admitted))
            response = connection.respond(503, "too many connections: try again later\n")
            response.headers["Retry-After"] = "5"
            return response
        if self.process_request is not None and (answer := self.process_request(connection, request)) is not None:
            return answer
        self._admitted.add(connection)
        return None

    def _fan_out(self, event: dict[str, Any]) -> None:  # on the loop: serialised once for every client
        item = Outgoing.of(event)
        self._remember(item)
        for client in list(self._clients):
            if client.queue.push(item):
                client.ready.set()
            else:
                self._drop(client, f"client too slow: {client.queue.capacity} turns queued")

    def _remember(self, item: Outgoing) -> None:
        if not self._recent or item.seq > self._recent[-1].seq:
            self._recent.append(item)
        elif all(kept.seq != item.seq for kept in self._recent):  # published concurrently, delivered late
            ordered = sorted([*self._recent, item], key=lambda kept: kept.seq)
            self._recent = deque(ordered[-self.resume_limit:], maxlen=self.resume_limit)

    def _backlog(self, client: _Client, since: int) -> tuple[list[Outgoing], dict[str, Any] | None]:
        """The kept events `client` has not been sent with seq > `since` (at most `resume_limit`, read
        from the newest end), and the notice to send first when older ones it asked for are not kept."""
        since = max(since, client.queue.last_seq)
        newest_first: list[Outgoing] = []
        for item in reversed(self._recent):
            if item.seq <= since:
                break
            newest_first.append(item)
        backlog = newest_first[::-1]
        notice = None
        if backlog and backlog[0].seq > since + 1:
            problem = error("resume_truncated", count=len(backlog), first=since + 1, last=backlog[0].seq - 1)
            notice = stamp(problem, seq=self.bus.last_seq, session=self.bus.session, sent=time.time(), direct=True)
        return backlog, notice

    def _drop(self, client: _Client, reason: str, code: int = 1008) -> None:
        """Stop feeding `client` and close it without waiting on its socket here."""
        self._clients.discard(client)
        client.protocol.closing = True
        if client.closing is None:
            log.info("closing a connection: %s", reason)
            client.closing = asyncio.ensure_future(client.websocket.close(code, reason))

    async def _connection(self, websocket: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        protocol = Connection(self.bus.session, self._hello, on_control=self.on_control,
                              limiter=RateLimiter(self.rate, self.burst))
        client = _Client(websocket, protocol, ClientQueue(self.queue_size))
        # registered and given its backlog in one step on the loop: nothing published falls between
        self._clients.add(client)
        opened = protocol.open(websocket.request.path if websocket.request else "/", last_seq=self.bus.last_seq,
                               sent=time.time())
        notice = None
        if opened.resume is not None:
            backlog, notice = self._backlog(client, opened.resume)
            client.queue.resume(backlog)
        self.connections += 1
        _limit_send_buffer(websocket)
        sender = None
        try:
            await self._send_replies(client, opened)
            if notice is not None:
                await client.websocket.send(json.dumps(notice))
            sender = asyncio.create_task(self._send_loop(client))
            async for message in websocket:
                if client.closing is not None:  # read on, unanswered, so the closing handshake gets through
                    continue
                outcome = protocol.receive(message, now=loop.time(), sent=time.time(), last_seq=self.bus.last_seq)
                await self._apply_resume(client, outcome)
                await self._send_replies(client, outcome)
                if outcome.close is not None:
                    self._drop(client, outcome.close.reason, outcome.close.code)
        except Exception as err:  # a connection's failure ends that connection only
            log.debug("connection closed: %s", err)
        finally:
            self._clients.discard(client)
            self._admitted.discard(websocket)
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            if client.closing is not None:
                await asyncio.gather(client.closing, return_exceptions=True)
            self.connections -= 1

    async def _apply_resume(self, client: _Client, outcome: Outcome) -> None:
        if outcome.resume is not None:
            backlog, notice = self._backlog(client, outcome.resume)
            if notice is not None:  # ahead of the events it is about
                await client.websocket.send(json.dumps(notice))
            client.queue.resume(backlog)
            client.ready.set()

    @staticmethod
    async def _send_replies(client: _Client, outcome: Outcome) -> None:
        for reply in outcome.replies:  # direct replies go ahead of the queue: they are about now
            await client.websocket.send(json.dumps(reply))

    async def _send_loop(self, client: _Client) -> None:
        """Send what `client` is owed, a slice at a time, yielding the loop between slices; resent
        events wait for the server-wide backlog pace, so replays cannot crowd out live delivery."""
        loop = asyncio.get_running_loop()
        while True:
            if not len(client.queue):
                client.ready.clear()
                await client.ready.wait()
                continue
            resent = min(SEND_SLICE, client.queue.backlog)
            if resent:
                delay = self._pacer.reserve(resent, loop.time())
                if delay > 0:
                    await asyncio.sleep(delay)
            for _ in range(SEND_SLICE):
                item = client.queue.pop()
                if item is None:
                    break
                await client.websocket.send(item.text)
            await asyncio.sleep(0)

    def handle(self, message: str | bytes) -> tuple[dict[str, Any] | None, int | None]:
        """The reply to one client message (None: nothing to say), and the seq to resume after (if it
        asked), as a fresh connection would answer it (no rate limit). Never raises: whatever a client
        sends, the connection and the session go on."""
        protocol = Connection(self.bus.session, self._hello, on_control=self.on_control)
        outcome = protocol.handle(message, sent=time.time(), last_seq=self.bus.last_seq)
        return outcome.reply, outcome.resume


@dataclass(eq=False)
class _Client:
    """One connection's state on the server's loop: its socket, protocol state and queue."""

    websocket: ServerConnection
    protocol: Connection
    queue: ClientQueue
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Future[None] | None = None


def _peer(connection: ServerConnection) -> str | None:
    """The client's IP address (what the token throttle counts by)."""
    try:
        address = connection.remote_address
    except (AttributeError, OSError):
        return None
    return str(address[0]) if isinstance(address, tuple) and address else None


def _limit_send_buffer(websocket: ServerConnection) -> None:
    sock = websocket.transport.get_extra_info("socket") if websocket.transport else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:  # not a TCP socket (a test transport): nothing to limit
            pass
