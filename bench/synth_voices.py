"""Which espeak-ng voices merc-synth should use: intelligibility to Whisper tiny.en and separation
for the speaker encoder, per candidate voice.

For each voice (name:pitch:speed), speaks our own test sentences (the example dialogue and the
fixtures' dialogues), transcribes them with the live ASR (faster-whisper tiny.en, full window,
beam 5) and reports the WER; then the Resemblyzer centroid cosine between every pair of voices
(the attributor joins a speaker at >= 0.78). Prints one JSON object:
    python bench/synth_voices.py > bench/results/DATE-synth-voices.json
    python bench/synth_voices.py --voices en-us+sandro:35:150 en-us:50:160 ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from speech import say  # noqa: E402  (the tests' espeak-ng helper)

from merc.stream.recordings.scoring import normalise_text  # noqa: E402
from merc.stream.recordings.synth import FEMALE_VOICES, MALE_VOICES  # noqa: E402
from merc.stream.turns.speakers import SpeakerEmbedder  # noqa: E402
from merc.stream.turns.transcribe import FasterWhisperTranscriber  # noqa: E402

# The voices merc-synth used first (accent variants at 160-180 wpm), for comparison.
EARLIER = ["en-029+Marco:60:165", "en-029+david:45:175", "en-gb-scotland+f1:45:170", "en-us-nyc+belinda:70:170",
           "en-us+grandma:45:170", "en-us:50:160"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", nargs="*", default=None,
                        help="name:pitch:speed (default: merc-synth's voices and some earlier candidates)")
    parser.add_argument("--sentences", type=int, default=14)
    args = parser.parse_args()
    voices = args.voices or [f"{v.name}:{v.pitch}:{v.speed}" for v in MALE_VOICES + FEMALE_VOICES] + EARLIER
    texts = []
    for path in (ROOT / "models/data/examples/example_dialogue.jsonl",
                 ROOT / "tests/fixtures/recordings/dialogues.jsonl"):
        texts += [u["text"] for line in path.read_text().splitlines() for u in json.loads(line)["utterances"]]
    texts = texts[:args.sentences]
    asr = FasterWhisperTranscriber.load("tiny.en", device="cpu")
    embedder = SpeakerEmbedder()
    rows, centroids = [], []
    for voice in voices:
        name, pitch, speed = voice.split(":")
        audio = [say(t, name, int(pitch), int(speed)) for t in texts]
        hyps = [normalise_text(asr.transcribe(a).text) for a in audio]
        wer = jiwer.wer([normalise_text(t) for t in texts], hyps)
        embeddings = [e for e in (embedder.embed(a) for a in audio) if e is not None]
        centroid = np.mean(embeddings, axis=0)
        centroids.append(centroid / np.linalg.norm(centroid))
        rows.append({"voice": voice, "wer": round(wer, 4), "in_merc_synth": voice in voices[:6] and not args.voices})
    similarity = np.stack(centroids) @ np.stack(centroids).T
    print(json.dumps({"bench": "synth_voices", "sentences": len(texts), "asr": asr.name, "voices": rows,
                      "centroid_cosine": [[round(float(x), 3) for x in row] for row in similarity]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
