"""Many sessions on one set of models: what is loaded once, and what each session owns.

Loaded once (`SharedModels`): Whisper, the text encoder, the graph's ONNX session, the voice
encoder and the end-of-turn classifier. Whisper's and the text encoder's calls from every session
go through one micro-batcher each (batching.py); the voice encoder is called under one lock (one
model, one call at a time, instead of N threads fighting over the cores).

Owned by each session (`MediaSession`): its audio buffer, segmenter and VAD state, speakers
(a fresh SpeakerAttributor), the graph's window and the conversation so far (a fresh
BundleTracker over the shared sessions), Whisper's prompt, its event bus (its own seq) and its
pipeline thread. Nothing a session learns is visible to another: only stateless models are shared.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merc.stream.serve.batching import BatchedTextEncoder, BatchedTranscriber, BatchTranscriber
from merc.stream.serve.media import AUDIO, MediaFrame, PushAudioSource, PushVideoSource
from merc.stream.session.build import (
    BundleExporter,
    build_processor,
    face_featurizer,
    load_completeness,
    load_tracker,
)
from merc.stream.session.options import SessionOptions
from merc.stream.session.pipeline import Pipeline, TurnProcessor
from merc.stream.session.seams import Audio, Vector, VoiceEmbedder
from merc.stream.session.session import Session
from merc.stream.turns.end_of_turn import Completeness
from merc.stream.wire.events import EventBus

__all__ = ["BatchOptions", "MediaSession", "SharedModels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    """How model calls are batched across sessions."""

    window_ms: float = 20.0
    """How long a batch waits for other sessions' requests after its first one."""
    max_batch: int = 8
    draft_stale_s: float | None = 0.5
    """Partial results are optional work: their decodes wait while final decodes are queued or
    running, and are skipped (no `turn.partial` that time) after waiting this long. None: never."""


@dataclass
class SerialEmbedder:
    """The shared voice encoder, one call at a time."""

    embedder: VoiceEmbedder
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def voice_profile(self) -> Any:
        return getattr(self.embedder, "voice_profile", None)

    def embed(self, audio: Audio) -> Vector | None:
        with self.lock:
            return self.embedder.embed(audio)


class SharedModels:
    """The models every session of a server shares, loaded once, and a factory of sessions."""

    def __init__(self, options: SessionOptions, template: TurnProcessor, completeness: Completeness | None,
                 batching: BatchOptions, observe: Callable[[str], Callable[[int, float], None]] | None = None) -> None:
        from merc.export.serve.runtime import BundleTracker

        if not isinstance(template.tracker, BundleTracker):
            raise TypeError("merc-serve serves ONNX bundles only (the torch engine keeps state in one model)")
        self.options = options
        self.template = template
        self.completeness = completeness
        self.batching = batching
        transcriber: BatchTranscriber = template.transcriber  # type: ignore[assignment]
        window = batching.window_ms / 1000

        def watch(name: str) -> Callable[[int, float], None] | None:
            return observe(name) if observe is not None else None

        self._asr = BatchedTranscriber.batcher("asr", transcriber, window, batching.max_batch, watch("asr"))
        shedding: dict[str, Any] = ({"defer_to": self._asr, "stale_s": batching.draft_stale_s}
                                    if batching.draft_stale_s is not None else {})
        self._drafts = BatchedTranscriber.batcher("asr-draft", transcriber.draft(), window, batching.max_batch,
                                                  watch("asr_draft"), **shedding)
        encoder = template.tracker.encoder
        self._text = BatchedTextEncoder.batcher_for(encoder, window, batching.max_batch, watch("text_encoder"))
        self._tokenizer, self._precision = encoder.tokenizer, encoder.precision
        self._embedder = SerialEmbedder(template.embedder) if template.embedder is not None else None

    @classmethod
    def load(cls, options: SessionOptions, batching: BatchOptions, *, export_bundle: BundleExporter | None = None,
             warm_up_audio: Audio | None = None, end_of_turn: Path | None = None,
             observe: Callable[[str], Callable[[int, float], None]] | None = None) -> SharedModels:
        """Load every model once (as `build_session` would for one session) and warm it up."""
        tracker = load_tracker(options.tracker, export_bundle)
        template = build_processor(options, tracker, None, warm_up_audio)
        return cls(options, template, load_completeness(options, end_of_turn), batching, observe)

    @property
    def queue_depth(self) -> dict[str, int]:
        """Requests waiting for each batcher now."""
        return {"asr": self._asr.depth, "asr_draft": self._drafts.depth, "text_encoder": self._text.depth}

    @property
    def partials_shed(self) -> int:
        """Partial-result decodes skipped under load so far."""
        return self._drafts.shed

    def session(self, bus: EventBus) -> Session:
        """A new session on the shared models, with its own conversation state, publishing on `bus`."""
        from merc.export.serve.runtime import BundleTracker

        shared = self.template.tracker
        assert isinstance(shared, BundleTracker)
        encoder = BatchedTextEncoder(self._text, self._tokenizer, self._precision)
        tracker = BundleTracker(shared.manifest, encoder, copy.copy(shared.dag))  # type: ignore[arg-type]
        attributor = copy.deepcopy(self.template.attributor)  # fresh: the template never assigned a turn
        shared_asr = self.template.transcriber
        transcriber = BatchedTranscriber(self._asr, self._drafts, getattr(shared_asr, "model", None),
                                         f"batched {getattr(shared_asr, 'name', 'asr')}")
        processor = dataclasses.replace(self.template, tracker=tracker, transcriber=transcriber,
                                        embedder=self._embedder, attributor=attributor)
        processor.reset()
        return Session(processor, bus, self.options, completeness=self.completeness)

    def close(self) -> None:
        for batcher in (self._asr, self._drafts, self._text):
            batcher.close()


