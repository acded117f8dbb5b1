"""Training a MultiDAG on a conversation corpus: selection and early stopping on the validation
split only; the test split is never read here (see `merc.models.train.evaluate`).

With `asr_augment`, the encoder is fine-tuned and the DAG trained on ASR-style training text
(`merc.models.data.asr_text`), and epochs are selected on validation scored on gold and on
Whisper-style text (`asr_select`, default their mean: live text is ASR text, but typed text must
not get worse)."""
from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from merc.models.dag.checkpoint import save_model
from merc.models.dag.graph import MODALITIES, DAGConfig, MultiDAG
from merc.models.data.asr_text import AsrAugment, augment_dialogues, styled_dialogues
from merc.models.data.corpora import Dialogue, corpus_label_set, load_corpus, resolve_data_dir
from merc.models.data.labels import LabelSet, get_label_set
from merc.models.features.dialogue import DialogueFeatures, collate, text_features
from merc.models.features.embedding_cache import EmbeddingCache
from merc.models.features.text_encoder import SPEC_FILE, TextEncoder, cache_dir
from merc.models.train import curriculum
from merc.models.train.config import TrainConfig
from merc.models.train.finetune import FinetuneConfig, finetune_text_encoder, selection_score
from merc.models.train.reports import (
    class_report,
    plot_confusion,
    plot_curves,
    scores,
    write_json,
)

log = logging.getLogger(__name__)


def asr_augment_of(config: TrainConfig) -> AsrAugment | None:
    """The ASR augmentation `config` asks for, or None when training on corpus text only."""
    if not config.asr_augment:
        return None
    return AsrAugment(p_whisper=config.asr_p_whisper, p_lower=config.asr_p_lower, word_noise=config.asr_word_noise)


def text_views(config: TrainConfig, train: list[Dialogue],
               valid: list[Dialogue]) -> tuple[list[Dialogue], list[Dialogue] | None]:
    """The training dialogues as the DAG reads them, and the Whisper-style validation copy that
    selection also scores (None without ASR augmentation). Augmentation changes the training split's
    text only (one draw seeded by `config.asr_seed`, else `config.seed`); the validation split
    itself is never altered."""
    asr = asr_augment_of(config)
    if asr is None:
        return list(train), None
    seed = config.seed if config.asr_seed is None else config.asr_seed
    return augment_dialogues(train, asr, seed), styled_dialogues(valid, "whisper")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def label_set_for(config: TrainConfig) -> LabelSet:
    return get_label_set(config.label_set) if config.label_set else corpus_label_set(config.corpus)


def open_cache(config: TrainConfig) -> EmbeddingCache:
    root = Path(config.cache_dir) if config.cache_dir else cache_dir()
    return EmbeddingCache(root / "embeddings.sqlite")


def drop_modalities(batch: dict, rates: tuple[float, float, float], generator: torch.Generator) -> dict:
    """Modality dropout: hide each present modality of each turn with its own probability."""
    mask = batch["mask"]
    keep = torch.rand(mask.shape, generator=generator) >= torch.tensor(rates)
    return {**batch, "mask": mask & keep.to(mask.device)}


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-1)


@torch.no_grad()
def predict(dag: MultiDAG, data: list[DialogueFeatures], device: torch.device, batch_size: int = 32):
    """Gold labels, predictions, probabilities and mean loss over the labelled turns of `data`."""
    dag.eval()
    gold, pred, probs, losses, counts = [], [], [], [], []
    for start in range(0, len(data), batch_size):
        batch = collate(data[start:start + batch_size], device)
        logits = dag(batch["features"], batch["mask"], batch["speakers"])
        labelled = batch["labels"] >= 0
        n = int(labelled.sum())
        if n:
            losses.append(float(_loss(logits, batch["labels"])) * n)
            counts.append(n)
        gold.append(batch["labels"][labelled].cpu().numpy())
        pred.append(logits.argmax(-1)[labelled].cpu().numpy())
        probs.append(torch.softmax(logits, -1)[labelled].cpu().numpy())
    return (np.concatenate(gold), np.concatenate(pred), np.concatenate(probs),
            sum(losses) / max(sum(counts), 1))


