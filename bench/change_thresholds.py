"""The segmenter's voice-change thresholds of each encoder, chosen by turn boundaries on validation
conversations (never the benchmark's test dialogues).

Each recording goes through the live segmenter (Silero VAD, TurnSegmenter with the encoder's
VoiceChangeDetector) for every combination of thresholds on a grid: `change` (across a pause),
`change_short` (after less than the probe's length of speech) and `change_window` (inside
continuous speech). The segments are scored against the gold turns (back-channels are not gold
turns) with pyannote.metrics' boundary precision and recall within 0.5 s, pooled over recordings,
as bench/conversation.py scores the live pipeline. The VAD's probabilities and every embedding
are computed once and reused across the grid, so the grid costs what one pass costs.

    python bench/change_thresholds.py DEV/meld-2 DEV/meld-3-4 DEV/emodb > RESULT.json

(the recordings of bench/speaker_thresholds.py). Prints one JSON object: per encoder, every grid
point's pooled boundary precision/recall/F1 and turn counts, the best point, and the profile's.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from merc.stream.capture.audio import SAMPLE_RATE, AudioChunk
from merc.stream.capture.vad import FRAME, SileroVAD
from merc.stream.recordings.diarization import boundary_scores, pooled_boundaries
from merc.stream.recordings.recording import open_recording, read_gold
from merc.stream.turns.segmenter import EndOfTurn, SegmenterOptions, TurnSegmenter
from merc.stream.turns.speaker_change import VoiceChangeDetector
from merc.stream.turns.voice_profiles import PROFILES, load_voice_embedder

GRIDS = {
    "resemblyzer": {"change": (0.60, 0.65, 0.70, 0.75), "change_short": (0.45, 0.55), "change_window": (0.45, 0.50)},
    "campp": {"change": (0.40, 0.45, 0.50, 0.55, 0.57), "change_short": (0.30, 0.35, 0.39),
              "change_window": (0.30, 0.365)},
}
CHUNK = 1600  # 0.1 s: how merc-replay feeds the segmenter


class Memo:
    """An encoder's `embed`, computed once per distinct stretch of audio."""

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray | None]) -> None:
        self.embed = embed
        self.cache: dict[tuple[int, bytes], np.ndarray | None] = {}

    def __call__(self, audio: np.ndarray) -> np.ndarray | None:
        key = (audio.size, hashlib.blake2b(np.ascontiguousarray(audio).tobytes(), digest_size=16).digest())
        if key not in self.cache:
            self.cache[key] = self.embed(audio)
        return self.cache[key]


class RecordedVAD:
    """A VAD that replays probabilities computed once (the segmenter calls it frame by frame, in order)."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = probabilities
        self.index = 0

    def __call__(self, frame: np.ndarray) -> float:
        value = self.probabilities[self.index]
        self.index += 1
        return value


def vad_probabilities(audio: np.ndarray) -> list[float]:
    """Silero's probability for every frame the segmenter will ask about (0.1-s chunks, in order)."""
    vad, out = SileroVAD(), []

    def record(frame: np.ndarray) -> float:
        out.append(vad(frame))
        return out[-1]

    segmenter = TurnSegmenter(record, SegmenterOptions(split_on_voice=False))
    for i in range(0, len(audio), CHUNK):
        list(segmenter.feed(AudioChunk(i / SAMPLE_RATE, audio[i:i + CHUNK], 0.0)))
    list(segmenter.flush())
    return out


def segment(audio: np.ndarray, vad: list[float], change: VoiceChangeDetector, options: SegmenterOptions,
            end_of_turn: EndOfTurn | None = None) -> list[dict[str, float]]:
    segmenter = TurnSegmenter(RecordedVAD(vad), options, voice_change=change, end_of_turn=end_of_turn)
    turns = []
    for i in range(0, len(audio), CHUNK):
        turns += list(segmenter.feed(AudioChunk(i / SAMPLE_RATE, audio[i:i + CHUNK], 0.0)))
    turns += list(segmenter.flush())
    return [{"t_start": t.t_start, "t_end": t.t_end, "speaker": "?"} for t in turns]


