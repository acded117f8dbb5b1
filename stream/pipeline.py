"""The live pipeline: audio source -> turn segmenter -> turn processor -> event bus.

Data flows one way. Capture threads (microphone, camera) only fill bounded buffers; one pipeline
thread reads audio, segments it and processes each finished turn (speech recognition, features,
speaker, one incremental graph step) and publishes a `turn` event. Live capture and replay run
this same code: only the audio source differs.

A failure while processing one turn becomes an `error` event and the session goes on with the
next turn; a camera that disappears only marks the face modality missing.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from .audio import AudioSource
from .events import EventBus, turn_event
from .segmenter import SpeechSegment, TurnSegmenter

log = logging.getLogger(__name__)


class Tracker(Protocol):
    labels: tuple[str, ...]
    modalities: tuple[str, ...]

    def track(self, speaker: str | None, text: str, extra: dict[str, np.ndarray] | None = None) -> Any: ...

    def reset(self) -> None: ...


class FaceTimeline(Protocol):
    """What the processor needs from a face tracker: observations over a turn's span."""

    def observations_between(self, t0: float, t1: float) -> list: ...


@dataclass
class TurnProcessor:
    """Everything that happens to one finished turn, in order: ASR, features, speaker, graph.

    `acoustic` and `face_tracker` are optional: a modality the model does not read is not computed
    (it would cost latency for nothing), and without a camera there is no face.
    """

    tracker: Tracker
    transcriber: Any  # .transcribe(audio) -> Transcript(text=...)
    embedder: Any | None = None  # .embed(audio) -> unit vector | None
    attributor: Any | None = None  # .assign(embedding, face_track=None) -> "S1" | None
    acoustic: Callable[[np.ndarray], np.ndarray] | None = None
    face_tracker: FaceTimeline | None = None
    face_features: Callable[[list], np.ndarray | None] | None = None
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time

    def process(self, segment: SpeechSegment) -> dict[str, Any]:
        """The `turn` event body for one segment."""
        timings = {"segmentation": 1000 * max(0.0, segment.decided_clock - segment.speech_end_clock)}
        started = self.clock()
        transcript = self.transcriber.transcribe(segment.audio)
        text = transcript.text.strip()
        asr_done = self.clock()
        timings["asr"] = 1000 * (asr_done - started)

        speaker = None
        if self.embedder is not None and self.attributor is not None:
            speaker = self.attributor.assign(self.embedder.embed(segment.audio))
        speaker_done = self.clock()
        timings["speaker"] = 1000 * (speaker_done - asr_done)

        extra: dict[str, np.ndarray] = {}
        available = ["audio"] + (["text"] if text else [])
        if self.acoustic is not None and "audio" in self.tracker.modalities:
            extra["audio"] = self.acoustic(segment.audio)
        if self.face_tracker is not None:
            observations = self.face_tracker.observations_between(segment.t_start, segment.t_end)
            if observations:
                available.append("face")
                if "face" in self.tracker.modalities and self.face_features is not None:
                    face = self.face_features(observations)
                    if face is not None:
                        extra["face"] = face
        features_done = self.clock()
        result = self.tracker.track(speaker, text, extra)
        done = self.clock()
        timings["features"] = 1000 * (features_done - speaker_done) + result.timings_ms.get("text_encoder", 0.0)
        timings["graph"] = result.timings_ms.get("graph", 1000 * (done - features_done))
        timings["total"] = 1000 * (done - segment.speech_end_clock)
        speech_end = self.wall() - (self.clock() - segment.speech_end_clock)
        order = ("text", "audio", "face")
        return turn_event(turn=result.index, speaker=speaker, t_start=segment.t_start, t_end=segment.t_end,
                          text=text, label=result.label, confidence=result.confidence, probs=result.probs,
                          modalities=list(result.modalities), available=[m for m in order if m in available],
                          timings_ms=timings, speech_end=speech_end)


@dataclass
class Pipeline:
    """Runs one session: reads the source to its end (or `stop`), publishing events on `bus`.

    `on_audio` sees every chunk as it is read (the recorder's tap).
    """

    source: AudioSource
    segmenter: TurnSegmenter
    processor: TurnProcessor
    bus: EventBus
    on_audio: Callable[[np.ndarray], None] | None = None
    turns: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Process the stream until it ends; returns after the last turn is published."""
        self.source.start()
        try:
            for chunk in self.source:
                if self.on_audio is not None:
                    self.on_audio(chunk.samples)
                for segment in self.segmenter.feed(chunk):
                    self._turn(segment)
                if self._stop.is_set():
                    break
            for segment in self.segmenter.flush():
                self._turn(segment)
        finally:
            self.source.stop()

    def stop(self) -> None:
        """Ask `run` to return after the chunk in hand (safe from any thread)."""
        self._stop.set()
        self.source.stop()

    def _turn(self, segment: SpeechSegment) -> None:
        try:
            body = self.processor.process(segment)
        except Exception as err:  # one bad turn must not end the session
            log.exception("turn at %.2f-%.2f s failed", segment.t_start, segment.t_end)
            message = f"turn at {segment.t_start:.2f}-{segment.t_end:.2f} s failed: {type(err).__name__}: {err}"
            self.errors.append(message)
            self.bus.publish({"type": "error", "code": "turn_failed", "message": message})
            return
        self.turns += 1
        self.bus.publish(body)
