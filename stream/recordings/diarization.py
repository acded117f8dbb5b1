"""Conversation-level scores of predicted turns against gold turns: who spoke when, where turns change,
and the words, computed with well-kept libraries (pyannote.metrics, jiwer).

Turns on both sides are mappings with `t_start`, `t_end` (seconds) and, as needed, `speaker` and `text`
(gold.jsonl lines, `turn` events). pyannote.metrics is imported only by the functions that need it: it
is in the `bench` extra (`pip install -e '.[bench]'`), not in the core install.

- `diarization_error`: DER and its parts (missed speech, false alarm, speaker confusion), as fractions
  of the reference speech and in seconds, with a forgiveness collar and an optional UEM.
- `boundary_scores`: turn-boundary precision, recall and F1 within a tolerance (pyannote's
  `SegmentationPrecision`/`SegmentationRecall`). Those compare the inner boundaries of two *partitions*
  of time, so each side's turns become a partition first (`turn_partition`): a boundary is where the next
  turn starts (in an overlap, the second speaker's onset). A hypothesis that merges two of three turns has
  one boundary of the reference's two: recall 0.5, precision 1.
- `purity_coverage`: pyannote's segmentation purity and coverage of the same partitions.
- `matched_wer`: corpus WER over paired turns (jiwer on the lists of paired texts): what a turn's words
  look like when it is found; merges inflate it.
- `transcript_wer`: the whole conversation's words in time order on both sides: robust to merges and
  splits, blind to attribution.
- `cp_wer`: concatenated minimum-permutation WER (cpWER, as in CHiME-6): each speaker's words in time
  order, predicted speakers mapped one-to-one onto gold speakers to minimise the errors; words of an
  unmapped speaker are all deletions (gold) or insertions (predicted). Robust to merges and splits,
  charged for attribution.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Turn = Mapping[str, Any]


def normalise_words(text: str) -> str:
    """Lower case, words only (the same normalisation as merc-eval's WER)."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def annotation(turns: Iterable[Turn], unknown: str = "unknown") -> Any:
    """A pyannote Annotation of the turns, labelled by speaker (a turn without one: `unknown`)."""
    from pyannote.core import Annotation, Segment

    out = Annotation()
    for i, turn in enumerate(turns):
        if turn["t_end"] > turn["t_start"]:
            out[Segment(float(turn["t_start"]), float(turn["t_end"])), i] = turn.get("speaker") or unknown
    return out


def diarization_error(reference: Iterable[Turn], hypothesis: Iterable[Turn], collar: float = 0.25,
                      uem: Any = None, skip_overlap: bool = False) -> dict[str, float]:
    """DER (pyannote.metrics) with its parts: `der`, `missed`, `false_alarm`, `confusion` as fractions of
    the reference speech, and the seconds behind them (`*_s`, `total_s`). `collar` is the forgiveness
    collar in seconds (pyannote's: the total width around each reference boundary); `uem` a pyannote
    Timeline of the scored region (default: the extent of both)."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = annotation(reference), annotation(hypothesis)
    if uem is None:  # the extent of both, said explicitly (pyannote warns when it has to guess)
        from pyannote.core import Timeline

        extent = ref.get_timeline().union(hyp.get_timeline()).extent()
        uem = Timeline([extent]) if extent.duration > 0 else None
    metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    parts = metric(ref, hyp, uem=uem, detailed=True)
    total = parts["total"]
    scale = 1.0 / total if total else 0.0
    return {"der": parts["diarization error rate"], "missed": parts["missed detection"] * scale,
            "false_alarm": parts["false alarm"] * scale, "confusion": parts["confusion"] * scale,
            "missed_s": parts["missed detection"], "false_alarm_s": parts["false alarm"],
            "confusion_s": parts["confusion"], "total_s": total}


def turn_partition(turns: Iterable[Turn]) -> Any:
    """Turns as a pyannote Timeline partitioning their extent: segment k runs from turn k's start to turn
    k+1's start (turns sorted by start; turns starting at the same time count once), the last one to the
    latest end."""
    from pyannote.core import Segment, Timeline

    spans = sorted((float(t["t_start"]), float(t["t_end"])) for t in turns)
    starts = sorted({s for s, _ in spans})
    timeline = Timeline()
    if not starts:
        return timeline
    end = max(e for _, e in spans)
    bounds = [*starts, max(end, starts[-1] + 1e-3)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        timeline.add(Segment(a, b))
    return timeline


def boundary_scores(reference: Iterable[Turn], hypothesis: Iterable[Turn], tolerance: float = 0.5
                    ) -> dict[str, float]:
    """Turn-boundary precision, recall and F1 within `tolerance` seconds (pyannote.metrics), with the
    matched and total boundary counts behind them (`matched`, `reference_boundaries`,
    `hypothesis_boundaries`) so that conditions can be pooled."""
    from pyannote.metrics.segmentation import SegmentationPrecision, SegmentationRecall

    ref, hyp = turn_partition(reference), turn_partition(hypothesis)
    precision = SegmentationPrecision(tolerance=tolerance)
    recall = SegmentationRecall(tolerance=tolerance)
    p_parts = precision.compute_components(ref, hyp)
    r_parts = recall.compute_components(ref, hyp)
    n_ref, n_hyp = max(0, len(ref) - 1), max(0, len(hyp) - 1)
    matched = float(p_parts["number of matches"])
    p = precision.compute_metric(p_parts) if n_hyp else (1.0 if not n_ref else 0.0)
    r = recall.compute_metric(r_parts) if n_ref else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "matched": matched, "reference_boundaries": n_ref,
            "hypothesis_boundaries": n_hyp, "cut_turns": len(cut_turns(reference, hypothesis, tolerance)),
            "reference_turns": len(ref)}


def cut_turns(reference: Iterable[Turn], hypothesis: Iterable[Turn], tolerance: float = 0.5) -> list[int]:
    """The gold turns cut too early: those with a predicted turn starting inside them (more than
    `tolerance` from both ends) and farther than `tolerance` from every gold turn's start. A thinking
    pause or a sentence end taken for the end of the turn, not a boundary put a little off."""
    from pyannote.core import Segment

    gold = sorted((float(t["t_start"]), float(t["t_end"])) for t in reference)
    gold_starts = [s for s, _ in gold]
    starts = sorted({float(t["t_start"]) for t in hypothesis})[1:]
    cut: set[int] = set()
    for b in starts:
        if any(abs(b - s) <= tolerance for s in gold_starts):
            continue
        cut.update(k for k, (s, e) in enumerate(gold) if e - s > 2 * tolerance
                   and Segment(s + tolerance, e - tolerance).overlaps(b))
    return sorted(cut)


def pooled_boundaries(rows: Iterable[Mapping[str, float]]) -> dict[str, float | None]:
    """Precision, recall and F1 over the boundaries of several recordings (`boundary_scores` rows),
    and the two ways a boundary goes wrong, from the same one-to-one matching:

    * `early_cuts`: the share of gold turns cut too early (`cut_turns`: a turn cut where nobody
      stopped, e.g. at a thinking pause or between two sentences of one turn);
    * `merges`: gold boundaries with no predicted boundary within the tolerance, per gold boundary
      (two turns run together)."""
    rows = list(rows)
    matched = sum(r["matched"] for r in rows)
    n_ref = sum(r["reference_boundaries"] for r in rows)
    n_hyp = sum(r["hypothesis_boundaries"] for r in rows)
    p = matched / n_hyp if n_hyp else None
    r = matched / n_ref if n_ref else None
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else (0.0 if p is not None and
                                                                                r is not None else None)
    gold_turns = sum(r.get("reference_turns", 0) for r in rows)
    return {"precision": p, "recall": r, "f1": f1,
            "early_cuts": sum(r.get("cut_turns", 0) for r in rows) / gold_turns if gold_turns else None,
            "merges": (n_ref - matched) / n_ref if n_ref else None}


def purity_coverage(reference: Iterable[Turn], hypothesis: Iterable[Turn], tolerance: float = 0.5
                    ) -> dict[str, float]:
    """pyannote's segmentation purity and coverage of the two turn partitions."""
    from pyannote.core import Annotation
    from pyannote.metrics.segmentation import SegmentationCoverage, SegmentationPurity

    def labelled(timeline: Any) -> Any:
        out = Annotation()
        for i, segment in enumerate(timeline):
            out[segment] = i
        return out

    ref, hyp = labelled(turn_partition(reference)), labelled(turn_partition(hypothesis))
    return {"purity": float(SegmentationPurity(tolerance=tolerance)(ref, hyp)),
            "coverage": float(SegmentationCoverage(tolerance=tolerance)(ref, hyp))}


def _words(texts: Iterable[str]) -> str:
    return normalise_words(" ".join(texts))


def _errors(reference: str, hypothesis: str) -> int:
    """Word errors (substitutions + deletions + insertions) turning `reference` into `hypothesis`."""
    import jiwer

    if not reference:
        return len(hypothesis.split())
    if not hypothesis:
        return len(reference.split())
    out = jiwer.process_words(reference, hypothesis)
    return int(out.substitutions + out.deletions + out.insertions)


def transcript_wer(reference: Sequence[Turn], hypothesis: Sequence[Turn]) -> dict[str, float]:
    """WER of the whole conversation: every turn's words in time order on each side."""
    ref = _words(t["text"] for t in sorted(reference, key=lambda t: t["t_start"]))
    hyp = _words(t["text"] for t in sorted(hypothesis, key=lambda t: t["t_start"]))
    words = len(ref.split())
    errors = _errors(ref, hyp)
    return {"wer": errors / words if words else float(bool(hyp)), "errors": errors, "words": words}


def matched_wer(reference: Sequence[Turn], hypothesis: Sequence[Turn], pairs: Iterable[tuple[int, int]]
                ) -> dict[str, float]:
    """Corpus WER over paired turns (reference index, hypothesis index): jiwer over the paired texts."""
    errors = words = 0
    for g, p in pairs:
        ref, hyp = _words([reference[g]["text"]]), _words([hypothesis[p]["text"]])
        words += len(ref.split())
        errors += _errors(ref, hyp)
    return {"wer": errors / words if words else 0.0, "errors": errors, "words": words}


def cp_wer(reference: Sequence[Turn], hypothesis: Sequence[Turn], unknown: str = "unknown") -> dict[str, Any]:
    """cpWER: per-speaker concatenated transcripts, speakers mapped to minimise the word errors."""
    from scipy.optimize import linear_sum_assignment

    def by_speaker(turns: Sequence[Turn]) -> dict[str, str]:
        texts: dict[str, list[str]] = {}
        for t in sorted(turns, key=lambda t: t["t_start"]):
            texts.setdefault(t.get("speaker") or unknown, []).append(t["text"])
        return {s: _words(v) for s, v in texts.items()}

    ref, hyp = by_speaker(reference), by_speaker(hypothesis)
    ref_names, hyp_names = sorted(ref), sorted(hyp)
    words = sum(len(v.split()) for v in ref.values())
    # cost of pairing, against leaving both unpaired (all deletions + all insertions)
    n = max(len(ref_names), len(hyp_names))
    cost = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            r = ref[ref_names[i]] if i < len(ref_names) else ""
            h = hyp[hyp_names[j]] if j < len(hyp_names) else ""
            cost[i, j] = _errors(r, h)
    rows, cols = linear_sum_assignment(cost)
    errors = int(cost[rows, cols].sum())
    mapping = {hyp_names[j]: ref_names[i] for i, j in zip(rows, cols, strict=True)
               if i < len(ref_names) and j < len(hyp_names)}
    return {"cpwer": errors / words if words else float(bool(errors)), "errors": errors, "words": words,
            "mapping": mapping}


def weighted_f1(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Support-weighted F1 of (gold, predicted) labels; None without any."""
    if not pairs:
        return None
    from sklearn.metrics import f1_score

    y_true, y_pred = zip(*pairs, strict=True)
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> dict[str, float | None]:
    """{"p50": ..., "p95": ...} of `values` (None when empty)."""
    if not values:
        return {f"p{int(q)}": None for q in qs}
    return {f"p{int(q)}": round(float(np.percentile(values, q)), 1) for q in qs}
