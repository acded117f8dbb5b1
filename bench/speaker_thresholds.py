"""The voice thresholds of each encoder (stream/turns/voice_profiles.py), chosen on validation
conversations, never on the benchmark's test dialogues.

1. Attribution: every gold turn of the recordings (back-channels left out, as the benchmark does)
   is cut from the audio and embedded; SpeakerAttributor then runs over each conversation as the
   live pipeline does (`assign` with the turn's length, then `revise`), for every joining
   threshold on a grid, short-turn threshold = join - d and merge threshold = join + m. Score:
   the share of turns labelled right under the best one-to-one mapping of labels (an unknown turn
   is wrong), averaged over recordings. The best (join, d, m) per encoder is reported, with the
   accuracy at the profile's current values.
2. Change across a pause: every pause the segmenter would judge by voice (bench/speaker_embedders.py's
   `pauses`, probe 0.75 s), with whether the speaker really changed there. Resemblyzer's thresholds
   were set on the first conversation benchmark; another encoder's are set to make the same
   share of same-voice pauses split (the quantile of its own same-voice similarities at which
   Resemblyzer's threshold sits), so encoders are compared by how many real changes they catch
   at equal false splits. The same rule gives the short-pause and continuous-speech thresholds.

Recordings (merc-synth, seed 1, MELD validation and EmoDB; see the results file's `recordings`):

    merc-synth --corpus meld --split valid --count 8 --max-turns 10 --min-turns 6 --speakers 2 \\
        --seed 1 --turn-taking conversational --backchannels 0.2 --loudness-range 10 \\
        --engines espeak,flite,festival --noise-kind pink --noise-snr 20 --out DEV/meld-2
    (the same with --speakers 3-4 --count 6 --out DEV/meld-3-4)
    merc-synth --corpus emodb --count 7 --speakers 2 --seed 1 --turn-taking conversational \\
        --loudness-range 10 --noise-kind pink --noise-snr 20 --out DEV/emodb

    python bench/speaker_thresholds.py DEV/meld-2 DEV/meld-3-4 DEV/emodb > RESULT.json

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from speaker_embedders import mapped_accuracy, pauses, percentiles
from tqdm import tqdm

from merc.stream.capture.audio import SAMPLE_RATE
from merc.stream.turns.speakers import SpeakerAttributor
from merc.stream.turns.voice_profiles import PROFILES, load_voice_embedder

JOINS = [round(float(t), 2) for t in np.arange(0.40, 0.861, 0.02)]
SHORT_DELTAS = (0.1, 0.15, 0.2)
MERGE_DELTAS = (0.08, 0.13, 0.18)
REFERENCE = "resemblyzer"
EARLIER = {"resemblyzer": (0.78, 0.60, 0.86), "campp": (0.62, 0.45, 0.75)}
"""(join, short join, merge) before this benchmark: Resemblyzer's from EmoDB and espeak-ng clips,
CAM++'s read off bench/results/2026-12-03-speaker-embedders.json."""


def gold_turns(recording: Path) -> list[dict[str, Any]]:
    """The recording's gold turns, back-channels left out (they are inside another's turn)."""
    manifest = json.loads((recording / "manifest.json").read_text())
    backchannels = {(b["speaker"], round(b["t_start"], 3)) for b in manifest.get("synth", {}).get("backchannels", [])}
    turns = [json.loads(line) for line in (recording / "gold.jsonl").read_text().splitlines() if line.strip()]
    return [t for t in turns if (t["speaker"], round(t["t_start"], 3)) not in backchannels]


def attribution(conversations: list[dict[str, Any]], join: float, short: float, merge: float) -> float:
    """Mean mapped accuracy over conversations of the live attributor (assign, then revise)."""
    return float(np.mean(attribution_scores(conversations, join, short, merge)))


