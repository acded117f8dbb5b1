"""Whatever a client sends, the server answers with a valid event or nothing, and nothing else changes.

Hypothesis feeds arbitrary text, bytes and JSON values (and near-misses of real messages) to the
parser and to the server's message handling, which is plain code (no socket is needed).
"""
from __future__ import annotations

import json

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merc.stream.wire.events import EventBus, schema
from merc.stream.wire.protocol import Control, Invalid, Ping, Resume, parse
from merc.stream.wire.server import EventServer

VALIDATOR = jsonschema.Draft202012Validator(schema())
HELLO = {"labels": ["neutral", "joy"], "model": {"label_set": "test"}, "modalities": ["text"]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
near_misses = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "subscribe", "ping", "control", "pong", "turn", "HELLO", ""]) | st.text()},
    optional={"since": json_values | st.integers(),
              "action": st.sampled_from(["reset", "pause", "resume"]) | json_values, "extra": json_values})
messages = (st.text() | st.binary() | json_values.map(json.dumps) | near_misses.map(json.dumps)
            | near_misses.map(lambda m: json.dumps(m).encode("utf-16")) | st.just("[" * 50000)
            | st.just("1" * 5000) | st.just(b"\xff\xfe\x00"))


@given(messages)
@settings(max_examples=400, deadline=None)
def test_parse_never_raises_and_says_what_was_asked(message):
    request = parse(message)
    assert isinstance(request, (Ping, Resume, Control, Invalid))
    if isinstance(request, Resume):
        assert isinstance(request.since, int) and request.since >= 0
    if isinstance(request, Invalid):
        assert request.code in ("bad_json", "bad_message", "unknown_type") and request.message


class Session:
    """The state a message could touch: the bus and the session's controls."""

    def __init__(self) -> None:
        self.bus = EventBus("fuzz")
        self.bus.publish({"type": "status", "devices": {}, "message": "kept"})
        self.actions: list[str] = []
        self.server = EventServer(self.bus, HELLO, port=0, on_control=self.control)  # never started

    def control(self, action: str) -> str | None:
        self.actions.append(action)
        return None if action != "reset" else "nothing to reset"


@given(messages)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_server_answers_anything_with_a_valid_event_or_nothing_and_changes_nothing(message):
    session = Session()
    before = session.bus.events()
    reply, resume = session.server.handle(message)
    if reply is not None:
        VALIDATOR.validate(reply)
        assert reply["direct"] is True and reply["type"] in ("pong", "error")
        json.dumps(reply)  # sendable as is
    assert resume is None or (isinstance(resume, int) and resume >= 0)
    assert session.bus.events() == before and session.bus.last_seq == 1
    request = parse(message)
    assert session.actions == ([request.action] if isinstance(request, Control) else [])
    assert (reply is not None and reply["type"] == "error") == (
        isinstance(request, Invalid) or (isinstance(request, Control) and request.action == "reset"))