class MediaSession:
    """One client's conversation: frames in, events out on its own bus, on its own thread.

    Camera frames, when the client sends any, start the session's own face tracker (MediaPipe's
    landmarker on its own thread, at most 10 frames/s): a turn with a face in view then has the
    face modality available, and a model that reads faces gets its features."""

    def __init__(self, session_id: str, models: SharedModels, max_queued_seconds: float = 10.0,
                 on_done: Callable[[MediaSession], None] | None = None, face_model: Path | None = None) -> None:
        self.id = session_id
        self.bus = EventBus(session=session_id)
        self.session = models.session(self.bus)
        self.source = PushAudioSource(f"client {session_id}", max_seconds=max_queued_seconds)
        self.pipeline: Pipeline = self.session.pipeline(self.source)
        self.video = PushVideoSource()
        self.face_model = face_model
        self.on_done = on_done
        self._face: Any = None  # the FaceTracker, once camera frames came
        self._face_started = False
        self._thread = threading.Thread(target=self._run, name=f"session-{session_id}", daemon=True)

    @property
    def video_frames(self) -> int:
        return self.video.received

    def start(self) -> None:
        self._thread.start()

    def push(self, frame: MediaFrame) -> None:
        """One frame from the client (on the server's loop; never blocks)."""
        if frame.kind == AUDIO:
            self.source.push(frame)
            return
        self.video.push(frame)
        if not self._face_started:
            self._face_started = True
            threading.Thread(target=self._start_face, name=f"face-{self.id}", daemon=True).start()

    def _start_face(self) -> None:
        """The face tracker on this session's camera frames (loading MediaPipe takes a moment:
        off the event loop). A face model that cannot load is reported; the audio goes on."""
        from merc.models.features.face_features import FaceAnalyzer
        from merc.stream.capture.video import FaceTracker

        try:
            analyzer = FaceAnalyzer.load(self.face_model, mode="video")
        except Exception as err:
            log.warning("session %s: no face tracking: %s", self.id, err)
            self._status({"camera": False, "message": f"camera frames are not read: {err}"})
            return
        tracker = FaceTracker(self.video, analyzer, on_status=self._status)
        processor = self.session.processor
        processor.face_features = face_featurizer(processor.tracker)
        processor.face_tracker = tracker
        self._face = tracker
        tracker.start()

    def _status(self, change: dict[str, Any]) -> None:
        devices = {key: change[key] for key in ("microphone", "camera", "face") if key in change}
        self.bus.publish({"type": "status", "devices": devices, "message": change.get("message") or "devices changed"})

    def end(self) -> None:
        """The client is gone: the turns already heard are finished, then the thread ends."""
        self.source.stop()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except Exception:  # the session ends; the server and the other sessions go on
            log.exception("session %s failed", self.id)
        finally:
            if self._face is not None:
                self._face.stop()
            log.info("session %s ended: %d turns, %.1f s of audio dropped, %d frames lost", self.id,
                     self.pipeline.turns, self.source.dropped_seconds, self.source.lost_frames)
            if self.on_done is not None:
                self.on_done(self)