def attribution_scores(conversations: list[dict[str, Any]], join: float, short: float, merge: float) -> list[float]:
    """Each conversation's mapped accuracy under the live attributor (assign, then revise)."""
    scores = []
    for conversation in conversations:
        attributor = SpeakerAttributor(threshold=join, short_threshold=short, merge_threshold=min(merge, 0.99))
        labels: list[str | None] = []
        for vector, seconds in zip(conversation["vectors"], conversation["seconds"], strict=True):
            labels.append(attributor.assign(vector, seconds=seconds))
            for turn, label in attributor.revise().items():
                labels[turn] = label
        scores.append(mapped_accuracy(conversation["speakers"], labels))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", type=Path, nargs="+", help="folders of merc-synth recordings")
    parser.add_argument("--embedders", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    embedders = {name: load_voice_embedder(name) for name in args.embedders}
    recordings = [r for folder in args.recordings for r in sorted(folder.iterdir()) if (r / "gold.jsonl").is_file()]
    result: dict[str, Any] = {"bench": "speaker_thresholds", "command": "python bench/speaker_thresholds.py "
                              + " ".join(str(p) for p in args.recordings),
                              "recordings": {str(f): len([r for r in recordings if r.parent == f])
                                             for f in args.recordings},
                              "attribution": {}, "change": {}}

    conversations: dict[str, list[dict[str, Any]]] = {name: [] for name in embedders}
    for recording in tqdm(recordings, desc="embedding gold turns", file=sys.stderr):
        audio, rate = sf.read(recording / "audio.wav", dtype="float32")
        assert rate == SAMPLE_RATE, recording
        turns = gold_turns(recording)
        for name, embedder in embedders.items():
            vectors, speakers, seconds = [], [], []
            for turn in turns:
                clip = audio[int(turn["t_start"] * SAMPLE_RATE):int(turn["t_end"] * SAMPLE_RATE)]
                vectors.append(embedder.embed(clip))
                speakers.append(turn["speaker"])
                seconds.append(turn["t_end"] - turn["t_start"])
            conversations[name].append({"recording": recording.name, "folder": str(recording.parent),
                                        "vectors": vectors, "speakers": speakers, "seconds": seconds})

    for name in embedders:
        profile = PROFILES[name]
        grid = {}
        for join in tqdm(JOINS, desc=f"{name} thresholds", file=sys.stderr):
            for d in SHORT_DELTAS:
                for m in MERGE_DELTAS:
                    grid[(join, d, m)] = attribution(conversations[name], join, join - d, join + m)
        best = max(grid, key=lambda k: (round(grid[k], 4), -abs(k[0] - profile.join)))
        by_join = {f"{j:.2f}": round(max(v for k, v in grid.items() if k[0] == j), 4) for j in JOINS}
        result["attribution"][name] = {
            "turns": sum(len(c["speakers"]) for c in conversations[name]),
            "best": {"join": best[0], "short_join": round(best[0] - best[1], 2),
                     "merge": round(min(best[0] + best[2], 0.99), 2), "mean_mapped_accuracy": round(grid[best], 4)},
            **{key: {"join": j, "short_join": sj, "merge": m,
                     "mean_mapped_accuracy": round(attribution(conversations[name], j, sj, m), 4)}
               for key, (j, sj, m) in (("earlier", EARLIER[name]),
                                       ("profile", (profile.join, profile.short_join, profile.merge)))},
            "best_by_join": by_join,
            "by_folder": {folder: {
                f"{label} {j:.2f}/{s:.2f}/{m:.2f}": round(float(np.mean(attribution_scores(
                    [c for c in conversations[name] if c["folder"] == folder], j, s, m))), 4)
                for label, (j, s, m) in (("best", (best[0], best[0] - best[1], best[0] + best[2])),
                                         ("earlier", EARLIER[name]),
                                         ("profile", (profile.join, profile.short_join, profile.merge)))}
                for folder in result["recordings"]}}

    rows = [row for folder in args.recordings for row in pauses(folder, 0.75)]
    sims: dict[str, list[float | None]] = {}
    for name, embedder in embedders.items():
        sims[name] = []
        for row in rows:
            a, b = embedder.embed(row["before"]), embedder.embed(row["after"])
            sims[name].append(None if a is None or b is None else float(np.dot(a, b)))
    scored = [i for i in range(len(rows)) if all(sims[n][i] is not None for n in embedders)]
    reference = PROFILES[REFERENCE]
    ref_same = np.array([sims[REFERENCE][i] for i in scored if not rows[i]["change"]]) \
        if REFERENCE in embedders else None
    for name in embedders:
        same = np.array([sims[name][i] for i in scored if not rows[i]["change"]])
        change = np.array([sims[name][i] for i in scored if rows[i]["change"]])
        entry: dict[str, Any] = {"pauses": len(scored), "changes": len(change), "no_change": len(same),
                                 "change_p10_50_90": percentiles(change), "no_change_p10_50_90": percentiles(same)}
        if ref_same is not None:
            matched = {}
            for field in ("change", "change_short", "change_window"):
                share = float(np.mean(ref_same < getattr(reference, field)))
                threshold = float(np.quantile(same, share)) if name != REFERENCE else getattr(reference, field)
                matched[field] = {"same_voice_split_share": round(share, 4), "threshold": round(threshold, 3)}
            entry["matched_to_" + REFERENCE] = matched
            t = matched["change"]["threshold"]
            entry["at_matched_change"] = {"recall": round(float(np.mean(change < t)), 4),
                                          "false_splits": int(np.sum(same < t))}
        profile = PROFILES[name]
        entry["at_profile_change"] = {"threshold": profile.change,
                                      "recall": round(float(np.mean(change < profile.change)), 4),
                                      "false_splits": int(np.sum(same < profile.change))}
        result["change"][name] = entry
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
