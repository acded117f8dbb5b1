"""`merc-track`: track the emotions of a written conversation (a dialogue file) turn by turn.

The text-only path of the tracker, without audio: the conversation comes from a JSONL dialogue
file (the format of `merc.models.data.corpora`); with no argument, a bundled example dialogue is
tracked with the bundled default model. `merc-live` and `merc-replay` run the spoken pipeline.

Tracking is served from the model's ONNX bundle through ONNX Runtime (`merc.export.serve.runtime`):
the first use of a model directory exports its bundle into the cache (`ensure_bundle`), later
runs reuse it. `--bundle DIR` serves an exported bundle directly without importing torch;
`--engine torch` runs the PyTorch `DialogueTracker` instead, for comparison and debugging.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from merc.cli.common import (
    HelpFormatter,
    add_model_arguments,
    check_model_arguments,
    load_tracker,
    run_command,
    tracker_options,
)
from merc.models.data.corpora import Dialogue
from merc.models.data.examples import example_dialogue


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="merc-track",
        description=(
            "Track the emotion of each turn of a conversation given the conversation so far (causal: a turn "
            "never sees later turns). Each turn is embedded by the model's text encoder and added to the "
            "incremental dialogue graph with one step. Reads a JSONL dialogue file; with no file, tracks a "
            "bundled example dialogue with the bundled default model (text only, MELD's 7 labels). "
            "Tracking runs on ONNX Runtime from the model's bundle (see merc-export): the first use of a "
            "model directory exports its bundle into the cache ($MERC_CACHE or ~/.cache/merc)/bundles, "
            "which takes a minute; later runs reuse it."),
        epilog=("Dialogue file format: one JSON object per line, {\"dialogue_id\": ..., \"utterances\": "
                "[{\"speaker\": ..., \"text\": ..., \"emotion\"?: ...}]}; a gold \"emotion\" is shown beside "
                "the prediction when present. Exit status: 0 tracked, 2 bad dialogue file, model or bundle, 70 "
                "internal error (see merc.cli.exits)."),
        formatter_class=HelpFormatter)
    parser.add_argument("--dialogue", type=Path, default=None,
                        help="JSONL dialogue file to track (default: the bundled example dialogue)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per turn instead of a table")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("merc").setLevel(logging.INFO)  # say so when a first use exports a bundle, and where

    from merc.models.data.corpora import load_dialogues_jsonl

    path = args.dialogue or example_dialogue()
    return run_command("merc-track", lambda _: _track(args, load_dialogues_jsonl(path, None)), args)


def _track(args: argparse.Namespace, dialogues: list[Dialogue]) -> int:
    tracker = load_tracker(tracker_options(args))
    for dialogue in dialogues:
        tracker.reset()
        if not args.json:
            print(f"dialogue {dialogue.id} ({len(dialogue.utterances)} turns, labels: {', '.join(tracker.labels)})")
            print(f"{'#':>3}  {'speaker':<10} {'text':<52} {'emotion':<9} {'conf':>5}  {'gold':<9} {'ms':>6}")
        hits = labelled = 0
        for utt in dialogue.utterances:
            result = tracker.track(utt.speaker, utt.text)
            if utt.label is not None:
                labelled += 1
                hits += utt.label == result.label
            if args.json:
                print(json.dumps({"dialogue_id": dialogue.id, "turn": result.index, "speaker": result.speaker,
                                  "text": result.text, "label": result.label, "confidence": result.confidence,
                                  "probs": result.probs, "gold": utt.label, "timings_ms": result.timings_ms}))
            else:
                ms = sum(result.timings_ms.values())
                print(f"{result.index:>3}  {_clip(utt.speaker, 10):<10} {_clip(utt.text, 52):<52} {result.label:<9} "
                      f"{result.confidence:>5.2f}  {utt.label or '-':<9} {ms:>6.1f}")
        if labelled and not args.json:
            print(f"{hits}/{labelled} turns match the gold labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
