"""A small Python client of the event service: connect, follow events, resume after a drop.

    from merc.clients.client import Conversation, follow
    conversation = Conversation()
    async for event in follow("ws://127.0.0.1:8765/"):
        turn = conversation.apply(event)  # a new turn, or an earlier one a turn.update corrected
        if turn is not None:
            print(turn["turn"], turn["speaker"], turn["label"], turn["text"])

`follow` reconnects with backoff and asks for the events after the last sequence number it has
seen, so a dropped connection neither loses nor repeats a turn (as long as the server still
keeps them: it keeps the last 10,000). `Conversation` keeps the turns with every `turn.update`
(a corrected speaker, and so emotion, of an earlier turn) applied; other event types it does not
know it ignores, as every client should. Run `python -m merc.clients.client URL` to print events
(`--turns`: one line per turn, and one per correction).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from merc.models.errors import MercError
from merc.stream.wire.events import apply_update
from merc.stream.wire.messages import PROTOCOL_VERSION, TurnUpdate, major_version

__all__ = ["PROTOCOL_VERSION", "Conversation", "ProtocolMismatch", "check_version", "follow", "format_turn"]

log = logging.getLogger(__name__)


class ProtocolMismatch(MercError, RuntimeError):
    """The server speaks a protocol version this client does not know."""

    code = "protocol_mismatch"
    hint = "update merc-live or this client so both speak the same major version"


def check_version(url: str, hello: dict[str, Any]) -> int:
    """The protocol version the server announced in its `hello` (its first event); ProtocolMismatch
    when its major version is not the one this client speaks (PROTOCOL_VERSION)."""
    if hello.get("type") != "hello":
        raise ProtocolMismatch(f"{url}: the server's first event is {str(hello.get('type'))[:40]!r}, not a hello")
    version = hello.get("v")
    if major_version(version) != PROTOCOL_VERSION:
        raise ProtocolMismatch(f"{url}: server speaks protocol v{str(version)[:20]}, this client v{PROTOCOL_VERSION}")
    return PROTOCOL_VERSION


async def follow(url: str, since: int = 0, reconnect: bool = True,
                 max_backoff: float = 5.0) -> AsyncIterator[dict[str, Any]]:
    """Yield every event from `url` in order, without duplicates, reconnecting when `reconnect`.

    The server's `hello` is yielded on each (re)connection; events already seen are skipped. The
    hello says which protocol the server speaks: a major version other than this client's raises
    ProtocolMismatch (so do later events of another version, which a server should never send).
    Ends when the server closes normally and `reconnect` is False.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    last = since
    backoff = 0.2
    while True:
        try:
            # ?since= resumes atomically with the subscription (a hello message alone would race
            # with events published before the server reads it)
            async with connect(_with_since(url, last)) as websocket:
                await websocket.send(json.dumps({"type": "hello", "since": last}))
                backoff = 0.2
                version: int | None = None
                async for message in websocket:
                    event: dict[str, Any] = json.loads(message)
                    if version is None:
                        version = check_version(url, event)
                    elif major_version(event.get("v")) != version:
                        raise ProtocolMismatch(f"{url}: an event of protocol v{str(event.get('v'))[:20]} after a "
                                               f"v{version} hello")
                    if event.get("direct"):  # hello, pong, an error about our message: not in the sequence
                        yield event
                        continue
                    if event["seq"] <= last:
                        continue
                    last = event["seq"]
                    yield event
            if not reconnect:
                return
        except (OSError, ConnectionClosed) as err:
            if not reconnect:
                return
            log.info("connection to %s lost (%s); reconnecting in %.1f s", url, err, backoff)
        await asyncio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)


class Conversation:
    """The turns a client has been sent, with each `turn.update` applied to the turn it names.

    `apply` takes every event in order: a `turn` is added, a `turn.update` replaces the speaker,
    label, confidence and probabilities of the most recent turn with its number (numbers start
    again after a reset) without moving it, and anything else is ignored. An update for a turn this
    client does not have (never sent, or older than the `keep` turns kept) is ignored: it never
    creates a turn. A new session (a hello naming another session) starts over.
    """

    def __init__(self, keep: int | None = 10000) -> None:
        self.keep = keep
        self.session: str | None = None
        self._turns: deque[dict[str, Any]] = deque()
        self._latest: dict[int, dict[str, Any]] = {}  # turn number -> the newest turn with it

    @property
    def turns(self) -> list[dict[str, Any]]:
        """The kept turns, oldest first, as corrected so far (corrected ones carry `updates`, a count)."""
        return list(self._turns)

    def apply(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Take one event; returns the turn it added or changed, or None."""
        kind = event.get("type")
        if kind == "hello":
            if self.session is not None and event.get("session") != self.session:
                self._turns.clear()
                self._latest.clear()
            self.session = event.get("session")
            return None
        number = event.get("turn")
        if isinstance(number, bool) or not isinstance(number, int):
            return None
        if kind == "turn":
            turn = dict(event)
            self._turns.append(turn)
            self._latest[number] = turn
            while self.keep is not None and len(self._turns) > self.keep:
                old = self._turns.popleft()
                if self._latest.get(old["turn"]) is old:
                    del self._latest[old["turn"]]
            return turn
        if kind == TurnUpdate.TYPE and number in self._latest:
            turn = self._latest[number]
            turn.update(apply_update(turn, event), updates=turn.get("updates", 0) + 1)
            return turn
        return None


def format_turn(turn: dict[str, Any], corrected: bool = False) -> str:
    """One line for a turn: number, speaker, emotion and confidence, text (and a mark when corrected)."""
    line = (f"{turn['turn']:>4} {turn.get('speaker') or '?':<6} {turn['label']:<9} {turn['confidence']:4.2f}  "
            f"{turn.get('text', '')}")
    return line + ("  [corrected]" if corrected else "")


def _with_since(url: str, since: int) -> str:
    """`url` with its `since` query parameter set (other parameters, such as a token, kept)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "since"] + [("since", str(since))]
    return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))


async def _print(url: str, turns: bool = False) -> None:
    conversation = Conversation()
    async for event in follow(url):
        if not turns:
            print(json.dumps(event, ensure_ascii=False), flush=True)
            continue
        turn = conversation.apply(event)
        if turn is not None:
            print(format_turn(turn, corrected=event.get("type") == TurnUpdate.TYPE), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(prog="python -m merc.clients.client", description="Print a server's events.")
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8765/")
    parser.add_argument("--turns", action="store_true",
                        help="one line per turn, and one per corrected turn (turn.update), instead of JSON")
    args = parser.parse_args()
    try:
        asyncio.run(_print(args.url, args.turns))
    except KeyboardInterrupt:
        pass
