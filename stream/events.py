"""The events the tracker emits, as JSON objects with a version and a sequence number.

    hello   first event on every connection: protocol version, session, model, labels
    turn    the final result of one turn: speaker, times, text, label, probabilities, modalities
            used, per-stage timings
    status  devices and modality availability changed (microphone, camera, face in view)
    error   something went wrong that the client should know about; the session goes on
    pong    the answer to a client's ping

Every event carries `"v"` (the protocol version; a client refuses a major version it does not
know) and `"seq"` (strictly increasing within a session; a reconnecting client asks for the
events after the last one it saw). Replies to one connection (its `hello`, a `pong`, an `error`
about its message) carry `"direct": true` and the last published seq, and are not resent.
`events.schema.json` is the formal schema; the tests check
every emitted event against it.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from importlib import resources
from typing import Any, Callable

PROTOCOL_VERSION = 1
EVENT_TYPES = ("hello", "turn", "status", "error", "pong")


def schema() -> dict:
    """The JSON Schema of events (draft 2020-12)."""
    return json.loads((resources.files("merc.stream") / "events.schema.json").read_text(encoding="utf-8"))


def turn_event(*, turn: int, speaker: str | None, t_start: float, t_end: float, text: str, label: str,
               confidence: float, probs: dict[str, float], modalities: list[str], available: list[str],
               timings_ms: dict[str, float], speech_end: float) -> dict[str, Any]:
    """The body of a `turn` event (`seq`, `v`, `session` are added when it is published).

    `speech_end` is the wall-clock time (Unix seconds) the turn's speech ended; with the event's
    `sent` time a client can tell the whole delay, network included.
    """
    return {"type": "turn", "turn": turn, "speaker": speaker, "t_start": round(t_start, 3),
            "t_end": round(t_end, 3), "text": text, "label": label, "confidence": round(confidence, 4),
            "probs": {k: round(v, 4) for k, v in probs.items()}, "modalities": modalities,
            "available": available, "timings_ms": {k: round(v, 1) for k, v in timings_ms.items()},
            "speech_end": round(speech_end, 3)}


class EventBus:
    """Numbers events, keeps the recent ones for clients that reconnect, and hands each to every
    subscriber. Thread-safe: the pipeline thread publishes, the server's loop subscribes.

    Subscribers must not block (the server's subscriber only schedules a send on its loop).
    """

    def __init__(self, session: str, history: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self._history: deque[dict] = deque(maxlen=history)
        self._subscribers: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._clock = clock

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are attached (a server adds one, whatever its number of clients)."""
        with self._lock:
            return len(self._subscribers)

    def publish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stamp `body` (v, seq, session, sent) and deliver it; returns the event."""
        with self._lock:
            self._seq += 1
            event = {"v": PROTOCOL_VERSION, "seq": self._seq, "session": self.session,
                     "sent": round(self._clock(), 3), **body}
            self._history.append(event)
            subscribers = list(self._subscribers)
        for deliver in subscribers:
            deliver(event)
        return event

    def subscribe(self, deliver: Callable[[dict], None], since: int | None = None) -> list[dict]:
        """Add a subscriber; returns the kept events after `since` (for a resuming client), atomically
        with the subscription so nothing falls between the two."""
        with self._lock:
            self._subscribers.append(deliver)
            return [e for e in self._history if since is not None and e["seq"] > since]

    def history(self, since: int) -> list[dict]:
        """The kept events with seq > `since`."""
        with self._lock:
            return [e for e in self._history if e["seq"] > since]

    def unsubscribe(self, deliver: Callable[[dict], None]) -> None:
        with self._lock:
            if deliver in self._subscribers:
                self._subscribers.remove(deliver)

    def events(self) -> list[dict]:
        with self._lock:
            return list(self._history)
