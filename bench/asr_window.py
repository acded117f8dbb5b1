"""faster-whisper tiny.en: Whisper's full 30-s encoder window against the short "turn" window
(the turn plus 3 s, at least 10 s), greedy and beam 5, on espeak-ng speech of our own sentences
(the example dialogue and the test fixtures' dialogues) in the synthetic voices merc-synth uses.

Prints one JSON object per configuration (WER over all sentences, median and max ms per turn):
    python bench/asr_window.py > bench/results/DATE-asr-window.jsonl
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from speech import say  # noqa: E402  (the tests' espeak-ng helper)

from merc.stream.recordings.scoring import normalise_text  # noqa: E402
from merc.stream.recordings.synth import FEMALE_VOICES, MALE_VOICES  # noqa: E402
from merc.stream.turns.transcribe import FasterWhisperTranscriber  # noqa: E402


def main() -> int:
    texts = []
    for path in (ROOT / "models/data/examples/example_dialogue.jsonl",
                 ROOT / "tests/fixtures/recordings/dialogues.jsonl"):
        texts += [u["text"] for line in path.read_text().splitlines() for u in json.loads(line)["utterances"]]
    voices = [v for pair in zip(MALE_VOICES, FEMALE_VOICES, strict=True) for v in pair]
    audio = [say(t, v.name, v.pitch, v.speed) for t, v in zip(texts, voices * len(texts), strict=False)]
    references = [normalise_text(t) for t in texts]
    for window in ("full", "turn"):
        for beam in (1, 5):
            asr = FasterWhisperTranscriber.load("tiny.en", device="cpu", beam_size=beam, window=window)
            asr.transcribe(audio[0])  # warm-up
            results = [asr.transcribe(a) for a in audio]
            print(json.dumps({
                "bench": "asr_window", "window": window, "beam": beam, "turns": len(audio),
                "median_turn_s": round(float(np.median([len(a) / 16000 for a in audio])), 2),
                "wer": round(jiwer.wer(references, [normalise_text(r.text) for r in results]), 4),
                "median_ms": round(1000 * float(np.median([r.seconds for r in results])), 1),
                "max_ms": round(1000 * max(r.seconds for r in results), 1),
                "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
