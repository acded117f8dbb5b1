"""`merc-end-of-turn`: train the end-of-turn classifier, or ask it about transcripts.

    merc-end-of-turn train --data ../shared/data --out models/end_of_turn
    merc-end-of-turn score "so what i think is" "i'll see you tomorrow"
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from merc.cli.exits import guarded


def _train(args: argparse.Namespace) -> int:
    from merc.models.data.corpora import resolve_data_dir
    from merc.models.train.end_of_turn import EndOfTurnConfig, train_end_of_turn

    cfg = EndOfTurnConfig(seeds=tuple(args.seeds), epochs=args.epochs, hidden=args.hidden, lora_rank=args.lora_rank,
                          lora_epochs=args.lora_epochs)
    report = train_end_of_turn(resolve_data_dir(args.data), args.out, cfg, progress=not args.quiet)
    runs = report["runs"]
    for run in runs:
        print(f"seed {run['seed']}: best epoch {run['best_epoch']}, validation AUC {run['valid']['auc']:.4f} "
              f"accuracy {run['valid']['accuracy']:.4f}; test AUC {run['test']['auc']:.4f} "
              f"accuracy {run['test']['accuracy']:.4f}")
    mean, sd = report["test_mean"], report["test_sd"]
    print(f"test over {len(runs)} seeds: AUC {mean['auc']:.4f} ± {sd['auc']:.4f}, accuracy "
          f"{mean['accuracy']:.4f} ± {sd['accuracy']:.4f}; shipped seed {report['shipped_seed']} -> {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from merc.export.build.end_of_turn import ensure_end_of_turn
    from merc.export.serve.end_of_turn import CompletenessModel

    model = CompletenessModel(ensure_end_of_turn(args.model))
    for text in args.texts:
        p = model(text)
        print(json.dumps({"text": text, "complete": p}) if args.json else
              f"{'-' if p is None else f'{p:.3f}':>6}  {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merc-end-of-turn",
        description="The end-of-turn classifier: does a partial transcript read as a finished utterance? "
                    "Live sessions end a turn after a short silence when it does (--eot-silence) and wait "
                    "longer when it does not.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on MELD and IEMOCAP training dialogues (utterances against "
                                         "their cut-off beginnings), select on validation, report test")
    train.add_argument("--data", default=None, help="folder holding meld/ and iemocap/ (default: $MERC_DATA or "
                                                    "../shared/data)")
    train.add_argument("--out", type=Path, required=True, help="where the head and its report go "
                                                               "(models/end_of_turn is the bundled one)")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--hidden", type=int, default=128)
    train.add_argument("--lora-rank", type=int, default=0, metavar="R",
                       help="also train the encoder, as LoRA factors of rank R on all its layers (0: frozen "
                            "encoder, only the head is trained; --epochs then counts head epochs)")
    train.add_argument("--lora-epochs", type=int, default=2, help="epochs with --lora-rank")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)
    score = sub.add_parser("score", help="P(complete) of each transcript given")
    score.add_argument("texts", nargs="+")
    score.add_argument("--model", type=Path, default=None, help="a classifier directory (default: the bundled one)")
    score.add_argument("--json", action="store_true", help="one JSON object per line")
    score.set_defaults(run=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return guarded("merc-end-of-turn", lambda: int(args.run(args)))


if __name__ == "__main__":
    sys.exit(main())
