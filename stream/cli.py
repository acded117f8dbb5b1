"""`merc-live`: track the emotions of a conversation turn by turn.

Until live capture lands, the conversation comes from a dialogue file (JSONL, the format of
`merc.models.corpora`); with no argument, a bundled example dialogue is tracked with the
bundled default model, so a fresh install shows the tracker working.

Tracking is served from the model's ONNX bundle through ONNX Runtime (`merc.export.runtime`):
the first use of a model directory exports its bundle into the cache (`ensure_bundle`), later
runs reuse it. `--bundle DIR` serves an exported bundle directly without importing torch;
`--engine torch` runs the PyTorch `DialogueTracker` instead, for comparison and debugging.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path

EXAMPLE = "example_dialogue.jsonl"


def example_dialogue() -> Path:
    return Path(str(resources.files("merc.stream") / "examples" / EXAMPLE))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and False (those options' help says what happens without them)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _load_tracker(args):
    """The tracker `args` ask for: a bundle on ONNX Runtime (exported first if needed) or PyTorch."""
    if args.bundle is not None:  # no torch on this path
        from merc.export.runtime import BundleTracker

        return BundleTracker.load(args.bundle, device=args.device or "auto", precision=args.precision,
                                  threads=args.threads)
    from merc.models.paths import default_model_dir

    model_dir = args.model or default_model_dir()
    if args.engine == "torch":
        from .tracker import DialogueTracker

        device = args.device or "cpu"
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return DialogueTracker.load(args.model, device=device)
    from merc.export.bundle import cached_bundle
    from merc.export.runtime import BundleTracker

    bundle = cached_bundle(model_dir)  # torch is imported only when the bundle must be exported
    if bundle is None:
        from merc.export.onnx_export import ensure_bundle

        bundle = ensure_bundle(model_dir, threads=args.threads)
    return BundleTracker.load(bundle, device=args.device or "auto", precision=args.precision, threads=args.threads)


def _is_input_error(err: BaseException) -> bool:
    """Errors that mean bad input (a file, a model, a bundle), reported in one line. The torch-side
    error types are looked up only if their modules were loaded, so serving a cached bundle never
    imports torch just to name them."""
    from merc.export.bundle import BundleError
    from merc.models.corpora import CorpusError

    kinds: list[type[BaseException]] = [BundleError, CorpusError, OSError]
    for module, name in (("merc.export.onnx_export", "ExportError"), ("merc.models.checkpoint", "ModelError"),
                         ("merc.models.text_encoder", "EncoderError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(err, tuple(kinds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="merc-live",
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
                "the prediction when present. Exit status: 0 tracked, 2 bad dialogue file, model or bundle."),
        formatter_class=_HelpFormatter)
    parser.add_argument("--dialogue", type=Path, default=None,
                        help="JSONL dialogue file to track (default: the bundled example dialogue)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (a merc-train run; default: the bundled default model); with "
                             "--engine onnx its bundle is exported into the cache on first use")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="serve this bundle (written by merc-export) directly with ONNX Runtime, without "
                             "importing torch; replaces --model")
    parser.add_argument("--engine", choices=("onnx", "torch"), default="onnx",
                        help="onnx: the model's bundle on ONNX Runtime (as served); torch: the PyTorch "
                             "DialogueTracker on the model directory (for comparison and debugging)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                        help="onnx engine: which text encoder of the bundle to run (cached bundles hold fp32 "
                             "and int8; fp16 is for GPUs and needs merc-export --variants fp16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnx engine: ONNX Runtime threads for the text encoder (default: one per core; the "
                             "graph step always runs on one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per turn instead of a table")
    parser.add_argument("--device", default=None,
                        help="onnx engine: auto (CUDA when onnxruntime-gpu offers it), cpu or cuda (default auto); "
                             "torch engine: the torch device for the encoder and the graph (default cpu)")
    args = parser.parse_args(argv)
    if args.bundle is not None and args.model is not None:
        parser.error("give --model or --bundle, not both")
    if args.bundle is not None and args.engine == "torch":
        parser.error("--bundle serves with ONNX Runtime; --engine torch needs a model directory (--model)")
    if args.engine == "torch" and (args.precision != "fp32" or args.threads):
        parser.error("--precision and --threads apply to the onnx engine only")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("merc").setLevel(logging.INFO)  # say so when a first use exports a bundle, and where

    from merc.models.corpora import load_dialogues_jsonl

    path = args.dialogue or example_dialogue()
    try:
        dialogues = load_dialogues_jsonl(path, None)
        tracker = _load_tracker(args)
    except Exception as err:
        if not _is_input_error(err):
            raise
        print(f"merc-live: error: {err}", file=sys.stderr)
        return 2
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
