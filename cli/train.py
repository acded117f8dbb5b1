"""`merc-train` and `merc-eval`: the offline commands."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from merc.cli.exits import guarded

# Nothing here imports torch at module level: `merc-eval --bundle` scores a bundle with ONNX
# Runtime only (the training stack is imported inside the commands that need it).


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field` option per TrainConfig field; unset options leave the file's value."""
    from merc.models.train.config import TrainConfig  # imports torch: only merc-train reads it

    group = parser.add_argument_group("training options (override the config file)")
    parsers: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _parse_bool, "int | None": int}
    for f in fields(TrainConfig):
        kind = parsers.get(str(f.type), str)
        if str(f.type) in ("str | None",):
            kind = str
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                           choices=f.metadata["choices"], help=f"{f.metadata['help']} (default: {f.default})")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def train_main(argv: list[str] | None = None) -> int:
    """merc-train (exit statuses: merc.cli.exits)."""
    return guarded("merc-train", lambda: _train(argv))


def _train(argv: list[str] | None) -> int:
    from merc.models.train.config import load_config

    parser = argparse.ArgumentParser(
        prog="merc-train",
        description=(
            "Train a MultiDAG emotion tracker on a conversation corpus. Optionally fine-tunes the text "
            "encoder first; then embeds every turn (cached on disk) and trains the DAG with AdamW, keeping "
            "the epoch with the best validation weighted F1 (the test split is never read). Writes RUN/: "
            "config.json, model.json + model.safetensors, encoder/ (if fine-tuned), metrics.json, "
            "valid_report.txt, valid_confusion.png, curves.png."),
        epilog="Example: merc-train --config models/configs/meld.toml --seed 1 --out runs/meld-s1")
    parser.add_argument("--config", type=Path, help="TOML file of training options (keys as below, with underscores)")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from merc.models.train.training import run_training

    config = load_config(args.config, vars(args))
    metrics = run_training(config, args.out, progress=not args.quiet)
    valid = metrics["valid"]
    print(f"best epoch {metrics['best_epoch']}: valid weighted F1 {100 * valid['weighted_f1']:.2f}, "
          f"accuracy {100 * valid['accuracy']:.2f}; run written to {args.out}")
    return 0


def _eval_replay(args: argparse.Namespace) -> int:
    """merc-eval --replay DIR: torch-free, reads only the recording's files."""
    import json

    from merc.stream.recordings.recording import open_recording, read_gold
    from merc.stream.recordings.scoring import (
        find_events,
        format_scores,
        read_events,
        score_replay,
    )

    recording = open_recording(args.replay)
    events_path = args.events or find_events(recording.directory)
    scores = score_replay(read_gold(recording), read_events(events_path))
    if args.json:
        print(json.dumps({"recording": str(recording.directory), "events": str(events_path), **scores.as_dict()}))
    else:
        print(f"{recording.directory}: {events_path.name} against gold.jsonl")
        print(format_scores(scores))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """merc-eval (exit statuses: merc.cli.exits)."""
    return guarded("merc-eval", lambda: _eval(argv))


