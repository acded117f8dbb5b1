"""Assembling a session from its options (stream/session/options.py), shared by merc-live and
merc-replay so that a replayed recording goes through exactly the components a live session uses.

Only the command line reads arguments (merc.cli.common builds the options); what only it may
supply comes in as plain inputs: `export_bundle`, which exports a model's ONNX bundle on first use
(merc.export.build, which the stream must not import), and `warm_up_audio`, real speech to run each
model on once before the first turn.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from merc.stream.session.options import AsrOptions, SessionOptions, TrackerOptions
from merc.stream.session.pipeline import TurnProcessor
from merc.stream.session.seams import Audio, FaceFeaturizer, FaceTimeline, Featurizer, Tracker, Transcriber
from merc.stream.session.session import Session, hello_body
from merc.stream.session.sinks import PRINTER_CAPACITY, QueuedSink, stream_writer
from merc.stream.turns.end_of_turn import Completeness
from merc.stream.wire.events import EventBus

__all__ = [
    "TABLE_HEADER", "BundleExporter", "build_processor", "build_session", "clip", "face_featurizer", "format_event",
    "hello_body",
    "load_completeness", "load_tracker", "load_transcriber", "printer_sink", "turn_printer", "warm_up",
]

log = logging.getLogger(__name__)

BundleExporter = Callable[[Path, "int | None"], Path]
"""Exports the ONNX bundle of a model directory into the cache (with this many threads for its
parity check) and returns the bundle's directory."""


def load_tracker(options: TrackerOptions, export_bundle: BundleExporter | None = None) -> Tracker:
    """The tracker `options` ask for: a bundle on ONNX Runtime, or the PyTorch DialogueTracker.

    A model directory is served from its cached bundle; without one, `export_bundle` makes it
    (without an exporter, that is an error naming the command that does)."""
    from merc.export.serve.runtime import BundleTracker

    if options.bundle is not None:  # no torch on this path
        return BundleTracker.load(options.bundle, device=options.device or "auto", precision=options.precision,
                                  threads=options.threads)
    from merc.models.paths import default_model_dir

    model_dir = Path(options.model_dir or default_model_dir())
    if options.engine == "torch":
        from merc.models.dag.tracker import DialogueTracker

        device = options.device or "cpu"
        return DialogueTracker.load(model_dir, device=_torch_device(device) if device == "auto" else device)
    from merc.export.serve.bundle import BundleError, cached_bundle

    bundle = cached_bundle(model_dir)  # torch is imported only when the bundle must be exported
    if bundle is None:
        if export_bundle is None:
            raise BundleError(f"{model_dir}: no exported bundle in the cache (merc-export {model_dir} makes one)")
        bundle = export_bundle(model_dir, options.threads)
    return BundleTracker.load(bundle, device=options.device or "auto", precision=options.precision,
                              threads=options.threads)


def load_transcriber(options: AsrOptions) -> Transcriber:
    """The speech recogniser `options` ask for, decoding and guarding each turn as they say (the
    prompt from earlier turns, `options.prompt_words`, is the caller's to pass to `transcribe`)."""
    from merc.stream.turns.transcribe import Decoding, FasterWhisperTranscriber, TransformersWhisperTranscriber

    decoding = Decoding(repetition_penalty=options.repetition_penalty,
                        no_repeat_ngram_size=options.no_repeat_ngram_size, max_repeats=options.max_repeats,
                        compression_ratio_threshold=options.compression_ratio_threshold,
                        logprob_threshold=options.logprob_threshold, words=options.words,
                        min_word_probability=options.min_word_probability)
    if options.backend == "transformers":
        return TransformersWhisperTranscriber.load(options.model, device=options.device, decoding=decoding)
    return FasterWhisperTranscriber.load(options.model, device=options.device, window=options.window,
                                         decoding=decoding)


