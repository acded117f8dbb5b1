"""Every message of the wire protocol as a typed value, and the one place their JSON is made.

Server events (what `events.schema.json` describes; a test holds the two together):
    Hello   first event on every connection: the session's labels, model and modalities
    Turn    the final result of one turn
    TurnPartial a provisional result of the turn still being spoken (replaced by its `turn`)
    TurnUpdate  a correction of a turn already sent (its speaker was revised, so its emotion too)
    Status  devices and modality availability changed
    Error   a stable `code` and a fixed `message` from `ERRORS`; never exception text, which may
            name paths, hosts or data the client has no business seeing (the log has the details)
    Pong    the answer to a ping

Client messages (what `protocol.parse` turns a frame into): `Resume` (a `hello` or `subscribe`
with `since`), `Ping`, `Control`, and `Invalid` for anything else.

`stamp` is the only function that adds the envelope (v, seq, session, sent, direct), so a
published event and a reply to one connection cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final

__all__ = [
    "CONTROL_ACTIONS", "ENVELOPE_KEYS", "ERRORS", "EVENT_TYPES", "PROTOCOL", "PROTOCOL_MINOR", "PROTOCOL_VERSION",
    "SERVER_EVENTS", "UPDATE_FIELDS", "UPDATE_REASONS", "ClientMessage", "Control", "ControlHandler", "Error",
    "Event", "Hello", "Invalid", "Ping", "Pong", "Resume", "ServerEvent", "Status", "Turn", "TurnPartial",
    "TurnUpdate", "error",
    "major_version", "stamp",
]

PROTOCOL_VERSION: Final = 1
"""The major version, every event's `v`: a client refuses events whose `v` it does not know
(additions keep it)."""
PROTOCOL_MINOR: Final = 2
"""The minor version, bumped by backward-compatible additions (clients ignore event types they do
not know). 1.0: hello, turn, status, error, pong. 1.1: turn.update, and the hello's `protocol`.
1.2: turn.partial."""
PROTOCOL: Final = f"{PROTOCOL_VERSION}.{PROTOCOL_MINOR}"
"""The full version, announced in the hello's `protocol` ("1.2")."""

CONTROL_ACTIONS: Final = ("reset", "pause", "resume")
ENVELOPE_KEYS: Final = frozenset({"v", "seq", "session", "sent", "direct"})

# Every error a client can be sent: code -> fixed message ({name} fields are filled from values the
# server chose or the client sent, never from an exception). Codes are stable; messages are for people.
ERRORS: Final[Mapping[str, str]] = {
    "bad_json": "not JSON",
    "bad_message": "a message is a JSON object with a string \"type\"",
    "bad_since": "\"since\" must be given once, as a non-negative integer seq of at most 18 digits",
    "bad_action": "control action must be reset, pause or resume",
    "unknown_type": "unknown message type {type!r}",
    "rate_limited": "more than {rate:g} messages/s: messages are being dropped",
    "resume_limited": "more than {rate:g} resumes/s: this one was not served, ask again later",
    "resume_truncated": "only the last {count} events are resent: events {first}-{last} are not",
    "control_unavailable": "control is not available in this session",
    "control_failed": "{action} failed",
    "control_refused": "{action} was not done",
    "turn_failed": "turn at {t_start:.2f}-{t_end:.2f} s could not be processed",
    # one of Recording.problems: our own sentence, naming a file of the recording by name, never a path
    "recording_damaged": "{problem}",
    # merc-serve: a client's media (stream/serve/media.py); {problem} is our own sentence about the frame
    "bad_media": "media frame dropped: {problem}",
    "audio_dropped": "the session fell {seconds:.1f} s behind: the oldest audio was dropped",
    "no_session": "no such session: watch one with ?session=ID, or send media to /session",
}
# Some problems share a code on the wire (clients match on these codes; the finer names are ours).
_WIRE_CODES: Final[Mapping[str, str]] = {"bad_since": "bad_message", "bad_action": "bad_message",
                                         "resume_limited": "rate_limited"}


ControlHandler = Callable[[str], str | None]
"""The session's side of `control`: called with "reset", "pause" or "resume"; returns None once
done, or a problem code (snake_case, e.g. "nothing_to_pause") when the action was not done. The
client gets that code with a fixed message (`ERRORS[code]` when the table has it, else
"<action> was not done"). An exception becomes `control_failed`; its text goes to the log only."""


