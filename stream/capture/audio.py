"""Audio sources: the microphone (sounddevice) and a WAV file (replay), behind one interface.

A source yields `AudioChunk`s of 16 kHz mono float32 on the session clock. Capture never waits
for the pipeline: the microphone callback only appends to a bounded queue and, when the
pipeline has fallen a whole queue behind, drops the oldest chunk and counts an overrun. A file
source instead waits for the pipeline (nothing is lost by waiting on a file), paced at real
time (`speed=1`), faster (`speed=4`), or as fast as the pipeline runs (`speed=None`).
"""
from __future__ import annotations

import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterator
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


# WAVE format tags we read: PCM, IEEE float, A-law, mu-law, and WAVE_FORMAT_EXTENSIBLE of PCM or float
_WAV_TAGS = {0x0001: "PCM", 0x0003: "IEEE float", 0x0006: "A-law", 0x0007: "mu-law"}
_WAV_EXTENSIBLE = 0xFFFE
MIN_RATE, MAX_RATE = 1000, 768000  # sample rates a WAV may declare (Hz); anything else is a damaged header


@dataclass(frozen=True)
class WavHeader:
    """What a WAV file's header says, checked against the file's size."""

    declared: int
    """Frames the data chunk declares."""
    available: int
    """Frames actually in the file (fewer than `declared` when the file was cut short)."""
    block_align: int
    """Bytes per frame."""
    sample_rate: int
    channels: int

    @property
    def frames(self) -> int:
        """Frames that can be read: min(declared, available)."""
        return min(self.declared, self.available)


def read_wav_header(path: Path) -> WavHeader:
    """The checked header of a WAV file; raises AudioSourceError naming the file for anything
    unusable (not RIFF/WAVE, a chunk running past the end of the file, a fmt chunk shorter than
    16 bytes or with zero channels, rate or block size, an encoding other than PCM/float/A-law/mu-law,
    no data chunk). A data chunk cut short is not an error: `available` < `declared` says so."""
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as err:
        raise AudioSourceError(f"{path}: cannot read: {err.strerror or err}") from err
    with f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise AudioSourceError(f"{path}: not a WAV file (no RIFF/WAVE header)")
        fmt: tuple[int, int, int, int] | None = None  # channels, rate, block_align, bits
        while True:
            header = f.read(8)
            if len(header) < 8:
                what = "no data chunk" if fmt else "no fmt or data chunk"
                raise AudioSourceError(f"{path}: WAV file has {what} (truncated header?)")
            cid, csize = header[:4], struct.unpack("<I", header[4:])[0]
            left = size - f.tell()
            name = cid.decode("latin-1")
            if cid == b"data":
                if fmt is None:
                    raise AudioSourceError(f"{path}: WAV data chunk before its fmt chunk")
                channels, rate, block_align, _ = fmt
                return WavHeader(csize // block_align, min(csize, max(0, left)) // block_align, block_align,
                                 rate, channels)
            if csize > left:
                raise AudioSourceError(f"{path}: WAV chunk {name!r} declares {csize} bytes but only {left} "
                                       "follow (truncated or damaged header)")
            if cid == b"fmt ":
                if fmt is not None:
                    raise AudioSourceError(f"{path}: WAV file has two fmt chunks")
                fmt = _wav_format(path, f.read(csize))
                f.seek(csize & 1, 1)
            else:
                f.seek(csize + (csize & 1), 1)


