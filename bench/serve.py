"""merc-serve under load: how many real-time sessions one server keeps within an end-of-speech ->
event latency, the micro-batching window, and the gain over one process per session.

Each session is a client (merc.clients.media_client) streaming a recording at real time, as a
microphone would, all clients starting together; recording i goes to client i (round robin),
its first --seconds. A turn's latency is measured at the client: the `turn` event's arrival
minus its `speech_end` (both wall clock on this machine), so it holds the end-of-turn wait,
every stage, batching waits and delivery.

Configurations, run one after the other in one run:
- shared: one `merc-serve` for all N sessions, for each --windows value (ms of micro-batching);
- separate: N `merc-serve` processes of one session each (one process per session, models
  loaded N times, each with the default threads: what running merc-live per room amounts to).

For each: p50/p95/max latency over all turns, turns, dropped audio, and the batches formed
(mean requests per ASR batch, from /metrics). `capacity` is the largest N whose p95 <= --target-ms;
`gain` compares shared (best window) with separate at each N and in capacity.

    python bench/serve.py --recordings DIR --sessions 1 2 3 4 --windows 0 20 50

DIR holds recordings (folders with audio.wav), e.g. the conversation benchmark's; default: the
bundled example and the test fixtures. Prints one JSON object (no paths of this machine in it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "recordings"


def recordings(folder: Path | None, seconds: float) -> list[tuple[str, np.ndarray]]:
    from merc.clients.media_client import read_wav
    from merc.stream.recordings.recording import example_recording

    if folder is None:
        dirs = [example_recording(), *sorted(p.parent for p in FIXTURES.glob("*/manifest.json"))]
    else:
        dirs = sorted(p.parent for p in folder.rglob("audio.wav"))
    if not dirs:
        raise SystemExit(f"bench/serve.py: no recordings (audio.wav) under {folder}")
    return [(d.name, read_wav(d / "audio.wav")[: int(seconds * 16000)]) for d in dirs]


class Server:
    """A `merc-serve` process on a free port."""

    def __init__(self, window_ms: float, max_sessions: int, pythonpath: str | None, extra: list[str]) -> None:
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "merc.cli.serve", "--port", "0", "--max-sessions", str(max_sessions),
             "--batch-window-ms", str(window_ms), "--max-queued-seconds", "60", *extra],
            stderr=subprocess.PIPE, text=True, env=env)
        self.ws = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(r"media clients connect to (ws://\S+?)/session;", line)
            if found:
                self.ws = found.group(1)
                self._ready.set()

    def wait(self) -> Server:
        if not self._ready.wait(300):
            raise SystemExit("bench/serve.py: merc-serve did not start")
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(self.ws.replace("ws://", "http://") + "/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def run_clients(urls: list[str], audio: list[np.ndarray]) -> list[list[dict[str, Any]]]:
    from merc.clients.media_client import stream_samples

    async with asyncio.timeout(max(len(a) for a in audio) / 16000 + 300):
        clients = (stream_samples(url + "/session", a, 1.0) for url, a in zip(urls, audio, strict=True))
        return list(await asyncio.gather(*clients))


def summarise(sessions: list[list[dict[str, Any]]]) -> dict[str, Any]:
    latencies = [1000 * (e["received"] - e["speech_end"]) for events in sessions for e in events
                 if e["type"] == "turn" and e.get("speech_end")]
    dropped = [e for events in sessions for e in events if e.get("code") == "audio_dropped"]
    failed = [e for events in sessions for e in events if e.get("code") == "turn_failed"]
    ordered = sorted(latencies)
    return {"turns": len(latencies), "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
            "p95_ms": round(float(np.percentile(ordered, 95)), 1) if ordered else None,
            "max_ms": round(max(ordered), 1) if ordered else None,
            "audio_dropped_notices": len(dropped), "turns_failed": len(failed)}


def batch_means(metrics: str) -> dict[str, float]:
    """Mean requests per batch of each model, from merc-serve's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "merc_batch_size":
            continue
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if sample.name.endswith("_sum"):
                sums[model] = sample.value
            elif sample.name.endswith("_count"):
                counts[model] = sample.value
    return {m: round(sums[m] / counts[m], 2) for m in sums if counts.get(m)}


