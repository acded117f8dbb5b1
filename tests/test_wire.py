"""The typed wire protocol: messages against the schema, the one envelope, the sans-I/O Connection,
and that no client is ever sent exception text."""
from __future__ import annotations

import asyncio
import json
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest

from merc.clients.client import Conversation, ProtocolMismatch, check_version, follow, format_turn
from merc.stream.session.pipeline import Pipeline
from merc.stream.wire import messages
from merc.stream.wire.delivery import ClientQueue, Outgoing
from merc.stream.wire.events import (
    EventBus,
    apply_update,
    schema,
    turn_event,
    turn_update_event,
    turn_update_events,
)
from merc.stream.wire.messages import (
    ENVELOPE_KEYS,
    ERRORS,
    EVENT_TYPES,
    PROTOCOL,
    PROTOCOL_VERSION,
    SERVER_EVENTS,
    Hello,
    Pong,
    Status,
    Turn,
    TurnPartial,
    TurnUpdate,
    error,
    major_version,
    stamp,
)
from merc.stream.wire.protocol import Admission, Close, Connection, RateLimiter
from merc.stream.wire.server import EventServer

SCHEMA = schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
HELLO = {"labels": ["neutral", "joy"], "model": {"label_set": "test"}, "modalities": ["text"]}
TIMINGS = dict.fromkeys(("segmentation", "asr", "features", "speaker", "graph", "total"), 1.23456)


# ---- the typed definitions and the schema ---------------------------------------------------------

def schema_branch(kind: str) -> dict[str, Any]:
    """The `then` of the schema's if/then for event type `kind` ({} when it has none)."""
    for branch in SCHEMA["allOf"]:
        if branch["if"]["properties"]["type"]["const"] == kind:
            return dict(branch["then"])
    return {}


