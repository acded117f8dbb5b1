"""A small Python client of the event service: connect, follow events, resume after a drop.

    from merc.clients.client import follow
    async for event in follow("ws://127.0.0.1:8765/"):
        if event["type"] == "turn":
            print(event["speaker"], event["label"], event["text"])

`follow` reconnects with backoff and asks for the events after the last sequence number it has
seen, so a dropped connection neither loses nor repeats a turn (as long as the server still
keeps them: it keeps the last 10,000). Run `python -m merc.clients.client URL` to print events.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from merc.models.errors import MercError
from merc.stream.wire.messages import PROTOCOL_VERSION, major_version

__all__ = ["PROTOCOL_VERSION", "ProtocolMismatch", "check_version", "follow"]

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


def _with_since(url: str, since: int) -> str:
    """`url` with its `since` query parameter set (other parameters, such as a token, kept)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "since"] + [("since", str(since))]
    return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))


async def _print(url: str) -> None:
    async for event in follow(url):
        print(json.dumps(event, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_print(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"))
    except KeyboardInterrupt:
        pass
