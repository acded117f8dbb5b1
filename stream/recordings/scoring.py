"""Scoring a replay's events against the recording's gold turns.

Predicted and gold turns are paired by time: each predicted turn goes with the gold turn it
overlaps most (a predicted turn overlapping none is an extra, a gold turn no prediction overlaps
is a miss). On the pairs:

- speaker attribution accuracy: predicted speakers are anonymous cluster labels (S1, S2, ...),
  so they are mapped one-to-one onto gold speakers by the assignment that maximises agreement
  (Hungarian); an unknown speaker counts as wrong; unpaired gold turns count as wrong;
- transcript WER: over the whole conversation (all gold text against all predicted text, each in
  time order), so a turn split or merged by segmentation is not double-counted;
- emotion weighted F1 and accuracy over paired gold turns that have an emotion.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ReplayScores:
    gold_turns: int
    predicted_turns: int
    paired_turns: int
    missed_turns: int
    extra_turns: int
    speaker_accuracy: float
    speaker_mapping: dict[str, str]
    wer: float
    emotion_weighted_f1: float | None
    emotion_accuracy: float | None
    emotion_turns: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_text(text: str) -> str:
    """Lower case, words only: WER should count words, not punctuation or case."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def pair_turns(gold: list[dict], predicted: list[dict]) -> list[tuple[int, int]]:
    """(gold index, predicted index) pairs: each gold turn with the predicted turn overlapping it most,
    each predicted turn used once (the gold turn it overlaps most wins it)."""
    best: dict[int, tuple[float, int]] = {}
    for p, turn in enumerate(predicted):
        overlaps = [min(turn["t_end"], g["t_end"]) - max(turn["t_start"], g["t_start"]) for g in gold]
        if not overlaps:
            continue
        g = int(np.argmax(overlaps))
        if overlaps[g] > 0 and (g not in best or overlaps[g] > best[g][0]):
            best[g] = (overlaps[g], p)
    return sorted((g, p) for g, (_, p) in best.items())


def speaker_mapping(gold: list[dict], predicted: list[dict], pairs: list[tuple[int, int]]) -> dict[str, str]:
    """Predicted speaker label -> gold speaker, maximising the number of paired turns that agree."""
    from scipy.optimize import linear_sum_assignment

    gold_names = sorted({gold[g]["speaker"] for g, _ in pairs})
    pred_names = sorted({predicted[p]["speaker"] for _, p in pairs if predicted[p].get("speaker")})
    if not gold_names or not pred_names:
        return {}
    counts = np.zeros((len(pred_names), len(gold_names)))
    for g, p in pairs:
        if predicted[p].get("speaker"):
            counts[pred_names.index(predicted[p]["speaker"]), gold_names.index(gold[g]["speaker"])] += 1
    rows, cols = linear_sum_assignment(-counts)
    return {pred_names[r]: gold_names[c] for r, c in zip(rows, cols, strict=True) if counts[r, c] > 0}


def score_replay(gold: list[dict], events: list[dict]) -> ReplayScores:
    """Scores of the `turn` events in `events` against `gold` (both with t_start/t_end in seconds)."""
    import jiwer
    from sklearn.metrics import accuracy_score, f1_score

    predicted = sorted((e for e in events if e.get("type") == "turn"), key=lambda e: e["t_start"])
    pairs = pair_turns(gold, predicted)
    mapping = speaker_mapping(gold, predicted, pairs)
    right = sum(mapping.get(predicted[p].get("speaker") or "") == gold[g]["speaker"] for g, p in pairs)
    reference = normalise_text(" ".join(g["text"] for g in gold))
    hypothesis = normalise_text(" ".join(p["text"] for p in predicted))
    wer = float(jiwer.wer(reference, hypothesis)) if reference else float(bool(hypothesis))
    emo = [(gold[g]["emotion"], predicted[p]["label"]) for g, p in pairs if gold[g].get("emotion")]
    wf1 = acc = None
    if emo:
        y_true, y_pred = zip(*emo, strict=True)
        wf1 = float(f1_score(y_true, y_pred, average="weighted", zero_division=0))
        acc = float(accuracy_score(y_true, y_pred))
    return ReplayScores(gold_turns=len(gold), predicted_turns=len(predicted), paired_turns=len(pairs),
                        missed_turns=len(gold) - len(pairs), extra_turns=len(predicted) - len(pairs),
                        speaker_accuracy=right / len(gold) if gold else 0.0, speaker_mapping=mapping, wer=wer,
                        emotion_weighted_f1=wf1, emotion_accuracy=acc, emotion_turns=len(emo))


def find_events(directory: Path) -> Path:
    """The events of a replayed recording: its replay output if present, else the live session's."""
    from merc.stream.recordings.recording import (
        EVENTS_FILE,
        REPLAY_EVENTS,
        RecordingError,
    )

    for name in (REPLAY_EVENTS, EVENTS_FILE):
        if (directory / name).is_file():
            return directory / name
    raise RecordingError(f"{directory}: no {REPLAY_EVENTS} or {EVENTS_FILE}; run merc-replay {directory} first")


def read_events(path: Path) -> list[dict]:
    """The events of a replay or session (JSONL), each `turn` checked for what scoring reads
    (t_start, t_end, text, label, speaker); a RecordingError names the file and line otherwise."""
    from merc.stream.recordings.recording import check_span, read_jsonl_lines

    rows = read_jsonl_lines(path, ("type",))
    for number, row in rows:
        if row["type"] == "turn":
            check_span(row, f"{path}:{number}", ("text", "label"), ("speaker",))
    return [row for _, row in rows]


def format_scores(scores: ReplayScores) -> str:
    emo = ("-" if scores.emotion_weighted_f1 is None or scores.emotion_accuracy is None else
           f"{100 * scores.emotion_weighted_f1:.1f} (accuracy {100 * scores.emotion_accuracy:.1f}, "
           f"{scores.emotion_turns} turns)")
    return "\n".join([
        f"turns            {scores.predicted_turns} predicted / {scores.gold_turns} gold "
        f"({scores.paired_turns} paired, {scores.missed_turns} missed, {scores.extra_turns} extra)",
        f"speaker accuracy {100 * scores.speaker_accuracy:.1f}%  mapping {scores.speaker_mapping}",
        f"transcript WER   {100 * scores.wer:.1f}%",
        f"emotion wF1      {emo}",
    ])
