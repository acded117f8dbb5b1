"""Scoring a trained model on a corpus split, causally: each turn's prediction uses only that
turn and earlier ones (the DAG only looks back, and the encoder's context is earlier turns).

`text_style` scores the split's text as written (gold) or as an ASR would give it
(`merc.models.data.asr_text.EVAL_STYLES`: "!" as ".", or lowercase without punctuation), since
live users only ever feed the model ASR text."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merc.models.dag.checkpoint import TrainedModel, load_model
from merc.models.data.asr_text import styled_dialogues
from merc.models.data.corpora import CorpusError, load_corpus, resolve_data_dir
from merc.models.features.dialogue import DialogueFeatures, text_features
from merc.models.features.embedding_cache import EmbeddingCache
from merc.models.features.text_encoder import TextEncoder, cache_dir
from merc.models.train.reports import class_report, plot_confusion, scores, write_json
from merc.models.train.training import pick_device, predict


def eval_dir_name(split: str, text_style: str = "gold", suffix: str = "") -> str:
    """eval-SPLIT[SUFFIX], with -STYLE for a text style other than gold (so styles never overwrite)."""
    return f"eval-{split}{suffix}" + ("" if text_style == "gold" else f"-{text_style}")


@dataclass
class SplitPredictions:
    """A run's causal predictions on a split: the features scored, and per labelled turn, in
    dialogue order, the gold label, the prediction and the probabilities."""

    model: TrainedModel
    corpus: str
    data: list[DialogueFeatures]
    gold: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    loss: float

    def per_dialogue(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(gold, pred) of each dialogue's labelled turns, in `data` order."""
        bounds = np.cumsum([0] + [int((d.labels >= 0).sum()) for d in self.data])
        return [(self.gold[a:b], self.pred[a:b]) for a, b in itertools.pairwise(bounds)]


def predict_split(run_dir: Path, split: str, corpus: str | None = None, data_dir: str | None = None,
                  device: str = "auto", progress: bool = True, text_style: str = "gold") -> SplitPredictions:
    """Embed `split` (its text in `text_style`) with the run's encoder (through the embedding cache)
    and predict every turn."""
    model = load_model(run_dir)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    corpus = corpus or config.get("corpus") or model.meta.get("corpus")
    data_dir = data_dir or config.get("data_dir")
    if not corpus:
        raise CorpusError(f"{run_dir} does not say which corpus its model was trained on; pass --corpus")
    dialogues = styled_dialogues(load_corpus(corpus, resolve_data_dir(data_dir), split), text_style)
    torch_device = pick_device(device)
    encoder = TextEncoder.load(model.encoder_ref, device=torch_device)
    cache = EmbeddingCache(Path(config.get("cache_dir") or cache_dir()) / "embeddings.sqlite")
    try:
        data = text_features(encoder, dialogues, model.label_set, cache, progress=progress)
    finally:
        cache.close()
    gold, pred, probs, loss = predict(model.dag.to(torch_device), data, torch_device)
    return SplitPredictions(model, corpus, data, gold, pred, probs, loss)


def evaluate_run(run_dir: Path, split: str, corpus: str | None = None, data_dir: str | None = None,
                 out_dir: Path | None = None, device: str = "auto", progress: bool = True,
                 text_style: str = "gold") -> dict:
    """Score `run_dir` on `split` with its text in `text_style`; writes metrics.json, report.txt and
    confusion.png to `out_dir` (default RUN/eval-SPLIT, RUN/eval-SPLIT-STYLE for another style) and
    returns the scores."""
    found = predict_split(run_dir, split, corpus, data_dir, device, progress, text_style)
    model, gold, pred = found.model, found.gold, found.pred
    result = {"run": str(run_dir), "corpus": found.corpus, "split": split, "text_style": text_style,
              "dialogues": len(found.data), "loss": found.loss, **scores(gold, pred, model.label_set)}
    out_dir = out_dir or run_dir / eval_dir_name(split, text_style)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    (out_dir / "report.txt").write_text(class_report(gold, pred, model.label_set))
    title = f"{found.corpus} {split}" + ("" if text_style == "gold" else f" ({text_style} text)")
    plot_confusion(result, out_dir / "confusion.png", title)
    return result
