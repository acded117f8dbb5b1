"""The event service's defences: token, Origin, message size, rate limit, slow clients, leaks.

The queue, rate and access policies are sans-I/O and tested directly; the rest runs a real server
on loopback with real websockets clients (a slow client is a raw socket speaking websockets'
sans-I/O ClientProtocol, so it can stop reading for real).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.uri import parse_uri

from merc.stream.wire.access import AccessPolicy, exposure_problem, is_loopback
from merc.stream.wire.delivery import ClientQueue, Outgoing
from merc.stream.wire.events import EventBus
from merc.stream.wire.protocol import Admission, RateLimiter
from merc.stream.wire.server import MAX_MESSAGE_BYTES, EventServer, ServerError

HELLO = {"labels": ["neutral", "joy"], "model": {"label_set": "test"}, "modalities": ["text"]}


def turn(i: int, text: str = "") -> dict:
    return {"type": "turn", "turn": i, "text": text}


def event(seq: int, kind: str) -> dict:
    return {"seq": seq, "type": kind}


# ---- sans-I/O policies ----------------------------------------------------------------------------

def test_a_full_queue_drops_the_oldest_partials_never_turns_then_gives_up():
    queue = ClientQueue(3)
    for seq, kind in ((1, "turn"), (2, "turn.partial"), (3, "status")):
        assert queue.push(Outgoing.of(event(seq, kind)))
    assert queue.push(Outgoing.of(event(4, "turn")))  # drops 2, the oldest partial
    assert queue.push(Outgoing.of(event(5, "turn")))  # drops 3
    assert queue.dropped == 2
    assert queue.push(Outgoing.of(event(6, "turn.partial")))  # nothing droppable queued: the new partial goes
    assert queue.dropped == 3
    assert not queue.push(Outgoing.of(event(7, "turn")))  # full of turns: this client cannot catch up
    assert queue.overflowed and not queue.push(Outgoing.of(event(8, "status")))
    assert [queue.pop().seq for _ in range(3)] == [1, 4, 5] and queue.pop() is None


def test_a_resume_is_sent_first_replaces_the_previous_one_and_never_repeats_a_seq():
    queue = ClientQueue(2)
    queue.push(Outgoing.of(event(5, "turn")))
    queue.resume([Outgoing.of(event(s, "turn")) for s in range(1, 6)])
    queue.resume([Outgoing.of(event(s, "turn")) for s in range(3, 6)])  # the latest since wins
    assert len(queue) == 4  # the backlog is not held against the capacity
    assert [queue.pop().seq for _ in range(3)] == [3, 4, 5] and queue.pop() is None  # live 5 already sent
    assert json.loads(Outgoing.of(event(9, "turn")).text) == event(9, "turn")


def test_the_rate_limiter_allows_bursts_warns_once_a_second_and_closes_on_persistent_abuse():
    limiter = RateLimiter(rate=10, burst=5, abuse=20)
    assert [limiter.admit(0.0) for _ in range(5)] == [Admission.ACCEPT] * 5
    assert limiter.admit(0.0) is Admission.DROP_AND_WARN
    assert limiter.admit(0.01) is Admission.DROP  # warned less than a second ago
    assert limiter.admit(0.2) is Admission.ACCEPT  # refilled at 10/s
    assert limiter.admit(1.2) is Admission.ACCEPT and limiter.admit(1.2) is Admission.ACCEPT
    verdicts = [limiter.admit(1.2) for _ in range(40)]
    assert Admission.DROP_AND_WARN in verdicts and verdicts[-1] is Admission.CLOSE


def test_access_needs_the_token_in_the_query_or_a_bearer_header():
    policy = AccessPolicy.create("0.0.0.0", 8765, token="s3cret")
    assert policy.check("/?token=s3cret", Headers()) is None
    assert policy.check("/", Headers({"Authorization": "Bearer s3cret"})) is None
    for path, headers in (("/", Headers()), ("/?token=s3cre", Headers()), ("/?token=", Headers()),
                          ("/", Headers({"Authorization": "Basic s3cret"})), ("/?since=1", Headers())):
        assert policy.check(path, headers).status == 401
    assert AccessPolicy.create("127.0.0.1", 8765).check("/", Headers()) is None  # loopback: open


def test_origins_are_the_servers_own_or_allowed_and_a_rebound_name_is_not():
    local = AccessPolicy.create("127.0.0.1", 8765, allow_origins=["https://Studio.example/"])
    for origin in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765", "https://studio.example"):
        assert local.check("/", Headers({"Origin": origin})) is None, origin
    for origin in ("http://evil.example:8765", "http://127.0.0.1:9999", "null", "file://", "http://localhost"):
        assert local.check("/", Headers({"Origin": origin, "Host": "evil.example:8765"})).status == 403, origin
    exposed = AccessPolicy.create("0.0.0.0", 8765, token="t")
    assert exposed.check("/?token=t", Headers({"Origin": "http://box.lan:8765", "Host": "box.lan:8765"})) is None
    assert exposed.check("/?token=t", Headers({"Origin": "http://other:8765", "Host": "box.lan:8765"})).status == 403
    assert AccessPolicy.create("127.0.0.1", 1, allow_origins=["*"]).check("/", Headers({"Origin": "null"})) is None


def test_only_loopback_hosts_may_go_without_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not any(is_loopback(h) for h in ("0.0.0.0", "", "::", "192.168.1.2", "box.lan"))
    assert exposure_problem("127.0.0.1", None) is None and exposure_problem("0.0.0.0", "t") is None
    assert "--token" in exposure_problem("0.0.0.0", None)


# ---- a real server ---------------------------------------------------------------------------------

@pytest.fixture
def served():
    servers = []

    def start(**options) -> tuple[EventBus, EventServer]:
        bus = EventBus("hardening")
        server = EventServer(bus, HELLO, **{"port": 0, **options})
        server.start()
        servers.append(server)
        return bus, server

    yield start
    for server in servers:
        server.stop()


async def refused(url: str, **options) -> int:
    with pytest.raises(InvalidStatus) as err:
        async with connect(url, **options):
            pass
    return err.value.response.status_code


def test_beyond_loopback_the_token_is_required(served):
    with pytest.raises(ServerError, match="token"):
        EventServer(EventBus("x"), HELLO, host="0.0.0.0", port=0).start()
    bus, server = served(host="0.0.0.0", token="s3cret")
    url = f"ws://127.0.0.1:{server.port}/"

    async def run():
        assert await refused(url) == 401
        assert await refused(url + "?token=wrong") == 401
        assert await refused(url, additional_headers={"Authorization": "Bearer wrong"}) == 401
        for options in ({"uri": url + "?token=s3cret&since=0"},
                        {"uri": url, "additional_headers": {"Authorization": "Bearer s3cret"}}):
            async with connect(**options) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"

    asyncio.run(run())


def test_a_foreign_origin_is_refused(served):
    bus, server = served(allow_origins=["https://studio.example"])

    async def run():
        assert await refused(server.url, origin="http://evil.example") == 403
        for origin in (None, f"http://127.0.0.1:{server.port}", "https://studio.example"):
            async with connect(server.url, origin=origin) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"

    asyncio.run(run())


def test_an_oversized_message_closes_with_1009_and_the_server_goes_on(served):
    bus, server = served()

    async def run():
        async with connect(server.url, max_size=None) as ws:
            await ws.recv()
            await ws.send("x" * MAX_MESSAGE_BYTES)  # exactly the limit: served (an error: not JSON)
            assert json.loads(await ws.recv())["code"] == "bad_json"
            await ws.send("x" * (MAX_MESSAGE_BYTES + 1))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1009
        async with connect(server.url) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"

    asyncio.run(run())


def test_over_the_rate_messages_are_dropped_with_an_error_and_a_flood_is_closed(served):
    bus, server = served(rate=20, burst=40)

    async def run():
        async with connect(server.url) as ws:
            await ws.recv()
            for _ in range(60):
                await ws.send(json.dumps({"type": "ping"}))
            replies = []
            while not any(r.get("code") == "rate_limited" for r in replies):
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            assert 40 <= [r["type"] for r in replies].count("pong") <= 45
            await asyncio.sleep(1.1)  # the bucket refills: served again, on the same connection
            await ws.send(json.dumps({"type": "dance"}))
            while json.loads(await asyncio.wait_for(ws.recv(), 5)).get("code") != "unknown_type":
                pass
        async with connect(server.url) as ws:
            await ws.recv()
            with pytest.raises(ConnectionClosed):
                for _ in range(5000):
                    await ws.send(json.dumps({"type": "ping"}))
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008 and ws.close_reason == "rate limit exceeded"

    asyncio.run(run())


class StalledClient:
    """A WebSocket client that stops reading (a raw socket with a small receive buffer)."""

    def __init__(self, url: str, port: int) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def read_to_end(self) -> tuple[list[dict], object]:
        """Everything it was sent, and the close frame it got."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2**20)  # a tiny window would crawl
        self.sock.settimeout(10)
        events = []
        while data := self.sock.recv(65536):
            self.protocol.receive_data(data)
            events += [json.loads(f.data) for f in self.protocol.events_received()
                       if getattr(f, "opcode", None) is Opcode.TEXT]
            self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.sock.close()
        return events, self.protocol.close_rcvd