def train_dag(config: TrainConfig, train: list[DialogueFeatures], valid: list[DialogueFeatures],
              label_set: LabelSet, dims: dict[str, int], progress: bool = True,
              resample: Callable[[int], list[DialogueFeatures]] | None = None,
              valid_asr: list[DialogueFeatures] | None = None):
    """Train with AdamW; keep the weights of the best validation weighted F1. Returns (dag, history).

    With `valid_asr` (the validation split in Whisper-style text), the figure that selects and
    early-stops is `selection_score` of the gold and ASR-style weighted F1 under `config.asr_select`.

    `resample(epoch)`, when given, supplies each epoch's training dialogues (the same dialogues in
    the same order as `train`, e.g. paired anew with other evidence); `train` fixes the curriculum.
    """
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = pick_device(config.device)
    dag = MultiDAG(DAGConfig(n_classes=len(label_set), dims=dims, hidden=config.hidden, layers=config.layers,
                             omega=config.omega, max_predecessors=config.max_predecessors,
                             dropout=config.dropout)).to(device)
    optim = torch.optim.AdamW(dag.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rates = (config.drop_text, config.drop_audio, config.drop_face)
    if config.curriculum_buckets > 0:
        difficulties = [curriculum.difficulty(d.speakers.tolist(), d.labels.tolist()) for d in train]
        bucket_list = curriculum.buckets(difficulties, config.curriculum_buckets)
    else:
        bucket_list = [list(range(len(train)))]
    history, best_f1, best_state, stale = [], -1.0, None, 0
    epochs = tqdm(range(1, config.epochs + 1), desc="training DAG", unit="epoch", disable=not progress)
    for epoch in epochs:
        started = time.time()
        dag.train()
        pool = curriculum.pool_for_epoch(bucket_list, epoch)
        random.shuffle(pool)
        losses = []
        epoch_train = resample(epoch) if resample is not None else train
        for start in range(0, len(pool), config.batch_size):
            batch = collate([epoch_train[i] for i in pool[start:start + config.batch_size]], device)
            if any(rates):
                batch = drop_modalities(batch, rates, generator)
            loss = _loss(dag(batch["features"], batch["mask"], batch["speakers"]), batch["labels"])
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dag.parameters(), config.grad_clip)
            optim.step()
            losses.append(loss.item())
        gold, pred, _, valid_loss = predict(dag, valid, device)
        result = scores(gold, pred, label_set)
        record = {"epoch": epoch, "train_dialogues": len(pool), "train_loss": float(np.mean(losses)),
                  "valid_loss": valid_loss, "valid_weighted_f1": result["weighted_f1"],
                  "valid_accuracy": result["accuracy"], "seconds": time.time() - started}
        asr_wf1 = None
        if valid_asr is not None:
            asr_gold, asr_pred, _, _ = predict(dag, valid_asr, device)
            asr_wf1 = scores(asr_gold, asr_pred, label_set)["weighted_f1"]
            record["valid_whisper_weighted_f1"] = asr_wf1
        record["select_score"] = selection_score(result["weighted_f1"], asr_wf1, config.asr_select)
        history.append(record)
        epochs.set_postfix(loss=f"{record['train_loss']:.3f}", valid_wf1=f"{100 * result['weighted_f1']:.2f}")
        log.info("epoch %d: train loss %.4f, valid loss %.4f, valid weighted F1 %.4f", epoch, record["train_loss"],
                 valid_loss, result["weighted_f1"])
        # Early stopping only counts once the whole curriculum is in the pool.
        if record["select_score"] > best_f1:
            best_f1, stale = record["select_score"], 0
            best_state = {k: v.detach().clone() for k, v in dag.state_dict().items()}
        elif epoch >= len(bucket_list):
            stale += 1
            if stale >= config.patience:
                log.info("early stop after epoch %d: no better validation F1 for %d epochs", epoch, stale)
                break
    if best_state is None:  # no epoch ran
        raise ValueError(f"training needs at least one epoch, not epochs={config.epochs}")
    dag.load_state_dict(best_state)
    return dag.eval(), history


