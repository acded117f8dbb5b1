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

Everything is scored on the final state of the turns: each `turn.update` (a correction of an
earlier turn's speaker, and so of its emotion) is folded into the turn it names first
(`apply_updates`). `turn.partial` events (provisional results while a turn is spoken) are never
scored; how often a turn's final label differs from its last partial is reported beside.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merc.stream.wire.events import apply_update

UPDATE = "turn.update"
PARTIAL = "turn.partial"


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
    updated_turns: int = 0
    """Predicted turns corrected by at least one `turn.update` before scoring."""
    partial_turns: int = 0
    """Predicted turns that had at least one `turn.partial` before them (partials are never scored)."""
    partial_label_changes: int = 0
    """Of those, the turns whose final label differs from their last partial's."""

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


def apply_updates(events: list[dict]) -> list[dict]:
    """`events` with each `turn.update` folded into the turn it names and left out: the most recent
    `turn` before it with that number (turn numbers start again after a reset) gets the update's
    speaker, label, confidence and probabilities. An update naming no earlier turn is dropped (it
    never creates one). Corrected turns are new dicts carrying `updates`, how many were folded into
    them; the input is not changed. Events without updates come back as they were."""
    folded: list[dict] = []
    latest: dict[int, int] = {}  # turn number -> position in `folded` of the newest turn with it
    for event in events:
        kind = event.get("type")
        number = event.get("turn")
        if isinstance(number, bool) or not isinstance(number, int):
            number = None  # not a turn number: nothing can name this turn, nor this update any turn
        if kind == "turn":
            if number is not None:
                latest[number] = len(folded)
            folded.append(event)
        elif kind == UPDATE:
            at = latest.get(number) if number is not None else None
            if at is not None:
                turn = folded[at]
                folded[at] = {**apply_update(turn, event), "updates": turn.get("updates", 0) + 1}
        else:
            folded.append(event)
    return folded


def partial_label_changes(events: list[dict]) -> tuple[int, int]:
    """(turns with a `turn.partial` before them, those whose final label differs from the last
    partial's): how far a provisional emotion can be trusted. Each `turn` is compared with the last
    partial carrying its number since the previous turn."""
    last: dict[int, str] = {}
    partial_turns = changed = 0
    for event in events:
        kind, number = event.get("type"), event.get("turn")
        if kind == PARTIAL and isinstance(number, int) and isinstance(event.get("label"), str):
            last[number] = event["label"]
        elif kind == "turn" and isinstance(number, int):
            label = last.pop(number, None)
            if label is not None:
                partial_turns += 1
                changed += label != event.get("label")
    return partial_turns, changed


def score_replay(gold: list[dict], events: list[dict]) -> ReplayScores:
    """Scores of the `turn` events in `events` against `gold` (both with t_start/t_end in seconds),
    after folding in any `turn.update` (`apply_updates`). `turn.partial` events are not scored;
    they are counted against their final turns (`partial_label_changes`)."""
    import jiwer
    from sklearn.metrics import accuracy_score, f1_score

    partial_turns, changed = partial_label_changes(events)
    events = apply_updates(events)
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
                        emotion_weighted_f1=wf1, emotion_accuracy=acc, emotion_turns=len(emo),
                        updated_turns=sum(bool(p.get("updates")) for p in predicted),
                        partial_turns=partial_turns, partial_label_changes=changed)


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
    """The events of a replay or session (JSONL) in their final state: each `turn` checked for what
    scoring reads (t_start, t_end, text, label, speaker), each `turn.update` for what it changes
    (turn, label, speaker; confidence and probabilities when present), and the updates folded into
    their turns (`apply_updates`); a RecordingError names the file and line otherwise."""
    from merc.stream.recordings.recording import RecordingError, check_span, read_jsonl_lines

    rows = read_jsonl_lines(path, ("type",))
    for number, row in rows:
        where = f"{path}:{number}"
        if row["type"] == "turn":
            check_span(row, where, ("text", "label"), ("speaker",))
        elif row["type"] == UPDATE:
            problem = _update_problem(row)
            if problem:
                raise RecordingError(f"{where}: turn.update {problem}")
    return apply_updates([row for _, row in rows])


def _update_problem(row: dict) -> str | None:
    """What is wrong with a `turn.update` line as scoring reads it, or None."""
    missing = [key for key in ("turn", "speaker", "label") if key not in row]
    if missing:
        return f"is missing {', '.join(missing)}"
    if isinstance(row["turn"], bool) or not isinstance(row["turn"], int):
        return "turn must be a turn number"
    if not isinstance(row["label"], str):
        return "label must be a string"
    if row["speaker"] is not None and not isinstance(row["speaker"], str):
        return "speaker must be a string or null"
    if "confidence" in row and (isinstance(row["confidence"], bool) or not isinstance(row["confidence"], int | float)):
        return "confidence must be a number"
    if "probs" in row and not isinstance(row["probs"], dict):
        return "probs must be an object"
    return None


def format_scores(scores: ReplayScores) -> str:
    emo = ("-" if scores.emotion_weighted_f1 is None or scores.emotion_accuracy is None else
           f"{100 * scores.emotion_weighted_f1:.1f} (accuracy {100 * scores.emotion_accuracy:.1f}, "
           f"{scores.emotion_turns} turns)")
    return "\n".join([
        f"turns            {scores.predicted_turns} predicted / {scores.gold_turns} gold "
        f"({scores.paired_turns} paired, {scores.missed_turns} missed, {scores.extra_turns} extra)",
        f"speaker accuracy {100 * scores.speaker_accuracy:.1f}%  mapping {scores.speaker_mapping}"
        + (f"  ({scores.updated_turns} turns corrected by turn.update)" if scores.updated_turns else ""),
        f"transcript WER   {100 * scores.wer:.1f}%",
        f"emotion wF1      {emo}",
        *([f"provisional      the final label differs from the last turn.partial in "
           f"{scores.partial_label_changes} of {scores.partial_turns} turns "
           f"({100 * scores.partial_label_changes / scores.partial_turns:.0f}%)"] if scores.partial_turns else []),
    ])
