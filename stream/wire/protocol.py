"""One client's side of the protocol, without I/O: messages in, what to send and do out.

In the style of the `websockets` library: `Connection` holds the state of one connection (its
rate limit, whether it is closing) and turns each received frame into an `Outcome` (replies to
send, a seq to resume after, a close). It reads no clock (the caller passes the time), touches no
socket and never raises on a client's input, so all of it is tested without a server; the asyncio
server (server.py) only moves frames and owns sockets, timeouts and backpressure.

`parse` reads one frame into a typed message (messages.py); the fuzz tests feed it arbitrary text,
bytes and JSON. `RateLimiter` decides which messages are served at all.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qs, urlsplit

from merc.stream.wire.messages import (
    CONTROL_ACTIONS,
    ERRORS,
    ClientMessage,
    Control,
    ControlHandler,
    Error,
    Event,
    Hello,
    Invalid,
    Ping,
    Pong,
    Resume,
    error,
    stamp,
)

__all__ = [
    "CONTROL_ACTIONS", "MAX_SINCE", "Admission", "Close", "Connection", "Control", "Invalid", "Outcome", "Ping",
    "RateLimiter", "Resume", "TokenBucket", "parse", "read_since", "since_from_path",
]

log = logging.getLogger(__name__)

_MAX_QUERY_FIELDS = 100  # parse_qs refuses more (a handshake's request line is at most 8 KiB anyway)
_ECHO_CHARS = 40  # how much of an unknown type an error quotes back
_PROBLEM_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")  # what a control handler may name as its problem
MAX_SINCE = 10**18 - 1  # a seq a client may resume after: 18 decimal digits (an int64 either side)
_SINCE = re.compile(r"[0-9]{1,18}", re.ASCII)  # ASCII digits only: "²" or "٣" pass str.isdigit(), not int()


def parse(message: str | bytes) -> ClientMessage:
    """The request in one client frame (text or binary), or `Invalid`; never raises."""
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, nesting or digits past the limits
        return Invalid.of("bad_json")  # json's own text is not for clients (and says nothing useful)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return Invalid.of("bad_message")
    kind = data["type"]
    if kind == "ping":
        return Ping()
    if kind in ("hello", "subscribe"):
        since = data.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_SINCE:
            return Invalid.of("bad_since")
        return Resume(since)
    if kind == "control":
        action = data.get("action")
        if not isinstance(action, str) or action not in CONTROL_ACTIONS:
            return Invalid.of("bad_action")
        return Control(action)
    shown = kind if len(kind) <= _ECHO_CHARS else kind[:_ECHO_CHARS] + "..."
    return Invalid.of("unknown_type", type=shown)


def read_since(path: str) -> int | Invalid | None:
    """The seq a client resumes after, from its handshake's ?since=N: None when absent, `Invalid`
    (bad_since) unless it is given once as 1-18 ASCII digits; never raises."""
    try:
        values = parse_qs(urlsplit(path).query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS).get("since")
    except ValueError:  # more fields than any client of ours sends
        return Invalid.of("bad_since")
    if values is None:
        return None
    if len(values) != 1 or not _SINCE.fullmatch(values[0]):
        return Invalid.of("bad_since")
    return int(values[0])


def since_from_path(path: str) -> int | None:
    """The seq a client resumes after, from its handshake's ?since=N (None when absent or not valid)."""
    since = read_since(path)
    return since if isinstance(since, int) else None


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


class TokenBucket:
    """`rate` units/s, bursts of `burst`: `take` says whether one unit is there now (resumes per
    connection); `reserve` takes `n` whatever is there and says how long to wait before using them
    (the server-wide pace of resume backlogs: debt is paid in order, so waits are fair)."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now if self._last is None else max(self._last, now)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def reserve(self, n: int, now: float) -> float:
        """Take `n` units; the seconds to wait before they are there (0: now)."""
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this WebSocket close code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do after one message, in this order: resend the kept events with seq > `resume`, send
    `replies` (stamped, direct), then `close`. `control` is the action the session was asked for."""

    replies: tuple[dict[str, Any], ...] = ()
    resume: int | None = None
    close: Close | None = None
    control: str | None = None

    @property
    def reply(self) -> dict[str, Any] | None:
        """The first reply, or None (a served message gets at most one)."""
        return self.replies[0] if self.replies else None


