"""Training and scoring the multimodal DAG on the paired set, on top of a text-only run.

The text run supplies the corpus, the (fine-tuned) text encoder and the DAG settings; the paired
run adds the audio and face evidence of `merc.models.features.paired` and trains a new DAG that reads all
three, with modality dropout so that it also works when audio or face are missing.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from merc.models.dag.checkpoint import load_model, save_model
from merc.models.data.corpora import load_corpus, resolve_data_dir
from merc.models.data.label_map import label_mapping
from merc.models.data.labels import EMODB4, FER7, LabelSet
from merc.models.features.dialogue import DialogueFeatures, text_features
from merc.models.features.embedding_cache import EmbeddingCache
from merc.models.features.paired import EvidencePool, apply_missing, only, pair
from merc.models.features.text_encoder import TextEncoder, cache_dir
from merc.models.train.config import TrainConfig
from merc.models.train.reports import plot_curves, scores, write_json
from merc.models.train.training import pick_device, predict, train_dag

log = logging.getLogger(__name__)
EXPERT_LABELS = {"audio": EMODB4, "face": FER7}


def mappings_for(label_set: LabelSet) -> dict[str, dict[int, int]]:
    return {m: label_mapping(expert, label_set) for m, expert in EXPERT_LABELS.items()}


def corpus_text(text_run: Path,
                splits: tuple[str, ...]) -> tuple[TrainConfig, LabelSet, dict[str, list[DialogueFeatures]]]:
    """The text run's config and label set, and text features of the requested splits."""
    config = TrainConfig(**json.loads((text_run / "config.json").read_text()))
    model = load_model(text_run)
    encoder = TextEncoder.load(model.encoder_ref, device=pick_device(config.device))
    data_dir = resolve_data_dir(config.data_dir)
    cache = EmbeddingCache(Path(config.cache_dir or cache_dir()) / "embeddings.sqlite")
    try:
        feats = {s: text_features(encoder, load_corpus(config.corpus, data_dir, s), model.label_set, cache)
                 for s in splits}
    finally:
        cache.close()
    return config, model.label_set, feats


def train_paired(text_run: Path, pools: dict[str, dict[str, EvidencePool]], out: Path, *, seed: int,
                 drop: float = 0.5, epochs: int | None = None, progress: bool = True,
                 text: dict[str, list[DialogueFeatures]] | None = None,
                 experts: dict[str, dict] | None = None) -> dict:
    """Train a text+audio+face DAG on the paired set built over `text_run`'s corpus; writes a run
    directory at `out` (model.json/.safetensors, encoder/, metrics.json, curves.png).

    `experts` ({"audio": {"onnx": path, "features": kind}, "face": {"onnx": path}}) are the expert
    graphs serving will run to produce the audio and face inputs: they are copied into
    `out/experts/` and recorded in model.json, so `merc-export` can bundle them.
    """
    started = time.time()
    if text is None:
        config, label_set, feats = corpus_text(text_run, ("train", "valid"))
    else:
        config = TrainConfig(**json.loads((text_run / "config.json").read_text()))
        label_set, feats = load_model(text_run).label_set, text
    config = replace(config, seed=seed, drop_audio=drop, drop_face=drop, epochs=epochs or config.epochs,
                     finetune=False)
    mappings = mappings_for(label_set)
    train_pools = {m: p["train"] for m, p in pools.items()}
    valid = pair(feats["valid"], train_pools, mappings, seed=10_000 + seed)
    first = pair(feats["train"], train_pools, mappings, seed=seed * 1000)

    def resample(epoch: int) -> list[DialogueFeatures]:
        return first if epoch == 1 else pair(feats["train"], train_pools, mappings, seed=seed * 1000 + epoch)

    dims = {"text": first[0].features["text"].shape[1], **{m: p.dim for m, p in train_pools.items()}}
    dag, history = train_dag(config, first, valid, label_set, dims, progress=progress, resample=resample)
    out.mkdir(parents=True, exist_ok=True)
    if (text_run / "encoder").is_dir():
        shutil.copytree(text_run / "encoder", out / "encoder", dirs_exist_ok=True)
        encoder_ref = "encoder"
    else:
        encoder_ref = json.loads((text_run / "model.json").read_text())["encoder"]
    meta_experts = {}
    for m, spec in (experts or {}).items():
        target = out / "experts" / Path(spec["onnx"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec["onnx"], target)
        meta_experts[m] = {**{k: v for k, v in spec.items() if k != "onnx"}, "file": f"experts/{target.name}"}
    save_model(out, dag, label_set, encoder_ref,
               {"corpus": config.corpus, "modalities": ["text", *train_pools], "experts": meta_experts,
                "paired": {"text_run": str(text_run), "drop": drop, "mappings": {m: {str(k): v for k, v in mp.items()}
                                                                                  for m, mp in mappings.items()}}})
    write_json(out / "config.json", config.to_dict())
    plot_curves(history, out / "curves.png", f"{config.corpus} paired: multimodal MultiDAG")
    best = max(history, key=lambda h: h["valid_weighted_f1"])
    metrics = {"best_epoch": best["epoch"], "valid_weighted_f1": best["valid_weighted_f1"], "history": history,
               "seconds": time.time() - started}
    write_json(out / "metrics.json", metrics)
    return metrics


def score_paired(run: Path, test_text: list[DialogueFeatures], test_pools: dict[str, EvidencePool],
                 rates: dict[str, float], seed: int, modalities: tuple[str, ...] | None = None) -> dict:
    """Weighted F1 etc. of the model in `run` on the paired test set at the given missing rates.

    The test pairing depends only on `seed` (the same for every model and rate); the missing
    masks on `seed` and the rates. A model reads only the modalities it was trained on.
    """
    model = load_model(run)
    label_set = model.label_set
    paired = pair(test_text, test_pools, mappings_for(label_set), seed=20_000 + seed)
    missing = apply_missing(paired, rates, seed=30_000 + seed)
    trained = tuple(modalities or model.meta.get("modalities", ["text"]))
    device = pick_device("cpu")
    gold, pred, _, _ = predict(model.dag.to(device), only(missing, trained), device)
    result = scores(gold, pred, label_set)
    present = np.concatenate([d.mask[d.labels >= 0] for d in missing]).mean(axis=0)
    result["present_fraction"] = {m: float(v) for m, v in zip(("text", "audio", "face"), present, strict=True)}
    return result
