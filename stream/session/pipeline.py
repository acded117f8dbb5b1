"""The live pipeline: audio source -> turn segmenter -> turn processor -> event bus.

Data flows one way. Capture threads (microphone, camera) only fill bounded buffers; one pipeline
thread reads audio, segments it and processes each finished turn (speech recognition, features,
speaker, one incremental graph step) and publishes a `turn` event. Live capture and replay run
this same code: only the audio source differs.

A failure while processing one turn becomes an `error` event and the session goes on with the
next turn; a camera that disappears only marks the face modality missing.

Collaborators are typed by the Protocols of stream/session/seams.py. Control from clients (see
session.py): `TurnProcessor.request_reset` forgets the conversation before the next turn, and
while `Pipeline.paused` is set, audio is still read and segmented (capture never blocks) but the
turns it completes are dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from merc.models.data.turns import REVISABLE_TURNS  # the attributor's and the trackers' window
from merc.stream.session.seams import (
    Audio,
    AudioSource,
    EventSink,
    FaceFeaturizer,
    FaceTimeline,
    Featurizer,
    SpeakerAssigner,
    Tracker,
    Transcriber,
    Vector,
    VoiceEmbedder,
)
from merc.stream.turns.partials import LocalAgreement, TurnInProgress
from merc.stream.turns.segmenter import SpeechSegment, TurnSegmenter
from merc.stream.turns.transcribe import DecodeSkipped, conversation_prompt
from merc.stream.wire.events import turn_event, turn_partial_event, turn_update_events

__all__ = ["ERRORS_KEPT", "FaceTimeline", "Pipeline", "Tracker", "TurnProcessor"]

log = logging.getLogger(__name__)

ERRORS_KEPT = 100
"""How many failed turns' details a pipeline keeps (the latest; `Pipeline.error_count` counts all)."""
PROMPT_TURNS = 8
"""Earlier transcripts kept for Whisper's prompt (it takes only the last `prompt_words` words)."""


