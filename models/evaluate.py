"""Scoring a trained model on a corpus split, causally: each turn's prediction uses only that
turn and earlier ones (the DAG only looks back, and the encoder's context is earlier turns)."""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import load_model
from .corpora import load_corpus, resolve_data_dir
from .embedding_cache import EmbeddingCache
from .features import text_features
from .reports import class_report, plot_confusion, scores, write_json
from .text_encoder import TextEncoder, cache_dir
from .train import pick_device, predict


def evaluate_run(run_dir: Path, split: str, corpus: str | None = None, data_dir: str | None = None,
                 out_dir: Path | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Score `run_dir` on `split`; writes metrics.json, report.txt and confusion.png to `out_dir`
    (default RUN/eval-SPLIT) and returns the scores."""
    model = load_model(run_dir)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    corpus = corpus or config.get("corpus") or model.meta.get("corpus")
    data_dir = data_dir or config.get("data_dir")
    dialogues = load_corpus(corpus, resolve_data_dir(data_dir), split)
    torch_device = pick_device(device)
    encoder = TextEncoder.load(model.encoder_ref, device=torch_device)
    cache = EmbeddingCache(Path(config.get("cache_dir") or cache_dir()) / "embeddings.sqlite")
    try:
        data = text_features(encoder, dialogues, model.label_set, cache, progress=progress)
    finally:
        cache.close()
    gold, pred, _, loss = predict(model.dag.to(torch_device), data, torch_device)
    result = {"run": str(run_dir), "corpus": corpus, "split": split, "dialogues": len(dialogues), "loss": loss,
              **scores(gold, pred, model.label_set)}
    out_dir = out_dir or run_dir / f"eval-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    (out_dir / "report.txt").write_text(class_report(gold, pred, model.label_set))
    plot_confusion(result, out_dir / "confusion.png", f"{corpus} {split}")
    return result