def shared_run(n: int, window: float, audio: list[np.ndarray], pythonpath: str | None,
               extra: list[str]) -> dict[str, Any]:
    server = Server(window, n, pythonpath, extra).wait()
    try:
        started = time.perf_counter()
        sessions = asyncio.run(run_clients([server.ws] * n, audio[:n]))
        result = summarise(sessions) | {"wall_s": round(time.perf_counter() - started, 1)}
        metrics = server.metrics()
        result["mean_batch"] = batch_means(metrics)
        shed = re.search(r"^merc_partials_shed ([0-9.e+]+)$", metrics, re.M)
        result["partials_shed"] = int(float(shed.group(1))) if shed else None
        result["partials"] = sum(e["type"] == "turn.partial" for events in sessions for e in events)
    finally:
        server.stop()
    return result


def separate_run(n: int, audio: list[np.ndarray], pythonpath: str | None, extra: list[str]) -> dict[str, Any]:
    servers = [Server(0.0, 1, pythonpath, extra) for _ in range(n)]
    try:
        for server in servers:
            server.wait()
        started = time.perf_counter()
        sessions = asyncio.run(run_clients([s.ws for s in servers], audio[:n]))
        return summarise(sessions) | {"wall_s": round(time.perf_counter() - started, 1)}
    finally:
        for server in servers:
            server.stop()


def capacity(results: dict[int, dict[str, Any]], target_ms: float) -> int:
    """The largest N whose p95 is within the target (every smaller N too)."""
    best = 0
    for n in sorted(results):
        p95 = results[n]["p95_ms"]
        if p95 is None or p95 > target_ms or results[n]["turns_failed"]:
            break
        best = n
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=Path, default=None, help="folder of recordings (default: fixtures)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of each recording streamed")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--windows", type=float, nargs="+", default=[0.0, 20.0, 50.0],
                        help="micro-batching windows (ms) of the shared server")
    parser.add_argument("--no-separate", action="store_true", help="skip one-process-per-session")
    parser.add_argument("--target-ms", type=float, default=1500.0)
    parser.add_argument("--pythonpath", default=None, help="a snapshot of the code to run the servers from")
    parser.add_argument("--server-args", default="", help="more merc-serve options for every server, e.g. "
                                                          "'--partials 0' or '--asr-window turn'")
    args = parser.parse_args()

    sets = recordings(args.recordings, args.seconds)
    audio = [sets[i % len(sets)][1] for i in range(max(args.sessions))]
    extra = shlex.split(args.server_args)
    out: dict[str, Any] = {"benchmark": "serve", "cores": os.cpu_count(), "seconds_per_session": args.seconds,
                           "server_args": extra,
                           "recordings": [name for name, _ in sets], "target_p95_ms": args.target_ms,
                           "shared": {}, "separate": {}}
    for window in args.windows:
        runs: dict[int, dict[str, Any]] = {}
        for n in sorted(args.sessions):
            runs[n] = shared_run(n, window, audio, args.pythonpath, extra)
            print(f"shared window {window:g} ms, {n} sessions: {json.dumps(runs[n])}", file=sys.stderr, flush=True)
        out["shared"][f"{window:g}"] = {"runs": runs, "capacity": capacity(runs, args.target_ms)}
    if not args.no_separate:
        runs = {}
        for n in sorted(args.sessions):
            runs[n] = separate_run(n, audio, args.pythonpath, extra)
            print(f"separate, {n} sessions: {json.dumps(runs[n])}", file=sys.stderr, flush=True)
        out["separate"] = {"runs": runs, "capacity": capacity(runs, args.target_ms)}
        best = min(out["shared"], key=lambda w: (-out["shared"][w]["capacity"],
                                                 out["shared"][w]["runs"][max(args.sessions)]["p95_ms"] or 1e9))
        shared_runs = out["shared"][best]["runs"]
        out["gain"] = {"window_ms": float(best), "capacity_shared": out["shared"][best]["capacity"],
                       "capacity_separate": out["separate"]["capacity"],
                       "p95_ratio_separate_over_shared": {
                           n: round(runs[n]["p95_ms"] / shared_runs[n]["p95_ms"], 2)
                           for n in runs if runs[n]["p95_ms"] and shared_runs[n]["p95_ms"]}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