def major_version(v: object) -> int | None:
    """The major version in an event's `v` (an int, or "1.2"-style text), None when unreadable."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.split(".")[0].isdigit():
        return int(v.split(".")[0])
    return None


def _plain(value: Any) -> Any:
    """JSON-ready containers: tuples become lists and mappings dicts (so events compare as before)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """A server event's body: `TYPE` is its tag, the fields its JSON members in order."""

    TYPE: ClassVar[str] = ""

    def body(self) -> dict[str, Any]:
        """The JSON object without the envelope: {"type": TYPE, field: value, ...}."""
        return {"type": self.TYPE, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """First event on every connection (direct); `last_seq` is the last published seq."""

    TYPE: ClassVar[str] = "hello"
    last_seq: int
    labels: tuple[str, ...]
    model: Mapping[str, Any]
    modalities: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    """The session's options by stage (merc.stream.session.options: no token, no paths); {} if not given."""
    protocol: str = PROTOCOL
    """The full protocol version, "major.minor" (since 1.1; a hello without it is from a 1.0 server)."""

    @classmethod
    def of(cls, info: Mapping[str, Any], last_seq: int = 0) -> Hello:
        """From the session's description ({"labels", "model", "modalities", "options"?}); other keys
        are refused (they would not be in the schema, or would overwrite the envelope)."""
        extra = set(info) - {"labels", "model", "modalities", "options"}
        if extra:
            raise ValueError(f"unknown hello fields: {', '.join(sorted(extra))}")
        return cls(last_seq, tuple(info["labels"]), dict(info["model"]), tuple(info["modalities"]),
                   dict(info.get("options", {})))


@dataclass(frozen=True, slots=True)
class Turn(Event):
    """The final result of one turn, rounded as published (build it with `Turn.of`)."""

    TYPE: ClassVar[str] = "turn"
    turn: int
    speaker: str | None
    t_start: float
    t_end: float
    text: str
    label: str
    confidence: float
    probs: Mapping[str, float]
    modalities: tuple[str, ...]
    available: tuple[str, ...]
    timings_ms: Mapping[str, float]
    speech_end: float

    @classmethod
    def of(cls, *, turn: int, speaker: str | None, t_start: float, t_end: float, text: str, label: str,
           confidence: float, probs: Mapping[str, float], modalities: list[str] | tuple[str, ...],
           available: list[str] | tuple[str, ...], timings_ms: Mapping[str, float], speech_end: float) -> Turn:
        """Rounded to what a client needs (ms for times, 4 digits for probabilities): replayed
        sessions serialise byte-identically apart from timings."""
        return cls(turn=turn, speaker=speaker, t_start=round(t_start, 3), t_end=round(t_end, 3), text=text,
                   label=label, confidence=round(confidence, 4), probs={k: round(v, 4) for k, v in probs.items()},
                   modalities=tuple(modalities), available=tuple(available),
                   timings_ms={k: round(v, 1) for k, v in timings_ms.items()}, speech_end=round(speech_end, 3))


UPDATE_FIELDS: Final = ("speaker", "label", "confidence", "probs")
"""What a `turn.update` replaces in the turn it names; everything else about the turn stays."""
UPDATE_REASONS: Final = ("speaker",)
"""Why a turn is updated: "speaker" (its speaker was revised, so the graph's speaker edges and with
them its emotion changed)."""


@dataclass(frozen=True, slots=True)
class TurnUpdate(Event):
    """A correction of a turn already sent (build it with `TurnUpdate.of`): the turn numbered `turn`
    (the most recent one with that number: numbers start again after a reset) now has this speaker,
    label, confidence and probabilities. It never creates a turn; a client that does not have the
    turn ignores it."""

    TYPE: ClassVar[str] = "turn.update"
    turn: int
    speaker: str | None
    label: str
    confidence: float
    probs: Mapping[str, float]
    reason: str

    @classmethod
    def of(cls, *, turn: int, speaker: str | None, label: str, confidence: float, probs: Mapping[str, float],
           reason: str = "speaker") -> TurnUpdate:
        """Rounded as `Turn.of` rounds (4 digits for probabilities); `reason` is one of UPDATE_REASONS."""
        if reason not in UPDATE_REASONS:
            raise ValueError(f"unknown turn.update reason {reason!r} (known: {', '.join(UPDATE_REASONS)})")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise ValueError(f"a turn.update names a turn by its number (an int >= 0), not {turn!r}")
        return cls(turn=turn, speaker=speaker, label=label, confidence=round(confidence, 4),
                   probs={k: round(v, 4) for k, v in probs.items()}, reason=reason)


@dataclass(frozen=True, slots=True)
class TurnPartial(Event):
    """A provisional result for the turn still being spoken (build it with `TurnPartial.of`): about
    once a second while the turn runs, its text so far, provisional speaker and emotion. The final
    `turn` with the same number replaces it; a later partial replaces an earlier one. `stable` is
    the prefix of `text` that successive decodes agreed on (it only grows within a turn); the rest
    may still change. Never scored: merc-eval reads `turn` events only."""

    TYPE: ClassVar[str] = "turn.partial"
    turn: int
    speaker: str | None
    t_start: float
    t_end: float
    text: str
    stable: str
    label: str
    confidence: float
    probs: Mapping[str, float]
    timings_ms: Mapping[str, float]

    @classmethod
    def of(cls, *, turn: int, speaker: str | None, t_start: float, t_end: float, text: str, stable: str,
           label: str, confidence: float, probs: Mapping[str, float], timings_ms: Mapping[str, float]
           ) -> TurnPartial:
        """Rounded as `Turn.of` rounds."""
        return cls(turn=turn, speaker=speaker, t_start=round(t_start, 3), t_end=round(t_end, 3), text=text,
                   stable=stable, label=label, confidence=round(confidence, 4),
                   probs={k: round(v, 4) for k, v in probs.items()},
                   timings_ms={k: round(v, 1) for k, v in timings_ms.items()})


@dataclass(frozen=True, slots=True)
class Status(Event):
    """Devices changed: microphone, camera, face -> available (None: unknown)."""

    TYPE: ClassVar[str] = "status"
    devices: Mapping[str, bool | None]
    message: str


@dataclass(frozen=True, slots=True)
class Error(Event):
    """Something the client should know about; build it with `error(name, ...)`."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Pong(Event):
    """The answer to a ping."""

    TYPE: ClassVar[str] = "pong"


ServerEvent = Hello | Turn | TurnUpdate | Status | Error | Pong
SERVER_EVENTS: Final[tuple[type[Event], ...]] = (Hello, Turn, TurnUpdate, TurnPartial, Status, Error, Pong)
EVENT_TYPES: Final = tuple(kind.TYPE for kind in SERVER_EVENTS)


def error(name: str, **values: object) -> Error:
    """The `Error` for problem `name` in `ERRORS`, its message filled from `values`."""
    return Error(_WIRE_CODES.get(name, name), ERRORS[name].format(**values))


def stamp(event: Event | Mapping[str, Any], *, seq: int, session: str, sent: float,
          direct: bool = False) -> dict[str, Any]:
    """The event as sent: envelope first (v, seq, session, sent rounded to ms, and `direct: true` for
    a reply to one connection, whose seq is then the last published one), then the body.

    The body may not carry envelope keys: it would overwrite the seq or version clients rely on.
    """
    body = event.body() if isinstance(event, Event) else dict(event)
    clash = ENVELOPE_KEYS.intersection(body)
    if clash:
        raise ValueError(f"an event body cannot set {', '.join(sorted(clash))}")
    envelope: dict[str, Any] = {"v": PROTOCOL_VERSION, "seq": seq, "session": session, "sent": round(sent, 3)}
    if direct:
        envelope["direct"] = True
    return {**envelope, **body}


# ---- client messages -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ping:
    """Answered with a pong."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Resend the kept events with seq > `since` (a `hello`, or its old name `subscribe`)."""

    since: int


@dataclass(frozen=True, slots=True)
class Control:
    """Ask the session to reset, pause or resume (see `ControlHandler`)."""

    action: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not understood: `code` and `message` go back in an `error` event."""

    code: str
    message: str

    @classmethod
    def of(cls, name: str, **values: object) -> Invalid:
        problem = error(name, **values)
        return cls(problem.code, problem.message)


ClientMessage = Ping | Resume | Control | Invalid