def build_processor(options: SessionOptions, tracker: Tracker, face_tracker: FaceTimeline | None = None,
                    warm_up_audio: Audio | None = None) -> TurnProcessor:
    """Every per-turn component: ASR, voice embedding and speaker clustering, the acoustic and face
    features the model reads, and the tracker; each model is run once on `warm_up_audio` when given."""
    from merc.stream.turns.speakers import SpeakerAttributor
    from merc.stream.turns.voice_profiles import load_voice_embedder, voice_profile

    started = time.perf_counter()
    if options.speakers.torch_threads is not None:
        import torch

        torch.set_num_threads(options.speakers.torch_threads)
    transcriber = load_transcriber(options.asr)
    voices = voice_profile(options.speakers.embedder)
    embedder = load_voice_embedder(voices.name, device=_torch_device(options.speakers.device))
    attributor = SpeakerAttributor(max_speakers=options.speakers.max_speakers,
                                   max_clusters=options.speakers.max_clusters, threshold=voices.join,
                                   short_threshold=voices.short_join, merge_threshold=voices.merge)
    processor = TurnProcessor(tracker=tracker, transcriber=transcriber, embedder=embedder,
                              prompt_words=options.asr.prompt_words, attributor=attributor,
                              acoustic=_acoustic_featurizer(tracker, transcriber, options.asr),
                              face_tracker=face_tracker,
                              face_features=face_featurizer(tracker) if face_tracker is not None else None)
    if warm_up_audio is not None:
        warm_up(processor, warm_up_audio)
    log.info("pipeline ready in %.1f s (asr %s %s; voices %s; model reads %s)", time.perf_counter() - started,
             options.asr.backend, options.asr.model, voices.name, ", ".join(tracker.modalities))
    return processor


def build_session(options: SessionOptions, bus: EventBus, *, tracker: Tracker | None = None,
                  export_bundle: BundleExporter | None = None, face_tracker: FaceTimeline | None = None,
                  warm_up_audio: Audio | None = None, end_of_turn: Path | None = None) -> Session:
    """The session `options` describe, publishing on `bus`: the tracker (loaded unless given), the
    per-turn processor, and through `Session.pipeline`/`Session.serve` the segmenter and server.
    `end_of_turn`: the exported end-of-turn classifier (merc.export.build.end_of_turn, which the
    command runs), needed when the options ask for the learned end of turn."""
    if tracker is None:
        tracker = load_tracker(options.tracker, export_bundle)
    processor = build_processor(options, tracker, face_tracker, warm_up_audio)
    return Session(processor, bus, options, completeness=load_completeness(options, end_of_turn))


def load_completeness(options: SessionOptions, exported: Path | None) -> Completeness | None:
    """The end-of-turn classifier on ONNX Runtime when the options ask for the learned end of turn."""
    if options.segmenter.end_of_turn != "learned":
        return None
    if exported is None:
        from merc.export.serve.end_of_turn import EndOfTurnExportError

        raise EndOfTurnExportError("the learned end of turn needs the exported classifier (merc-end-of-turn score "
                                   "exports it); or use --end-of-turn silence")
    from merc.export.serve.end_of_turn import CompletenessModel

    return CompletenessModel(exported, verify=False)  # the command's cached_export or export just checked it


def _acoustic_featurizer(tracker: Tracker, transcriber: Transcriber, asr: AsrOptions) -> Featurizer | None:
    """The audio features the model reads (None for a model that reads no audio): the kind it was
    trained on (a Whisper kind reuses the ASR's own model), through the bundle's audio expert when
    it has one."""
    if "audio" not in tracker.modalities:
        return None
    from merc.models.features.audio_features import AcousticFeaturizer

    manifest = getattr(tracker, "manifest", None)
    kind: str = manifest.raw.get("source", {}).get("audio_features", "egemaps") if manifest is not None \
        else "egemaps"
    whisper = getattr(transcriber, "model", None) if kind.startswith("whisper") and asr.backend == "faster-whisper" \
        else None
    acoustic: Featurizer = AcousticFeaturizer(kind, whisper_model=whisper)
    if manifest is not None and "audio" in manifest.experts:  # a multimodal bundle reads the audio expert's
        from merc.export.serve.expert_runtime import AudioEmotionExpert  # emotion probabilities

        acoustic = AudioEmotionExpert(manifest.file(manifest.experts["audio"]["file"]), acoustic)
    return acoustic