def _eval(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="merc-eval",
        description=(
            "Score a trained run on a corpus split, causally (each turn sees only itself and earlier turns). "
            "Prints accuracy, weighted F1 (support-weighted, as ERC papers report it), macro F1, per-class F1 "
            "and the confusion matrix; writes RUN/eval-SPLIT/metrics.json, report.txt and confusion.png. "
            "With --bundle BUNDLE instead of RUN, scores a serving bundle written by merc-export through ONNX "
            "Runtime only (no torch): each dialogue is tracked turn by turn as merc-live serves it; the "
            "reports go to BUNDLE/eval-SPLIT (BUNDLE/eval-SPLIT-PRECISION for int8/fp16)."),
        epilog=("Examples: merc-eval runs/meld-s0 --split test;  "
                "merc-eval --bundle bundles/meld-s0 --corpus meld --split test --precision int8"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=None,
                        help="run directory written by merc-train (or a model directory); omit with --bundle")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="score this bundle (merc-export output) with ONNX Runtime instead of a run with PyTorch")
    parser.add_argument("--replay", type=Path, default=None, metavar="DIR",
                        help="score a replayed recording instead: DIR's events (merc-replay output, else the live "
                             "session's events.jsonl) against DIR/gold.jsonl: speaker attribution accuracy, "
                             "transcript WER, emotion weighted F1")
    parser.add_argument("--events", type=Path, default=None,
                        help="with --replay: the events file to score (default: found in DIR)")
    parser.add_argument("--split", choices=("train", "valid", "test"), default="test", help="split to score")
    parser.add_argument("--corpus", help="corpus to score on (default: the one the run or the bundle's model was "
                                         "trained on)")
    parser.add_argument("--data-dir", help="corpus location (default: the run's, else $MERC_DATA, else "
                                           "../shared/data); for --corpus jsonl, the JSONL file")
    parser.add_argument("--out", type=Path, help="where to write the reports (default: RUN/eval-SPLIT or "
                                                 "BUNDLE/eval-SPLIT)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu or cuda: the torch device, or with --bundle the ONNX Runtime execution "
                             "provider (cuda needs onnxruntime-gpu)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                        help="with --bundle: which text encoder of the bundle to score")
    parser.add_argument("--threads", type=int, default=None,
                        help="with --bundle: ONNX Runtime intra-op threads for the text encoder "
                             "(default: one per core)")
    parser.add_argument("--max-dialogues", type=int, default=None,
                        help="with --bundle: score only the first N dialogues of the split (a quick check)")
    parser.add_argument("--text-style", choices=("gold", "no_exclaim", "lower_nopunct", "whisper"), default="gold",
                        help="score the split's text as written (gold) or as an ASR writes it: no_exclaim (every "
                             "'!' as '.'), lower_nopunct (lowercase, no punctuation) or whisper (Whisper's "
                             "punctuation and quotes); recorded in metrics.json, reports go to eval-SPLIT-STYLE")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.replay is not None:
        if args.run is not None or args.bundle is not None:
            parser.error("--replay scores a recording; give no run or bundle with it")
        if args.text_style != "gold":
            parser.error("--text-style applies to a run or a bundle, not to --replay")
        return _eval_replay(args)
    if args.events is not None:
        parser.error("--events applies to --replay only")
    if (args.run is None) == (args.bundle is None):
        parser.error("give a run directory or --bundle BUNDLE (one of them)")
    if args.bundle is None and (args.precision != "fp32" or args.threads or args.max_dialogues):
        parser.error("--precision, --threads and --max-dialogues apply to --bundle only")
    _setup_logging(False)
    if args.bundle is not None:
        from merc.export.build.evaluate import evaluate_bundle

        run = lambda: evaluate_bundle(args.bundle, args.split, args.corpus, args.data_dir, args.out,  # noqa: E731
                                      args.device, args.precision, args.threads, args.max_dialogues,
                                      progress=not args.quiet, text_style=args.text_style)
    else:
        from merc.models.train.evaluate import evaluate_run

        run = lambda: evaluate_run(args.run, args.split, args.corpus, args.data_dir, args.out,  # noqa: E731
                                   args.device, progress=not args.quiet, text_style=args.text_style)
    result = run()
    if args.json:
        import json

        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['corpus']} {result['split']}: {result['n']} turns in {result['dialogues']} dialogues (causal, "
          f"{result['text_style']} text)")
    if "engine" in result:
        print(f"  bundle {result['bundle']}: ONNX Runtime ({result['execution_provider']}), text encoder "
              f"{result['precision']}, {result['ms_per_turn']:.1f} ms per turn")
    print(f"  accuracy     {100 * result['accuracy']:6.2f}")
    print(f"  weighted F1  {100 * result['weighted_f1']:6.2f}")
    print(f"  macro F1     {100 * result['macro_f1']:6.2f}")
    print("  per-class F1 " + "  ".join(f"{k} {100 * v:.2f}" for k, v in result["per_class_f1"].items()))
    labels = result["labels"]
    width = max(len(x) for x in labels) + 1
    print("  confusion (rows gold, columns predicted):")
    print("  " + " " * width + "".join(f"{x:>{width}}" for x in labels))
    for label, row in zip(labels, result["confusion_matrix"], strict=True):
        print(f"  {label:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return 0