def json_types(annotation: Any) -> set[str]:
    """The JSON types a Python annotation allows."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(json_types(a) for a in typing.get_args(annotation)))
    origin = typing.get_origin(annotation) or annotation
    table = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null",
             tuple: "array", list: "array", dict: "object", Mapping: "object"}
    return {table[origin]}


def schema_types(spec: dict[str, Any]) -> set[str]:
    if "type" in spec:
        return {spec["type"]} if isinstance(spec["type"], str) else set(spec["type"])
    if "const" in spec:
        return {json_types(type(spec["const"])).pop()}
    if "enum" in spec:
        return set().union(*(json_types(type(v)) for v in spec["enum"]))
    raise AssertionError(f"no type in {spec}")


def test_every_event_type_in_the_schema_has_a_typed_definition_and_back():
    assert set(SCHEMA["properties"]["type"]["enum"]) == set(EVENT_TYPES) == {kind.TYPE for kind in SERVER_EVENTS}
    assert len(EVENT_TYPES) == len(SERVER_EVENTS)
    branches = {b["if"]["properties"]["type"]["const"] for b in SCHEMA["allOf"]}
    assert branches <= set(EVENT_TYPES)
    assert SCHEMA["properties"]["v"]["const"] == PROTOCOL_VERSION
    assert set(SCHEMA["properties"]) == ENVELOPE_KEYS | {"type"}
    assert set(SCHEMA["required"]) == ENVELOPE_KEYS - {"direct"} | {"type"}


@pytest.mark.parametrize("kind", SERVER_EVENTS, ids=lambda k: k.TYPE)
def test_each_events_fields_and_types_are_the_schemas(kind):
    then = schema_branch(kind.TYPE)
    properties = then.get("properties", {})
    names = [f.name for f in fields(kind)]
    assert set(names) == set(properties), f"{kind.TYPE}: fields {names} against schema {sorted(properties)}"
    assert set(then.get("required", [])) <= set(names)
    hints = typing.get_type_hints(kind)
    for name in names:
        number = {"number"} <= schema_types(properties[name])  # a JSON number may be written as an integer
        allowed = schema_types(properties[name]) | ({"integer"} if number else set())
        assert json_types(hints[name]) <= allowed, f"{kind.TYPE}.{name}: {hints[name]} against {properties[name]}"
        assert schema_types(properties[name]) <= json_types(hints[name]) | {"integer"}, f"{kind.TYPE}.{name}"


def test_typed_events_validate_once_stamped():
    samples = [Hello.of(HELLO, last_seq=3), Pong(), Status({"microphone": True, "camera": None}, "camera gone"),
               error("bad_json"), Turn.of(turn=0, speaker="S1", t_start=1.0, t_end=2.0, text="hi", label="joy",
                                          confidence=0.9, probs={"joy": 0.9, "neutral": 0.1}, modalities=["text"],
                                          available=["text", "audio"], timings_ms=TIMINGS, speech_end=1e9),
               TurnUpdate.of(turn=0, speaker=None, label="neutral", confidence=0.6,
                             probs={"joy": 0.4, "neutral": 0.6}),
               TurnPartial.of(turn=1, speaker=None, t_start=2.5, t_end=3.5, text="so what I", stable="so",
                              label="neutral", confidence=0.7, probs={"joy": 0.3, "neutral": 0.7},
                              timings_ms={"asr": 80.0})]
    assert {type(s) for s in samples} == set(SERVER_EVENTS)
    for sample in samples:
        for direct in (False, True):
            VALIDATOR.validate(stamp(sample, seq=4, session="s", sent=1.0, direct=direct))


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_every_error_in_the_table_makes_a_valid_event(name):
    values = {"type": "dance", "rate": 20.0, "action": "reset", "t_start": 1.2, "t_end": 3.4,
              "problem": "audio.wav is cut short", "count": 1000, "first": 1, "last": 500, "seconds": 2.5}
    event = stamp(error(name, **values), seq=1, session="s", sent=0.0)
    VALIDATOR.validate(event)
    assert event["code"] in ERRORS and event["message"] and "{" not in event["message"]


# ---- the body and the envelope ----------------------------------------------------------------------

def old_turn_event(**kw: Any) -> dict[str, Any]:
    """turn_event as it was before the typed definitions (replay output must not change)."""
    return {"type": "turn", "turn": kw["turn"], "speaker": kw["speaker"], "t_start": round(kw["t_start"], 3),
            "t_end": round(kw["t_end"], 3), "text": kw["text"], "label": kw["label"],
            "confidence": round(kw["confidence"], 4), "probs": {k: round(v, 4) for k, v in kw["probs"].items()},
            "modalities": kw["modalities"], "available": kw["available"],
            "timings_ms": {k: round(v, 1) for k, v in kw["timings_ms"].items()},
            "speech_end": round(kw["speech_end"], 3)}


def test_turn_bodies_are_byte_identical_to_before():
    kw = dict(turn=7, speaker=None, t_start=12.34567, t_end=15.0001, text="ça va \"bien\"", label="joy",
              confidence=0.876543, probs={"joy": 0.876543, "neutral": 0.123457}, modalities=["text", "audio"],
              available=["text", "audio", "face"], timings_ms=TIMINGS, speech_end=1723456789.123456)
    assert json.dumps(turn_event(**kw)) == json.dumps(old_turn_event(**kw))
    assert turn_event(**kw) == old_turn_event(**kw)  # lists stay lists in memory too


def test_published_and_direct_events_share_one_envelope():
    bus = EventBus("s", clock=lambda: 100.00049)
    published = bus.publish({"type": "status", "devices": {}, "message": "m"})
    assert list(published) == ["v", "seq", "session", "sent", "type", "devices", "message"]
    assert published["sent"] == 100.0 and published["seq"] == 1 and published["v"] == PROTOCOL_VERSION
    assert bus.publish(Pong())["seq"] == 2  # typed events publish too
    reply = Connection("s", Hello.of(HELLO)).handle('{"type": "ping"}', sent=5.0, last_seq=bus.last_seq)
    assert list(reply.replies[0]) == ["v", "seq", "session", "sent", "direct", "type"]
    assert reply.replies[0]["seq"] == 2 and reply.replies[0]["direct"] is True
    with pytest.raises(ValueError, match="seq"):
        bus.publish({"type": "status", "seq": 99})
    assert bus.last_seq == 2  # a refused body does not use up a seq


def test_a_turn_update_is_a_typed_stamped_event_the_schema_holds_to():
    body = turn_update_event(turn=3, speaker="S2", label="anger", confidence=0.612345,
                             probs={"anger": 0.612345, "neutral": 0.387655})
    assert body == {"type": "turn.update", "turn": 3, "speaker": "S2", "label": "anger", "confidence": 0.6123,
                    "probs": {"anger": 0.6123, "neutral": 0.3877}, "reason": "speaker"}
    event = EventBus("s", clock=lambda: 7.0).publish(body)
    assert list(event)[:5] == ["v", "seq", "session", "sent", "type"] and event["seq"] == 1
    VALIDATOR.validate(event)
    VALIDATOR.validate({**event, "speaker": None})
    for broken in ({k: v for k, v in event.items() if k != "reason"}, {**event, "reason": "whim"},
                   {k: v for k, v in event.items() if k != "turn"}, {**event, "turn": -1},
                   {**event, "confidence": 1.5}, {**event, "speaker": 2}):
        assert not VALIDATOR.is_valid(broken), broken
    with pytest.raises(ValueError, match="reason"):
        turn_update_event(turn=3, speaker="S2", label="anger", confidence=0.6, probs={}, reason="whim")
    with pytest.raises(ValueError, match="by its number"):
        turn_update_event(turn=-1, speaker="S2", label="anger", confidence=0.6, probs={})


def test_turn_update_events_are_made_from_a_trackers_revised_turns():
    from merc.models.data.turns import TurnResult

    revised = [TurnResult(index=4, speaker="S1", text="hm", label="joy", confidence=0.7, probs={"joy": 0.7, "sad": 0.3},
                          modalities=("text",), timings_ms={"graph": 0.4}),
               TurnResult(index=5, speaker=None, text="ok", label="sad", confidence=0.55,
                          probs={"joy": 0.45, "sad": 0.55}, modalities=(), timings_ms={})]
    bodies = turn_update_events(revised)
    assert [(b["turn"], b["speaker"], b["label"], b["confidence"]) for b in bodies] == \
        [(4, "S1", "joy", 0.7), (5, None, "sad", 0.55)]
    for body in bodies:
        VALIDATOR.validate(stamp(body, seq=9, session="s", sent=1.0))


def test_an_update_replaces_only_what_it_corrects():
    turn = turn_event(turn=2, speaker="S1", t_start=1.0, t_end=2.5, text="fine.", label="neutral", confidence=0.8,
                      probs={"neutral": 0.8, "anger": 0.2}, modalities=["text"], available=["text", "audio"],
                      timings_ms=TIMINGS, speech_end=5.0)
    update = stamp(turn_update_event(turn=2, speaker="S2", label="anger", confidence=0.7,
                                     probs={"neutral": 0.3, "anger": 0.7}), seq=8, session="s", sent=9.0)
    corrected = apply_update(turn, update)
    assert {k: corrected[k] for k in ("speaker", "label", "confidence", "probs")} == \
        {"speaker": "S2", "label": "anger", "confidence": 0.7, "probs": {"neutral": 0.3, "anger": 0.7}}
    assert {k: v for k, v in corrected.items() if k not in ("speaker", "label", "confidence", "probs")} == \
        {k: v for k, v in turn.items() if k not in ("speaker", "label", "confidence", "probs")}
    assert turn["speaker"] == "S1"  # the turn itself is not changed


def test_the_hello_announces_the_minor_version_and_updates_are_never_shed():
    hello = connection().open("/", last_seq=0, sent=1.0).replies[0]
    assert hello["protocol"] == PROTOCOL == f"{PROTOCOL_VERSION}.2" and hello["v"] == PROTOCOL_VERSION
    VALIDATOR.validate(hello)
    VALIDATOR.validate({k: v for k, v in hello.items() if k != "protocol"})  # a 1.0 server's hello
    assert not VALIDATOR.is_valid({**hello, "protocol": "one"})
    queue = ClientQueue(capacity=2)
    update = stamp(turn_update_event(turn=0, speaker="S1", label="joy", confidence=1.0, probs={"joy": 1.0}),
                   seq=1, session="s", sent=1.0)
    status = stamp(Status({}, "m"), seq=2, session="s", sent=1.0)
    assert queue.push(Outgoing.of(update)) and queue.push(Outgoing.of(status))
    assert queue.push(Outgoing.of({**update, "seq": 3}))  # the status is dropped, not the update
    assert [item.seq for item in (queue.pop(), queue.pop())] == [1, 3] and queue.dropped == 1


def test_major_versions():
    assert [major_version(v) for v in (1, 1.0, "1", "1.4", "2.0", True, None, "x", [1])] == \
        [1, 1, 1, 1, 2, None, None, None, None]


# ---- the sans-I/O Connection ------------------------------------------------------------------------

def connection(**options: Any) -> Connection:
    return Connection("s", Hello.of(HELLO), **options)


def test_opening_greets_and_resumes_from_the_query():
    opened = connection().open("/?token=t&since=4", last_seq=9, sent=1.0)
    assert opened.resume == 4 and len(opened.replies) == 1
    hello = opened.replies[0]
    assert hello["type"] == "hello" and hello["last_seq"] == 9 and hello["seq"] == 9 and hello["direct"] is True
    VALIDATOR.validate(hello)
    assert connection().open("/?since=x", last_seq=0, sent=1.0).resume is None


@pytest.mark.parametrize("message", ["not json", b"\xff\xfe", "{\"type\": ", "[" * 50000, "1" * 5000])
def test_malformed_json_gets_a_fixed_message(message):
    reply = connection().handle(message, sent=1.0, last_seq=0).reply
    assert reply is not None and reply["code"] == "bad_json" and reply["message"] == ERRORS["bad_json"] == "not JSON"


def test_control_without_a_handler_is_answered_control_unavailable():
    outcome = connection().handle('{"type": "control", "action": "pause"}', sent=1.0, last_seq=0)
    assert outcome.control == "pause"
    assert outcome.reply is not None and outcome.reply["code"] == "control_unavailable"
    assert outcome.reply["message"] == ERRORS["control_unavailable"]


def test_a_failing_control_handler_is_logged_not_quoted(caplog):
    def explode(action: str) -> str | None:
        raise RuntimeError("secret /home/x/path boom")

    with caplog.at_level(logging.WARNING, logger="merc.stream.wire.protocol"):
        reply = connection(on_control=explode).handle('{"type": "control", "action": "reset"}', sent=1.0,
                                                      last_seq=0).reply
    assert reply is not None and reply["code"] == "control_failed" and reply["message"] == "reset failed"
    assert "secret" in caplog.text and caplog.records[-1].exc_info is not None  # the details are in the log


def test_a_control_handlers_problem_code_goes_back_with_a_fixed_message():
    answers = {"reset": None, "pause": "nothing_to_pause", "resume": "Traceback: /etc/passwd", "dance": "bad_action"}
    conn = connection(on_control=answers.get)
    done = conn.handle('{"type": "control", "action": "reset"}', sent=1.0, last_seq=0)
    assert done.control == "reset" and done.replies == ()
    refused = conn.handle('{"type": "control", "action": "pause"}', sent=1.0, last_seq=0).reply
    assert refused is not None and (refused["code"], refused["message"]) == ("nothing_to_pause", "pause was not done")
    odd = conn.handle('{"type": "control", "action": "resume"}', sent=1.0, last_seq=0).reply
    assert odd is not None and (odd["code"], odd["message"]) == ("control_refused", "resume was not done")
    known = conn._control("dance")  # a code of the table: its wire code and fixed message
    assert known is not None and (known.code, known.message) == ("bad_message", ERRORS["bad_action"])


def test_the_rate_limit_is_the_connections_with_the_time_passed_in():
    conn = connection(limiter=RateLimiter(rate=10, burst=2, abuse=3))
    ping = '{"type": "ping"}'
    kinds = [[r["type"] for r in conn.receive(ping, now=0.0, sent=1.0, last_seq=0).replies] for _ in range(4)]
    assert kinds == [["pong"], ["pong"], ["error"], []]  # burst, then one warning, then silence
    warning = connection(limiter=RateLimiter(rate=10, burst=1)).receive
    warning(ping, now=0.0, sent=1.0, last_seq=0)
    rate_limited = warning(ping, now=0.0, sent=1.0, last_seq=0).reply
    assert rate_limited is not None and rate_limited["code"] == "rate_limited"
    assert rate_limited["message"] == "more than 10 messages/s: messages are being dropped"
    assert conn.receive(ping, now=0.2, sent=1.0, last_seq=0).reply["type"] == "pong"  # refilled
    outcomes = [conn.receive(ping, now=0.2, sent=1.0, last_seq=0) for _ in range(5)]
    assert outcomes[-1].close == Close(1008, "rate limit exceeded") and conn.closing
    assert conn.receive(ping, now=99.0, sent=1.0, last_seq=0) == type(outcomes[0])()  # closing: unanswered
    assert RateLimiter(rate=1, burst=1).admit(0.0) is Admission.ACCEPT


def test_unknown_types_echo_only_the_clients_own_truncated_type():
    reply = connection().handle(json.dumps({"type": "x" * 100}), sent=1.0, last_seq=0).reply
    assert reply is not None and reply["code"] == "unknown_type"
    assert reply["message"] == f"unknown message type {'x' * 40 + '...'!r}"


# ---- exception text never reaches a client ---------------------------------------------------------

class FailingProcessor:
    def process(self, segment: Any) -> dict[str, Any]:
        raise RuntimeError("secret /home/x/path boom")


class OneTurn:
    """An audio source of one chunk, and a segmenter that makes it one turn at 1.2-3.4 s."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def __iter__(self):
        yield SimpleNamespace(samples=np.zeros(160, dtype=np.float32))

    def feed(self, chunk: Any) -> list[Any]:
        return [SimpleNamespace(t_start=1.2, t_end=3.4)]

    def flush(self) -> list[Any]:
        return []


