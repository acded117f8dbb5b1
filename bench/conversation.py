"""The live front end on realistic conversations: short gaps, overlaps, several voices, noise.

Voices MELD test dialogues with merc-synth (espeak-ng voice variants; --pause 0.25 0.4, overlaps,
pink noise at --noise-snr dB), replays each recording through the live pipeline (a separate
`merc-replay` process per recording, as a user runs it) and scores the turns against the gold:
turn counts, speaker attribution accuracy (merc-eval's scorer), diarization error rate and its
speaker-confusion part (pyannote.metrics), WER of the transcripts (jiwer) and emotion weighted F1.
Prints one JSON object.

    python bench/conversation.py --count 8 --out-dir /tmp/conv --label after

To compare another checkout of the pipeline on the same recordings, give its replay module and
import path (the recordings are synthesised once, into --out-dir, and reused):

    python bench/conversation.py --out-dir /tmp/conv --label before \\
        --replay-module merc.stream.replay_cli --pythonpath OTHER_TREE
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from merc.stream.recordings.recording import open_recording, read_gold
from merc.stream.recordings.scoring import read_events, score_replay


def synthesise(args: argparse.Namespace) -> list[Path]:
    """The benchmark's recordings, made once into --out-dir (deterministic given --seed)."""
    recordings = args.out_dir / "recordings"
    if not recordings.is_dir():
        command = [sys.executable, "-m", "merc.cli.synth", "--corpus", "meld", "--split", "test",
                   "--count", str(args.count), "--max-turns", str(args.max_turns), "--seed", str(args.seed),
                   "--pause", "0.25", "0.4", "--overlap-prob", str(args.overlap_prob),
                   "--noise-snr", str(args.noise_snr), "--out", str(recordings)]
        if args.data_dir:
            command += ["--data-dir", str(args.data_dir)]
        subprocess.run(command, check=True)
    return sorted(p for p in recordings.iterdir() if (p / "manifest.json").is_file())


def diarization(gold: list[dict], events: list[dict]) -> dict[str, float]:
    """Diarization error rate and its parts, from the gold and predicted turn spans (pyannote.metrics)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for i, turn in enumerate(gold):
        reference[Segment(turn["t_start"], turn["t_end"]), i] = turn["speaker"]
    for i, turn in enumerate(e for e in events if e.get("type") == "turn"):
        hypothesis[Segment(turn["t_start"], turn["t_end"]), i] = turn.get("speaker") or "unknown"
    parts = DiarizationErrorRate(collar=0.25)(reference, hypothesis, detailed=True)
    total = parts["total"] or 1.0
    return {"der": parts["diarization error rate"], "confusion": parts["confusion"] / total,
            "missed": parts["missed detection"] / total, "false_alarm": parts["false alarm"] / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="recordings and event files go here")
    parser.add_argument("--label", default="current", help="names this run's event files")
    parser.add_argument("--count", type=int, default=8, help="MELD test dialogues to voice")
    parser.add_argument("--max-turns", type=int, default=12, help="turns per dialogue at most")
    parser.add_argument("--overlap-prob", type=float, default=0.2, help="probability a turn overlaps the last")
    parser.add_argument("--noise-snr", type=float, default=20.0, help="pink noise at this SNR (dB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="corpus location (default: as merc-synth)")
    parser.add_argument("--replay-module", default="merc.cli.replay", help="the merc-replay module to run")
    parser.add_argument("--pythonpath", default=None, help="PYTHONPATH for the replay (another checkout)")
    args = parser.parse_args(argv)

    recordings = synthesise(args)
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    rows = []
    for recording in recordings:
        events_path = args.out_dir / "events" / args.label / f"{recording.name}.jsonl"
        events_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", args.replay_module, str(recording), "--speed", "max",
                        "--out", str(events_path)], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        gold = read_gold(open_recording(recording))
        events = read_events(events_path)
        scores = score_replay(gold, events).as_dict()
        del scores["speaker_mapping"]
        rows.append({"recording": recording.name, "seconds": round(time.perf_counter() - started, 1),
                     **scores, **diarization(gold, events)})
        print(f"{recording.name}: {rows[-1]}", file=sys.stderr)

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.fmean(values), 4) if values else None

    out = {
        "benchmark": "conversation",
        "label": args.label,
        "command": "python bench/conversation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "synth": {"count": args.count, "max_turns": args.max_turns, "pause_s": [0.25, 0.4],
                  "overlap_prob": args.overlap_prob, "noise_snr_db": args.noise_snr, "seed": args.seed},
        "totals": {"gold_turns": sum(r["gold_turns"] for r in rows),
                   "predicted_turns": sum(r["predicted_turns"] for r in rows)},
        "means": {key: mean(key) for key in ("speaker_accuracy", "der", "confusion", "missed", "false_alarm",
                                             "wer", "emotion_weighted_f1")},
        "recordings": rows,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
