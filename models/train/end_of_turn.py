"""Training the end-of-turn classifier (models/features/end_of_turn.py).

Data: every utterance of MELD's and IEMOCAP's training dialogues, whole and cut short
(models/data/utterance_ends.py). With the encoder frozen, its pooled states are computed once per
split and each seed trains only the head; with `lora_rank` > 0 the encoder is trained too, as
LoRA factors on all its layers, stored beside the head. Per seed, the epoch is chosen on the validation split's
log loss; the seed shipped is the one with the best validation loss; the test split is scored once
per seed and reported as mean ± sd. Nothing here reads test data to choose anything.
"""
from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from merc.models.data.corpora import load_corpus
from merc.models.data.utterance_ends import UtteranceEnd, utterance_ends
from merc.models.features.end_of_turn import ENCODER_DIR, MAX_TOKENS, CompletenessHead, pooled_states, save_head
from merc.models.features.text_encoder import MINILM_ID, TextEncoder
from merc.models.train.reports import plot_curves

log = logging.getLogger(__name__)

CORPORA = ("meld", "iemocap")


@dataclass(frozen=True)
class EndOfTurnConfig:
    """How the head is trained (the defaults are what the shipped classifier used)."""

    hidden: int = 128
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    """Which prefixes are drawn (the same for every training seed)."""
    lora_rank: int = 0
    """>0: the encoder is trained too, as LoRA factors of this rank on all its layers (stored in
    encoder/ next to the head, folded into the weights when loaded); 0: the encoder stays frozen."""
    lora_epochs: int = 2
    lora_lr: float = 5e-4
    lora_batch_size: int = 64


@torch.inference_mode()
def pooled_features(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 128,
                    progress: bool = False) -> np.ndarray:
    """(N, 2 * dim) pooled MiniLM states of `texts`, in order (batched by length)."""
    from tqdm.auto import tqdm

    encoder.eval()
    out = np.zeros((len(texts), 2 * encoder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    encoder.tokenizer.truncation_side = "left"  # a long transcript keeps its end, as served
    for start in tqdm(range(0, len(order), batch_size), desc="encoding transcripts", unit="batch",
                      disable=not progress):
        idx = order[start:start + batch_size]
        batch = encoder.tokenizer([texts[i] for i in idx], truncation=True, max_length=MAX_TOKENS, padding=True,
                                  return_tensors="pt")
        hidden = encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=torch.zeros_like(batch["input_ids"])).last_hidden_state
        out[idx] = pooled_states(hidden, batch["attention_mask"]).float().numpy()
    return out


def split_examples(data_dir: Path, split: str, seed: int) -> list[UtteranceEnd]:
    """Both corpora's examples of one split."""
    return [e for corpus in CORPORA for e in utterance_ends(load_corpus(corpus, data_dir, split), seed)]


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"n": int(len(y)), "accuracy": float(accuracy_score(y, p >= 0.5)), "auc": float(roc_auc_score(y, p)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6)))}


