"""The events the tracker emits, as JSON objects with a version and a sequence number.

    hello   first event on every connection: protocol version, session, model, labels
    turn    the final result of one turn: speaker, times, text, label, probabilities, modalities
            used, per-stage timings
    turn.partial  a provisional result while a turn is still spoken (about once a second): text so
            far (`stable`: the part successive decodes agreed on), provisional speaker and emotion;
            the final `turn` with the same number replaces it
    turn.update  a correction of a turn already sent: its new speaker, label, confidence and
            probabilities (`reason`: "speaker", the speaker was revised); never a new turn
    status  devices and modality availability changed (microphone, camera, face in view)
    error   something went wrong that the client should know about; the session goes on
    pong    the answer to a client's ping

Every event carries `"v"` (the protocol version; a client refuses a major version it does not
know) and `"seq"` (strictly increasing within a session; a reconnecting client asks for the
events after the last one it saw). Replies to one connection (its `hello`, a `pong`, an `error`
about its message) carry `"direct": true` and the last published seq, and are not resent.
The typed definitions are in messages.py; `events.schema.json` is the formal schema, and the
tests check both it against them and every emitted event against it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Protocol

from merc.stream.wire.messages import (
    EVENT_TYPES,
    PROTOCOL_VERSION,
    UPDATE_FIELDS,
    Event,
    Turn,
    TurnPartial,
    TurnUpdate,
    stamp,
)

__all__ = ["EVENT_TYPES", "PROTOCOL_VERSION", "EventBus", "RevisedTurn", "apply_update", "schema", "turn_event",
           "turn_partial_event", "turn_update_event", "turn_update_events"]

Subscriber = Callable[[dict[str, Any]], None]

log = logging.getLogger(__name__)


def schema() -> dict[str, Any]:
    """The JSON Schema of events (draft 2020-12)."""
    text = (resources.files("merc.stream.wire") / "events.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def turn_event(*, turn: int, speaker: str | None, t_start: float, t_end: float, text: str, label: str,
               confidence: float, probs: Mapping[str, float], modalities: list[str], available: list[str],
               timings_ms: Mapping[str, float], speech_end: float) -> dict[str, Any]:
    """The body of a `turn` event (`seq`, `v`, `session` are added when it is published): a `Turn`,
    rounded by `Turn.of`, as JSON members.

    `speech_end` is the wall-clock time (Unix seconds) the turn's speech ended; with the event's
    `sent` time a client can tell the whole delay, network included.
    """
    return Turn.of(turn=turn, speaker=speaker, t_start=t_start, t_end=t_end, text=text, label=label,
                   confidence=confidence, probs=probs, modalities=modalities, available=available,
                   timings_ms=timings_ms, speech_end=speech_end).body()


def turn_partial_event(*, turn: int, speaker: str | None, t_start: float, t_end: float, text: str, stable: str,
                       label: str, confidence: float, probs: Mapping[str, float],
                       timings_ms: Mapping[str, float]) -> dict[str, Any]:
    """The body of a `turn.partial` event: the provisional result of turn `turn`, still in progress."""
    return TurnPartial.of(turn=turn, speaker=speaker, t_start=t_start, t_end=t_end, text=text, stable=stable,
                          label=label, confidence=confidence, probs=probs, timings_ms=timings_ms).body()


def turn_update_event(*, turn: int, speaker: str | None, label: str, confidence: float,
                      probs: Mapping[str, float], reason: str = "speaker") -> dict[str, Any]:
    """The body of a `turn.update` event: turn number `turn` (a turn already published) now has this
    speaker, label, confidence and probabilities; rounded as `turn_event` rounds."""
    return TurnUpdate.of(turn=turn, speaker=speaker, label=label, confidence=confidence, probs=probs,
                         reason=reason).body()


class RevisedTurn(Protocol):
    """What `turn_update_events` reads of a revised turn (merc.models.data.turns.TurnResult has it)."""

    @property
    def index(self) -> int: ...
    @property
    def speaker(self) -> str | None: ...
    @property
    def label(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def probs(self) -> Mapping[str, float]: ...


def turn_update_events(revised: Iterable[RevisedTurn], reason: str = "speaker") -> list[dict[str, Any]]:
    """The `turn.update` bodies of what a tracker's `revise` returned, in order: publish each.

        for body in turn_update_events(tracker.revise({3: "S2"})):
            bus.publish(body)
    """
    return [turn_update_event(turn=r.index, speaker=r.speaker, label=r.label, confidence=r.confidence,
                              probs=r.probs, reason=reason) for r in revised]


def apply_update(turn: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`turn` (a `turn` event) as corrected by `update` (a `turn.update` naming it): a new dict with
    the update's speaker, label, confidence and probabilities (those it carries) and all else kept."""
    return {**turn, **{key: update[key] for key in UPDATE_FIELDS if key in update}}


