"""Hostile clients of the event service: never a traceback, never a 1011, never a stalled live reader.

Each test names one way in (the handshake's query string, the token, the number of connections,
resumes, error texts, the overlay's headers) and runs a real server on loopback; the sans-I/O
parts (since parsing, token rules, the failure throttle, the backlog pacer) are also tested
directly.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import CLIENT_LEAK
from test_wire import OneTurn  # one scripted audio source + segmenter for both suites
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from merc.stream.session.pipeline import Pipeline
from merc.stream.wire.access import AccessPolicy, FailureThrottle
from merc.stream.wire.events import EventBus
from merc.stream.wire.messages import Hello
from merc.stream.wire.overlay_http import process_request
from merc.stream.wire.protocol import Connection, TokenBucket, read_since
from merc.stream.wire.server import DEFAULT_MAX_CONNECTIONS, RESUME_LIMIT, EventServer

HELLO = {"labels": ["neutral", "joy"], "model": {"label_set": "test"}, "modalities": ["text"]}


def status(message: str) -> dict[str, Any]:
    return {"type": "status", "devices": {"microphone": True}, "message": message}


@pytest.fixture
def served():
    servers = []

    def start(bus: EventBus | None = None, **options: Any) -> tuple[EventBus, EventServer]:
        bus = bus if bus is not None else EventBus("hostile")
        server = EventServer(bus, HELLO, **{"port": 0, **options})
        server.start()
        servers.append(server)
        return bus, server

    yield start
    for server in servers:
        server.stop()


async def refused(url: str, **options: Any) -> tuple[int, Headers]:
    with pytest.raises(InvalidStatus) as err:
        async with connect(url, **options):
            pass
    return err.value.response.status_code, err.value.response.headers


async def recv(ws: Any, wait: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), wait))


# ---- 1. since ------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("since=12", 12), ("since=0", 0), ("since=000123", 123), ("since=" + "9" * 18, 10**18 - 1), ("", None),
    ("token=t", None), ("since=%C2%B2", "bad"), ("since=" + "9" * 19, "bad"), ("since=" + "1" * 5000, "bad"),
    ("since=-1", "bad"), ("since=+1", "bad"), ("since=1.0", "bad"), ("since=%201", "bad"), ("since=", "bad"),
    ("since=1&since=2", "bad"), ("since=%FF", "bad"), ("since=%D9%A3", "bad"), ("since=0x10", "bad"),
])
def test_since_in_the_handshake_is_read_strictly(query, expected):
    value = read_since("/?" + query)
    if expected == "bad":
        assert not isinstance(value, int) and value is not None
    else:
        assert value == expected
    outcome = Connection("s", Hello.of(HELLO)).open("/?" + query, last_seq=5, sent=1.0)
    assert outcome.replies[0]["type"] == "hello"
    if expected == "bad":
        assert outcome.resume is None and [r["code"] for r in outcome.replies[1:]] == ["bad_message"]
        assert "since" in outcome.replies[1]["message"]
    else:
        assert outcome.resume == expected and len(outcome.replies) == 1


def test_a_bad_since_in_the_handshake_gets_an_error_and_the_connection_goes_on_live(served):
    bus, server = served()
    bus.publish(status("kept"))

    async def run() -> None:
        for since in ("%C2%B2", "1" * 5000, "-1", "%FF"):
            async with connect(f"{server.url}?since={since}") as ws:
                assert (await recv(ws))["type"] == "hello"
                problem = await recv(ws)
                assert problem["type"] == "error" and problem["code"] == "bad_message" and "since" in problem["message"]
                bus.publish(status(f"live {since[:5]}"))
                assert (await recv(ws))["message"] == f"live {since[:5]}"  # live, and nothing was resent
            assert ws.close_code == 1000
        async with connect(server.url) as ws:  # the JSON hello is bounded the same way
            await recv(ws)
            await ws.send(json.dumps({"type": "hello", "since": 10**40}))
            assert (await recv(ws))["code"] == "bad_message"

    asyncio.run(run())
    deadline = time.monotonic() + 5
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections == 0


# ---- 2. token --------------------------------------------------------------------------------------

def test_exactly_one_token_is_accepted():
    policy = AccessPolicy.create("0.0.0.0", 8765, token="s3cret")
    bearer = Headers({"Authorization": "Bearer s3cret"})
    assert policy.check("/?token=s3cret", Headers()) is None
    assert policy.check("/?token=s3cret", bearer) is None  # the same token twice: fine
    for path, headers in (("/?" + "token=x&" * 500 + "token=s3cret", Headers()),
                          ("/?token=s3cret&token=s3cret", Headers()),
                          ("/?token=wrong", bearer),
                          ("/?token=s3cret", Headers({"Authorization": "Bearer wrong"})),
                          ("/", Headers([("Authorization", "Bearer s3cret"), ("Authorization", "Bearer s3cret")])),
                          ("/?token=s%C3%A9cret", Headers()), ("/?token=%FF", Headers())):
        denial = policy.check(path, headers)
        assert denial is not None and denial.status == 401, path


def test_failures_are_throttled_per_address_with_bounded_memory():
    throttle = FailureThrottle(max_failures=3, window=10.0, block=30.0, max_addresses=100)
    for _ in range(2):
        throttle.fail("10.0.0.1", now=0.0)
    assert throttle.retry_after("10.0.0.1", now=1.0) == 0
    throttle.fail("10.0.0.1", now=1.0)
    assert throttle.retry_after("10.0.0.1", now=2.0) == 29  # blocked for `block` after the third failure
    assert throttle.retry_after("10.0.0.2", now=2.0) == 0  # others are not
    assert throttle.retry_after("10.0.0.1", now=31.5) == 0
    throttle.fail("10.0.0.3", now=0.0)
    throttle.fail("10.0.0.3", now=20.0)
    throttle.fail("10.0.0.3", now=20.0)
    assert throttle.retry_after("10.0.0.3", now=20.0) == 0  # the first failure left the window
    # one IPv6 /64 is one client
    for i in range(3):
        throttle.fail(f"2001:db8::{i + 1}", now=0.0)
    assert throttle.retry_after("2001:db8::ffff", now=0.0) > 0
    for i in range(10_000):
        throttle.fail(f"10.1.{i // 256}.{i % 256}", now=50.0)
    assert len(throttle) <= 100


def test_many_tokens_are_refused_and_repeated_failures_get_429(served):
    bus, server = served(token="s3cret", max_auth_failures=5)
    url = server.url

    async def run() -> None:
        assert (await refused(url + "?" + "token=x&" * 500 + "token=s3cret"))[0] == 401
        assert (await refused(url + "?token=s3cret", additional_headers={"Authorization": "Bearer x"}))[0] == 401
        for _ in range(3):
            assert (await refused(url + "?token=wrong"))[0] == 401
        status_code, headers = await refused(url + "?token=s3cret")  # blocked now, whatever it sends
        assert status_code == 429 and int(headers["Retry-After"]) > 0

    asyncio.run(run())


# ---- 3. connections --------------------------------------------------------------------------------

def test_connections_beyond_the_cap_get_503_and_a_freed_slot_is_reused(served):
    assert DEFAULT_MAX_CONNECTIONS == 256
    bus, server = served(max_connections=3)

    async def run() -> None:
        sockets = [await connect(server.url) for _ in range(3)]
        for ws in sockets:
            assert (await recv(ws))["type"] == "hello"
        status_code, headers = await refused(server.url)
        assert status_code == 503 and headers["Retry-After"]
        await sockets.pop().close()
        for _ in range(50):
            if server.connections < 3:
                break
            await asyncio.sleep(0.02)
        async with connect(server.url) as ws:
            assert (await recv(ws))["type"] == "hello"
        for ws in sockets:
            await ws.close()

    asyncio.run(run())


def test_max_connections_is_a_command_line_option():
    import argparse

    from merc.cli.common import add_server_arguments, server_options

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    assert server_options(parser.parse_args([])).max_connections == DEFAULT_MAX_CONNECTIONS
    assert server_options(parser.parse_args(["--max-connections", "7"])).max_connections == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-connections", "0"])


# ---- 4. resumes ------------------------------------------------------------------------------------

def test_a_resume_sends_at_most_the_last_events_and_says_what_it_left_out(served):
    bus = EventBus("backlog")
    for i in range(RESUME_LIMIT + 500):
        bus.publish(status(f"e{i}"))
    bus, server = served(bus)

    async def run() -> None:
        async with connect(server.url + "?since=0", max_queue=None) as ws:
            assert (await recv(ws))["type"] == "hello"
            notice = await recv(ws)
            assert notice["type"] == "error" and notice["code"] == "resume_truncated" and notice["direct"]
            assert notice["message"] == f"only the last {RESUME_LIMIT} events are resent: events 1-500 are not"
            seqs = [(await recv(ws))["seq"] for _ in range(RESUME_LIMIT)]
            assert seqs == list(range(501, RESUME_LIMIT + 501))
            bus.publish(status("live"))
            assert (await recv(ws))["message"] == "live"
            # a resume on this connection never resends what it was sent, and says nothing about it
            await ws.send(json.dumps({"type": "hello", "since": 0}))
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws))["type"] == "pong"
        async with connect(server.url + f"?since={bus.last_seq - 2}") as ws:  # within what is kept: no notice
            assert (await recv(ws))["type"] == "hello"
            assert [(await recv(ws))["seq"] for _ in range(2)] == [bus.last_seq - 1, bus.last_seq]

    asyncio.run(run())


def test_resumes_are_rate_limited_per_connection():
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(1.0) and not bucket.take(1.0)
    conn = Connection("s", Hello.of(HELLO))
    resume = json.dumps({"type": "hello", "since": 0})
    outcomes = [conn.receive(resume, now=0.0, sent=1.0, last_seq=9) for _ in range(5)]
    assert [o.resume for o in outcomes[:3]] == [0, 0, 0]
    assert outcomes[3].resume is None and outcomes[3].reply["code"] == "rate_limited"
    assert "resume" in outcomes[3].reply["message"]
    assert outcomes[4] == type(outcomes[4])()  # warned once a second at most
    assert conn.receive(resume, now=2.0, sent=1.0, last_seq=9).resume == 0


def test_the_backlog_pacer_lets_backlogs_through_at_its_rate():
    pacer = TokenBucket(rate=1000.0, burst=100)
    assert pacer.reserve(100, now=0.0) == 0
    assert pacer.reserve(50, now=0.0) == pytest.approx(0.05)
    assert pacer.reserve(50, now=0.0) == pytest.approx(0.1)  # in debt: the later one waits longer
    assert pacer.reserve(10, now=1.0) == 0


RESUMERS = """
import asyncio, json, sys, time
from websockets.asyncio.client import connect

