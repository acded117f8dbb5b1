"""The learned end of turn against the fixed silence wait, on validation conversations (never the
benchmark's test dialogues): which silence before asking, which probability and which hard cap.

Each recording goes through the live segmenter (Silero VAD, CAM++ voice changes with its profile's
thresholds) with the end-of-turn judge of stream/turns/end_of_turn.py: Whisper tiny.en (as live,
beam 5, guards on) and the bundled end-of-turn classifier on ONNX Runtime. For every grid point
(`eot_silence`, `eot_threshold`, `min_silence`) and for silence alone at several waits, it scores
the segments against the gold turns with pyannote.metrics (boundary precision/recall/F1 within
0.5 s, pooled), and counts early cuts (predicted boundaries where no gold turn ended, per gold turn)
and merges (gold boundaries no prediction came near, per gold boundary). The wait from the end of
speech to the decision is in seconds of audio: the silence waited, compute not included (that is
bench/conversation.py's latency).

Decodes are unprompted here (the grid would otherwise decode every cut once per history); each
distinct stretch of audio is decoded once and reused across the grid, as are VAD probabilities and
voice embeddings.

    python bench/end_of_turn.py DEV/meld-2 DEV/meld-3-4 > RESULT.json
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from change_thresholds import Memo, load_recordings, score
from tqdm import tqdm

from merc.export.build.end_of_turn import ensure_end_of_turn
from merc.export.serve.end_of_turn import CompletenessModel
from merc.stream.turns.end_of_turn import TranscriptJudge
from merc.stream.turns.segmenter import SegmenterOptions
from merc.stream.turns.transcribe import FasterWhisperTranscriber, Transcript
from merc.stream.turns.voice_profiles import PROFILES, load_voice_embedder

EOT_SILENCE = (0.2, 0.25, 0.3)
EOT_THRESHOLD = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CAP = (0.6, 0.8, 1.0)
SILENCE_ONLY = (0.3, 0.4, 0.5, 0.6, 0.8)


class MemoTranscriber:
    """Whisper, each distinct stretch of audio decoded once (unprompted)."""

    def __init__(self, transcriber: FasterWhisperTranscriber) -> None:
        self.transcriber = transcriber
        self.name = transcriber.name
        self.cache: dict[tuple[int, bytes], Transcript] = {}

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> Transcript:
        key = (audio.size, hashlib.blake2b(np.ascontiguousarray(audio).tobytes(), digest_size=16).digest())
        if key not in self.cache:
            self.cache[key] = self.transcriber.transcribe(audio)
        return self.cache[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", type=Path, nargs="+", help="folders of merc-synth recordings")
    parser.add_argument("--embedder", default="campp", choices=list(PROFILES))
    parser.add_argument("--eot-silence", type=float, nargs="+", default=list(EOT_SILENCE))
    parser.add_argument("--eot-threshold", type=float, nargs="+", default=list(EOT_THRESHOLD))
    parser.add_argument("--cap", type=float, nargs="+", default=list(CAP), help="min_silence values")
    parser.add_argument("--predecode-at", type=float, nargs="+", default=[SegmenterOptions.eot_predecode_at],
                        help="SegmenterOptions.eot_predecode_at values (0: no early decode)")
    parser.add_argument("--early-cut", choices=("on", "off", "both"), default="off",
                        help="SegmenterOptions.eot_early_cut")
    parser.add_argument("--silence-only", type=float, nargs="*", default=list(SILENCE_ONLY),
                        help="min_silence values of the fixed wait to score beside")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_recordings(args.recordings)
    recordings = [recording for recording, *_ in data]
    profile = PROFILES[args.embedder]
    memo = Memo(load_voice_embedder(args.embedder).embed)
    asr = MemoTranscriber(FasterWhisperTranscriber.load())
    completeness = CompletenessModel(ensure_end_of_turn())
    judge = TranscriptJudge(asr, completeness)
    base = profile.segmenter_options(SegmenterOptions())
    rows = []
    for silence in tqdm(args.silence_only, desc="silence alone", file=sys.stderr):
        options = replace(base, end_of_turn="silence", min_silence=silence)
        rows.append({"end_of_turn": "silence", "min_silence": silence, **score(data, memo, options)})
    early = {"on": (True,), "off": (False,), "both": (True, False)}[args.early_cut]
    grid = list(itertools.product(args.eot_silence, args.eot_threshold, args.cap, args.predecode_at, early))
    for eot_silence, threshold, cap, predecode_at, early_cut in tqdm(grid, desc="learned", file=sys.stderr):
        options = replace(base, eot_silence=eot_silence, eot_threshold=threshold, min_silence=cap,
                          eot_predecode_at=predecode_at, eot_early_cut=early_cut)
        rows.append({"end_of_turn": "learned", "eot_silence": eot_silence, "eot_threshold": threshold,
                     "min_silence": cap, "predecode_at": predecode_at, "early_cut": early_cut,
                     **score(data, memo, options, judge)})
    learned = [r for r in rows if r["end_of_turn"] == "learned"]
    result = {"bench": "end_of_turn", "command": "python bench/end_of_turn.py "
              + " ".join(str(p) for p in args.recordings), "embedder": args.embedder, "recordings": len(recordings),
              "gold_turns": sum(len(g) for *_, g in data), "tolerance_s": 0.5,
              "decodes": len(asr.cache), "decode_s_median": round(statistics.median(
                  t.seconds for t in asr.cache.values()), 4) if asr.cache else None,
              "best_learned": max(learned, key=lambda r: r["f1"] or 0.0),
              "best_silence": max((r for r in rows if r["end_of_turn"] == "silence"), key=lambda r: r["f1"] or 0.0,
                                  default=None),
              "grid": rows}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