def train_head(x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, cfg: EndOfTurnConfig,
               seed: int) -> tuple[CompletenessHead, list[dict[str, float]]]:
    """One seed: the head at its best validation epoch, and the per-epoch history."""
    torch.manual_seed(seed)
    head = CompletenessHead(dim=x.shape[1], hidden=cfg.hidden, dropout=cfg.dropout)
    head.mean.copy_(torch.from_numpy(x.mean(0)))
    head.scale.copy_(torch.from_numpy(x.std(0) + 1e-6))
    features, labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    valid = torch.from_numpy(x_valid)
    optimiser = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        total = 0.0
        for batch in torch.randperm(len(features), generator=generator).split(cfg.batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(features[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        head.eval()
        with torch.no_grad():
            p = torch.sigmoid(head(valid)).numpy()
        row = {"epoch": epoch, "train_loss": total / len(features), **{f"valid_{k}": v for k, v in
                                                                      _scores(y_valid, p).items() if k != "n"}}
        history.append(row)
        if best is None or row["valid_log_loss"] < best[0]:
            best = (row["valid_log_loss"], {k: v.clone() for k, v in head.state_dict().items()})
    assert best is not None
    head.load_state_dict(best[1])
    return head.eval(), history


def finetune(train: Sequence[UtteranceEnd], valid: Sequence[UtteranceEnd], cfg: EndOfTurnConfig, seed: int,
             progress: bool = False) -> tuple[TextEncoder, list[str], CompletenessHead, list[dict[str, float]]]:
    """One seed with the encoder trained as LoRA factors: the encoder and head at their best
    validation epoch, the trained parameter names, and the per-epoch history."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    encoder = TextEncoder.load(MINILM_ID, device="cpu")
    sample = random.Random(seed).sample(list(train), min(2048, len(train)))
    standard = pooled_features(encoder, [e.text for e in sample])  # LoRA starts as the identity
    encoder = encoder.with_lora(cfg.lora_rank, int(encoder.model.config.num_hidden_layers))
    names = [name for name, param in encoder.model.named_parameters() if param.requires_grad]
    head = CompletenessHead(dim=2 * encoder.dim, hidden=cfg.hidden, dropout=cfg.dropout)
    head.mean.copy_(torch.from_numpy(standard.mean(0)))
    head.scale.copy_(torch.from_numpy(standard.std(0) + 1e-6))
    params = [p for p in encoder.model.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=cfg.lora_lr, weight_decay=cfg.weight_decay)
    encoder.tokenizer.truncation_side = "left"
    y_valid = np.array([e.complete for e in valid], dtype=np.int64)
    rng = random.Random(seed)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    for epoch in range(1, cfg.lora_epochs + 1):
        order = list(range(len(train)))
        rng.shuffle(order)
        encoder.model.train()
        head.train()
        total = 0.0
        for start in tqdm(range(0, len(order), cfg.lora_batch_size), desc=f"seed {seed} epoch {epoch}",
                          unit="batch", disable=not progress):
            batch = [train[i] for i in order[start:start + cfg.lora_batch_size]]
            target = torch.tensor([e.complete for e in batch], dtype=torch.float32)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(_logits(encoder, head, batch), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        p = predict(encoder, head, [e.text for e in valid])
        row = {"epoch": epoch, "train_loss": total / len(train),
               **{f"valid_{k}": v for k, v in _scores(y_valid, p).items() if k != "n"}}
        history.append(row)
        log.info("seed %d epoch %d: validation AUC %.4f, log loss %.4f", seed, epoch, row["valid_auc"],
                 row["valid_log_loss"])
        if best is None or row["valid_log_loss"] < best[0]:
            state = encoder.model.state_dict()
            best = (row["valid_log_loss"], {n: state[n].detach().clone() for n in names},
                    {k: v.clone() for k, v in head.state_dict().items()})
    assert best is not None
    encoder.model.load_state_dict(best[1], strict=False)
    head.load_state_dict(best[2])
    encoder.model.eval()
    return encoder, names, head.eval(), history


def _logits(encoder: TextEncoder, head: CompletenessHead, batch: Sequence[UtteranceEnd]) -> torch.Tensor:
    tokens = encoder.tokenizer([e.text for e in batch], truncation=True, max_length=MAX_TOKENS, padding=True,
                               return_tensors="pt")
    hidden = encoder.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                           token_type_ids=torch.zeros_like(tokens["input_ids"])).last_hidden_state
    return head(pooled_states(hidden, tokens["attention_mask"]))


@torch.inference_mode()
def predict(encoder: TextEncoder, head: CompletenessHead, texts: Sequence[str]) -> np.ndarray:
    """P(complete) of each text (encoder and head in eval mode while predicting)."""
    modes = encoder.model.training, head.training
    encoder.model.eval()
    head.eval()
    out = torch.sigmoid(head(torch.from_numpy(pooled_features(encoder, texts)))).numpy()
    encoder.model.train(modes[0])
    head.train(modes[1])
    return out


def train_end_of_turn(data_dir: Path, out_dir: Path, cfg: EndOfTurnConfig | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Train one classifier per seed, ship the best on validation into `out_dir`; returns the
    report. Frozen encoder (`lora_rank` 0): its pooled states are computed once and each seed
    trains the head; with LoRA each seed trains encoder factors and head together."""
    cfg = cfg or EndOfTurnConfig()
    splits = {split: split_examples(data_dir, split, cfg.data_seed + i) for i, split in
              enumerate(("train", "valid", "test"))}
    labels = {split: np.array([e.complete for e in ex], dtype=np.int64) for split, ex in splits.items()}
    for split, examples in splits.items():
        log.info("%s: %d transcripts (%d complete)", split, len(examples), sum(e.complete for e in examples))
    runs: list[dict[str, Any]] = []
    if cfg.lora_rank:
        for seed in cfg.seeds:
            encoder, names, head, history = finetune(splits["train"], splits["valid"], cfg, seed, progress)
            p = {s: predict(encoder, head, [e.text for e in splits[s]]) for s in ("valid", "test")}
            runs.append({"seed": seed, "head": head, "history": history, "encoder": (encoder, names),
                         "valid": _scores(labels["valid"], p["valid"]), "test": _scores(labels["test"], p["test"])})
    else:
        frozen = TextEncoder.load(MINILM_ID, device="cpu")
        features = {split: pooled_features(frozen, [e.text for e in ex], progress=progress)
                    for split, ex in splits.items()}
        for seed in cfg.seeds:
            head, history = train_head(features["train"], labels["train"], features["valid"], labels["valid"], cfg,
                                       seed)
            with torch.no_grad():
                p = {s: torch.sigmoid(head(torch.from_numpy(features[s]))).numpy() for s in ("valid", "test")}
            runs.append({"seed": seed, "head": head, "history": history,
                         "valid": _scores(labels["valid"], p["valid"]), "test": _scores(labels["test"], p["test"])})
    for run in runs:
        log.info("seed %d: validation AUC %.4f, accuracy %.4f", run["seed"], run["valid"]["auc"],
                 run["valid"]["accuracy"])
    chosen = min(runs, key=lambda r: r["valid"]["log_loss"])
    encoder_ref = MINILM_ID
    if "encoder" in chosen:
        tuned, names = chosen["encoder"]
        tuned.save_finetuned(out_dir / ENCODER_DIR, names)
        encoder_ref = ENCODER_DIR
    report: dict[str, Any] = {
        "encoder": encoder_ref, "dim": int(chosen["head"].mean.shape[0]), "hidden": cfg.hidden,
        "max_tokens": MAX_TOKENS, "config": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in cfg.__dict__.items()},
        "data": {split: {"transcripts": len(ex), "complete": int(sum(e.complete for e in ex)),
                         "corpora": list(CORPORA)} for split, ex in splits.items()},
        "shipped_seed": chosen["seed"],
        "runs": [{k: r[k] for k in ("seed", "valid", "test")} | {"best_epoch": _best_epoch(r["history"])}
                 for r in runs],
        "test_mean": {k: statistics.fmean(r["test"][k] for r in runs) for k in ("accuracy", "auc")},
        "test_sd": {k: statistics.pstdev(r["test"][k] for r in runs) for k in ("accuracy", "auc")},
    }
    save_head(chosen["head"], out_dir, report)
    plot_curves(chosen["history"], out_dir / "curves.png", "end-of-turn classifier: complete utterance or cut short",
                valid_loss="valid_log_loss", loss_name="log loss", metric="valid_auc", metric_name="AUC", scale=1.0)
    return report


def _best_epoch(history: list[dict[str, float]]) -> int:
    return int(min(history, key=lambda h: h["valid_log_loss"])["epoch"])