def _wav_format(path: Path, fmt: bytes) -> tuple[int, int, int, int]:
    """(channels, sample rate, block align, bits) of a fmt chunk, every field checked."""
    if len(fmt) < 16:
        raise AudioSourceError(f"{path}: WAV fmt chunk is {len(fmt)} bytes, at least 16 expected (damaged header)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _WAV_EXTENSIBLE:
        if len(fmt) < 40:
            raise AudioSourceError(f"{path}: WAV extensible fmt chunk is {len(fmt)} bytes, 40 expected "
                                   "(damaged header)")
        tag = struct.unpack("<H", fmt[24:26])[0]
        if tag not in (0x0001, 0x0003):
            raise AudioSourceError(f"{path}: unsupported WAV encoding (extensible sub-format 0x{tag:04x}); "
                                   "convert it to PCM, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav")
    if tag not in _WAV_TAGS:
        raise AudioSourceError(f"{path}: unsupported WAV encoding (format tag 0x{tag:04x}); convert it to PCM, "
                               "e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav")
    if not channels:
        raise AudioSourceError(f"{path}: WAV header declares 0 channels (damaged header)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioSourceError(f"{path}: WAV header declares a sample rate of {rate} Hz "
                               f"(expected {MIN_RATE}-{MAX_RATE}; damaged header?)")
    width = (bits + 7) // 8
    if not bits or not block_align or block_align != channels * width:
        raise AudioSourceError(f"{path}: WAV header's frame size is inconsistent ({block_align} bytes per frame "
                               f"for {channels} channel(s) of {bits} bits; damaged header)")
    return channels, rate, block_align, bits


def check_wav(path: Path) -> WavHeader:
    """`read_wav_header`, and libsndfile (which replays it) reading the same rate and channels from it:
    everything a replay needs to know before any model loads. AudioSourceError naming the file."""
    import soundfile as sf

    header = read_wav_header(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, TypeError, ValueError) as err:  # LibsndfileError is a RuntimeError
        raise AudioSourceError(f"{path}: unreadable audio: {err}") from err
    if (info.samplerate, info.channels) != (header.sample_rate, header.channels):
        raise AudioSourceError(f"{path}: unreadable audio: the WAV header says {header.sample_rate} Hz, "
                               f"{header.channels} channel(s) but libsndfile reads {info.samplerate} Hz, "
                               f"{info.channels} channel(s) (damaged header)")
    return header


def wav_data_frames(path: Path) -> tuple[int, int, int]:
    """(frames the header declares, frames actually in the file, bytes per frame) of a PCM WAV.

    A recorder killed mid-write, or a copy cut short, leaves fewer bytes than the header says;
    we read what is there and say so rather than fail on the whole file. Anything else wrong with
    the header is an AudioSourceError naming the file (see `read_wav_header`).
    """
    header = read_wav_header(path)
    return header.declared, header.available, header.block_align


READ_FRAMES = 16384  # frames a file source reads at a time (about a second)


def _converted_blocks(f: Any, frames: int, rate: int) -> Iterator[np.ndarray]:
    """The first `frames` frames of an open soundfile `f` at `rate`, as 16 kHz mono float32 blocks.

    Channels are averaged; another rate is resampled with `resample_poly`'s own filter (Kaiser
    window, 10 zero crossings), each block from the input around it (`context` frames either side,
    more than the filter reaches), so the blocks joined equal `to_mono_16k` of the whole signal.
    """
    from merc.models.data.audio import to_mono_16k  # the conversion training uses

    def mono(start: int, stop: int) -> np.ndarray:
        f.seek(start)
        audio = f.read(stop - start, dtype="float32", always_2d=True)
        return audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]

    if rate == SAMPLE_RATE:
        for start in range(0, frames, READ_FRAMES):
            block = mono(start, min(frames, start + READ_FRAMES))
            if not len(block):
                return
            yield to_mono_16k(block, rate)
        return
    from scipy.signal import firwin, resample_poly

    g = math.gcd(rate, SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, rate // g
    half = 10 * max(up, down)  # resample_poly's filter, designed once rather than per block
    taps = firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0)).astype(np.float32)
    context = down * math.ceil((half / up + 2) / down)  # input frames either side; a multiple of `down`
    step = down * max(1, READ_FRAMES // down)  # input frames per block: a multiple of `down`, so that
    for start in range(0, frames, step):  # each block starts on an output sample
        lo, hi = max(0, start - context), min(frames, start + step + context)
        x = mono(lo, hi)
        if len(x) <= start - lo:
            return
        y = resample_poly(x, up, down, window=taps)
        skip = (start - lo) * up // down
        yield y[skip:skip + -(-min(step, frames - start) * up // down)].astype(np.float32)


class WavFileSource:
    """A WAV file replayed as if it were being captured.

    `speed`: 1.0 paces chunks at real time (latency measurements), a larger value faster, None as
    fast as the pipeline consumes them. Other sample rates and stereo are converted. A file shorter
    than its header says is replayed up to where it ends; `truncated` then holds the message.
    The file is read and converted in blocks of about a second as the pipeline consumes them, so
    memory stays flat however long the recording (an hour at 48 kHz stereo is 2 GB decoded).
    """

    def __init__(self, path: str | Path, speed: float | None = 1.0, queue_chunks: int = 64) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.speed = speed
        self.truncated: str | None = None
        if not self.path.is_file():
            raise AudioSourceError(f"{self.path}: audio file not found")
        header = check_wav(self.path)
        self.sample_rate = header.sample_rate
        if header.available < header.declared:
            self.truncated = (f"{self.path}: truncated: the header declares {header.declared / self.sample_rate:.2f} s "
                              f"but the file holds {header.available / self.sample_rate:.2f} s")
        self.frames = header.frames
        if not self.frames:
            raise AudioSourceError(f"{self.path}: the WAV file holds no audio (0 frames)")
        self._queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started: float | None = None
        self.on_status: Callable[[dict], None] = lambda status: None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def blocks(self) -> Generator[np.ndarray, None, None]:
        """The file as 16 kHz mono float32, in consecutive blocks of about a second, read as they are
        consumed. The same samples as converting the whole file at once (`to_mono_16k`): resampling
        is the same polyphase filter, each block computed with enough of its neighbours around it."""
        import soundfile as sf

        with sf.SoundFile(str(self.path)) as f:
            yield from _converted_blocks(f, self.frames, self.sample_rate)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="wav-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        sent = 0  # samples (16 kHz) put so far
        pending = np.zeros(0, np.float32)
        blocks = self.blocks()
        try:
            for block in blocks:
                pending = np.concatenate([pending, block]) if len(pending) else block
                whole = len(pending) - len(pending) % BLOCK
                for i in range(0, whole, BLOCK):
                    if not self._emit(pending[i:i + BLOCK], sent, started):
                        return
                    sent += BLOCK
                pending = pending[whole:]
            if len(pending):
                self._emit(pending, sent, started)
        except (RuntimeError, OSError, ValueError) as err:  # the file changed or broke while being read
            log.error("%s: reading stopped: %s", self.path, err)
        finally:
            blocks.close()
            self._put(_END)

    def _emit(self, block: np.ndarray, sent: int, started: float) -> bool:
        """Put one chunk (paced by `speed`); False when the source was stopped."""
        if self._stop.is_set():
            return False
        if self.speed:
            due = started + (sent + len(block)) / SAMPLE_RATE / self.speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self._put(AudioChunk(sent / SAMPLE_RATE, block, time.monotonic()))
        return True

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