RATE_LIMIT_CLOSE = Close(1008, "rate limit exceeded")
RESUME_RATE = 1.0  # resumes (a `hello` with since) per second and connection, after a burst of
RESUME_BURST = 3


class Connection:
    """One client's protocol state: its rate limit and whether it is closing.

    `session` and `hello` describe what it is connected to; `on_control` is the session's handler
    (without one, `control` is answered `control_unavailable`). Times are passed in: `now` is
    monotonic seconds (the rate limit), `sent` Unix seconds (the replies' `sent`), and `last_seq`
    the last seq published, which direct replies carry.
    """

    def __init__(self, session: str, hello: Hello, *, on_control: ControlHandler | None = None,
                 limiter: RateLimiter | None = None, resumes: TokenBucket | None = None) -> None:
        self.session = session
        self.hello = hello
        self.on_control = on_control
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.resumes = resumes if resumes is not None else TokenBucket(RESUME_RATE, RESUME_BURST)
        self.closing = False
        self._resume_warned: float | None = None

    def open(self, path: str, *, last_seq: int, sent: float) -> Outcome:
        """The handshake went through: greet with `hello`, then resume from its ?since= (if any; a
        bad one gets a `bad_since` error and the connection goes on live)."""
        hello = Hello(last_seq, self.hello.labels, self.hello.model, self.hello.modalities, self.hello.options)
        replies = [self._direct(hello, last_seq, sent)]
        since = read_since(path)
        if isinstance(since, Invalid):
            replies.append(self._direct(Error(since.code, since.message), last_seq, sent))
            since = None
        return Outcome(replies=tuple(replies), resume=since)

    def receive(self, message: str | bytes, *, now: float, sent: float, last_seq: int) -> Outcome:
        """One frame from the client, admitted by the rate limit or not; never raises."""
        if self.closing:  # read on, unanswered, so the closing handshake gets through
            return Outcome()
        admission = self.limiter.admit(now)
        if admission is Admission.CLOSE:
            self.closing = True
            return Outcome(close=RATE_LIMIT_CLOSE)
        if admission is Admission.DROP_AND_WARN:
            return Outcome(replies=(self._direct(error("rate_limited", rate=self.limiter.rate), last_seq, sent),))
        if admission is Admission.DROP:
            return Outcome()
        outcome = self.handle(message, sent=sent, last_seq=last_seq)
        if outcome.resume is not None and not self.resumes.take(now):  # each resume costs a backlog
            if self._resume_warned is not None and now - self._resume_warned < self.limiter.warn_every:
                return Outcome()
            self._resume_warned = now
            return Outcome(replies=(self._direct(error("resume_limited", rate=self.resumes.rate), last_seq, sent),))
        return outcome

    def handle(self, message: str | bytes, *, sent: float, last_seq: int) -> Outcome:
        """The answer to one admitted message: a reply (or none) and the seq to resume after."""
        request = parse(message)
        if isinstance(request, Ping):
            return Outcome(replies=(self._direct(Pong(), last_seq, sent),))
        if isinstance(request, Resume):
            return Outcome(resume=request.since)
        if isinstance(request, Control):
            problem = self._control(request.action)
            replies = (self._direct(problem, last_seq, sent),) if problem is not None else ()
            return Outcome(replies=replies, control=request.action)
        return Outcome(replies=(self._direct(Error(request.code, request.message), last_seq, sent),))

    def _control(self, action: str) -> Error | None:
        """Carry out `action` through the session's handler: None when done, else the error to send."""
        if self.on_control is None:
            return error("control_unavailable")
        try:
            problem = self.on_control(action)
        except Exception:  # the session's failure to act is the client's error, not the connection's
            log.warning("control %s failed", action, exc_info=True)
            return error("control_failed", action=action)
        if problem is None:
            return None
        if not isinstance(problem, str) or not _PROBLEM_CODE.fullmatch(problem):
            log.info("control %s not done: %r", action, problem)
            return error("control_refused", action=action)
        if problem in ERRORS:  # one of ours: its wire code and fixed message
            try:
                return error(problem, action=action)
            except (KeyError, IndexError, ValueError):  # a table entry that needs more than the action
                pass
        return Error(problem, ERRORS["control_refused"].format(action=action))

    def _direct(self, event: Event, last_seq: int, sent: float) -> dict[str, Any]:
        return stamp(event, seq=last_seq, session=self.session, sent=sent, direct=True)
