"""Multimodal vs text-only MultiDAG on the paired set, under missing modalities.

For each seed: the text-only run (`--text-runs`/seedN, trained by bench/accuracy.py with the
IEMOCAP config) supplies the encoder and the text-only baseline; a multimodal DAG is trained on
the paired set over the same corpus (merc.models.features.paired: EmoDB audio and FER-2013 face evidence
from the experts, speakers/images disjoint between train and test, modality dropout 0.5). Both
are scored on the paired test split (IEMOCAP session 5) under:

* shared missing rates 0.0 .. 0.7 (Mi-CGA's protocol: each of audio and face is dropped as a whole
  per turn with the rate; text is kept, as the live tracker always has a turn's transcript);
* BALM's imbalanced rates (r_audio, r_text, r_face) = (0.5, 0.3, 0.7) and (0.5, 0.7, 0.3), where
  text is dropped too and the text-only baseline is scored on the same text masks; and two
  imbalanced audio/face settings with text kept.

The test pairing and masks depend only on the seed, so both models see the same turns, evidence
and masks. Prints one JSON object and writes it and a markdown table:

    python bench/paired_missing.py --text-runs runs/iemocap-ft2 [--face-expert runs/face-cnn] \
        [--seeds 0 1 2] [--out bench/results/DATE-paired-missing]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import statistics
import time
from pathlib import Path

from merc.export.build.evidence import audio_pools, face_pools
from merc.models.paths import cache_dir, default_experts_dir
from merc.models.train.paired_train import corpus_text, score_paired, train_paired

SHARED = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
IMBALANCED = {
    "BALM A (a .5, t .3, f .7)": {"audio": 0.5, "text": 0.3, "face": 0.7},
    "BALM B (a .5, t .7, f .3)": {"audio": 0.5, "text": 0.7, "face": 0.3},
    "a .2, f .6 (text kept)": {"audio": 0.2, "face": 0.6},
    "a .6, f .2 (text kept)": {"audio": 0.6, "face": 0.2},
    # The live default may switch to a multimodal model only if it is never worse than text-only
    # when audio and face are missing: this row is that case.
    "audio and face all missing": {"audio": 1.0, "face": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-runs", type=Path, required=True, help="parent of the text-only seedN runs")
    parser.add_argument("--face-expert", type=Path, default=default_experts_dir(),
                        help="face_cnn.onnx or a folder holding it (default: the bundled expert)")
    parser.add_argument("--audio-features", default="whisper_unpadded")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--drop", type=float, default=0.5, help="modality dropout for audio and face in training")
    parser.add_argument("--epochs", type=int, help="override the text run's epochs")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--data", help="data folder (default $MERC_DATA or ../shared/data)")
    parser.add_argument("--runs", type=Path, default=Path("runs/paired"), help="where the multimodal runs go")
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{dt.date.today()}-paired-missing"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cache = cache_dir()
    pools = {"audio": audio_pools(args.data, args.audio_features, cache / "emodb"),
             "face": face_pools(args.face_expert, args.data, cache / "fer")}
    test_pools = {m: p["test"] for m, p in pools.items()}
    conditions = {f"shared {r:.1f}": {"audio": r, "face": r} for r in SHARED} | IMBALANCED
    per_seed = []
    for seed in args.seeds:
        text_run = args.text_runs / f"seed{seed}"
        _, _, text = corpus_text(text_run, ("train", "valid", "test"))
        started = time.time()
        run = args.runs / f"seed{seed}"
        trained = train_paired(text_run, pools, run, seed=seed, drop=args.drop, epochs=args.epochs, progress=False,
                               text=text)
        row = {"seed": seed, "text_run": str(text_run), "run": str(run),
               "train_seconds": round(time.time() - started, 1), "valid_weighted_f1": trained["valid_weighted_f1"],
               "conditions": {}}
        for name, rates in conditions.items():
            multi = score_paired(run, text["test"], test_pools, rates, seed)
            # Text runs' model.json may list all three inputs the graph accepts; it learned text only.
            text_only = score_paired(text_run, text["test"], test_pools, rates, seed, modalities=("text",))
            row["conditions"][name] = {"rates": rates, "multimodal_wf1": multi["weighted_f1"],
                                       "text_only_wf1": text_only["weighted_f1"],
                                       "present": multi["present_fraction"]}
            logging.info("seed %d %s: multimodal %.4f, text-only %.4f", seed, name, multi["weighted_f1"],
                         text_only["weighted_f1"])
        per_seed.append(row)

    def sd(v: list[float]) -> float:
        return round(statistics.stdev(v), 2) if len(v) > 1 else 0.0

    summary = {}
    for name in conditions:
        multi = [100 * r["conditions"][name]["multimodal_wf1"] for r in per_seed]
        text = [100 * r["conditions"][name]["text_only_wf1"] for r in per_seed]
        diff = [m - t for m, t in zip(multi, text, strict=True)]
        summary[name] = {"rates": conditions[name], "multimodal": round(statistics.mean(multi), 2),
                         "multimodal_std": sd(multi), "text_only": round(statistics.mean(text), 2),
                         "text_only_std": sd(text), "difference": round(statistics.mean(diff), 2)}
    result = {"benchmark": "paired-missing", "date": str(dt.date.today()), "machine": platform.node(),
              "corpus": "iemocap-6 paired with EmoDB audio and FER-2013 face evidence", "seeds": args.seeds,
              "drop": args.drop, "audio_features": args.audio_features, "face_expert": str(args.face_expert),
              "summary": summary, "per_seed": per_seed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| condition | multimodal wF1 | text-only wF1 | difference |", "|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['multimodal']:.2f} ± {s['multimodal_std']:.2f} | "
                     f"{s['text_only']:.2f} ± {s['text_only_std']:.2f} | {s['difference']:+.2f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
