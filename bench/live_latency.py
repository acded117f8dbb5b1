"""Live pipeline latency and throughput on synthetic conversations (espeak-ng voices, MELD test text).

1. Synthesises N MELD test dialogues into recordings (merc-synth's library), unless --recordings
   points at existing ones.
2. Replays each at real time through the live pipeline with the WebSocket server on, and a
   client on loopback that notes when each turn arrives. Per turn: end of speech -> event
   received, and the same without the silence wait that ends a turn (the segmenter's decision
   time minus the end of speech), plus each stage's time.
3. Replays them again as fast as possible (--speed max): audio seconds per wall second.
4. Scores every real-time replay against its gold turns (speaker accuracy, WER, emotion wF1).

Prints one JSON object (and writes it to --out). Run with the machine otherwise idle:
    python bench/live_latency.py --count 6 --out bench/results/DATE-live-latency.json
    python bench/live_latency.py --count 6 --asr-window turn --out bench/results/DATE-live-latency-turn-window.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np


def synthesise(count: int, out: Path, data_dir: str | None, seed: int) -> list[Path]:
    from merc.models.data.corpora import load_corpus, resolve_data_dir
    from merc.stream.recordings.synth import (
        Espeak,
        SynthConfig,
        generate_recordings,
        select_dialogues,
    )

    dialogues = load_corpus("meld", resolve_data_dir(data_dir), "test")
    chosen = select_dialogues([d for d in dialogues if len(d.utterances) >= 4], count=count)
    return list(generate_recordings(chosen, out, SynthConfig(seed=seed), Espeak.find()))


class Receiver:
    """A WebSocket client on its own thread noting when each turn event arrives (wall clock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrivals: dict[int, tuple[float, dict]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._connected = threading.Event()

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url) as ws:
            self._connected.set()
            while not self._stop.is_set():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                now = time.time()
                event = json.loads(message)
                if event["type"] == "turn":
                    self.arrivals[event["seq"]] = (now, event)

    def start(self) -> None:
        self._thread.start()
        self._connected.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=6, help="MELD test dialogues to synthesise")
    parser.add_argument("--recordings", type=Path, default=None, help="replay these recordings (a folder of them)")
    parser.add_argument("--data-dir", default=None, help="corpus location (default: $MERC_DATA or ../shared/data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--asr", default="faster-whisper")
    parser.add_argument("--asr-model", default="tiny.en")
    parser.add_argument("--asr-window", choices=("full", "turn"), default="full",
                        help="faster-whisper's encoder window (see merc-replay --help)")
    parser.add_argument("--no-max", action="store_true", help="skip the --speed max pass")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    from merc.cli.common import open_session
    from merc.models.paths import default_model_dir
    from merc.stream.recordings.recording import open_recording, read_gold
    from merc.stream.recordings.replay import replay_recording
    from merc.stream.recordings.scoring import score_replay
    from merc.stream.session.build import hello_body
    from merc.stream.session.options import AsrOptions, SessionOptions, SpeakerOptions, TrackerOptions
    from merc.stream.wire.events import EventBus
    from merc.stream.wire.server import EventServer

    with tempfile.TemporaryDirectory() as tmp:
        if args.recordings:
            dirs = sorted(p.parent for p in args.recordings.glob("*/manifest.json"))
        else:
            dirs = synthesise(args.count, Path(tmp), args.data_dir, args.seed)
        options = SessionOptions(tracker=TrackerOptions(device="cpu"),
                                 asr=AsrOptions(backend=args.asr, model=args.asr_model, device="cpu",
                                                window=args.asr_window),
                                 speakers=SpeakerOptions(device="cpu"))
        processor = open_session(options, EventBus("bench")).processor
        tracker = processor.tracker
        per_turn, scores, realtime = [], [], []
        for directory in dirs:
            recording = open_recording(directory)
            bus = EventBus(f"bench-{recording.name}")
            server = EventServer(bus, hello_body(tracker, options), port=0)
            server.start()
            receiver = Receiver(server.url)
            receiver.start()
            result = replay_recording(recording, processor, bus, speed=1.0)
            time.sleep(0.3)
            receiver.stop()
            server.stop()
            realtime.append(result.speed)
            events = bus.events()
            for arrived, event in receiver.arrivals.values():
                t = event["timings_ms"]
                e2e = 1000 * (arrived - event["speech_end"])
                per_turn.append({"e2e_ms": e2e, "after_silence_ms": e2e - t["segmentation"], **t,
                                 "audio_s": event["t_end"] - event["t_start"]})
            scores.append(score_replay(read_gold(recording), events).as_dict())
            print(f"{recording.name}: {result.turns} turns, {len(receiver.arrivals)} received", file=sys.stderr)
        fast = []
        if not args.no_max:
            for directory in dirs:
                result = replay_recording(open_recording(directory), processor, EventBus("bench-max"), speed=None)
                fast.append({"audio_s": result.audio_seconds, "wall_s": result.wall_seconds})

    def stat(key: str) -> dict:
        values = [t[key] for t in per_turn]
        return {"p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1)}

    audio_total = sum(f["audio_s"] for f in fast)
    wall_total = sum(f["wall_s"] for f in fast)
    report = {
        "bench": "live_latency", "date": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "asr": f"{args.asr}:{args.asr_model}", "asr_window": args.asr_window, "model": str(default_model_dir().name),
        "recordings": len(dirs), "turns": len(per_turn),
        "end_of_speech_to_event_ms": stat("e2e_ms"),
        "excluding_silence_wait_ms": stat("after_silence_ms"),
        "silence_wait_ms": stat("segmentation"),
        "stages_ms": {k: stat(k) for k in ("asr", "speaker", "features", "graph")},
        "speed_max_x_realtime": round(audio_total / wall_total, 2) if wall_total else None,
        "scores_mean": {k: round(float(np.mean([s[k] for s in scores if s[k] is not None])), 4)
                        for k in ("speaker_accuracy", "wer", "emotion_weighted_f1")},
        "turn_counts": {"gold": sum(s["gold_turns"] for s in scores),
                        "predicted": sum(s["predicted_turns"] for s in scores)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
