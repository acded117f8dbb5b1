"""Replaying a recording through the live pipeline (the library behind merc-replay and the latency
benchmark): the recording's audio becomes the audio source, everything after it is the live code."""
from __future__ import annotations

import time
from dataclasses import dataclass

from merc.stream.capture.audio import WavFileSource
from merc.stream.recordings.recording import Recording
from merc.stream.session.options import SessionOptions
from merc.stream.session.pipeline import TurnProcessor
from merc.stream.session.session import Session
from merc.stream.turns.end_of_turn import Completeness
from merc.stream.turns.segmenter import SegmenterOptions
from merc.stream.turns.voice_profiles import voice_profile
from merc.stream.wire.events import EventBus
from merc.stream.wire.messages import error


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


def replay_session(recording: Recording, session: Session, speed: float | None) -> ReplayResult:
    """Run one recording to its end through `session` (its pipeline, its bus, its pause). The
    conversation state (graph, speakers) is reset first: a recording is one conversation."""
    session.processor.reset()
    for problem in recording.problems:
        session.bus.publish(error("recording_damaged", problem=problem).body())
    source = WavFileSource(recording.audio, speed=speed)
    pipeline = session.pipeline(source)
    started = time.perf_counter()
    try:
        pipeline.run()
    except KeyboardInterrupt:
        pipeline.stop()
        raise
    return ReplayResult(pipeline.turns, source.duration, time.perf_counter() - started, recording.problems)


def replay_recording(recording: Recording, processor: TurnProcessor, bus: EventBus, speed: float | None,
                     segmenter: SegmenterOptions | None = None,
                     completeness: Completeness | None = None) -> ReplayResult:
    """`replay_session` on bare parts (tests, benchmarks): a session around `processor` and `bus`.
    Without `segmenter`, the default segmenter with the change thresholds of the processor's voice
    encoder (as the commands build it; `turn.partial` events only at a finite speed). Without
    `completeness` (the end-of-turn classifier), silence alone ends turns."""
    if segmenter is None:  # as merc-replay
        segmenter = SegmenterOptions(partial_every=SegmenterOptions.partials_at(speed))
        profile = getattr(processor.embedder, "voice_profile", None)
        if profile is not None:
            segmenter = voice_profile(profile).segmenter_options(segmenter)
    options = SessionOptions(segmenter=segmenter)
    return replay_session(recording, Session(processor, bus, options, completeness=completeness), speed)