def test_a_failing_stage_never_leaks_exception_text_to_clients(caplog):
    bus = EventBus("leak")
    source = OneTurn()
    pipeline = Pipeline(source, source, FailingProcessor(), bus)
    with caplog.at_level(logging.ERROR):
        pipeline.run()
    (event,) = bus.events()
    VALIDATOR.validate(event)
    assert event["type"] == "error" and event["code"] == "turn_failed"
    assert event["message"] == "turn at 1.20-3.40 s could not be processed"
    for leak in ("secret", "boom", "RuntimeError", "/home", "/"):
        assert leak not in event["message"]
    assert "RuntimeError: secret /home/x/path boom" in pipeline.errors[0]  # the local user still sees it
    assert "secret /home/x/path boom" in caplog.text


# ---- clients read the version from the hello -------------------------------------------------------

def test_the_client_checks_the_hellos_major_version():
    assert check_version("ws://x/", {"type": "hello", "v": PROTOCOL_VERSION}) == PROTOCOL_VERSION
    assert check_version("ws://x/", {"type": "hello", "v": f"{PROTOCOL_VERSION}.7"}) == PROTOCOL_VERSION
    for event in ({"type": "hello", "v": PROTOCOL_VERSION + 1}, {"type": "hello"}, {"type": "turn", "v": 1}):
        with pytest.raises(ProtocolMismatch):
            check_version("ws://x/", event)


