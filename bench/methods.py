"""The seed methods side by side: every method of `merc.models.methods` (and the training plug-ins
MultiDAG+CL and SPCL on the MultiDAG backbone) trained and scored on the same features and splits.

Tasks:

* ``iemocap`` and ``meld``: text only, test split, from the fine-tuned text encoders
  (``--iemocap-encoder``, ``--meld-encoder``; embeddings come from the shared embedding cache);
* ``paired``: the synthetic IEMOCAP paired set (`merc.models.features.paired`: EmoDB audio and FER-2013 face
  evidence from the experts, speakers and images disjoint between train and test, evidence drawn
  anew every epoch, modality dropout 0.5 for audio and face in training), scored on its test split
  under shared missing rates 0.0 .. 0.7 (audio and face dropped per turn, text kept) and BALM's
  imbalanced rates (text dropped too).

Per method: weighted F1 mean ± std over seeds, parameter count, training seconds per epoch
(validation pass included), inference milliseconds per dialogue (one dialogue at a time, one
thread, median over test dialogues), whether it runs causally, and for a non-causal method the
score of its causal variant (``future_window=0``, trained as such). Every method gets the same
hidden size, optimiser, epochs, early stopping and model selection on the validation split only.
The paper claims checked are listed in `CLAIMS`; the table says for each whether our run shows it.

    python bench/methods.py --iemocap-encoder runs/iemocap-ctx8/seed0/encoder [--seeds 0 1 2] \
        [--tasks iemocap meld paired] [--methods ...] [--epochs 20] [--jobs 2] [--out FILE-STEM] \
        [--reuse EARLIER.runs.jsonl ...]

Prints one JSON object; writes it and a markdown table to ``--out`` (.json, .md), and each
finished run as it comes to ``--out``.runs.jsonl. ``--reuse`` takes the runs of earlier (or
concurrent, cut-off) invocations whose settings match a planned run instead of training it again,
so a benchmark can be split across machines or sessions and summarised in one table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib
import json
import logging
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

SHARED = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
IMBALANCED = {
    "BALM A (a .5, t .3, f .7)": {"audio": 0.5, "text": 0.3, "face": 0.7},
    "BALM B (a .5, t .7, f .3)": {"audio": 0.5, "text": 0.7, "face": 0.3},
}
CONDITIONS = {f"shared {r:.1f}": {"audio": r, "face": r} for r in SHARED} | IMBALANCED

# Row name -> (method, [(plug-in, options)]). MultiDAG+CL's buckets follow models/configs/*.toml.
ROWS: dict[str, tuple[str, list]] = {
    "MultiDAG": ("multidag", []),
    "MultiDAG+CL": ("multidag", [("cl", {})]),
    "SPCL (MultiDAG)": ("multidag", [("spcl", {})]),  # no unimodal logits: SPCL's loss-only fallback
    "SPCL (BALM)": ("balm", [("spcl", {})]),  # SPCL's own difficulty measurer on BALM's unimodal heads
    "CORECT": ("corect", []),
    "Mi-CGA": ("micga", []),
    "Ada2I": ("ada2i", []),
    "CMATH": ("cmath", []),
    "DQF": ("dqf", []),
    "BALM": ("balm", []),
    "GSDNet": ("gsdnet", []),
}
CL_BUCKETS = {"iemocap": 5, "meld": 12, "paired": 5}
DAG_LAYERS = {"iemocap": 4, "meld": 2, "paired": 4}

# Each paper's qualitative claim, as a check on this table: (row, description, margin(summary)).
# margin -> (by how much the claim holds in weighted F1 points, negative where it does not; the
# largest seed standard deviation among the cells compared). A claim whose rows or tasks the run
# did not include is "n/a"; one that holds by less than the spread is flagged as such.
CLAIMS = [
    ("MultiDAG+CL", "the curriculum improves MultiDAG (text, both corpora)",
     lambda s: min(_better(s, "MultiDAG+CL", "MultiDAG", t) for t in ("iemocap", "meld"))),
    ("SPCL (MultiDAG)", "self-paced curriculum improves its backbone (paired, no missing)",
     lambda s: _better(s, "SPCL (MultiDAG)", "MultiDAG", "paired", "shared 0.0")),
    ("SPCL (BALM)", "self-paced curriculum improves its backbone (paired, no missing)",
     lambda s: _better(s, "SPCL (BALM)", "BALM", "paired", "shared 0.0")),
    ("CORECT", "cross-modal graph fusion beats the DAG baseline with all modalities (paired, 0.0)",
     lambda s: _better(s, "CORECT", "MultiDAG", "paired", "shared 0.0")),
    ("Mi-CGA", "degrades less than the baseline as modalities go missing (paired, 0.0 -> 0.7)",
     lambda s: _degrades_less(s, "Mi-CGA")),
    ("GSDNet", "recovering missing modalities degrades less than the baseline (paired, 0.0 -> 0.7)",
     lambda s: _degrades_less(s, "GSDNet")),
    ("DQF", "trained on incomplete inputs, degrades less than the baseline (paired, 0.0 -> 0.7)",
     lambda s: _degrades_less(s, "DQF")),
    ("CMATH", "text augmented by the other modalities beats the DAG baseline (paired, 0.0)",
     lambda s: _better(s, "CMATH", "MultiDAG", "paired", "shared 0.0")),
    ("Ada2I", "balancing the modalities beats the unbalanced baseline (paired, 0.0)",
     lambda s: _better(s, "Ada2I", "MultiDAG", "paired", "shared 0.0")),
    ("BALM", "beats the baseline under imbalanced missing rates (both BALM settings)",
     lambda s: min(_better(s, "BALM", "MultiDAG", "paired", c) for c in IMBALANCED)),
]


def _cell(summary: dict, row: str, task: str, condition: str = "test") -> dict:
    return summary[row][task]["scores"][condition]


def _m(summary: dict, row: str, task: str, condition: str = "test") -> float:
    return _cell(summary, row, task, condition)["mean"]


def _better(summary: dict, row: str, base: str, task: str, condition: str = "test") -> tuple[float, float]:
    a, b = _cell(summary, row, task, condition), _cell(summary, base, task, condition)
    return round(a["mean"] - b["mean"], 2), max(a["std"], b["std"])


def _degrades_less(summary: dict, row: str, base: str = "MultiDAG") -> tuple[float, float]:
    ends = ("shared 0.0", "shared 0.7")
    def drop(r: str) -> float:
        return _m(summary, r, "paired", ends[0]) - _m(summary, r, "paired", ends[1])
    spread = max(_cell(summary, r, "paired", c)["std"] for r in (row, base) for c in ends)
    return round(drop(base) - drop(row), 2), spread


@functools.cache
def task_data(task: str, encoders: tuple[tuple[str, str], ...], data_dir: str | None):
    """(label set, {split: dialogue features}, test pools or None) for a task, loaded once per process."""
    from merc.models.data.corpora import corpus_label_set, load_corpus, resolve_data_dir
    from merc.models.features.dialogue import text_features
    from merc.models.features.embedding_cache import EmbeddingCache
    from merc.models.features.text_encoder import TextEncoder, cache_dir

    corpus = "iemocap" if task == "paired" else task
    label_set = corpus_label_set(corpus)
    encoder = TextEncoder.load(dict(encoders)[corpus], device="cpu")
    root = resolve_data_dir(None)
    cache = EmbeddingCache(cache_dir() / "embeddings.sqlite")
    try:
        splits = {s: text_features(encoder, load_corpus(corpus, root, s), label_set, cache)
                  for s in ("train", "valid", "test")}
    finally:
        cache.close()
    pools = None
    if task == "paired":
        from merc.export.build.evidence import audio_pools, face_pools
        from merc.models.paths import default_experts_dir

        pools = {"audio": audio_pools(data_dir, "whisper_unpadded", cache_dir() / "emodb"),
                 "face": face_pools(default_experts_dir() / "face_cnn.onnx", data_dir, cache_dir() / "fer")}
    return label_set, splits, pools


def job_key(job: dict) -> tuple:
    """What makes two runs the same run: task, row, seed, variant, training settings, encoder."""
    corpus = "iemocap" if job["task"] == "paired" else job["task"]
    return (job["task"], job["row"], job["seed"], job["future_window"], job["epochs"], job["patience"],
            job["hidden"], job["dropout"], job["lr"], job["encoders"][corpus], job["data_dir"])


def load_runs(paths: list[Path]) -> dict[tuple, dict]:
    """Finished runs from earlier outputs (a .runs.jsonl, or a .json with "runs"), by `job_key`."""
    runs = {}
    for path in paths:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            records = json.loads(path.read_text())["runs"]
        for r in records:
            runs[job_key(r)] = r
    return runs


def run_one(job: dict) -> dict:
    """Train one (task, row, seed, variant) and score it; runs in a worker process."""
    import torch

    from merc.models.features.paired import apply_missing, only, pair
    from merc.models.methods import (
        MethodConfig,
        build_method,
        build_plugin,
        count_parameters,
    )
    from merc.models.methods.trainer import FitConfig, predict_method, train_method
    from merc.models.train.paired_train import mappings_for
    from merc.models.train.reports import scores

    torch.set_num_threads(1)
    task, row, seed = job["task"], job["row"], job["seed"]
    label_set, splits, pools = task_data(task, tuple(sorted(job["encoders"].items())), job["data_dir"])
    method, plugin_specs = ROWS[row]
    dims = {"text": splits["train"][0].features["text"].shape[1], "audio": 4, "face": 7}
    options = {"layers": DAG_LAYERS[task]} if method == "multidag" else {}
    config = MethodConfig(n_classes=len(label_set), dims=dims, hidden=job["hidden"], dropout=job["dropout"],
                          future_window=job["future_window"], options=options)
    torch.manual_seed(seed)
    model = build_method(method, config)
    extra = {"cl": {"buckets": CL_BUCKETS[task]}, "spcl": {"total_epochs": job["epochs"]}}
    plugins = [build_plugin(name, **{**extra.get(name, {}), **opts}) for name, opts in plugin_specs]
    fit = FitConfig(epochs=job["epochs"], batch_size=16, lr=job["lr"], patience=job["patience"], seed=seed,
                    drop=(0.0, 0.5, 0.5) if task == "paired" else (0.0, 0.0, 0.0))
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    resample = None
    if task == "paired":
        mappings = mappings_for(label_set)
        train_pools = {m: p["train"] for m, p in pools.items()}
        valid = pair(valid, train_pools, mappings, seed=10_000 + seed)
        first = pair(train, train_pools, mappings, seed=seed * 1000)
        resample = lambda epoch: first if epoch == 1 else pair(train, train_pools, mappings,  # noqa: E731
                                                               seed=seed * 1000 + epoch)
        train = first
    started = time.time()
    model, history = train_method(model, train, valid, label_set, fit, plugins, progress=False, resample=resample)
    result = {**job, "parameters": count_parameters(model), "causal": bool(model.causal) or job["future_window"] == 0,
              "epochs_run": len(history), "train_seconds": round(time.time() - started, 1),
              "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in history])), 3),
              "valid_weighted_f1": max(h["valid_weighted_f1"] for h in history), "scores": {}}
    if task == "paired":
        test_pools = {m: p["test"] for m, p in pools.items()}
        paired_test = pair(test, test_pools, mappings_for(label_set), seed=20_000 + seed)
        for name, rates in CONDITIONS.items():
            gold, pred, _ = predict_method(model, only(apply_missing(paired_test, rates, seed=30_000 + seed),
                                                       ("text", "audio", "face")))
            result["scores"][name] = scores(gold, pred, label_set)["weighted_f1"]
        timed = paired_test
    else:
        gold, pred, _ = predict_method(model, test)
        result["scores"]["test"] = scores(gold, pred, label_set)["weighted_f1"]
        timed = test
    times = []
    for dialogue in timed[:60]:
        t0 = time.perf_counter()
        predict_method(model, [dialogue], batch_size=1)
        times.append(1000 * (time.perf_counter() - t0))
    result["inference_ms_per_dialogue"] = round(statistics.median(times), 2)
    return result


def summarise(results: list[dict]) -> dict:
    """row -> task -> scores (mean, std per condition) and costs, for the main and causal variants."""
    summary: dict = {}
    for r in results:
        key = "causal_variant" if r["future_window"] == 0 else "main"
        summary.setdefault(r["row"], {}).setdefault(r["task"] if key == "main" else f"{r['task']}:causal", []).append(r)
    out: dict = {}
    for row, tasks in summary.items():
        out[row] = {}
        for task, runs in tasks.items():
            conditions = runs[0]["scores"].keys()
            values = {c: [100 * r["scores"][c] for r in runs] for c in conditions}
            out[row][task] = {
                "seeds": [r["seed"] for r in runs],
                "scores": {c: {"mean": round(statistics.mean(v), 2),
                               "std": round(statistics.stdev(v), 2) if len(v) > 1 else 0.0} for c, v in values.items()},
                "parameters": runs[0]["parameters"], "causal": runs[0]["causal"],
                "seconds_per_epoch": round(statistics.median(r["seconds_per_epoch"] for r in runs), 3),
                "inference_ms_per_dialogue": round(statistics.median(r["inference_ms_per_dialogue"] for r in runs), 2),
            }
    return out


def check_claims(summary: dict, tasks: list[str]) -> list[dict]:
    checked = []
    for row, claim, margin in CLAIMS:
        needed = ("iemocap", "meld") if "both corpora" in claim else ("paired",)
        backbone = "BALM" if row == "SPCL (BALM)" else "MultiDAG"
        if not all(t in tasks for t in needed) or row not in summary or backbone not in summary:
            checked.append({"row": row, "claim": claim, "shown": None})
            continue
        by, spread = margin(summary)
        checked.append({"row": row, "claim": claim, "shown": by > 0, "margin": by, "spread": spread,
                        "beyond_spread": abs(by) > spread})
    return checked


def markdown(summary: dict, claims: list[dict], tasks: list[str]) -> str:
    def cell(row: str, task: str, condition: str) -> str:
        s = summary.get(row, {}).get(task)
        if not s:
            return "-"
        v = s["scores"][condition]
        return f"{v['mean']:.2f} ± {v['std']:.2f}"

    head = ["method", "causal"]
    cols: list[tuple[str, str]] = []
    for task in tasks:
        if task == "paired":
            cols += [("paired", c) for c in ("shared 0.0", "shared 0.3", "shared 0.7", *IMBALANCED)]
        else:
            cols.append((task, "test"))
    head += [f"{t} {c}".replace(" test", "") for t, c in cols]
    causal_tasks = [t for t in tasks if t != "paired" and any(f"{t}:causal" in v for v in summary.values())]
    head += [f"causal variant ({', '.join(causal_tasks) or '-'})", "params", "s / epoch", "ms / dialogue",
             "paper's claim shown?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    claim_of = {c["row"]: c for c in claims}
    for row in ROWS:
        if row not in summary:
            continue
        first = next(iter(summary[row].values()))
        causal_cells = [cell(row, f"{t}:causal", "test") for t in tasks if t != "paired"
                        if f"{t}:causal" in summary[row]]
        claim = claim_of.get(row)
        if claim is None:
            claim_text = "-"
        elif claim["shown"] is None:
            claim_text = f"n/a: {claim['claim']}"
        else:
            within = "" if claim["beyond_spread"] else ", within the seeds' spread"
            claim_text = (f"{'yes' if claim['shown'] else 'no'} ({claim['margin']:+.2f}, spread "
                          f"{claim['spread']:.2f}{within}): {claim['claim']}")
        cells = [row, "yes" if first["causal"] else "no", *[cell(row, t, c) for t, c in cols],
                 " / ".join(causal_cells) if causal_cells else ("same" if first["causal"] else "-"),
                 f"{first['parameters']:,}", f"{first['seconds_per_epoch']:.2f}",
                 f"{first['inference_ms_per_dialogue']:.1f}", claim_text]
        lines.append("| " + " | ".join(cells) + " |")
    if "paired" in tasks:  # every missing rate, as the main table shows three of them
        names = list(CONDITIONS)
        lines += ["", "Paired set, test weighted F1 by missing rate (audio and face dropped per turn at the shared "
                  "rate; BALM's settings drop text too):", "",
                  "| method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for row in ROWS:
            if "paired" in summary.get(row, {}):
                lines.append(f"| {row} | " + " | ".join(cell(row, "paired", c) for c in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from merc.models.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iemocap-encoder", required=True, help="fine-tuned IEMOCAP text encoder (a run's encoder/)")
    parser.add_argument("--meld-encoder", default=None,
                        help="fine-tuned MELD text encoder (default: the bundled model's)")
    parser.add_argument("--tasks", nargs="+", default=["iemocap", "meld", "paired"],
                        choices=["iemocap", "meld", "paired"])
    parser.add_argument("--methods", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--no-causal-variants", action="store_true", help="skip the future_window=0 runs")
    parser.add_argument("--causal-tasks", nargs="+", default=["iemocap"], choices=["iemocap", "meld", "paired"],
                        help="tasks on which non-causal methods also train their causal variant (default: iemocap, "
                             "where the live gap is measured; each task adds a run per non-causal method and seed)")
    parser.add_argument("--reuse", type=Path, nargs="+", default=[],
                        help="earlier .runs.jsonl / .json outputs: matching runs are taken from them, not trained")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (1 thread each)")
    parser.add_argument("--data", help="data folder (default $MERC_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{dt.date.today()}-methods"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from merc.models.paths import default_model_dir

    def ref(value) -> str:  # a directory, as given relative to the project when it is inside it, or a hub id
        path = Path(value)
        if not path.exists():
            return str(value)
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)

    encoders = {"iemocap": ref(args.iemocap_encoder), "meld": ref(args.meld_encoder or default_model_dir() / "encoder")}
    jobs = []
    for task in args.tasks:
        for row in args.methods:
            method = ROWS[row][0]
            if method not in METHODS:
                raise SystemExit(f"unknown method {method}")
            windows = [None]
            module, attr = METHODS[method].split(":")
            if (not getattr(importlib.import_module(module), attr).causal and not args.no_causal_variants
                    and task in args.causal_tasks):
                windows.append(0)
            for window in windows:
                for seed in args.seeds:
                    jobs.append({"task": task, "row": row, "seed": seed, "future_window": window, "epochs": args.epochs,
                                 "patience": args.patience, "hidden": args.hidden, "dropout": args.dropout,
                                 "lr": args.lr, "encoders": encoders, "data_dir": args.data})
    earlier = load_runs(args.reuse)
    keyed = [(job_key(job), job) for job in jobs]
    results = [earlier[key] for key, _ in keyed if key in earlier]
    jobs = [job for key, job in keyed if key not in earlier]
    logging.info("%d runs reused from %s, %d to train", len(results), [str(p) for p in args.reuse], len(jobs))
    # Warm the caches once (embeddings, expert evidence) before the workers start.
    for task in sorted({job["task"] for job in jobs}):
        task_data(task, tuple(sorted(encoders.items())), args.data)
    started = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".runs.jsonl")  # one line per finished run, so a cut-off run keeps its results
    partial.write_text("".join(json.dumps(r, default=str) + "\n" for r in results))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, job): job for job in jobs}
        for n, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            results.append(r)
            with partial.open("a") as f:
                f.write(json.dumps(r, default=str) + "\n")
            main_score = next(iter(r["scores"].values()))
            logging.info("[%d/%d] %s %s seed %d window %s: %.2f (%.0f s)", n, len(jobs), r["task"], r["row"], r["seed"],
                         r["future_window"], 100 * main_score, r["train_seconds"])
    summary = summarise(results)
    claims = check_claims(summary, args.tasks)
    live = {}
    for task in [t for t in args.tasks if t != "paired"]:
        causal_best = max((_m(summary, row, task), row) for row in ("MultiDAG", "MultiDAG+CL") if row in summary)
        others = [(_m(summary, row, task), row) for row, tasks in summary.items()
                  if task in tasks and not tasks[task]["causal"]]
        if others:
            best = max(others)
            live[task] = {"live_row": causal_best[1], "live": causal_best[0], "best_non_causal_row": best[1],
                          "best_non_causal": best[0], "gap": round(best[0] - causal_best[0], 2),
                          "within_1": best[0] - causal_best[0] <= 1.0}
    result = {"benchmark": "methods", "date": str(dt.date.today()), "machine": platform.machine(),
              "cpus": os.cpu_count(), "seconds": round(time.time() - started, 1), "encoders": encoders,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out",)}, "summary": summary,
              "claims": claims, "live_vs_best_non_causal": live, "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summary, claims, args.tasks))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