url, seconds = sys.argv[1], float(sys.argv[2])
resumes = 0

async def resumer() -> None:
    global resumes
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with connect(url + "?since=0", max_queue=None, open_timeout=10) as ws:
                for _ in range(300):  # reads some of its backlog, then starts again
                    await asyncio.wait_for(ws.recv(), 5)
                resumes += 1
                for _ in range(5):  # and asks again on the same connection
                    await ws.send(json.dumps({"type": "hello", "since": 0}))
        except Exception:
            await asyncio.sleep(0.05)

async def main() -> None:
    await asyncio.gather(*(resumer() for _ in range(20)))

asyncio.run(main())
print(resumes)
"""


def test_a_live_reader_keeps_its_latency_while_twenty_clients_resume_from_zero(served):
    """20 clients (another process, as they would be) reconnect with ?since=0 against a 10,000-event
    history in a loop while a live reader times each event from publish to receipt."""
    bus = EventBus("amplify", history=10_000)
    for i in range(10_000):
        bus.publish({"type": "turn", "turn": i, "text": "x" * 200})
    bus, server = served(bus)
    attack = subprocess.Popen([sys.executable, "-c", RESUMERS, server.url, "5"], stdout=subprocess.PIPE, text=True)
    latencies: list[float] = []

    async def live() -> None:
        async with connect(server.url, max_queue=None) as ws:
            assert (await recv(ws))["type"] == "hello"
            await asyncio.sleep(1.0)  # the resumers are at it
            for i in range(80):
                published = time.perf_counter()
                bus.publish(status(f"live {i}"))
                while (await recv(ws, 10)).get("message") != f"live {i}":
                    pass
                latencies.append(time.perf_counter() - published)
                await asyncio.sleep(0.03)

    try:
        asyncio.run(asyncio.wait_for(live(), 60))
        out, _ = attack.communicate(timeout=30)
    finally:
        attack.kill()
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"live p95 {p95 * 1000:.1f} ms, median {statistics.median(latencies) * 1000:.1f} ms, "
          f"{out.strip()} resumes")
    assert int(out) >= 20  # the resumers were served, too
    assert p95 < 0.1


# ---- 5. nothing a client sees names an exception or a path ----------------------------------------



def leaks(events: list[str]) -> list[str]:
    return [e for e in events if CLIENT_LEAK.search(e)]


class FailingProcessor:
    def process(self, segment: Any) -> dict[str, Any]:
        raise FileNotFoundError("/home/someone/secret/model.onnx: KeyError Traceback")




def test_no_client_visible_message_names_an_exception_or_a_path(served, tmp_path):
    from merc.stream.session.options import RecordingOptions, ServerOptions, SessionOptions, TrackerOptions
    from merc.stream.session.session import hello_body

    options = SessionOptions(tracker=TrackerOptions(model_dir=tmp_path / "runs" / "m", bundle=tmp_path / "b1"),
                             server=ServerOptions(port=0), recording=RecordingOptions(tmp_path / "rec"))
    tracker = SimpleNamespace(labels=["neutral", "joy"], modalities=["text"],
                              manifest=SimpleNamespace(label_set="t", bundle_dir=tmp_path / "bundles" / "b1"))
    hello = hello_body(tracker, options)

    def explode(action: str) -> str | None:
        raise PermissionError(f"/srv/{action}: ValueError in /opt/lib/python3/x.py")

    bus = EventBus("leaks")
    server = EventServer(bus, hello, port=0, on_control=explode)
    server.start()
    seen: list[str] = []
    try:
        async def run() -> None:
            async with connect(server.url + "?since=%C2%B2", max_size=None) as ws:
                for message in ("not json", b"\xff\xfe", "[" * 50000, "1" * 5000, '{"type": 1}',
                                json.dumps({"type": "x" * 100}), json.dumps({"type": "hello", "since": "C:\\x"}),
                                json.dumps({"type": "hello", "since": 10**30}),
                                json.dumps({"type": "control", "action": "/home/x"}),
                                *(json.dumps({"type": "control", "action": a}) for a in ("reset", "pause")),
                                json.dumps({"type": "ping"})):
                    await ws.send(message)
                while json.loads(seen[-1] if seen else "{}").get("type") != "pong":  # all answered
                    seen.append(await asyncio.wait_for(ws.recv(), 5))
                Pipeline(OneTurn(), OneTurn(), FailingProcessor(), bus).run()  # a failing stage
                seen.append(await asyncio.wait_for(ws.recv(), 5))
            async with connect(server.url + "?since=0") as ws:  # the failure as resent
                seen.append(await ws.recv())
                seen.append(await ws.recv())

        asyncio.run(run())
    finally:
        server.stop()
    kinds = [json.loads(m).get("code", json.loads(m)["type"]) for m in seen]
    assert kinds.count("hello") == 2 and "control_failed" in kinds and "bad_json" in kinds, kinds
    assert kinds.count("turn_failed") == 2
    assert str(tmp_path) not in "".join(seen) and '"bundle": "b1"' in seen[0]
    assert leaks(seen) == []
    assert all(CLIENT_LEAK.search(text) for text in ("FileNotFoundError", "at /srv/x", "Traceback (most"))


# ---- 6. the overlay's headers ---------------------------------------------------------------------

def test_the_overlay_page_has_a_content_security_policy_and_no_referrer(served):
    bus, server = served(process_request=process_request)
    with urllib.request.urlopen(server.http_url, timeout=5) as reply:
        headers = reply.headers
        page = reply.read()
    csp = headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    host = f"127.0.0.1:{server.port}"
    assert set(directives["connect-src"].split()) == {"'self'", f"ws://{host}", f"wss://{host}"}
    assert "frame-ancestors" not in directives  # OBS and other pages may embed it
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Server"] == "merc-live"
    assert b"<script>" not in page and b"<style" not in page and b" style=" not in page  # nothing inline

    async def handshake() -> str:
        async with connect(server.url) as ws:
            return ws.response.headers["Server"]

    assert asyncio.run(handshake()) == "merc-live"


def test_a_strange_host_header_is_not_echoed_into_the_policy():
    request = SimpleNamespace(path="/", headers=Headers({"Host": "evil.example;script-src *"}))
    response = process_request(SimpleNamespace(), request)  # type: ignore[arg-type]
    csp = response.headers["Content-Security-Policy"]
    assert "evil" not in csp and "connect-src 'self'" in csp
