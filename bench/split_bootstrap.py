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

from merc.models.checkpoint import load_model
from merc.models.corpora import load_corpus, resolve_data_dir
from merc.models.embedding_cache import EmbeddingCache
from merc.models.features import text_features
from merc.models.text_encoder import TextEncoder, cache_dir
from merc.models.train import pick_device, predict


def per_dialogue_predictions(run: Path, split: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Dialogue ids, and gold labels and predictions of each dialogue's labelled turns."""
    model = load_model(run)
    config = json.loads((run / "config.json").read_text())
    dialogues = load_corpus(config["corpus"], resolve_data_dir(config.get("data_dir")), split)
    device = pick_device("cpu")
    encoder = TextEncoder.load(model.encoder_ref, device=device)
    cache = EmbeddingCache(cache_dir() / "embeddings.sqlite")
    try:
        data = text_features(encoder, dialogues, model.label_set, cache)
    finally:
        cache.close()
    gold, pred, _, _ = predict(model.dag.to(device), data, device)
    bounds = np.cumsum([0] + [int((d.labels >= 0).sum()) for d in data])
    return ([d.dialogue_id for d in data], [gold[a:b] for a, b in zip(bounds, bounds[1:])],
            [pred[a:b] for a, b in zip(bounds, bounds[1:])])


def group_f1(gold: list[np.ndarray], preds: list[list[np.ndarray]], pick: np.ndarray) -> float:
    """Mean over a group's runs of the weighted F1 on the dialogues `pick` (with repeats)."""
    y = np.concatenate([gold[i] for i in pick])
    return float(np.mean([f1_score(y, np.concatenate([p[i] for i in pick]), average="weighted") for p in preds]))


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
        runs_a = [per_dialogue_predictions(r, split) for r in args.a]
        runs_b = [per_dialogue_predictions(r, split) for r in args.b]
        ids, gold, _ = runs_a[0]
        if any(r[0] != ids for r in runs_a + runs_b):
            raise SystemExit(f"{split}: the runs do not score the same dialogues")
        preds_a, preds_b = [r[2] for r in runs_a], [r[2] for r in runs_b]
        everything = np.arange(len(ids))
        a, b = group_f1(gold, preds_a, everything), group_f1(gold, preds_b, everything)
        diffs = []
        for _ in range(args.samples):
            pick = rng.integers(0, len(ids), len(ids))
            diffs.append(group_f1(gold, preds_b, pick) - group_f1(gold, preds_a, pick))
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
