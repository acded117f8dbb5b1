"""Media a client sends over its WebSocket: the binary frame format (parsed without I/O) and the
audio source a session reads them from.

A media frame is one binary WebSocket message: a 16-byte header, then the payload.

    offset  size  field
    0       2     magic b"MF"
    2       1     version (MEDIA_VERSION, 1)
    3       1     kind: 1 = audio, 2 = video
    4       4     seq: uint32, little-endian, counted per kind from 0 (a gap means frames were lost)
    8       8     t: float64, little-endian, seconds since the client started capturing (first sample
                  of an audio frame, capture time of a video frame)
    16      ...   payload
                  audio: 16 kHz mono PCM, int16 little-endian, 0..MAX_AUDIO_SAMPLES samples (the
                         browser sends FRAME_SAMPLES = 512, 32 ms, the VAD's frame); no samples
                         means the client stopped capturing (end of audio)
                  video: one JPEG image, at most MAX_VIDEO_BYTES

Text messages on the same connection are the JSON protocol of stream/wire (ping, control, hello).
A bad frame gets an `error` event (code bad_media, the reason in its message) and is dropped; the
connection and the session go on.
"""
from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from merc.models.errors import MercError
from merc.stream.capture.audio import BLOCK, SAMPLE_RATE, AudioChunk
from merc.stream.capture.video import VideoFrame

__all__ = ["AUDIO", "FRAME_SAMPLES", "HEADER", "MAX_AUDIO_SAMPLES", "MAX_VIDEO_BYTES", "MEDIA_VERSION", "VIDEO",
           "MediaFrame", "MediaFrameError", "PushAudioSource", "PushVideoSource", "audio_frame", "parse_frame"]

log = logging.getLogger(__name__)

MEDIA_VERSION = 1
AUDIO, VIDEO = 1, 2
HEADER = struct.Struct("<2sBBId")
MAGIC = b"MF"
FRAME_SAMPLES = 512
MAX_AUDIO_SAMPLES = SAMPLE_RATE  # one second per frame at most
MAX_VIDEO_BYTES = 60 * 1024  # under the server's 64 KiB message limit with the header


class MediaFrameError(MercError, ValueError):
    """A binary message that is not a media frame this server reads (the message says why)."""

    code = "media_frame_invalid"


@dataclass(frozen=True, slots=True)
class MediaFrame:
    kind: int
    seq: int
    t: float
    payload: bytes

    def samples(self) -> np.ndarray:
        """An audio frame's samples as float32 in [-1, 1]."""
        return np.frombuffer(self.payload, dtype="<i2").astype(np.float32) / 32768.0


def parse_frame(data: bytes) -> MediaFrame:
    """The media frame in one binary message; MediaFrameError names what is wrong."""
    if len(data) < HEADER.size:
        raise MediaFrameError(f"a media frame has a {HEADER.size}-byte header; got {len(data)} bytes")
    magic, version, kind, seq, t = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MediaFrameError("not a media frame (it must start with b'MF')")
    if version != MEDIA_VERSION:
        raise MediaFrameError(f"media frame version {version} is not supported (this server reads {MEDIA_VERSION})")
    if not math.isfinite(t) or t < 0:
        raise MediaFrameError("the frame time must be a finite number of seconds >= 0")
    payload = bytes(data[HEADER.size:])
    if kind == AUDIO:
        if len(payload) % 2:
            raise MediaFrameError("an audio payload is int16 samples: an even number of bytes")
        if len(payload) // 2 > MAX_AUDIO_SAMPLES:
            raise MediaFrameError(f"an audio frame holds at most {MAX_AUDIO_SAMPLES} samples")
    elif kind == VIDEO:
        if not payload.startswith(b"\xff\xd8"):
            raise MediaFrameError("a video payload is one JPEG image")
        if len(payload) > MAX_VIDEO_BYTES:
            raise MediaFrameError(f"a video frame holds at most {MAX_VIDEO_BYTES} bytes")
    else:
        raise MediaFrameError(f"unknown media kind {kind} (1 = audio, 2 = video)")
    return MediaFrame(kind, seq, t, payload)