def load_recordings(folders: list[Path]) -> list[tuple[Path, np.ndarray, list[float], list[dict[str, Any]]]]:
    """Every recording with gold turns in `folders`: (directory, audio, VAD probabilities, gold)."""
    recordings = [r for folder in folders for r in sorted(folder.iterdir()) if (r / "gold.jsonl").is_file()]
    data = []
    for recording in tqdm(recordings, desc="VAD", file=sys.stderr):
        audio, rate = sf.read(recording / "audio.wav", dtype="float32")
        assert rate == SAMPLE_RATE, recording
        data.append((recording, audio, vad_probabilities(audio), read_gold(open_recording(recording))))
    return data


def score(data: list[tuple[Path, np.ndarray, list[float], list[dict[str, Any]]]], memo: Memo,
          options: SegmenterOptions, end_of_turn: EndOfTurn | None = None) -> dict[str, Any]:
    """Predicted turns and pooled boundary precision/recall/F1 (with early cuts and merges) of the
    segmenter with `options` (and the end-of-turn judge, when given)."""
    scores, predicted = [], 0
    for _, audio, vad, gold in data:
        turns = segment(audio, vad, VoiceChangeDetector(memo), options, end_of_turn)
        predicted += len(turns)
        scores.append(boundary_scores(gold, turns, tolerance=0.5))
    return {"predicted_turns": predicted, **{k: round(v, 4) if v is not None else None
                                             for k, v in pooled_boundaries(scores).items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", type=Path, nargs="+", help="folders of merc-synth recordings")
    parser.add_argument("--embedders", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--min-silence", type=float, nargs="+", default=None, metavar="S",
                        help="also score the profile's thresholds with each of these silences ending a turn "
                             "(SegmenterOptions.min_silence; the grid itself uses the default)")
    parser.add_argument("--probe", type=float, default=SegmenterOptions.change_probe,
                        help="seconds of speech after a pause that are compared (SegmenterOptions.change_probe)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    assert FRAME == 512
    data = load_recordings(args.recordings)
    recordings = [recording for recording, *_ in data]
    result: dict[str, Any] = {"bench": "change_thresholds", "command": "python bench/change_thresholds.py "
                              + " ".join(str(p) for p in args.recordings), "recordings": len(recordings),
                              "gold_turns": sum(len(g) for *_, g in data), "tolerance_s": 0.5, "probe_s": args.probe,
                              "embedders": {}}
    for name in args.embedders:
        memo = Memo(load_voice_embedder(name).embed)
        grid = GRIDS[name]
        profile = PROFILES[name]
        points = list(itertools.product(grid["change"], grid["change_short"], grid["change_window"]))
        here = (profile.change, profile.change_short, profile.change_window)
        if here not in points:
            points.append(here)
        rows = []
        for change, short, window in tqdm(points, desc=name, file=sys.stderr):
            options = SegmenterOptions(change_threshold=change, change_threshold_short=short,
                                       change_threshold_window=window, change_probe=args.probe)
            rows.append({"change": change, "change_short": short, "change_window": window,
                         **score(data, memo, options)})
        best = max(rows, key=lambda r: r["f1"] or 0.0)
        current = next(r for r in rows if (r["change"], r["change_short"], r["change_window"]) == here)
        silences = []
        for silence in args.min_silence or []:
            options = SegmenterOptions(change_threshold=here[0], change_threshold_short=here[1],
                                       change_threshold_window=here[2], change_probe=args.probe, min_silence=silence)
            silences.append({"min_silence": silence, **score(data, memo, options)})
        result["embedders"][name] = {"best": best, "profile": current, "grid": rows, "min_silence": silences,
                                     "embeddings_computed": len(memo.cache)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