def test_a_client_refuses_a_server_of_another_major_version(monkeypatch):
    monkeypatch.setattr(messages, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    server = EventServer(EventBus("future"), HELLO, port=0)
    server.start()

    async def first() -> dict[str, Any]:
        async for event in follow(server.url, reconnect=False):
            return event
        raise AssertionError("no event")

    try:
        with pytest.raises(ProtocolMismatch, match=f"v{PROTOCOL_VERSION + 1}"):
            asyncio.run(asyncio.wait_for(first(), 10))
    finally:
        server.stop()


def _turn(number: int, speaker: str | None, label: str, text: str = "words") -> dict[str, Any]:
    return turn_event(turn=number, speaker=speaker, t_start=number, t_end=number + 0.5, text=text, label=label,
                      confidence=0.8, probs={label: 0.8}, modalities=["text"], available=["text"],
                      timings_ms=TIMINGS, speech_end=1.0)


def test_the_python_client_applies_turn_updates_through_a_real_server():
    """follow() from the event server, a Conversation fed what it yields: the corrected turn keeps
    its place and text with the new speaker and emotion; an update for a turn never sent and an
    unknown event type are ignored."""
    bus = EventBus("client-updates")
    server = EventServer(bus, HELLO, port=0)
    server.start()
    for body in (_turn(0, "S1", "joy", "hi"), _turn(1, "S1", "anger", "go away"), _turn(2, "S2", "neutral", "ok"),
                 turn_update_event(turn=1, speaker="S2", label="sadness", confidence=0.6, probs={"sadness": 0.6}),
                 turn_update_event(turn=7, speaker="S3", label="joy", confidence=0.9, probs={"joy": 0.9}),
                 {"type": "turn.partial", "turn": 3, "text": "and"}):
        bus.publish(body)

    async def collect() -> tuple[Conversation, list[str]]:
        conversation, lines = Conversation(), []
        async for event in follow(server.url, reconnect=False):
            turn = conversation.apply(event)
            if turn is not None:
                lines.append(format_turn(turn, corrected=event["type"] == "turn.update"))
            if event.get("seq") == bus.last_seq and not event.get("direct"):
                return conversation, lines
        raise AssertionError("the stream ended early")

    try:
        conversation, lines = asyncio.run(asyncio.wait_for(collect(), 10))
    finally:
        server.stop()
    assert [(t["turn"], t["speaker"], t["label"], t["confidence"], t["text"]) for t in conversation.turns] == [
        (0, "S1", "joy", 0.8, "hi"), (1, "S2", "sadness", 0.6, "go away"), (2, "S2", "neutral", 0.8, "ok")]
    assert conversation.turns[1]["updates"] == 1 and conversation.turns[1]["t_start"] == 1
    assert len(lines) == 4 and lines[-1].endswith("go away  [corrected]") and "S2" in lines[-1]


def test_a_conversation_keeps_a_bounded_list_and_starts_over_with_a_new_session():
    conversation = Conversation(keep=2)
    conversation.apply({"type": "hello", "session": "a"})
    for number in range(3):
        conversation.apply(_turn(number, "S1", "joy"))
    assert [t["turn"] for t in conversation.turns] == [1, 2]
    assert conversation.apply(turn_update_event(turn=0, speaker="S2", label="joy", confidence=1.0,
                                                probs={"joy": 1.0})) is None  # no longer kept: ignored
    conversation.apply(_turn(0, "S1", "neutral"))  # numbers start again after a reset: the newest 0 is meant
    corrected = conversation.apply(turn_update_event(turn=0, speaker="S2", label="anger", confidence=0.5,
                                                     probs={"anger": 0.5}))
    assert corrected is conversation.turns[-1] and corrected["label"] == "anger"
    assert [t["turn"] for t in conversation.turns] == [2, 0]
    conversation.apply({"type": "hello", "session": "a"})  # a reconnection: the same session
    assert len(conversation.turns) == 2
    conversation.apply({"type": "hello", "session": "b"})
    assert conversation.turns == []


def test_subscribers_see_events_in_seq_order_when_several_threads_publish():
    """The pipeline publishes turns while the camera thread publishes status: a consumer that skips
    what it has already sent (a resumed client's queue) must never see a newer seq first."""
    import threading
    import time

    from merc.stream.wire.events import EventBus

    bus = EventBus("order", history=100)
    seen: list[int] = []

    def record(event: dict) -> None:
        time.sleep(0)  # yield between stamping and recording, as a real hand-off may
        seen.append(event["seq"])

    bus.subscribe(record)
    start = threading.Barrier(4)

    def publish(kind: str) -> None:
        start.wait()
        for _ in range(2000):
            bus.publish({"type": "status", "devices": {}, "message": kind})

    threads = [threading.Thread(target=publish, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == list(range(1, 8001))
