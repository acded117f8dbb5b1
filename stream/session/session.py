"""One conversation session: its per-turn processor, its event bus and its options, the pipelines
that run on it, and the control clients have over it (reset, pause, resume).

Built by `merc.stream.session.build.build_session` (merc-live, merc-replay, the tests); a
replayed recording and a live microphone go through the same `Session.pipeline`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from merc.stream.capture.vad import SileroVAD
from merc.stream.session.options import SessionOptions
from merc.stream.session.pipeline import Pipeline, TurnProcessor
from merc.stream.session.seams import Audio, AudioSource, Tracker
from merc.stream.turns.end_of_turn import Completeness, TranscriptJudge
from merc.stream.turns.segmenter import TurnSegmenter
from merc.stream.turns.speaker_change import VoiceChangeDetector
from merc.stream.wire.events import EventBus

if TYPE_CHECKING:
    from merc.stream.wire.server import EventServer

log = logging.getLogger(__name__)

CONTROL_ACTIONS = ("reset", "pause", "resume")


def hello_body(tracker: Tracker, options: SessionOptions) -> dict[str, Any]:
    """What a client learns on connecting: labels, the model, the modalities it reads, and the
    session's options (without the server's token; directories by name, never by path)."""
    manifest = getattr(tracker, "manifest", None)
    echoed = options.to_dict()
    model = {"label_set": getattr(manifest, "label_set", None),
             "asr": f"{options.asr.backend}:{echoed['asr']['model']}",
             "bundle": manifest.bundle_dir.name if manifest is not None else None}
    return {"labels": list(tracker.labels), "model": model, "modalities": list(tracker.modalities), "options": echoed}


@dataclass
class Session:
    """A processor (the tracker and the per-turn stages), the bus its events go to, and what
    clients may ask of it. Pipelines made by `pipeline` share the session's pause; `reset` takes
    effect before the next turn."""

    processor: TurnProcessor
    bus: EventBus
    options: SessionOptions = field(default_factory=SessionOptions)
    paused: threading.Event = field(default_factory=threading.Event)
    completeness: Completeness | None = None
    """The end-of-turn classifier (export/serve/end_of_turn.py); None: silence alone ends turns."""

    @property
    def tracker(self) -> Tracker:
        return self.processor.tracker

    def hello(self) -> dict[str, Any]:
        return hello_body(self.tracker, self.options)

    def pipeline(self, source: AudioSource, on_audio: Callable[[Audio], None] | None = None) -> Pipeline:
        """A pipeline from `source` through a fresh segmenter (and VAD state) to this session's
        processor and bus."""
        options = self.options.segmenter
        embedder = self.processor.embedder
        change = (VoiceChangeDetector(embedder.embed)
                  if options.split_on_voice and embedder is not None else None)
        judge = (TranscriptJudge(self.processor.transcriber, self.completeness, prompt=self.processor.prompt)
                 if options.end_of_turn == "learned" and self.completeness is not None else None)
        segmenter = TurnSegmenter(SileroVAD(), options, voice_change=change, end_of_turn=judge,
                                  partials=options.partial_every > 0)
        return Pipeline(source, segmenter, self.processor, self.bus, on_audio=on_audio, paused=self.paused)

    def serve(self, process_request: Callable[..., Any] | None = None) -> EventServer:
        """The event server of `options.server` on this session's bus, with this session's control
        handler and hello (not started)."""
        from merc.stream.wire.server import EventServer

        server = self.options.server
        if server is None:
            raise ValueError("this session has no server options")
        return EventServer(self.bus, self.hello(), host=server.host, port=server.port, token=server.token,
                           allow_origins=server.allow_origins, max_connections=server.max_connections,
                           on_control=self.control,
                           process_request=process_request)

    def control(self, action: str) -> str | None:
        """A client's control request (from the server's thread): None once done, else a problem code."""
        if action == "reset":
            self.reset()
        elif action == "pause":
            self.pause()
        elif action == "resume":
            self.resume()
        else:
            return "bad_action"
        log.info("control: %s", action)
        return None

    def reset(self) -> None:
        """Forget the conversation (the tracker's dialogue and the speakers) before the next turn."""
        self.processor.request_reset()

    def pause(self) -> None:
        """Stop processing turns: audio is still read (capture never blocks), its turns are dropped."""
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()