def run_training(config: TrainConfig, run_dir: Path, progress: bool = True) -> dict:
    """The whole job behind `merc-train`: data, encoder (fine-tuned if asked), DAG, reports."""
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    label_set = label_set_for(config)
    data_dir = resolve_data_dir(config.data_dir)
    train = load_corpus(config.corpus, data_dir, "train")
    valid = load_corpus(config.corpus, data_dir, "valid")
    log.info("%s: %d train and %d valid dialogues", config.corpus, len(train), len(valid))

    asr = asr_augment_of(config)
    encoder_ref = config.encoder
    if config.finetune:
        ft = FinetuneConfig(base=config.encoder, context_turns=config.ft_context_turns,
                            speaker_markers=config.ft_speaker_markers,
                            train_layers=config.ft_train_layers, lora_rank=config.ft_lora_rank,
                            epochs=config.ft_epochs, lr=config.ft_lr,
                            batch_size=config.ft_batch_size, max_length=config.ft_max_length,
                            asr=asr, asr_select=config.asr_select)
        finetune_text_encoder(train, valid, label_set, ft, run_dir / "encoder", seed=config.seed, progress=progress)
        encoder_ref = "encoder"
    elif (Path(config.encoder) / SPEC_FILE).exists():
        # Copy a fine-tuned encoder in, so the run directory is self-contained.
        shutil.copytree(config.encoder, run_dir / "encoder", dirs_exist_ok=True)
        encoder_ref = "encoder"
    encoder = TextEncoder.load(run_dir / "encoder" if encoder_ref == "encoder" else encoder_ref,
                               device=pick_device(config.device))
    cache = open_cache(config)
    try:
        train_text, valid_asr = text_views(config, train, valid)
        train_f = text_features(encoder, train_text, label_set, cache, progress=progress)
        valid_f = text_features(encoder, valid, label_set, cache, progress=progress)
        valid_asr_f = (text_features(encoder, valid_asr, label_set, cache, progress=progress)
                       if valid_asr is not None else None)
    finally:
        cache.close()
    # Text-only runs keep the audio/face input shapes the serving bundles have always declared.
    dims = {"text": encoder.dim, "audio": 88, "face": 55}
    fit_started = time.time()
    dag, history = train_dag(config, train_f, valid_f, label_set, dims, progress=progress, valid_asr=valid_asr_f)
    fit_seconds = time.time() - fit_started
    # The modalities the graph actually learned from: serving feeds only these (an untrained
    # projection would turn a present modality into noise), whatever else it could accept.
    trained = [m for m in MODALITIES if any(m in d.features for d in train_f)]
    meta: dict[str, object] = {"corpus": config.corpus, "modalities": trained}
    if asr:
        meta["text_training"] = {"asr_augment": asdict(asr), "asr_select": config.asr_select}
    save_model(run_dir, dag, label_set, encoder_ref, meta)

    gold, pred, _, _ = predict(dag, valid_f, pick_device(config.device))
    valid_scores = scores(gold, pred, label_set)
    (run_dir / "valid_report.txt").write_text(class_report(gold, pred, label_set))
    plot_confusion(valid_scores, run_dir / "valid_confusion.png", f"{config.corpus} valid")
    plot_curves(history, run_dir / "curves.png", f"{config.corpus}: MultiDAG training")
    best = max(history, key=lambda h: h["select_score"])
    metrics = {"corpus": config.corpus, "label_set": label_set.name, "seed": config.seed, "best_epoch": best["epoch"],
               "valid": valid_scores, "history": history, "dag_train_seconds": fit_seconds,
               "total_seconds": time.time() - started}
    if valid_asr_f is not None:
        gold, pred, _, _ = predict(dag, valid_asr_f, pick_device(config.device))
        metrics["valid_whisper"] = scores(gold, pred, label_set)
        metrics["asr_select"] = config.asr_select
    write_json(run_dir / "metrics.json", metrics)
    return metrics
