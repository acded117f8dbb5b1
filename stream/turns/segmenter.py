"""Turn segmentation: audio chunks in, one `SpeechSegment` per spoken turn out.

A turn starts when the VAD's speech probability reaches `threshold` and ends after `min_silence`
seconds below `neg_threshold` (hysteresis, so a dip inside a word does not end it). This
matches how the corpora are labelled, one utterance per turn: a pause of about half a second or
more between utterances. Turns longer than `max_turn` are split (a monologue still gets
emotions as it goes), and bursts shorter than `min_turn` are dropped (clicks, coughs).

The segmenter is plain logic over a probability function: it holds no thread and no device, so
it is fed by live capture and by replay alike.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from merc.stream.capture.audio import SAMPLE_RATE, AudioChunk
from merc.stream.capture.vad import FRAME


@dataclass(frozen=True)
class SegmenterOptions:
    """When a turn starts and ends (seconds are of audio, not of compute)."""

    threshold: float = 0.5
    """Speech probability that starts a turn."""
    neg_threshold: float = 0.35
    """Below this a frame counts as silence inside a turn."""
    min_silence: float = 0.6
    """Silence that ends a turn. Shorter waits cut turns at breaths; longer ones add latency."""
    min_turn: float = 0.25
    """Speech shorter than this is dropped as a click or a cough."""
    max_turn: float = 15.0
    """A turn longer than this is split, so long monologues still get results."""
    pad: float = 0.1
    """Audio kept before the first and after the last speech frame (soft onsets and endings)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (every field is seconds or a probability)."""
        return asdict(self)


@dataclass(frozen=True)
class SpeechSegment:
    """One turn's audio, with the times latency is measured from."""

    t_start: float
    """Session time (s) of the first sample kept (speech onset minus the pad)."""
    t_end: float
    """Session time (s) of the last sample kept (end of speech plus the pad)."""
    audio: np.ndarray
    speech_end_clock: float
    """time.monotonic() when the turn's last speech frame arrived: the end of speech."""
    decided_clock: float
    """time.monotonic() when the segmenter decided the turn was over (after the silence wait)."""
    split: bool = False
    """True when the turn was cut at `max_turn` rather than ended by silence."""

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class TurnSegmenter:
    """Streaming VAD segmentation of one audio stream."""

    def __init__(self, vad: Callable[[np.ndarray], float], options: SegmenterOptions | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.vad = vad
        self.options = options or SegmenterOptions()
        self._clock = clock or time.monotonic
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a whole VAD frame
        self._pending_t = 0.0
        self._frames_seen = 0
        pad_frames = max(1, round(self.options.pad * SAMPLE_RATE / FRAME))
        self._preroll: deque[tuple[int, np.ndarray]] = deque(maxlen=pad_frames)
        self._turn: list[np.ndarray] | None = None  # frames of the turn in progress
        self._turn_first = 0  # frame index of the turn's first kept frame
        self._last_speech = 0  # frame index of the last speech frame
        self._last_speech_clock = 0.0
        self._silent_frames = 0

    @property
    def frame_seconds(self) -> float:
        return FRAME / SAMPLE_RATE

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def feed(self, chunk: AudioChunk) -> Iterator[SpeechSegment]:
        """Add a chunk; yield each turn this chunk completes."""
        samples = np.concatenate([self._pending, chunk.samples.astype(np.float32, copy=False)])
        whole = len(samples) // FRAME * FRAME
        self._pending = samples[whole:]
        for i in range(0, whole, FRAME):
            yield from self._frame(samples[i:i + FRAME], chunk.arrived)

    def flush(self) -> Iterator[SpeechSegment]:
        """End of stream: close the turn in progress, if any."""
        if self._turn is not None:
            segment = self._close(split=False)
            if segment is not None:
                yield segment

    def _frame(self, frame: np.ndarray, arrived: float) -> Iterator[SpeechSegment]:
        o = self.options
        index = self._frames_seen
        self._frames_seen += 1
        p = self.vad(frame)
        if self._turn is None:
            if p >= o.threshold:
                self._turn = [f for _, f in self._preroll] + [frame]
                self._turn_first = index - len(self._preroll)
                self._mark_speech(index, arrived)
                self._preroll.clear()
            else:
                self._preroll.append((index, frame))
            return
        self._turn.append(frame)
        if p >= o.neg_threshold:
            self._mark_speech(index, arrived)
        else:
            self._silent_frames += 1
        if self._silent_frames * self.frame_seconds >= o.min_silence:
            segment = self._close(split=False)
            if segment is not None:
                yield segment
        elif len(self._turn) * self.frame_seconds >= o.max_turn:
            segment = self._close(split=True)
            if segment is not None:
                yield segment

    def _mark_speech(self, index: int, arrived: float) -> None:
        self._last_speech = index
        self._last_speech_clock = arrived
        self._silent_frames = 0

    def _close(self, split: bool) -> SpeechSegment | None:
        o = self.options
        frames = self._turn or []
        pad_frames = max(1, round(o.pad * SAMPLE_RATE / FRAME))
        keep = len(frames) if split else min(len(frames), self._last_speech - self._turn_first + 1 + pad_frames)
        audio = np.concatenate(frames[:keep]) if keep else np.zeros(0, dtype=np.float32)
        speech = (self._last_speech - self._turn_first + 1) * self.frame_seconds
        t_start = self._turn_first * self.frame_seconds
        self._turn = None
        self._silent_frames = 0
        if speech < o.min_turn and not split:
            return None
        if split:  # the next frames continue the same speech as a new turn
            self._turn = []
            self._turn_first = self._frames_seen
        return SpeechSegment(t_start=t_start, t_end=t_start + len(audio) / SAMPLE_RATE, audio=audio,
                             speech_end_clock=self._last_speech_clock, decided_clock=self._clock(), split=split)