def face_featurizer(tracker: Tracker) -> FaceFeaturizer:
    """The face features of a turn: the bundle's face CNN on the tracker's crops when it has one,
    else the landmark features."""
    manifest = getattr(tracker, "manifest", None)
    if manifest is not None and "face" in manifest.experts:
        from merc.export.serve.expert_runtime import FaceEmotionExpert

        expert = FaceEmotionExpert(manifest.file(manifest.experts["face"]["file"]))
        return expert.turn_features
    from merc.models.features.face_features import face_features

    return face_features


def warm_up(processor: TurnProcessor, speech: Audio) -> None:
    """Run each model once on real speech (a few seconds of it), so the first turn of a session
    does not pay for lazy initialisation: the first voice embedding alone takes a second or more,
    and noise would not reach the model (Resemblyzer's VAD drops it)."""
    processor.transcriber.transcribe(speech)
    if processor.embedder is not None:
        processor.embedder.embed(speech)
    if processor.acoustic is not None:
        processor.acoustic(speech)


def _torch_device(requested: str) -> str:
    """The device for a PyTorch model: the GPU when there is one (or when asked), else the CPU."""
    if requested == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


TABLE_HEADER = (f"{'#':>3} {'t (s)':>7} {'spk':<4} {'text':<46} {'emotion':<9} {'conf':>4} {'e2e ms':>6} "
                f"{'proc':>6}\n")
"""The table's header line (for `format_event` rows)."""


def format_event(event: dict[str, Any], as_json: bool = False) -> str | None:
    """The line printed for an event (newline included): its JSON, or a table row for a turn, a
    bracketed line for a status or an error; None for an event the table leaves out."""
    import json

    if as_json:
        return json.dumps(event, ensure_ascii=False) + "\n"
    if event["type"] == "turn":
        t = event["timings_ms"]
        return (f"{event['turn']:>3} {event['t_start']:>7.2f} {event['speaker'] or '?':<4} "
                f"{clip(event['text'], 46):<46} {event['label']:<9} {event['confidence']:>4.2f} "
                f"{t['total']:>6.0f} {t['total'] - t['segmentation']:>6.0f}\n")
    if event["type"] == "turn.update":
        return (f"    [update] turn {event['turn']}: speaker {event['speaker'] or '?'}, {event['label']} "
                f"{event['confidence']:.2f}\n")
    if event["type"] in ("status", "error"):
        return f"    [{event['type']}] {event['message']}\n"
    return None


def turn_printer(out: TextIO = sys.stdout, as_json: bool = False) -> Callable[[dict[str, Any]], None]:
    """A bus subscriber printing each event as it lands (on the publisher's thread: it blocks while
    `out` does; the commands use `printer_sink`): a table row per turn, or JSON lines."""

    def show(event: dict[str, Any]) -> None:
        line = format_event(event, as_json)
        if line is not None:
            out.write(line)
            out.flush()

    if not as_json:
        out.write(TABLE_HEADER)
        out.flush()
    return show


def printer_sink(out: TextIO | None = None, as_json: bool = False, *, capacity: int = PRINTER_CAPACITY,
                 report: Callable[[str], None] | None = None) -> QueuedSink[dict[str, Any] | str]:
    """`turn_printer` behind a bounded queue (stream/session/sinks.py), for `bus.subscribe`: the
    bus never waits for `out` (default: stdout). A reader that does not keep up is skipped: events
    that find `capacity` others waiting are not printed (reported once, and counted at `close`).
    Call `close` at the end of the run."""
    out = sys.stdout if out is None else out
    write = stream_writer(out)

    def show(item: dict[str, Any] | str) -> None:
        line = item if isinstance(item, str) else format_event(item, as_json)
        if line is not None:
            write(line)

    name = getattr(out, "name", "the output")
    name = "stdout" if out is sys.stdout else f"file descriptor {name}" if isinstance(name, int) else str(name)
    sink: QueuedSink[dict[str, Any] | str] = QueuedSink(show, name=name, capacity=capacity,
                                                       stalled="is not being read", lost="skipped", report=report)
    if not as_json:
        sink(TABLE_HEADER)  # through the queue too: even the header must not block the caller
    return sink
