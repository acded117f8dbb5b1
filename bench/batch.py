"""merc-batch's throughput with 1 and 2 workers (or any list), measured in one run.

The set: the bundled example recording and the test fixtures (tests/fixtures/recordings/*), each
copied --copies times into a temporary folder. Every configuration replays the whole set with
`merc-batch SET --out OUT --workers N --cpus-per-worker C`, a process of its own into a fresh
output folder, one configuration after the other. Reported per configuration:

- wall_s: the whole command, Ray's start and the workers' model loading included;
- recordings_per_hour and audio_s_per_wall_s on that wall time;
- the per-recording cost in the worker (merc-replay's own figure: processing seconds, model
  loading excluded): median, min, max, and the median speed (audio s per processing s);
- startup_s: wall time not spent replaying (wall_s - processing seconds / workers): Ray, model loading;
- projection: recordings per hour of a cluster of W workers, W x 3600 / median per-recording cost,
  from the 1-CPU-per-worker configuration with the most workers on this machine (each worker with
  a CPU of its own, as on a cluster; start-up and the driver's writing left out).

    python bench/batch.py --copies 4 --workers 1 2

Prints one JSON object (no paths of this machine in it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "recordings"
PROJECTED_WORKERS = (1, 2, 8, 32, 128)


def build_set(folder: Path, copies: int) -> list[str]:
    """The recordings, copied `copies` times into `folder`; their names."""
    from merc.stream.recordings.recording import example_recording

    sources = [example_recording(), *sorted(p.parent for p in FIXTURES.glob("*/manifest.json"))]
    names = []
    for copy in range(copies):
        for source in sources:
            name = f"{source.name}-{copy}"
            shutil.copytree(source, folder / name)
            names.append(name)
    return names


def run_config(recordings: Path, out: Path, workers: int, cpus: int, ray_temp: Path) -> dict[str, Any]:
    """One merc-batch process over the set; its wall time and summary.json."""
    command = [sys.executable, "-m", "merc.cli.batch", str(recordings), "--out", str(out), "--workers", str(workers),
               "--cpus-per-worker", str(cpus), "--no-progress", "--ray-temp-dir", str(ray_temp)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"merc-batch failed ({done.returncode}): {done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["recordings"]
    costs = [r["processing_seconds"] for r in rows]
    audio = sum(r["audio_seconds"] for r in rows)
    return {"workers": workers, "cpus_per_worker": cpus, "recordings": len(rows),
            "turns": sum(r["turns"] for r in rows), "audio_s": round(audio, 1), "wall_s": round(wall, 1),
            "recordings_per_hour": round(len(rows) * 3600 / wall, 1),
            "audio_s_per_wall_s": round(audio / wall, 2),
            "cost_s_median": round(statistics.median(costs), 2), "cost_s_min": round(min(costs), 2),
            "cost_s_max": round(max(costs), 2),
            "speed_x_median": round(statistics.median(r["audio_seconds"] / r["processing_seconds"] for r in rows), 2),
            "startup_s": round(wall - sum(costs) / workers, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="copies of each recording in the set")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure, in order")
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="merc-bench-batch-", dir="/tmp") as tmp:
        folder = Path(tmp)
        names = build_set(folder / "set", args.copies)
        configs = [run_config(folder / "set", folder / f"out-{n}", n, args.cpus_per_worker, folder / "ray")
                   for n in args.workers]
    basis = max(configs, key=lambda c: c["workers"])
    per_worker_hour = 3600 / basis["cost_s_median"]
    mean_audio = basis["audio_s"] / basis["recordings"]
    print(json.dumps({
        "bench": "batch",
        "command": "python bench/batch.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.perf_counter() - started, 1),
        "set": {"copies": args.copies, "recordings": len(names),
                "sources": sorted({name.rsplit("-", 1)[0] for name in names})},
        "configs": configs,
        "projection": {"basis": f"{basis['workers']} workers x {basis['cpus_per_worker']} CPU on this machine: median "
                                f"{basis['cost_s_median']} s per recording of {mean_audio:.1f} s audio (mean)",
                       "recordings_per_hour_per_worker": round(per_worker_hour, 1),
                       "cluster_recordings_per_hour": {str(w): round(w * per_worker_hour) for w in PROJECTED_WORKERS}},
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
