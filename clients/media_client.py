"""A Python media client of merc-serve: stream a WAV file to a new session as a microphone would,
and collect the events that come back.

    from merc.clients.media_client import stream_wav
    events = asyncio.run(stream_wav("ws://127.0.0.1:8765/session", "call.wav", speed=1.0))

The file is sent as audio frames of 512 samples (stream/serve/media.py), paced at `speed` times
real time (None: as fast as the socket takes them; give merc-serve a --max-queued-seconds longer
than the file then, or its oldest audio is dropped), then an empty audio frame (end of audio).
The session answers with its turns and, once everything sent is processed, a `status` event whose
message starts with "session ended". Run `python -m merc.clients.media_client URL WAV` to print the
turns as they come.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from merc.stream.capture.audio import SAMPLE_RATE, WavFileSource
from merc.stream.serve.media import FRAME_SAMPLES, audio_frame

__all__ = ["ENDED", "read_wav", "stream_samples", "stream_wav"]

ENDED = "session ended"


def read_wav(path: str | Path) -> np.ndarray:
    """The file as 16 kHz mono float32 (other rates and stereo converted)."""
    source = WavFileSource(path, speed=None)
    blocks = list(source.blocks())
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


async def stream_samples(url: str, samples: np.ndarray, speed: float | None = 1.0, *,
                         on_event: Callable[[dict[str, Any]], None] | None = None,
                         headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Send `samples` to a new session at `url` and return every event it sent back, in order,
    up to its "session ended" status. `on_event` sees each as it arrives (stamped with
    `received`, time.time() on arrival). Bound it with `asyncio.timeout` if the server may hang."""
    from websockets.asyncio.client import connect

    events: list[dict[str, Any]] = []
    async with connect(url, max_size=None, additional_headers=headers) as socket:
        async def send() -> None:
            started = time.monotonic()
            for seq, start in enumerate(range(0, len(samples), FRAME_SAMPLES)):
                block = samples[start:start + FRAME_SAMPLES]
                if speed:
                    delay = started + (start + len(block)) / SAMPLE_RATE / speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await socket.send(audio_frame(block, seq, start / SAMPLE_RATE))
            await socket.send(audio_frame(np.zeros(0, np.float32), len(samples) // FRAME_SAMPLES + 1,
                                          len(samples) / SAMPLE_RATE))

        async def receive() -> None:
            async for message in socket:
                event = json.loads(message)
                event["received"] = time.time()
                events.append(event)
                if on_event is not None:
                    on_event(event)
                if event.get("type") == "status" and str(event.get("message", "")).startswith(ENDED):
                    return

        sender = asyncio.create_task(send())
        try:
            await receive()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return events


async def stream_wav(url: str, path: str | Path, speed: float | None = 1.0, **kwargs: Any) -> list[dict[str, Any]]:
    """`stream_samples` of a WAV file."""
    return await stream_samples(url, read_wav(path), speed, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merc.clients.media_client",
                                     description="Stream a WAV file to merc-serve as a new session and print its "
                                                 "turns.")
    parser.add_argument("url", help="the session endpoint, e.g. ws://127.0.0.1:8765/session")
    parser.add_argument("wav", type=Path, help="the audio to send (any rate; mono or stereo)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time; 0 = as fast as possible")
    args = parser.parse_args(argv)

    def show(event: dict[str, Any]) -> None:
        if event.get("type") == "turn":
            print(f"{event['turn']:>3} {event.get('speaker') or '?':<4} {event['label']:<9} {event['text']}")
        elif event.get("type") in ("error", "status"):
            print(f"{event['type']}: {event.get('message')}", file=sys.stderr)

    asyncio.run(stream_wav(args.url, args.wav, args.speed or None, on_event=show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
