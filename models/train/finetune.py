"""Fine-tuning the text encoder on a corpus's training turns (the feature stage of DAG-ERC).

Only the top `train_layers` transformer layers are trained, and only they are stored. With
`lora_rank` > 0 those layers stay frozen and low-rank LoRA factors on each of their linear maps
are trained instead: all six layers can adapt while the stored delta stays small enough to ship
(1.3 MB for rank 16 on all six layers of MiniLM, against 6.9 MB for two layers' weights). The
epoch kept is the one with the best weighted F1 on the validation split.

With `asr` set (ASR augmentation, `merc.models.data.asr_text`), each epoch's training turns are
re-drawn as gold, Whisper-style or lowercase-no-punctuation text (context turns included), and the
epoch is selected on validation scored on gold and Whisper-style text (`asr_select`).
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from merc.models.data.asr_text import AsrAugment, augment_dialogues, styled_dialogues
from merc.models.data.corpora import Dialogue
from merc.models.data.labels import LabelError, LabelSet
from merc.models.features.text_encoder import MINILM_ID, EncoderSpec, TextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of encoder fine-tuning."""

    base: str = MINILM_ID
    context_turns: int = 2
    speaker_markers: bool = False
    train_layers: int = 2
    lora_rank: int = 0  # 0: train the top layers' weights; > 0: LoRA factors of this rank on them
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.1
    asr: AsrAugment | None = None  # ASR-style training text; None trains on the corpus text only
    asr_select: str = "mean"  # with asr: select on "mean" of gold and whisper validation WF1, "whisper" or "gold"


def selection_score(gold_wf1: float, whisper_wf1: float | None, select: str) -> float:
    """The validation figure that picks epochs: gold WF1 alone, Whisper-style alone, or their mean."""
    if whisper_wf1 is None or select == "gold":
        return gold_wf1
    if select == "whisper":
        return whisper_wf1
    if select == "mean":
        return (gold_wf1 + whisper_wf1) / 2
    raise ValueError(f"unknown selection {select!r}: expected mean, whisper or gold")


def epoch_training_dialogues(train: list[Dialogue], cfg: FinetuneConfig, seed: int, epoch: int) -> list[Dialogue]:
    """The training dialogues of fine-tuning epoch `epoch`: with `cfg.asr`, a fresh seeded draw of
    ASR-style text per epoch (so the encoder sees each turn in several forms), else as they are."""
    return augment_dialogues(train, cfg.asr, seed, epoch) if cfg.asr else list(train)


def _labelled_items(dialogues: list[Dialogue], label_set: LabelSet, spec: EncoderSpec):
    items, labels = [], []
    for dialogue in dialogues:
        for item, utt in zip(spec.dialogue_inputs(dialogue.utterances), dialogue.utterances, strict=True):
            if utt.label is None:
                raise LabelError(f"{utt.source or dialogue.id}: an unlabelled turn; fine-tuning needs every turn "
                                 f"labelled ({label_set.name}: {', '.join(label_set.labels)})")
            items.append(item)
            labels.append(label_set.index(utt.label))
    return items, np.array(labels)


def _length_grouped_batches(items, batch_size: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of turns of similar length: less padding, the same turns every epoch."""
    order = list(range(len(items)))
    random.shuffle(order)

    def size(i: int) -> int:
        return len(items[i][0]) + len(items[i][1])

    batches: list[list[int]] = []
    for start in range(0, len(order), batch_size * group):
        chunk = sorted(order[start:start + batch_size * group], key=size)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    random.shuffle(batches)
    return batches


def _trainable_names(encoder: TextEncoder, train_layers: int) -> list[str]:
    n_layers = encoder.model.config.num_hidden_layers
    first = n_layers - train_layers
    names = []
    for name, param in encoder.model.named_parameters():
        parts = name.split(".")
        trained = parts[0] == "encoder" and parts[1] == "layer" and int(parts[2]) >= first
        param.requires_grad_(trained)
        if trained:
            names.append(name)
    return names


@torch.inference_mode()
def _predict(encoder: TextEncoder, head: torch.nn.Module, items, batch_size: int) -> np.ndarray:
    encoder.eval()
    head.eval()
    preds = []
    for start in range(0, len(items), batch_size * 2):
        batch = encoder.tokenize(items[start:start + batch_size * 2])
        preds.append(head(encoder(batch)).argmax(-1).cpu().numpy())
    return np.concatenate(preds)


def finetune_text_encoder(train: list[Dialogue], valid: list[Dialogue], label_set: LabelSet,
                          cfg: FinetuneConfig, out_dir: Path, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune, keep the best validation epoch in `out_dir`, and return its metrics."""
    random.seed(seed)
    torch.manual_seed(seed)
    encoder = TextEncoder.load(cfg.base).with_spec(context_turns=cfg.context_turns, max_length=cfg.max_length,
                                                   speaker_markers=cfg.speaker_markers)
    if cfg.lora_rank:
        encoder = encoder.with_lora(cfg.lora_rank, cfg.train_layers)
        names = [name for name, param in encoder.model.named_parameters() if param.requires_grad]
    else:
        names = _trainable_names(encoder, cfg.train_layers)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(encoder.dim, len(label_set))).to(encoder.device)
    train_items, train_y = _labelled_items(train, label_set, encoder.spec)
    valid_items, valid_y = _labelled_items(valid, label_set, encoder.spec)
    asr_valid_items = (_labelled_items(styled_dialogues(valid, "whisper"), label_set, encoder.spec)[0]
                       if cfg.asr else None)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(train_items) + cfg.batch_size - 1) // cfg.batch_size)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup * steps), steps)
    history, best = [], {"valid_weighted_f1": -1.0, "select_score": -1.0}
    log.info("fine-tuning %s (%d trained tensors) on %d turns, validating on %d", cfg.base, len(names),
             len(train_items), len(valid_items))
    for epoch in range(1, cfg.epochs + 1):
        encoder.train()
        head.train()
        started, losses = time.time(), []
        if cfg.asr:  # a fresh draw of training text styles each epoch, seeded by (seed, epoch)
            train_items, _ = _labelled_items(epoch_training_dialogues(train, cfg, seed, epoch), label_set,
                                             encoder.spec)
        batches = _length_grouped_batches(train_items, cfg.batch_size)
        bar = tqdm(batches, desc=f"fine-tune epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress)
        for idx in bar:
            logits = head(encoder(encoder.tokenize([train_items[i] for i in idx])))
            target = torch.as_tensor(train_y[idx], device=logits.device)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        pred = _predict(encoder, head, valid_items, cfg.batch_size)
        wf1 = float(f1_score(valid_y, pred, average="weighted"))
        asr_wf1 = None
        if asr_valid_items is not None:
            asr_wf1 = float(f1_score(valid_y, _predict(encoder, head, asr_valid_items, cfg.batch_size),
                                     average="weighted"))
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "valid_weighted_f1": wf1,
                  "valid_accuracy": float((pred == valid_y).mean()), "seconds": time.time() - started}
        if asr_wf1 is not None:
            record["valid_whisper_weighted_f1"] = asr_wf1
        record["select_score"] = selection_score(wf1, asr_wf1, cfg.asr_select)
        history.append(record)
        log.info("fine-tune epoch %d: loss %.4f, valid weighted F1 %.4f%s", epoch, record["train_loss"], wf1,
                 "" if asr_wf1 is None else f", Whisper-style {asr_wf1:.4f}")
        if record["select_score"] > best["select_score"]:
            best = record
            encoder.save_finetuned(out_dir, names)
    metrics = {"config": asdict(cfg), "seed": seed, "best": best, "history": history}
    (out_dir / "finetune_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