@dataclass
class TurnProcessor:
    """Everything that happens to one finished turn, in order: ASR, features, speaker, graph.

    `acoustic` and `face_tracker` are optional: a modality the model does not read is not computed
    (it would cost latency for nothing), and without a camera there is no face.

    After each turn the attributor may revise the speakers of recent turns (stream/turns/speakers.py);
    the tracker then recomputes their emotions, and each changed turn becomes a `turn.update` event
    after the new turn's own. With `prompt_words` > 0 Whisper is prompted with the last words said.
    """

    tracker: Tracker
    transcriber: Transcriber
    embedder: VoiceEmbedder | None = None
    attributor: SpeakerAssigner | None = None
    acoustic: Featurizer | None = None
    face_tracker: FaceTimeline | None = None
    face_features: FaceFeaturizer | None = None
    prompt_words: int = 0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _texts: deque[str] = field(default_factory=lambda: deque(maxlen=PROMPT_TURNS), init=False, repr=False,
                               compare=False)
    _turn_of: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    """The attributor's turn ordinal (its `assign` calls since reset) -> the tracker's turn index."""
    _assigned: int = field(default=0, init=False, repr=False, compare=False)
    _agreement: LocalAgreement = field(default_factory=LocalAgreement, init=False, repr=False, compare=False)
    _draft: Transcriber | None = field(default=None, init=False, repr=False, compare=False)
    """The transcriber's cheaper sibling for partial results (made on the first one)."""
    _reset_requested: threading.Event = field(default_factory=threading.Event, init=False, repr=False,
                                              compare=False)

    def reset(self) -> None:
        """Forget the conversation now (the tracker's dialogue and the speakers); call it from the
        thread that processes turns, or when none is running."""
        self._reset_requested.clear()
        self.tracker.reset()
        self._texts.clear()
        self._turn_of.clear()
        self._assigned = 0
        if self.attributor is not None:
            self.attributor.reset()

    def request_reset(self) -> None:
        """Forget the conversation before the next turn (safe from any thread: a turn in progress
        finishes in the old conversation)."""
        self._reset_requested.set()

    def prompt(self) -> str | None:
        """Whisper's prompt for the next turn: the last `prompt_words` words said (None: no prompt).
        The end-of-turn judge decodes the turn in progress with it (stream/turns/end_of_turn.py)."""
        return conversation_prompt(self._texts, self.prompt_words) if self.prompt_words > 0 else None

    def process(self, segment: SpeechSegment) -> list[dict[str, Any]]:
        """The event bodies one segment makes: its `turn`, then a `turn.update` per earlier turn
        whose speaker (and so emotion) was revised."""
        if self._reset_requested.is_set():
            self.reset()
        timings = {"segmentation": 1000 * max(0.0, segment.decided_clock - segment.speech_end_clock)}
        started = self.clock()
        judged = segment.judgement
        if judged is not None:  # decoded by the end-of-turn judge, inside the segmentation time
            transcript = judged.transcript
        else:
            transcript = self.transcriber.transcribe(segment.audio, prompt=self.prompt())
        text = transcript.text.strip()
        if text:
            self._texts.append(text)
        asr_done = self.clock()
        timings["asr"] = 1000 * (asr_done - started)
        if judged is not None and segment.decoded_early:  # decoded while the next voice was probed
            timings["asr_overlapped"] = judged.asr_ms
        elif judged is not None:  # decoded after the short silence, then judged: not waiting time
            timings["segmentation"] = max(0.0, timings["segmentation"] - judged.asr_ms - judged.classify_ms)
            timings["asr"] += judged.asr_ms
            timings["end_of_turn"] = judged.classify_ms

        speaker = None
        attributed = self.embedder is not None and self.attributor is not None
        ordinal = self._assigned
        if attributed:
            assert self.embedder is not None and self.attributor is not None
            speaker = self.attributor.assign(self.embedder.embed(segment.audio), seconds=segment.duration)
            self._assigned += 1
        speaker_done = self.clock()
        timings["speaker"] = 1000 * (speaker_done - asr_done)

        extra: dict[str, Vector] = {}
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
        body: dict[str, Any] = turn_event(
            turn=result.index, speaker=speaker, t_start=segment.t_start, t_end=segment.t_end, text=text,
            label=result.label, confidence=result.confidence, probs=result.probs,
            modalities=list(result.modalities), available=[m for m in order if m in available], timings_ms=timings,
            speech_end=speech_end)
        return [body, *self._revisions(ordinal, result.index)] if attributed else [body]

    def partial(self, turn: TurnInProgress) -> dict[str, Any] | None:
        """The `turn.partial` body of a running turn: its transcript so far (with the prefix that
        successive decodes agreed on), the speaker its voice matches now and the emotion the graph
        would give it now. Nothing is committed: the speakers, the graph and Whisper's prompt stay
        as they are until the turn ends. None when nothing intelligible was said yet.

        The decode is the transcriber's `draft` (greedy, short window): it runs on the pipeline
        thread while the turn goes on, so it must be done well before the turn's end can be
        decided (after `eot_silence` of silence), and the final transcript is decoded in full."""
        if self._reset_requested.is_set():
            self.reset()
        started = self.clock()
        if self._draft is None:
            self._draft = self.transcriber.draft()
        transcript = self._draft.transcribe(turn.audio, prompt=self.prompt())
        text, stable = self._agreement.update(turn.t_start, transcript.text.strip())
        if not text:
            return None
        asr_done = self.clock()
        speaker = None
        if self.embedder is not None and self.attributor is not None:
            speaker = self.attributor.peek(self.embedder.embed(turn.audio), seconds=turn.duration)
        speaker_done = self.clock()
        result = self.tracker.preview(speaker, text)
        timings = {"asr": 1000 * (asr_done - started), "speaker": 1000 * (speaker_done - asr_done),
                   "features": result.timings_ms.get("text_encoder", 0.0), "graph": result.timings_ms.get("graph", 0.0),
                   "total": 1000 * (self.clock() - started)}
        return turn_partial_event(turn=result.index, speaker=speaker, t_start=turn.t_start, t_end=turn.t_end,
                                  text=text, stable=stable, label=result.label, confidence=result.confidence,
                                  probs=result.probs, timings_ms=timings)

    def _revisions(self, ordinal: int, turn: int) -> list[dict[str, Any]]:
        """`turn.update` bodies for the recent turns the attributor now places with another speaker."""
        assert self.attributor is not None
        self._turn_of[ordinal] = turn
        for old in [k for k in self._turn_of if k <= ordinal - REVISABLE_TURNS]:
            del self._turn_of[old]
        changed = self.attributor.revise()
        speakers = {self._turn_of[k]: label for k, label in changed.items() if k in self._turn_of}
        if not speakers:
            return []
        return turn_update_events(self.tracker.revise(speakers))