def test_a_slow_client_is_dropped_with_a_reason_while_a_fast_one_gets_every_turn(served):
    bus, server = served(queue_size=64)
    count = 3000

    async def run():
        stalled = StalledClient(server.url, server.port)
        async with connect(server.url) as fast:
            await fast.recv()

            async def read_all() -> list[int]:
                turns = []
                while len(turns) < count:
                    turns.append(json.loads(await fast.recv())["turn"])
                return turns

            reader = asyncio.create_task(read_all())
            started = time.perf_counter()
            for i in range(count):
                bus.publish(turn(i, "x" * 300))
                if i % 10 == 0:
                    await asyncio.sleep(0.002)
            publishing = time.perf_counter() - started
            assert await asyncio.wait_for(reader, 20) == list(range(count))
        events, close = await asyncio.to_thread(stalled.read_to_end)
        assert close.code == 1008 and close.reason.startswith("client too slow")
        assert 0 < len(events) < count + 1
        await asyncio.sleep(0.1)
        assert server.connections == 0
        assert publishing < 10  # never waited on the stalled client

    asyncio.run(run())


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fifty_clients_come_and_go_without_leaking(served):
    bus, server = served()
    subscribers, tasks, fds = bus.subscriber_count, server.task_count(), fd_count()
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.is_set():
            bus.publish(turn(i))
            i += 1
            time.sleep(0.01)

    async def client(n: int) -> None:
        resume = f"?since={max(0, bus.last_seq - 5)}" if n % 2 else ""  # half resume a little way back
        async with connect(server.url + resume) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(json.dumps({"type": "ping"}))
            for _ in range(3):
                await ws.recv()

    async def round_of_fifty() -> None:
        await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(50))), 30)

    publisher = threading.Thread(target=publish)
    publisher.start()
    rss = []
    try:
        for _ in range(5):
            asyncio.run(round_of_fifty())
            rss.append(rss_bytes())
    finally:
        stop.set()
        publisher.join()
    deadline = time.monotonic() + 5
    while (server.connections or server.task_count() != tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.connections == 0
    assert server.task_count() == tasks
    assert bus.subscriber_count == subscribers
    assert fd_count() <= fds + 3
    assert rss[-1] - rss[1] < 16 * 2**20  # after the first rounds' warm-up, no growth to speak of


def test_the_commands_refuse_to_expose_events_without_a_token(capsys, monkeypatch):
    from merc.cli import live, replay

    monkeypatch.delenv("MERC_TOKEN", raising=False)
    for main, argv in ((live.main, ["--host", "0.0.0.0"]), (replay.main, ["--serve", "--host", "0.0.0.0"])):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2 and "--token" in capsys.readouterr().err


def test_stop_does_not_wait_on_a_client_that_stopped_reading(served):
    bus, server = served(queue_size=100_000)  # never dropped as too slow: it is still open at stop()
    stalled = StalledClient(server.url, server.port)
    deadline = time.monotonic() + 10
    while server.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(2000):  # far more than its socket buffers and the server's send buffer hold
        bus.publish(turn(i, "x" * 300))
    time.sleep(0.5)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3  # websockets alone would wait its close_timeout (10 s)
    assert server.task_count() == 0  # the loop is closed: nothing left running
    stalled.sock.close()
