"""Fuzzing a real event server over WebSocket: handshake query strings and message bodies.

One server on 127.0.0.1 (port 0, with a token, so the token's handling is fuzzed too) takes
arbitrary queries (since, token, unknown and repeated parameters, percent-encodings, huge values)
and arbitrary frames (text and binary, any JSON, huge numbers, deep nesting, over the size limit).
Whatever it gets, it never closes a connection with 1011 (internal error), never logs a traceback
or an error, never sends a client exception text or a path, and a live reader connected
throughout keeps getting every published event.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import pytest
from conftest import CLIENT_LEAK
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as connect_sync

from merc.stream.wire.events import EventBus
from merc.stream.wire.server import EventServer

HELLO = {"labels": ["neutral", "joy"], "model": {"label_set": "test"}, "modalities": ["text"]}
TOKEN = "fuzz-token"
REFUSALS = {400, 401, 403, 414, 429, 431, 503}  # 414, 431: websockets, past its 8 KiB line and header limits
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# ---- what a client may send ------------------------------------------------------------------------

raw_values = st.sampled_from([
    TOKEN, "0", "1", "00", "-1", "+1", "1e3", "0x1", "%C2%B2", "%D9%A3", "%EF%BC%91", "%FF", "%00", "%", "%%",
    "%2", "%252F", "9" * 18, "9" * 19, "1" * 5000, "9" * 4300, "x" * 3000, "", "%0D%0AX-Evil:%201", "a+b", "&", "=",
]) | st.integers(min_value=-(10**30), max_value=10**30).map(str)
text_values = st.text(max_size=40).map(lambda t: quote(t, safe=""))
keys = st.sampled_from(["since", "token", "since", "token", "transparent", "since[]", "TOKEN", "", "x", "%73ince"]) \
    | st.text(max_size=10).map(lambda t: quote(t, safe=""))
pairs = st.lists(st.tuples(keys, raw_values | text_values), max_size=8)
queries = st.one_of(
    pairs.map(lambda ps: "&".join(f"{k}={v}" for k, v in ps)),
    st.tuples(pairs, st.integers(0, 600)).map(  # many repeated parameters, the right token among them
        lambda t: "&".join([*(f"{k}={v}" for k, v in t[0]), *["token=x"] * t[1], f"token={TOKEN}"])),
    st.text(max_size=60).map(lambda t: quote(t, safe="=&%")),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15)
near_misses = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "subscribe", "ping", "control", "turn", ""]) | st.text(max_size=10)},
    optional={"since": json_values | st.integers() | st.just(10**4000) | st.just(-1),
              "action": st.sampled_from(["reset", "pause", "resume"]) | json_values, "extra": json_values})
bodies = st.one_of(
    st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps), near_misses.map(json.dumps),
    near_misses.map(lambda m: json.dumps(m).encode("utf-16")),
    st.sampled_from(["[" * 50000, "{\"a\":" * 20000, "1" * 5000, "9" * 60000, "-" + "9" * 4400,
                     '{"type": "hello", "since": ' + "9" * 5000 + "}", "x" * 70000, b"\x00" * 70000, b"\xff\xfe\x00",
                     '{"type": "hello", "since": 1e400}', '{"type": "hello", "since": NaN}']),
)


# ---- the server under test -------------------------------------------------------------------------

class Errors(logging.Handler):
    """Every record at ERROR and above, and every record with a traceback, from the loggers that matter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)


@pytest.fixture
def fuzzed():
    errors = Errors()
    loggers = [logging.getLogger(name) for name in ("merc.stream.wire", "websockets", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(errors)
        logger.setLevel(logging.INFO)  # see the info, keep only what is an error (debug: websockets' own chatter)
    bus = EventBus("fuzz")
    server = EventServer(bus, HELLO, port=0, token=TOKEN, max_auth_failures=10**9)
    server.start()
    stack = contextlib.ExitStack()
    live = stack.enter_context(connect_sync(f"{server.url}?token={TOKEN}", open_timeout=5))
    assert json.loads(live.recv(timeout=5))["type"] == "hello"
    state: dict[str, Any] = {"bus": bus, "server": server, "live": live, "seen": [], "published": 0,
                             "errors": errors}
    try:
        yield state
    finally:
        stack.close()
        server.stop()
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(errors)
            logger.setLevel(level)


def check_live(state: dict[str, Any]) -> None:
    """The live reader gets the next published event (and nothing it was sent leaks)."""
    state["published"] += 1
    event = state["bus"].publish({"type": "status", "devices": {}, "message": f"live {state['published']}"})
    while True:
        received = state["live"].recv(timeout=5)
        state["seen"].append(received)
        if json.loads(received).get("seq") == event["seq"]:
            return


async def exchange(url: str, body: str | bytes | None, seen: list[str]) -> int | None:
    """Connect, send `body` (if any) then a ping, read until the pong; the close code if it closed."""
    try:
        async with connect(url, max_size=None, open_timeout=5, close_timeout=2) as ws:
            try:
                if body is not None:
                    await ws.send(body)
                await ws.send(json.dumps({"type": "ping"}))
                while True:
                    message = await asyncio.wait_for(ws.recv(), 5)
                    seen.append(message if isinstance(message, str) else message.decode("utf-8", "replace"))
                    if json.loads(message)["type"] == "pong":
                        return None
            except ConnectionClosed:
                await asyncio.wait_for(ws.wait_closed(), 5)
                return ws.close_code
    except InvalidStatus as refused:
        assert refused.response.status_code in REFUSALS, refused.response.status_code
        seen.append(refused.response.body.decode("utf-8", "replace"))
        return refused.response.status_code


def finish(state: dict[str, Any]) -> None:
    check_live(state)
    assert state["errors"].records == [], [r.getMessage() for r in state["errors"].records]
    leaks = [m for m in state["seen"] if CLIENT_LEAK.search(m)]
    assert leaks == []
    assert state["server"].connections == 1 or _settles(state["server"])


def _settles(server: EventServer) -> bool:
    deadline = time.monotonic() + 5
    while server.connections != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.connections == 1


def test_handshake_queries_never_break_the_server(fuzzed):
    state, base = fuzzed, fuzzed["server"].url
    outcomes: set[int | None] = set()

    @FUZZ
    @given(queries)
    def one(query: str) -> None:
        try:
            code = asyncio.run(exchange(f"{base}?{query}", None, state["seen"]))
        except InvalidHandshake:  # a request line past websockets' 8 KiB: it hangs up before any status
            assert len(query) > 7000
            return
        outcomes.add(code)
        assert code != 1011
        if len(state["seen"]) % 10 == 0:
            check_live(state)

    started = time.monotonic()
    one()
    finish(state)
    assert time.monotonic() - started < 60
    assert None in outcomes and 401 in outcomes  # both let in and refused were exercised


def test_message_bodies_never_break_the_server(fuzzed):
    state, url = fuzzed, f"{fuzzed['server'].url}?token={TOKEN}"
    closes: set[int | None] = set()

    @FUZZ
    @given(bodies)
    def one(body: str | bytes) -> None:
        code = asyncio.run(exchange(url, body, state["seen"]))
        closes.add(code)
        assert code in (None, 1009), code  # served (or an error event back), or too big
        if len(state["seen"]) % 10 == 0:
            check_live(state)

    started = time.monotonic()
    one()
    finish(state)
    assert time.monotonic() - started < 60
