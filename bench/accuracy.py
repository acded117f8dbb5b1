"""Test-split accuracy of MultiDAG over seeds: trains each seed with `merc-train` (selection on
the validation split), scores it with `merc-eval --split test`, and prints one JSON object with
per-seed scores and their mean and standard deviation.

    python bench/accuracy.py --config models/configs/iemocap.toml --seeds 0 1 2 --out runs/iemocap \
        [--encoder runs/iemocap/seed0/encoder] [-- extra merc-train options]

With --encoder, every seed reuses that fine-tuned encoder (only the DAG is re-trained per seed);
without it, each seed runs the config as it is (fine-tuning its own encoder if the config asks).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from merc.cli.train import train_main
from merc.models.train.evaluate import evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="parent directory of the per-seed runs")
    parser.add_argument("--encoder", help="fine-tuned encoder directory shared by all seeds")
    parser.add_argument("extra", nargs="*", help="more merc-train options, after --")
    args = parser.parse_args()
    seeds = []
    for seed in args.seeds:
        run = args.out / f"seed{seed}"
        options = ["--config", str(args.config), "--seed", str(seed), "--out", str(run), "--quiet", *args.extra]
        if args.encoder:
            options += ["--encoder", args.encoder, "--finetune", "false"]
        started = time.time()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON result
            code = train_main(options)
        if code != 0:
            raise SystemExit(f"training seed {seed} failed")
        train_seconds = time.time() - started
        test = evaluate_run(run, "test", progress=False)
        valid = json.loads((run / "metrics.json").read_text())["valid"]
        seeds.append({"seed": seed, "run": str(run), "train_seconds": round(train_seconds, 1),
                      "valid_weighted_f1": valid["weighted_f1"], "test_weighted_f1": test["weighted_f1"],
                      "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"]})

    def summary(key: str) -> dict:
        values = [100 * s[key] for s in seeds]
        return {"mean": round(statistics.mean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}

    print(json.dumps({"benchmark": "accuracy", "config": str(args.config), "encoder": args.encoder,
                      "extra": args.extra, "seeds": seeds, "test_weighted_f1": summary("test_weighted_f1"),
                      "test_accuracy": summary("test_accuracy"), "test_macro_f1": summary("test_macro_f1"),
                      "valid_weighted_f1": summary("valid_weighted_f1")}, indent=2))


if __name__ == "__main__":
    main()
