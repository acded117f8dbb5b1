"""Client messages, parsed without I/O: what a connection asked for, or why it was not understood.

The server reads a frame, hands it to `parse` and acts on the result; `parse` never raises (the
fuzz tests feed it arbitrary text, bytes and JSON), so no message can end a connection or touch a
session. `RateLimiter` decides, per connection, which messages are served at all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

CONTROL_ACTIONS = ("reset", "pause", "resume")
_ECHO_CHARS = 40  # how much of an unknown type an error quotes back


@dataclass(frozen=True, slots=True)
class Ping:
    """Answered with a pong."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Resend the kept events with seq > `since` (a `hello`, or its old name `subscribe`)."""

    since: int


@dataclass(frozen=True, slots=True)
class Control:
    action: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not understood: `code` and `message` go back in an `error` event."""

    code: str
    message: str


Message = Ping | Resume | Control | Invalid


def parse(message: str | bytes) -> Message:
    """The request in one client frame (text or binary), or `Invalid`; never raises."""
    try:
        data = json.loads(message)
    except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, nesting or digits past the limits
        return Invalid("bad_json", f"not JSON: {str(err)[:200]}")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return Invalid("bad_message", "a message is a JSON object with a string \"type\"")
    kind = data["type"]
    if kind == "ping":
        return Ping()
    if kind in ("hello", "subscribe"):
        since = data.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            return Invalid("bad_message", "\"since\" must be a non-negative integer seq")
        return Resume(since)
    if kind == "control":
        action = data.get("action")
        if action not in CONTROL_ACTIONS:
            return Invalid("bad_message", "control action must be reset, pause or resume")
        return Control(action)
    shown = kind if len(kind) <= _ECHO_CHARS else kind[:_ECHO_CHARS] + "..."
    return Invalid("unknown_type", f"unknown message type {shown!r}")


class Admission(Enum):
    ACCEPT = "accept"
    DROP = "drop"  # over the rate: ignore the message
    DROP_AND_WARN = "drop_and_warn"  # ignore it and send a `rate_limited` error (at most once a second)
    CLOSE = "close"  # persistent abuse: close the connection (1008)


class RateLimiter:
    """A token bucket per connection (`rate` messages/s, bursts of `burst`), with a second bucket for
    the messages it drops: a client that keeps sending faster than it is served, `abuse` messages
    beyond what it could have been forgiven, is closed rather than read forever."""

    def __init__(self, rate: float = 20.0, burst: int = 40, abuse: int = 400, warn_every: float = 1.0) -> None:
        if rate <= 0 or burst < 1 or abuse < 1:
            raise ValueError("rate, burst and abuse must be positive")
        self.rate, self.burst, self.abuse, self.warn_every = rate, burst, abuse, warn_every
        self.dropped = 0
        self._tokens = float(burst)
        self._abuse_tokens = float(abuse)
        self._last: float | None = None
        self._warned: float | None = None

    def admit(self, now: float) -> Admission:
        """Whether the message that arrived at `now` (monotonic seconds) is served."""
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._abuse_tokens = min(self.abuse, self._abuse_tokens + elapsed * self.rate)
        if self._tokens >= 1:
            self._tokens -= 1
            return Admission.ACCEPT
        self.dropped += 1
        self._abuse_tokens -= 1
        if self._abuse_tokens < 0:
            return Admission.CLOSE
        if self._warned is None or now - self._warned >= self.warn_every:
            self._warned = now
            return Admission.DROP_AND_WARN
        return Admission.DROP