def audio_frame(samples: np.ndarray, seq: int, t: float) -> bytes:
    """One audio frame of float samples in [-1, 1] (what a Python client or the benchmark sends)."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float32) * 32767.0), -32768, 32767).astype("<i2")
    return HEADER.pack(MAGIC, MEDIA_VERSION, AUDIO, seq & 0xFFFFFFFF, t) + pcm.tobytes()


class PushAudioSource:
    """An AudioSource fed by a client's frames instead of a device.

    `push` is called on the server's event loop and never waits: samples go into a buffer of at
    most `max_seconds`; when the session has fallen that far behind, the oldest samples are
    dropped and counted (`dropped_seconds`), as the microphone source drops its oldest chunk. The
    pipeline thread iterates `BLOCK`-sample chunks on the session clock (samples received so far).
    """

    def __init__(self, name: str, max_seconds: float = 10.0) -> None:
        if max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        self.name = name
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.started: float | None = None
        self.on_status: Callable[[dict[str, Any]], None] = lambda status: None
        self.dropped_seconds = 0.0
        self.lost_frames = 0
        self._chunks: deque[AudioChunk] = deque()
        self._queued = 0
        self._pending = np.zeros(0, np.float32)
        self._received = 0  # samples made into chunks so far: the session clock
        self._next_seq: int | None = None
        self._ended = False
        self._ready = threading.Condition()

    @property
    def queued_seconds(self) -> float:
        return self._queued / SAMPLE_RATE

    def start(self) -> None:
        self.started = time.monotonic()

    def push(self, frame: MediaFrame) -> None:
        """Add an audio frame's samples (from the event loop; never blocks)."""
        if self._next_seq is not None and frame.seq != self._next_seq:
            self.lost_frames += (frame.seq - self._next_seq) & 0xFFFFFFFF
        self._next_seq = (frame.seq + 1) & 0xFFFFFFFF
        samples = frame.samples()
        arrived = time.monotonic()
        with self._ready:
            if self._ended:
                return
            pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
            whole = len(pending) - len(pending) % BLOCK
            for i in range(0, whole, BLOCK):
                self._chunks.append(AudioChunk(self._received / SAMPLE_RATE, pending[i:i + BLOCK], arrived))
                self._received += BLOCK
                self._queued += BLOCK
            self._pending = pending[whole:]
            while self._queued > self.max_samples and self._chunks:
                dropped = self._chunks.popleft()
                self._queued -= len(dropped.samples)
                self.dropped_seconds += len(dropped.samples) / SAMPLE_RATE
            self._ready.notify()

    def stop(self) -> None:
        """The client is gone: the pipeline reads what is queued, then its iteration ends."""
        with self._ready:
            self._ended = True
            self._ready.notify_all()

    def __iter__(self) -> Iterator[AudioChunk]:
        while True:
            with self._ready:
                while not self._chunks and not self._ended:
                    self._ready.wait(timeout=0.5)
                if not self._chunks:
                    return
                chunk = self._chunks.popleft()
                self._queued -= len(chunk.samples)
            yield chunk


class PushVideoSource:
    """A VideoSource (stream/capture/video.py) fed by a client's JPEG frames, for a FaceTracker.

    `push` (on the event loop) only keeps the newest `keep` frames, still encoded; a frame is
    decoded when the tracker asks for it, on the tracker's thread. Frames are on the client's
    capture clock, the one its audio frames use. `available` while a frame came within
    `stale_s`; a frame that does not decode is counted (`bad_frames`) and skipped."""

    def __init__(self, keep: int = 30, stale_s: float = 2.0) -> None:
        self.stale_s = stale_s
        self.bad_frames = 0
        self.received = 0
        self._frames: deque[tuple[float, bytes]] = deque(maxlen=keep)
        self._last_arrival = -math.inf
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return time.monotonic() - self._last_arrival < self.stale_s

    def start(self) -> None:
        pass

    def stop(self) -> None:
        with self._lock:
            self._frames.clear()
        self._last_arrival = -math.inf

    def push(self, frame: MediaFrame) -> None:
        with self._lock:
            self._frames.append((frame.t, frame.payload))
        self.received += 1
        self._last_arrival = time.monotonic()

    def latest(self) -> VideoFrame | None:
        with self._lock:
            newest = self._frames[-1] if self._frames else None
        return self._decode(*newest) if newest is not None else None

    def frames_since(self, t: float) -> list[VideoFrame]:
        with self._lock:
            kept = [entry for entry in self._frames if entry[0] > t]
        return [frame for frame in (self._decode(*entry) for entry in kept) if frame is not None]

    def _decode(self, t: float, jpeg: bytes) -> VideoFrame | None:
        import cv2

        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self.bad_frames += 1
            return None
        return VideoFrame(t, image)
