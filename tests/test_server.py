"""The WebSocket event service with a real websockets client on loopback."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from websockets.asyncio.client import connect

from merc.clients.client import follow
from merc.stream.wire.events import EventBus, schema
from merc.stream.wire.server import EventServer

HELLO = {"labels": ["neutral", "joy"], "model": {"label_set": "test"}, "modalities": ["text"]}


def status(message: str) -> dict:
    return {"type": "status", "devices": {"microphone": True, "camera": None, "face": None}, "message": message}


@pytest.fixture
def served():
    bus = EventBus("test-session")
    server = EventServer(bus, HELLO, port=0)
    server.start()
    yield bus, server
    server.stop()


def test_clients_get_hello_then_events_and_bad_messages_get_errors(served):
    bus, server = served
    validator = jsonschema.Draft202012Validator(schema())

    async def run():
        async with connect(server.url) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and hello["labels"] == ["neutral", "joy"] and hello["last_seq"] == 0
            validator.validate(hello)
            bus.publish(status("one"))
            first = json.loads(await ws.recv())
            assert first["seq"] == 1 and first["message"] == "one"
            validator.validate(first)
            for bad in ("not json", "[1, 2]", json.dumps({"type": "dance"}), json.dumps({"type": "hello", "since": -1}),
                        json.dumps({"type": "control", "action": "explode"}),
                        json.dumps({"type": "control", "action": "reset"})):  # no session handler: still answered
                await ws.send(bad)
                error = json.loads(await ws.recv())
                assert error["type"] == "error" and error["message"]
                validator.validate(error)
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
            bus.publish(status("two"))  # the connection survived all of that
            assert json.loads(await ws.recv())["message"] == "two"
        await asyncio.sleep(0.1)
        assert server.connections == 0

    asyncio.run(run())


def test_a_resuming_client_gets_what_it_missed_once(served):
    bus, server = served
    for i in range(3):
        bus.publish(status(f"e{i}"))

    async def run():
        seen = []
        async for event in follow(server.url, since=1, reconnect=False):
            if event["type"] == "status":
                seen.append(event["seq"])
                if len(seen) == 2:
                    bus.publish(status("live"))
                if len(seen) == 3:
                    break
        return seen

    assert asyncio.run(asyncio.wait_for(run(), 10)) == [2, 3, 4]

    async def query_param():
        async with connect(server.url + "?since=3") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            assert json.loads(await ws.recv())["seq"] == 4

    asyncio.run(query_param())


def test_port_in_use_is_a_clear_error(served):
    bus, server = served
    from merc.stream.wire.server import ServerError

    with pytest.raises(ServerError, match=f"127.0.0.1:{server.port}"):
        EventServer(bus, HELLO, port=server.port).start()
