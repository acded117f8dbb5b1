"""The WebSocket service: every published event goes to every connected client.

Runs its own asyncio loop in a thread, so the pipeline thread never waits on a socket: the bus
hands each event to the loop (`call_soon_threadsafe`) and each connection drains its own bounded
queue. A client that cannot keep up is disconnected with a reason instead of slowing anyone.

Client messages (JSON objects):
    {"type": "hello", "since": N}   resume: resend the kept events with seq > N, then go live
    {"type": "ping"}                answered with {"type": "pong"}
    {"type": "control", "action": "reset" | "pause" | "resume"}
A client may also resume by connecting to ws://HOST:PORT/?since=N. Anything malformed or unknown
gets an `error` event back; the connection stays open.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from .events import PROTOCOL_VERSION, EventBus

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024


class ServerError(RuntimeError):
    """The server could not start (the message names the address)."""


class EventServer:
    """Serve `bus` over WebSocket on HOST:PORT (port 0 picks a free one; see `url`)."""

    def __init__(self, bus: EventBus, hello: dict[str, Any], host: str = "127.0.0.1", port: int = 8765,
                 queue_size: int = 1024, on_control: Callable[[str], str | None] | None = None,
                 process_request: Callable | None = None) -> None:
        self.bus = bus
        self.process_request = process_request  # websockets' hook: plain HTTP on the same port (the overlay)
        self.hello = hello
        self.host = host
        self.port = port
        self.queue_size = queue_size
        self.on_control = on_control
        self.connections = 0
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
        """Bind and serve in a background thread; returns the URL once clients can connect."""
        self._thread = threading.Thread(target=self._run, name="event-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise ServerError(f"cannot serve on {self.host}:{self.port}: {self._error}") from self._error
        log.info("events on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Close every connection (code 1001, going away) and the listening socket."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

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

        self._stopping = asyncio.Event()
        async with serve(self._connection, self.host, self.port, max_size=MAX_MESSAGE_BYTES,
                         process_request=self.process_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopping.wait()
            server.close(close_connections=True)
            await server.wait_closed()

    def _stamp(self, body: dict) -> dict:
        """A reply to this connection only (hello, pong, error): `direct`, with the last published seq."""
        return {"v": PROTOCOL_VERSION, "seq": self.bus.last_seq, "session": self.bus.session,
                "sent": round(time.time(), 3), "direct": True, **body}

    async def _connection(self, websocket) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.queue_size)

        def enqueue(event: dict) -> None:  # on the loop
            if queue.full():
                asyncio.ensure_future(websocket.close(1008, "client too slow: event queue full"))
                return
            queue.put_nowait(event)

        def deliver(event: dict) -> None:  # on the pipeline thread
            loop.call_soon_threadsafe(enqueue, event)

        since = _since_from_path(websocket.request.path if websocket.request else "/")
        backlog = self.bus.subscribe(deliver, since=since)
        self.connections += 1
        sender = None
        try:
            await websocket.send(json.dumps(self._stamp({"type": "hello", "last_seq": self.bus.last_seq,
                                                         **self.hello})))
            for event in backlog:
                enqueue(event)
            sender = asyncio.create_task(self._send_loop(websocket, queue))
            async for message in websocket:
                reply, resume = self._handle(message)
                if resume is not None:
                    for event in self.bus.history(since=resume):
                        enqueue(event)
                if reply is not None:
                    await websocket.send(json.dumps(reply))
        except Exception as err:  # a connection's failure ends that connection only
            log.debug("connection closed: %s", err)
        finally:
            self.bus.unsubscribe(deliver)
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            self.connections -= 1

    async def _send_loop(self, websocket, queue: asyncio.Queue) -> None:
        sent = 0
        while True:
            event = await queue.get()
            if event["seq"] <= sent:  # a resume can overlap what was already sent
                continue
            await websocket.send(json.dumps(event))
            sent = event["seq"]

    def _handle(self, message: str | bytes) -> tuple[dict | None, int | None]:
        """The reply to one client message, and the seq to resume after (if it asked)."""
        try:
            data = json.loads(message)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return self._stamp({"type": "error", "code": "bad_json", "message": f"not JSON: {err}"}), None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return self._stamp({"type": "error", "code": "bad_message",
                                "message": "a message is a JSON object with a string \"type\""}), None
        kind = data["type"]
        if kind == "ping":
            return self._stamp({"type": "pong"}), None
        if kind in ("hello", "subscribe"):
            since = data.get("since", 0)
            if not isinstance(since, int) or isinstance(since, bool) or since < 0:
                return self._stamp({"type": "error", "code": "bad_message",
                                    "message": "\"since\" must be a non-negative integer seq"}), None
            return None, since
        if kind == "control":
            action = data.get("action")
            if action not in ("reset", "pause", "resume"):
                return self._stamp({"type": "error", "code": "bad_message",
                                    "message": "control action must be reset, pause or resume"}), None
            problem = self.on_control(action) if self.on_control else "control is not available in this session"
            if problem:
                return self._stamp({"type": "error", "code": "control_failed", "message": problem}), None
            return None, None
        return self._stamp({"type": "error", "code": "unknown_type", "message": f"unknown message type {kind!r}"}), None


def _since_from_path(path: str) -> int | None:
    values = parse_qs(urlparse(path).query).get("since")
    if values and values[0].isdigit():
        return int(values[0])
    return None