@dataclass
class Pipeline:
    """Runs one session: reads the source to its end (or `stop`), publishing events on `bus`.

    `on_audio` sees every chunk as it is read (the recorder's tap). What a session accumulates is
    bounded however long it runs: counters, and the details of the latest ERRORS_KEPT failed turns.
    """

    source: AudioSource
    segmenter: TurnSegmenter
    processor: TurnProcessor
    bus: EventSink
    on_audio: Callable[[Audio], None] | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    """While set, turns are segmented but dropped (counted in `skipped`); audio is still read."""
    turns: int = 0
    skipped: int = 0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))
    """What went wrong with the latest failed turns (oldest first; at most ERRORS_KEPT)."""
    error_count: int = 0
    """How many turns failed in all."""
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Process the stream until it ends; returns after the last turn is published."""
        self.source.start()
        try:
            for chunk in self.source:
                if self.on_audio is not None:
                    self.on_audio(chunk.samples)
                for item in self.segmenter.feed(chunk):
                    if isinstance(item, TurnInProgress):
                        self._partial(item)
                    else:
                        self._handle(item)
                if self._stop.is_set():
                    break
            for segment in self.segmenter.flush():
                self._handle(segment)
        finally:
            self.source.stop()

    def _handle(self, segment: SpeechSegment) -> None:
        if self.paused.is_set():
            self.skipped += 1
            return
        self._turn(segment)

    def _partial(self, turn: TurnInProgress) -> None:
        """A running turn's provisional result; one that fails is logged and skipped (the final
        turn is what counts, and it reports its own failure)."""
        if self.paused.is_set():
            return
        try:
            body = self.processor.partial(turn)
        except DecodeSkipped:  # shed under load (merc-serve): the final result will come
            return
        except Exception:
            log.exception("partial result of the turn at %.2f s failed", turn.t_start)
            return
        if body is not None:
            self.bus.publish(body)

    def stop(self) -> None:
        """Ask `run` to return after the chunk in hand (safe from any thread)."""
        self._stop.set()
        self.source.stop()

    def _turn(self, segment: SpeechSegment) -> None:
        try:
            bodies = self.processor.process(segment)
        except Exception as err:  # one bad turn must not end the session
            log.exception("turn at %.2f-%.2f s failed", segment.t_start, segment.t_end)
            from merc.stream.wire.messages import error  # (the module's import block belongs to the session side)

            # the details stay on this machine (log, self.errors); clients get a code and a fixed message
            span = f"{segment.t_start:.2f}-{segment.t_end:.2f} s"
            self.errors.append(f"turn at {span} failed: {type(err).__name__}: {err}")
            self.error_count += 1
            self.bus.publish(error("turn_failed", t_start=segment.t_start, t_end=segment.t_end))
            return
        self.turns += 1
        for body in bodies:
            self.bus.publish(body)
