"""Scoring a bundle on a corpus split with ONNX Runtime only (`merc-eval --bundle`).

Each dialogue is tracked turn by turn with `BundleTracker`, exactly as merc-live serves it, so
the scores are those of the served model (including an int8 or fp16 text encoder). The metrics
are `merc.models.train.reports.scores`, the same as `merc-eval RUN` reports for the PyTorch model.

Nothing here imports torch or transformers: the corpus readers (`merc.models.data.corpora`), label
sets and reports (scikit-learn, matplotlib) are torch-free, and `runtime` serves the bundle.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from merc.export.serve.bundle import read_manifest
from merc.export.serve.runtime import BundleTracker


def evaluate_bundle(bundle_dir: str | Path, split: str = "test", corpus: str | None = None,
                    data_dir: str | Path | None = None, out_dir: str | Path | None = None, device: str = "auto",
                    precision: str = "fp32", threads: int | None = None, max_dialogues: int | None = None,
                    progress: bool = True, text_style: str = "gold") -> dict:
    """Score the bundle on `split` of `corpus` (default: the corpus its model was trained on).

    Writes metrics.json, report.txt and confusion.png to `out_dir` (default BUNDLE/eval-SPLIT, or
    BUNDLE/eval-SPLIT-PRECISION for an int8/fp16 encoder, with -STYLE for a `text_style` other than
    gold: the split's text as an ASR would write it, `merc.models.data.asr_text`) and returns the
    scores. Unlabelled turns are tracked (they are context for later turns) but not scored, as in the
    PyTorch evaluation. Raises BundleError for a bad bundle, CorpusError (a ValueError) for a bad corpus, including gold
    labels outside the bundle's label set.
    """
    from merc.models.data.asr_text import styled_dialogues
    from merc.models.data.corpora import CorpusError, load_corpus, resolve_data_dir
    from merc.models.data.labels import LabelSet
    from merc.models.train.reports import (
        class_report,
        plot_confusion,
        scores,
        write_json,
    )

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, verify=True)
    corpus = corpus or (manifest.raw.get("source") or {}).get("corpus")
    if not corpus:
        raise CorpusError(f"{manifest.path} does not say which corpus its model was trained on; pass --corpus")
    dialogues = load_corpus(corpus, resolve_data_dir(data_dir), split)
    if max_dialogues:
        dialogues = dialogues[:max_dialogues]
    dialogues = styled_dialogues(dialogues, text_style)
    label_set = LabelSet(manifest.label_set, manifest.labels)
    gold_ids: list[int] = []
    for dialogue in dialogues:
        for u in dialogue.utterances:
            if u.label is not None and u.label not in label_set:
                raise CorpusError(f"{u.source or dialogue.id}: gold label {u.label!r} is not in the bundle's label set "
                                  f"{label_set.name} ({', '.join(label_set.labels)})")
    tracker = BundleTracker.load(bundle_dir, device=device, precision=precision, threads=threads, verify=False)
    pred_ids: list[int] = []
    nll = 0.0
    started = time.perf_counter()
    bar = _progress(len(dialogues), progress)
    for dialogue in dialogues:
        tracker.reset()
        for u in dialogue.utterances:
            turn = tracker.track(u.speaker, u.text)
            if u.label is None:
                continue
            gold_ids.append(label_set.index(u.label))
            pred_ids.append(label_set.index(turn.label))
            nll -= math.log(max(turn.probs[u.label], 1e-12))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    if not gold_ids:
        raise CorpusError(f"{corpus} {split}: no labelled turns to score")
    gold, pred = np.array(gold_ids), np.array(pred_ids)
    turns = sum(len(d.utterances) for d in dialogues)
    providers = tracker.encoder.session.get_providers()
    result = {"bundle": str(bundle_dir), "engine": "onnxruntime", "precision": precision,
              "execution_provider": providers[0], "corpus": corpus, "split": split, "text_style": text_style,
              "dialogues": len(dialogues),
              "loss": nll / len(gold_ids), "ms_per_turn": 1000 * elapsed / max(turns, 1),
              **scores(gold, pred, label_set)}
    suffix = "" if precision == "fp32" else f"-{precision}"
    style = "" if text_style == "gold" else f"-{text_style}"
    out_dir = Path(out_dir) if out_dir else bundle_dir / f"eval-{split}{suffix}{style}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    (out_dir / "report.txt").write_text(class_report(gold, pred, label_set))
    plot_confusion(result, out_dir / "confusion.png",
                   f"{corpus} {split} (bundle, {precision}" + ("" if text_style == "gold" else f", {text_style} text)"))
    return result


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return tqdm(total=total, unit="dialogue", desc="tracking")
