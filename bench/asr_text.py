"""Test-split scores of runs (or serving bundles) on gold text and on ASR-style text.

Live users only ever feed the text model ASR transcripts, which have no "!" and often no
punctuation at all. This scores each run with `merc-eval`'s evaluation (causal, the split's text
in each style of `--styles`) and prints one JSON object: per run and style the weighted F1,
accuracy and macro F1, and per style the mean and standard deviation over the runs (e.g. the DAG
seeds of one encoder).

    python bench/asr_text.py --runs runs/meld-asr/seed{0,1,2} [--styles gold no_exclaim lower_nopunct]
    python bench/asr_text.py --runs models/default --split test
    python bench/asr_text.py --bundles bundles/meld --corpus meld
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from merc.models.data.asr_text import EVAL_STYLES

METRICS = ("weighted_f1", "accuracy", "macro_f1")


def score(target: Path, bundle: bool, split: str, style: str, corpus: str | None, data_dir: str | None) -> dict:
    """One run or bundle on one split in one text style (the reports land in TARGET/eval-SPLIT-STYLE)."""
    if bundle:
        from merc.export.build.evaluate import evaluate_bundle

        return evaluate_bundle(target, split, corpus, data_dir, progress=False, text_style=style)
    from merc.models.train.evaluate import evaluate_run

    return evaluate_run(target, split, corpus, data_dir, progress=False, text_style=style)


def summarise(rows: list[dict], styles: list[str]) -> dict:
    """Per style and metric: mean and sample standard deviation (in %) over the runs."""
    out: dict[str, dict] = {}
    for style in styles:
        out[style] = {}
        for metric in METRICS:
            values = [100 * r["styles"][style][metric] for r in rows]
            out[style][metric] = {"mean": round(statistics.mean(values), 2),
                                  "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--runs", type=Path, nargs="+", help="run or model directories (merc-train --out)")
    group.add_argument("--bundles", type=Path, nargs="+", help="serving bundles (merc-export output)")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--styles", nargs="+", choices=EVAL_STYLES, default=["gold", "no_exclaim", "lower_nopunct"])
    parser.add_argument("--corpus", default=None, help="default: the corpus each model was trained on")
    parser.add_argument("--data-dir", default=None, help="corpus location (default: $MERC_DATA or ../shared/data)")
    parser.add_argument("--label", default=None, help="a name for this set of runs in the output")
    args = parser.parse_args(argv)
    bundle = args.bundles is not None
    targets = args.bundles if bundle else args.runs
    rows = []
    for target in targets:
        row: dict = {"target": str(target), "styles": {}}
        for style in args.styles:
            started = time.time()
            result = score(target, bundle, args.split, style, args.corpus, args.data_dir)
            row["styles"][style] = {m: result[m] for m in METRICS} | {"n": result["n"],
                                                                     "seconds": round(time.time() - started, 1)}
            row["corpus"] = result["corpus"]
        rows.append(row)
    print(json.dumps({"benchmark": "asr_text", "label": args.label, "split": args.split,
                      "engine": "onnxruntime" if bundle else "pytorch", "styles": args.styles, "runs": rows,
                      "summary": summarise(rows, args.styles)}, indent=2))


if __name__ == "__main__":
    main()
