"""Per-turn speech recognition on this CPU: cost and accuracy of both backends, and of beam search.

Twenty English sentences of everyday conversation are voiced by espeak-ng (16 kHz). Prints one
JSON object and writes it to bench/results/<date>-asr.json (--out to change):

- latency: per backend, beam (1: greedy, 5) and thread count, wall-clock and CPU milliseconds
  per 3-s turn (each sentence cut or padded with silence to exactly 3.0 s), median and p90 over
  the 20 turns after one warm-up turn; CPU time counts this process's threads and excludes
  waiting for a core, which on a shared machine is the steadier figure;
- accuracy: word error rate (lowercase, punctuation removed) on the sentences at their natural
  length, per backend and beam, with the median ms per sentence (fewest threads);
- identical_transcripts: sentences on which the two backends' transcripts are identical, per beam.

    python bench/asr.py [--threads 1 2] [--model tiny.en] [--out PATH]

The transformers backend reads tiny.en converted into the cache (merc.stream.turns.whisper_convert) on
first use.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import ctranslate2
import faster_whisper
import jiwer
import numpy as np
import soundfile as sf
import torch
import transformers
from scipy.signal import resample_poly

from merc.stream.turns.transcribe import (
    FasterWhisperTranscriber,
    Transcriber,
    TransformersWhisperTranscriber,
)

SENTENCES = (
    "I can't believe you did that to me.",
    "We should meet again next week to talk about the project.",
    "That is the best news I have heard all year.",
    "Why didn't you tell me you were leaving?",
    "I'm really sorry, I didn't mean to hurt you.",
    "Could you please pass me the salt?",
    "This is absolutely ridiculous and I am not going to accept it.",
    "Thank you so much for coming to my birthday party.",
    "I have been waiting here for more than an hour.",
    "Do you want to go to the movies tonight?",
    "She said she would call me back but she never did.",
    "The weather is lovely today, let's go for a walk.",
    "I don't know what to say, this is such a surprise.",
    "Please stop shouting at me, I can hear you perfectly well.",
    "My flight was cancelled and now I have to stay another night.",
    "He finally got the job he always wanted.",
    "Are you sure this is the right address?",
    "I miss my family so much when I am away from home.",
    "Let's order some pizza and watch a film.",
    "It was the worst day of my entire life.",
)
TURN_SECONDS = 3.0
RATE = 16000


def speak(text: str) -> np.ndarray:
    """16 kHz mono float32 speech from espeak-ng (22.05 kHz WAV, resampled by 320/441)."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if rate != 22050:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected 22050")
    return resample_poly(audio, 320, 441).astype(np.float32)


def fit(audio: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    return np.pad(audio[:n], (0, max(0, n - len(audio))))


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def timed(transcriber: Transcriber, turns: list[np.ndarray]) -> tuple[dict, list[str]]:
    """Median/p90 ms per turn, and the 1-min load average around the run: other work on a shared
    machine shows up there (and costs multi-threaded PyTorch far more than one thread)."""
    load_before = os.getloadavg()[0]
    transcriber.transcribe(turns[0])  # warm-up
    wall, cpu, texts = [], [], []
    for audio in turns:
        c0, t0 = time.process_time(), time.perf_counter()
        texts.append(transcriber.transcribe(audio).text)
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    wall.sort()
    stats = {"wall_p50_ms": round(statistics.median(wall), 1),
             "wall_p90_ms": round(wall[int(0.9 * (len(wall) - 1))], 1),
             "cpu_p50_ms": round(statistics.median(cpu), 1), "n": len(wall),
             "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return stats, texts


def load_both(model: str, threads: int, beam: int) -> tuple[Transcriber, Transcriber]:
    """Both backends on the CPU (PyTorch's threads are set by the caller: a process-wide setting)."""
    return (FasterWhisperTranscriber.load(model, device="cpu", threads=threads, beam_size=beam),
            TransformersWhisperTranscriber.load(model, device="cpu", beam_size=beam))


def wer(texts: list[str]) -> float:
    return round(jiwer.wer([normalise(s) for s in SENTENCES], [normalise(t) for t in texts]), 4)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to time")
    parser.add_argument("--model", default="tiny.en", help="Whisper model for both backends")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: bench/results/<date>-asr.json)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    natural = [speak(s) for s in SENTENCES]
    turns = [fit(a, TURN_SECONDS) for a in natural]

    latency = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for beam in (1, 5):
            for transcriber in load_both(args.model, threads, beam):
                latency[f"{transcriber.name} beam={beam} threads={threads}"], _ = timed(transcriber, turns)

    threads = min(args.threads)  # words do not depend on threads; the fewest contend least for cores
    torch.set_num_threads(threads)
    accuracy, texts = {}, {}
    for beam in (1, 5):
        for transcriber in load_both(args.model, threads, beam):
            key = f"{transcriber.name} beam={beam}"
            stats, texts[key] = timed(transcriber, natural)
            accuracy[f"{key} threads={threads}"] = {"wer": wer(texts[key]), "wall_p50_ms": stats["wall_p50_ms"],
                                                    "cpu_p50_ms": stats["cpu_p50_ms"]}
    fw, hf = sorted({key.rsplit(" beam=", 1)[0] for key in texts})  # the two backends' names
    agreement = {f"beam={beam}": sum(x == y for x, y in zip(texts[f"{fw} beam={beam}"], texts[f"{hf} beam={beam}"],
                                                            strict=True))
                 for beam in (1, 5)}

    result = {
        "benchmark": "asr", "date": datetime.date.today().isoformat(), "model": args.model,
        "turn_seconds": TURN_SECONDS, "sentences": len(SENTENCES),
        "sentence_seconds": [round(len(a) / RATE, 2) for a in natural],
        "latency_per_3s_turn": latency, "accuracy_natural_length": accuracy,
        "identical_transcripts": {"backends": [fw, hf], "of": len(SENTENCES), **agreement},
        "transcripts": {name: dict(zip(SENTENCES, t, strict=True)) for name, t in texts.items()},
        "versions": {"ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__},
        "cpu": cpu_model(), "cpus": os.cpu_count(),
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or Path(__file__).resolve().parent / "results" / f"{result['date']}-asr.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
