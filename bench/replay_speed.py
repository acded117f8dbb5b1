"""How fast `merc-replay --speed max` runs, under several configurations measured in one run.

Each recording is replayed once per configuration, the configurations alternating recording by
recording (so the machine's load falls on all of them alike), each replay its own process as a
user runs it. The figure is merc-replay's own: seconds of audio per second of processing, model
loading excluded ("N turns from A s of audio in P s (Xx real time)"). Reported per configuration:
the median over recordings and over repeats, the pooled speed (all audio / all processing), and
each configuration's ratio to the first (per recording, then the median).

    python bench/replay_speed.py RECORDINGS --repeats 2 \\
        --config "resemblyzer-2threads=--speaker-embedder resemblyzer --torch-threads 0" \\
        --config "resemblyzer=--speaker-embedder resemblyzer" --config "campp=--speaker-embedder campp"

RECORDINGS is a folder of recordings (e.g. a condition of bench/conversation.py). Prints one JSON
object.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPORT = re.compile(r"(\d+) turns from ([\d.]+) s of audio in ([\d.]+) s")


def replay(recording: Path, extra: list[str]) -> dict[str, float]:
    """One merc-replay process; its turns, audio seconds and processing seconds."""
    out = Path(os.devnull)
    command = [sys.executable, "-m", "merc.cli.replay", str(recording), "--speed", "max", "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = REPORT.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{recording}: merc-replay failed ({done.returncode}): {done.stderr[-2000:]}")
    turns, audio, seconds = found.groups()
    return {"turns": int(turns), "audio_s": float(audio), "processing_s": float(seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", type=Path, help="folder of recordings (each with manifest.json)")
    parser.add_argument("--config", action="append", required=True, metavar="NAME=ARGS",
                        help="a configuration: its name and merc-replay arguments (the first is the reference)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--count", type=int, default=None, help="the first N recordings only")
    args = parser.parse_args(argv)
    configs = {}
    for spec in args.config:
        name, _, rest = spec.partition("=")
        configs[name] = shlex.split(rest)
    recordings = sorted(p for p in args.recordings.iterdir() if (p / "manifest.json").is_file())[:args.count]
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tqdm(total=len(recordings) * len(configs) * args.repeats, desc="replays", file=sys.stderr) as bar:
        for repeat in range(args.repeats):
            for recording in recordings:
                for name, extra in configs.items():
                    row = replay(recording, extra)
                    runs.append({"config": name, "recording": recording.name, "repeat": repeat, **row,
                                 "speed_x": row["audio_s"] / row["processing_s"]})
                    bar.update()
    reference = next(iter(configs))
    summary = {}
    for name in configs:
        mine = [r for r in runs if r["config"] == name]
        pooled = sum(r["audio_s"] for r in mine) / sum(r["processing_s"] for r in mine)
        ratios = [r["speed_x"] / ref["speed_x"] for r in mine for ref in runs
                  if ref["config"] == reference and ref["recording"] == r["recording"] and ref["repeat"] == r["repeat"]]
        summary[name] = {"args": configs[name], "replays": len(mine),
                         "speed_x_median": round(statistics.median(r["speed_x"] for r in mine), 2),
                         "speed_x_min": round(min(r["speed_x"] for r in mine), 2),
                         "speed_x_pooled": round(pooled, 2),
                         f"ratio_to_{reference}_median": round(statistics.median(ratios), 3)}
    print(json.dumps({"bench": "replay_speed", "command": "python bench/replay_speed.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])), "cpus": os.cpu_count(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.perf_counter() - started, 1),
        "recordings": len(recordings), "summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
