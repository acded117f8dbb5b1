"""How far a split can tell two recipes apart: the weighted-F1 difference between two groups of
runs (e.g. three DAG seeds of recipe A and three of recipe B), and its spread when the split's
dialogues are resampled with replacement (a dialogue bootstrap: turns of one dialogue share a
mood, so dialogues, not turns, are the independent units). Prints one JSON object.

    python bench/split_bootstrap.py --a runs/iemocap-ctx8-seeds/seed{0,1,2} \\
        --b runs/iemocap-full-seeds/seed{0,1,2} --splits valid test [--samples 2000]

A split that ranks A and B the opposite way from another, each with its interval clear of zero,
is telling something about the splits, not noise; an interval that straddles zero says the
split cannot settle the choice.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from merc.models.train.evaluate import predict_split


def per_dialogue(run: Path, split: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Dialogue ids, and gold labels and predictions of each dialogue's labelled turns."""
    found = predict_split(run, split, device="cpu", progress=False)
    pairs = found.per_dialogue()
    return [d.dialogue_id for d in found.data], [g for g, _ in pairs], [p for _, p in pairs]


def group_f1s(gold: list[np.ndarray], groups: list[list[list[np.ndarray]]], pick: np.ndarray) -> list[float]:
    """For each group of runs, the mean of its runs' weighted F1 on the dialogues `pick` (with repeats)."""
    y = np.concatenate([gold[i] for i in pick])
    return [float(np.mean([f1_score(y, np.concatenate([p[i] for i in pick]), average="weighted") for p in runs]))
            for runs in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, nargs="+", required=True, help="runs of recipe A (e.g. its seeds)")
    parser.add_argument("--b", type=Path, nargs="+", required=True, help="runs of recipe B")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"])
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples of the dialogues")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    out = {"benchmark": "split_bootstrap", "a": [str(r) for r in args.a], "b": [str(r) for r in args.b],
           "samples": args.samples, "splits": {}}
    for split in args.splits:
        runs_a = [per_dialogue(r, split) for r in args.a]
        runs_b = [per_dialogue(r, split) for r in args.b]
        ids, gold, _ = runs_a[0]
        if any(r[0] != ids for r in runs_a + runs_b):
            raise SystemExit(f"{split}: the runs do not score the same dialogues")
        groups = [[r[2] for r in runs_a], [r[2] for r in runs_b]]
        a, b = group_f1s(gold, groups, np.arange(len(ids)))
        diffs = []
        for _ in range(args.samples):
            f1_a, f1_b = group_f1s(gold, groups, rng.integers(0, len(ids), len(ids)))
            diffs.append(f1_b - f1_a)
        diffs = np.array(diffs)
        out["splits"][split] = {
            "dialogues": len(ids), "turns": int(sum(len(g) for g in gold)),
            "weighted_f1_a": round(100 * a, 2), "weighted_f1_b": round(100 * b, 2),
            "b_minus_a": round(100 * (b - a), 2),
            "b_minus_a_95": [round(100 * float(np.quantile(diffs, q)), 2) for q in (0.025, 0.975)],
            "b_minus_a_std": round(100 * float(diffs.std()), 2),
            "share_b_better": round(float((diffs > 0).mean()), 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
