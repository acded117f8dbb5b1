"""Audio sources: the microphone (sounddevice) and a WAV file (replay), behind one interface.

A source yields `AudioChunk`s of 16 kHz mono float32 on the session clock. Capture never waits
for the pipeline: the microphone callback only appends to a bounded queue and, when the
pipeline has fallen a whole queue behind, drops the oldest chunk and counts an overrun. A file
source instead waits for the pipeline (nothing is lost by waiting on a file), paced at real
time (`speed=1`), faster (`speed=4`), or as fast as the pipeline runs (`speed=None`).
"""
from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from merc.models.errors import MercError

SAMPLE_RATE = 16000
BLOCK = 512  # samples per chunk: 32 ms, the VAD's frame

log = logging.getLogger(__name__)


class AudioSourceError(MercError, RuntimeError):
    """A source cannot start or its input is unusable (names the device or file)."""

    code = "audio_source"


@dataclass(frozen=True)
class AudioChunk:
    """Consecutive samples of the stream."""

    t: float
    """Session time (s) of the first sample: samples seen so far / sample rate."""
    samples: np.ndarray
    """16 kHz mono float32 in [-1, 1]."""
    arrived: float
    """time.monotonic() when the chunk reached us: when its last sample was heard, for latency."""


class AudioSource(Protocol):
    """What the pipeline reads audio from (MicSource, WavFileSource)."""

    name: str
    """What it is, for people: "microphone 'USB Audio'", a file's path."""
    started: float | None
    """time.monotonic() at the first sample (session time 0, the camera's clock too); None before `start`."""
    on_status: Callable[[dict[str, Any]], None]
    """Called (from any thread) with a status change, e.g. {"microphone": False, "message": ...}."""

    def start(self) -> None:
        """Begin capturing; raises AudioSourceError when it cannot."""
        ...

    def stop(self) -> None:
        """End capture (safe from any thread, more than once): the iteration ends soon after."""
        ...

    def __iter__(self) -> Iterator[AudioChunk]:
        """The chunks, in order, until the source ends or is stopped."""
        ...


_END = object()


class MicSource:
    """The default (or a named) input device through PortAudio, 16 kHz mono.

    The PortAudio callback thread does nothing but copy the block into a bounded queue, so a
    slow pipeline can never stall capture; `overruns` counts chunks dropped because the
    pipeline fell `max_seconds` behind.
    """

    def __init__(self, device: int | str | None = None, max_seconds: float = 30.0,
                 on_status: Callable[[dict], None] | None = None) -> None:
        self.device = device
        self.name = f"microphone {device if device is not None else '(default)'}"
        self.overruns = 0
        self.on_status = on_status or (lambda status: None)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_seconds * SAMPLE_RATE / BLOCK)))
        self._stream = None
        self._samples = 0
        self.started: float | None = None
        """time.monotonic() at the first sample: session time 0, shared with the camera's clock."""
        self._check()

    def _check(self) -> None:
        """Fail now, before models load, when there is no such input device."""
        try:
            import sounddevice as sd
        except OSError as err:  # the PortAudio shared library is missing
            raise AudioSourceError(f"cannot use a microphone: {err} "
                                   "(install PortAudio: apt install libportaudio2)") from err
        try:
            info = sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as err:
            raise AudioSourceError(f"no microphone: {err}. With no microphone, replay a recording instead: "
                                   "merc-replay (a bundled example) or merc-replay DIR") from err
        self.name = f"microphone {info['name']!r}"

    def start(self) -> None:
        import sounddevice as sd

        try:
            stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=BLOCK,
                                    device=self.device, callback=self._callback, finished_callback=self._finished)
            self._stream = stream
            self.started = time.monotonic()
            stream.start()
        except sd.PortAudioError as err:
            raise AudioSourceError(f"{self.name}: cannot open it at 16 kHz mono: {err}") from err
        log.info("listening on %s", self.name)

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread: no waiting here
        chunk = AudioChunk(self._samples / SAMPLE_RATE, indata[:, 0].copy(), time.monotonic())
        self._samples += frames
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self.overruns += 1
            self._queue.put_nowait(chunk)

    def _finished(self) -> None:
        self.on_status({"microphone": False, "message": f"{self.name} stopped delivering audio"})
        self._queue.put(_END)

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.close()  # calls _finished, which ends the iteration
            self._stream = None
        else:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[AudioChunk]:
        while (item := self._queue.get()) is not _END:
            yield item


def wav_data_frames(path: Path) -> tuple[int, int, int]:
    """(frames the header declares, frames actually in the file, bytes per frame) of a PCM WAV.

    A recorder killed mid-write, or a copy cut short, leaves fewer bytes than the header says;
    we read what is there and say so rather than fail on the whole file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise AudioSourceError(f"{path}: not a WAV file (no RIFF/WAVE header)")
        block_align = 0
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise AudioSourceError(f"{path}: WAV file has no data chunk (truncated header?)")
            cid, csize = header[:4], struct.unpack("<I", header[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(csize + (csize & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif cid == b"data":
                if not block_align:
                    raise AudioSourceError(f"{path}: WAV data chunk before its fmt chunk")
                available = size - f.tell()
                return csize // block_align, max(0, available) // block_align, block_align
            else:
                f.seek(csize + (csize & 1), 1)


class WavFileSource:
    """A WAV file replayed as if it were being captured.

    `speed`: 1.0 paces chunks at real time (latency measurements), a larger value faster, None as
    fast as the pipeline consumes them. Other sample rates and stereo are converted. A file shorter
    than its header says is replayed up to where it ends; `truncated` then holds the message.
    """

    def __init__(self, path: str | Path, speed: float | None = 1.0, queue_chunks: int = 64) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.name = str(self.path)
        self.speed = speed
        self.truncated: str | None = None
        if not self.path.is_file():
            raise AudioSourceError(f"{self.path}: audio file not found")
        declared, available, _ = wav_data_frames(self.path)
        try:
            info = sf.info(str(self.path))
        except RuntimeError as err:
            raise AudioSourceError(f"{self.path}: unreadable audio: {err}") from err
        self.sample_rate = info.samplerate
        if available < declared:
            self.truncated = (f"{self.path}: truncated: the header declares {declared / info.samplerate:.2f} s "
                              f"but the file holds {available / info.samplerate:.2f} s")
        self.frames = min(declared, available)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started: float | None = None
        self.on_status: Callable[[dict], None] = lambda status: None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def _samples(self) -> np.ndarray:
        import soundfile as sf

        from merc.models.data.audio import to_mono_16k  # the resampling training uses

        with sf.SoundFile(str(self.path)) as f:
            audio = f.read(self.frames, dtype="float32", always_2d=True)
        return to_mono_16k(audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0], self.sample_rate)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="wav-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        audio = self._samples()
        started = time.monotonic()
        for i in range(0, len(audio), BLOCK):
            if self._stop.is_set():
                break
            block = audio[i:i + BLOCK]
            if self.speed:
                due = started + (i + len(block)) / SAMPLE_RATE / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self._put(AudioChunk(i / SAMPLE_RATE, block, time.monotonic()))
        self._put(_END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def stop(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(_END)
        except queue.Full:
            pass

    def __iter__(self) -> Iterator[AudioChunk]:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _END:
                return
            yield item
