"""What one client still has to receive: a bounded queue that sheds stale events, never turns.

Sans-I/O: the server pushes every published event into each client's `ClientQueue` and its send
loop pops them; no socket or loop is involved here, so the policy is tested on its own. A client
that reads slower than events arrive first loses the oldest *droppable* events (anything but a
final `turn` or a `turn.update`, which corrects one: `turn.partial`, `status`, published `error`s,
each superseded by a later one); when the queue holds nothing but final turns the client cannot
catch up and must be disconnected
(`push` returns False), so one slow reader never holds memory or the pipeline hostage.
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["FINAL_TYPES", "ClientQueue", "Outgoing"]

FINAL_TYPES = frozenset({"turn", "turn.update"})
"""Events never shed: a turn, and a correction of one (a client without it would show a stale turn)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event as sent: serialised once, however many clients it goes to."""

    seq: int
    final: bool
    text: str

    @classmethod
    def of(cls, event: dict[str, Any]) -> Outgoing:
        return cls(event["seq"], event.get("type") in FINAL_TYPES, json.dumps(event))


class ClientQueue:
    """Live events (at most `capacity`) after a resume's backlog, in order, each seq at most once.

    The backlog (events the client asked to be resent) is not counted against `capacity`: it refers
    to events the server keeps anyway (already serialised, shared by every client), and a client
    resuming after a long gap must not be taken for a slow one. Each resume replaces the previous
    backlog (the latest `since` is what the client has), so repeated resumes cannot grow it; the
    server bounds its length (server.RESUME_LIMIT).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self.overflowed = False
        self._backlog: deque[Outgoing] = deque()
        self._live: deque[Outgoing] = deque()
        self._droppable = 0
        self._last_seq = 0

    def __len__(self) -> int:
        return len(self._backlog) + len(self._live)

    @property
    def last_seq(self) -> int:
        """The last seq popped to be sent (a resume never resends up to it)."""
        return self._last_seq

    @property
    def backlog(self) -> int:
        """How many resent events are still to go (the server paces these)."""
        return len(self._backlog)

    def push(self, item: Outgoing) -> bool:
        """Queue a live event; False when the client cannot catch up (queue full of final turns)."""
        if self.overflowed:
            return False
        if len(self._live) >= self.capacity:
            if self._droppable:
                self._drop_oldest_droppable()
            elif not item.final:
                self.dropped += 1  # the newest partial loses to the turns before it
                return True
            else:
                self.overflowed = True
                return False
        self._live.append(item)
        self._droppable += not item.final
        return True

    def resume(self, events: Iterable[Outgoing]) -> None:
        """Resend `events` (kept events the client missed, in seq order) before the live ones."""
        self._backlog = deque(events)

    def pop(self) -> Outgoing | None:
        """The next event to send, skipping any seq already sent (a resume can overlap), or None."""
        while self._backlog or self._live:
            if self._backlog:
                item = self._backlog.popleft()
            else:
                item = self._live.popleft()
                self._droppable -= not item.final
            if item.seq > self._last_seq:
                self._last_seq = item.seq
                return item
        return None

    def _drop_oldest_droppable(self) -> None:
        for index, queued in enumerate(self._live):
            if not queued.final:
                del self._live[index]
                self._droppable -= 1
                self.dropped += 1
                return
