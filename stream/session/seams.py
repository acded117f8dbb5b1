"""The seams of a session: what the pipeline and the turn processor need from each collaborator,
as Protocols, so that a test (or another backend) can stand in for any stage.

    AudioSource       chunks of 16 kHz audio (the microphone, a WAV file)     stream/capture/audio.py
    VideoSource       camera frames for the face tracker                       stream/capture/video.py
    FaceTimeline      face observations over a turn's span (the face tracker)
    Transcriber       speech to text for one turn                              stream/turns/transcribe.py
    VoiceEmbedder     one voice vector per turn                                 (SpeakerEmbedder)
    SpeakerAssigner   a speaker label per voice vector, online                  (SpeakerAttributor)
    Featurizer        acoustic features of a turn                               (AcousticFeaturizer, AudioEmotionExpert)
    FaceFeaturizer    face features of a turn's observations                    (face_features, FaceEmotionExpert)
    Tracker           the emotion model, one incremental step per turn          (BundleTracker, DialogueTracker)
    EventSink         where events are published                                (EventBus)

The first three are defined next to their stage and re-exported here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from merc.stream.capture.audio import AudioSource
from merc.stream.capture.video import VideoSource
from merc.stream.turns.transcribe import Transcriber
from merc.stream.wire.messages import Event

if TYPE_CHECKING:
    from merc.models.data.turns import TurnResult
    from merc.models.features.face_features import FaceObservation

__all__ = [
    "Audio", "AudioSource", "EventSink", "FaceFeaturizer", "FaceTimeline", "Featurizer", "SpeakerAssigner",
    "Tracker", "Transcriber", "Vector", "VideoSource", "VoiceEmbedder",
]

Audio = npt.NDArray[np.float32]
"""One turn's samples: 16 kHz mono float32 in [-1, 1]."""
Vector = npt.NDArray[Any]
"""A feature vector (a voice embedding, a turn's acoustic or face features)."""


class VoiceEmbedder(Protocol):
    def embed(self, audio: Audio) -> Vector | None:
        """The turn's voice embedding (unit norm), or None when it holds no usable voice."""
        ...


class SpeakerAssigner(Protocol):
    def assign(self, embedding: Vector | None, face_track: int | None = None,
               seconds: float | None = None) -> str | None:
        """The speaker label ("S1", ...) of a turn's embedding (a turn `seconds` long), or None for
        unknown. Each call is one turn."""
        ...

    def peek(self, embedding: Vector | None, seconds: float | None = None) -> str | None:
        """The label `assign` would give now, changing nothing (a turn still in progress)."""
        ...

    def revise(self) -> dict[int, str]:
        """Recent turns now placed with another speaker: {turn -> label}, turns numbered by the
        order of `assign` calls since `reset`, from 0."""
        ...

    def reset(self) -> None:
        """Forget every speaker: a new conversation starts."""
        ...


class Featurizer(Protocol):
    def __call__(self, audio: Audio) -> Vector:
        """The acoustic features of one turn's audio."""
        ...


class FaceFeaturizer(Protocol):
    def __call__(self, observations: Sequence[FaceObservation]) -> Vector | None:
        """The face features of a turn's observations (None: nothing usable)."""
        ...


class FaceTimeline(Protocol):
    """What the processor needs from a face tracker: observations over a turn's span."""

    def observations_between(self, t0: float, t1: float) -> list[FaceObservation]: ...


class Tracker(Protocol):
    """The emotion model: one incremental step per turn, given the conversation so far."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the model reads ("text", "audio", "face")."""
        ...

    def track(self, speaker: str | None, text: str, extra: dict[str, npt.NDArray[Any]] | None = None) -> TurnResult:
        """Add a turn (`extra`: its audio and face vectors, when observed) and return its emotion."""
        ...

    def preview(self, speaker: str | None, text: str, extra: dict[str, npt.NDArray[Any]] | None = None
                ) -> TurnResult:
        """The emotion a turn still in progress would get if it ended now; changes nothing (the
        provisional emotion of a `turn.partial`)."""
        ...

    def revise(self, speakers: Mapping[int, str | None]) -> list[TurnResult]:
        """Correct earlier turns' speakers (turn index, as `track` returned it -> speaker label or
        None) and recompute their emotions, the graph's speaker edges having changed; returns the
        turns whose speaker, label or probabilities changed (same indices), each to be published as
        a `turn.update`. Turns older than the tracker's last REVISABLE_TURNS are ignored, and text
        vectors are not re-encoded (merc.models.data.turns.RevisableTurns). Later turns are tracked
        as if the corrected turns had had those speakers all along."""
        ...

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new dialogue."""
        ...


class EventSink(Protocol):
    def publish(self, body: Event | Mapping[str, Any]) -> dict[str, Any]:
        """Stamp and deliver one event body; returns the event."""
        ...


if TYPE_CHECKING:  # what stands behind each seam conforms: mypy checks this whenever it checks the package
    from merc.export.serve.expert_runtime import AudioEmotionExpert, FaceEmotionExpert
    from merc.export.serve.runtime import BundleTracker
    from merc.models.dag.tracker import DialogueTracker
    from merc.models.features.audio_features import AcousticFeaturizer
    from merc.stream.capture.audio import MicSource, WavFileSource
    from merc.stream.capture.video import CameraSource, FaceTracker, VideoFileSource
    from merc.stream.turns.speakers import SpeakerAttributor, SpeakerEmbedder
    from merc.stream.turns.transcribe import FasterWhisperTranscriber, TransformersWhisperTranscriber
    from merc.stream.wire.events import EventBus

    def _conformance(mic: MicSource, wav: WavFileSource, camera: CameraSource, video: VideoFileSource,
                     faces: FaceTracker, fast: FasterWhisperTranscriber, hf: TransformersWhisperTranscriber,
                     embedder: SpeakerEmbedder, attributor: SpeakerAttributor, acoustic: AcousticFeaturizer,
                     audio_expert: AudioEmotionExpert, face_expert: FaceEmotionExpert, bundle: BundleTracker,
                     dialogue: DialogueTracker, bus: EventBus) -> None:
        from merc.models.features.face_features import face_features

        sources: list[AudioSource] = [mic, wav]
        cameras: list[VideoSource] = [camera, video]
        timeline: FaceTimeline = faces
        transcribers: list[Transcriber] = [fast, hf]
        voice: VoiceEmbedder = embedder
        assigner: SpeakerAssigner = attributor
        featurizers: list[Featurizer] = [acoustic, audio_expert]
        face_featurizers: list[FaceFeaturizer] = [face_features, face_expert.turn_features]
        trackers: list[Tracker] = [bundle, dialogue]
        sink: EventSink = bus
        del sources, cameras, timeline, transcribers, voice, assigner, featurizers, face_featurizers, trackers, sink