class EventBus:
    """Numbers events, keeps the recent ones for clients that reconnect, and hands each to every
    subscriber. Thread-safe: the pipeline thread publishes, the server's loop subscribes.

    Subscribers must not block: they run on the publisher's thread (the pipeline's), so each only
    queues the event for a thread of its own (the server's subscriber schedules a send on its loop;
    stdout and files go through merc.stream.session.sinks.QueuedSink). A subscriber that raises is
    logged (once per subscriber) and the others still get the event: a consumer's bug never stops
    the pipeline.
    """

    def __init__(self, session: str, history: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._subscribers: list[Subscriber] = []
        self._failing: set[Subscriber] = set()  # subscribers whose failure was logged
        self._lock = threading.Lock()
        self._publishing = threading.RLock()  # held while an event is stamped and delivered
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

    def publish(self, body: Event | Mapping[str, Any]) -> dict[str, Any]:
        """Stamp `body` (v, seq, session, sent; see `messages.stamp`) and deliver it; returns the event."""
        # One publisher at a time, delivery included: subscribers see events in seq order even when
        # several threads publish (the pipeline's turns, the camera's status), and consumers that
        # skip what they have already sent (a resumed client's queue) never skip a newer event.
        # Subscribers only queue, so holding this lock while they run costs microseconds.
        with self._publishing:
            with self._lock:
                event = stamp(body, seq=self._seq + 1, session=self.session, sent=self._clock())
                self._seq += 1
                self._history.append(event)
                subscribers = list(self._subscribers)
            for deliver in subscribers:
                try:
                    deliver(event)
                except Exception:
                    with self._lock:
                        first = deliver not in self._failing
                        self._failing.add(deliver)
                    if first:
                        log.exception("event subscriber %r failed (logged once; it keeps getting events)", deliver)
        return event

    def subscribe(self, deliver: Subscriber, since: int | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
        """Add a subscriber; returns the kept events after `since` (for a resuming client; at most the
        last `limit` of them), atomically with the subscription so nothing falls between the two."""
        with self._lock:
            self._subscribers.append(deliver)
            return [] if since is None else self._after(since, limit)

    def history(self, since: int, limit: int | None = None) -> list[dict[str, Any]]:
        """The kept events with seq > `since`, at most the last `limit` of them (read from the newest
        end: the time under the lock grows with what is returned, not with what is kept)."""
        with self._lock:
            return self._after(since, limit)

    def _after(self, since: int, limit: int | None) -> list[dict[str, Any]]:
        newest_first: list[dict[str, Any]] = []
        for event in reversed(self._history):
            if event["seq"] <= since or (limit is not None and len(newest_first) >= limit):
                break
            newest_first.append(event)
        return newest_first[::-1]

    def unsubscribe(self, deliver: Subscriber) -> None:
        with self._lock:
            if deliver in self._subscribers:
                self._subscribers.remove(deliver)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._history)
