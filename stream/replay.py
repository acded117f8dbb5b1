"""Replaying a recording through the live pipeline (the library behind merc-replay and the latency
benchmark): the recording's audio becomes the audio source, everything after it is the live code."""
from __future__ import annotations

import time
from dataclasses import dataclass

from .audio import WavFileSource
from .events import EventBus
from .pipeline import Pipeline, TurnProcessor
from .recording import Recording
from .segmenter import SegmenterOptions, TurnSegmenter
from .vad import SileroVAD


@dataclass(frozen=True)
class ReplayResult:
    turns: int
    audio_seconds: float
    wall_seconds: float
    problems: tuple[str, ...]

    @property
    def speed(self) -> float:
        """Audio seconds processed per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else float("inf")


def replay_recording(recording: Recording, processor: TurnProcessor, bus: EventBus, speed: float | None,
                     segmenter: SegmenterOptions | None = None) -> ReplayResult:
    """Run one recording to its end, publishing on `bus`. The processor's conversation state (graph,
    speakers) is reset first: a recording is one conversation."""
    processor.tracker.reset()
    if processor.attributor is not None:
        processor.attributor.reset()
    for problem in recording.problems:
        bus.publish({"type": "error", "code": "recording_damaged", "message": problem})
    source = WavFileSource(recording.audio, speed=speed)
    pipeline = Pipeline(source, TurnSegmenter(SileroVAD(), segmenter), processor, bus)
    started = time.perf_counter()
    try:
        pipeline.run()
    except KeyboardInterrupt:
        pipeline.stop()
        raise
    return ReplayResult(pipeline.turns, source.duration, time.perf_counter() - started, recording.problems)
