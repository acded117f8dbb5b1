"""Training and scoring any seed method on dialogue features: AdamW, optional modality dropout,
plug-ins, model selection and early stopping on the validation split only."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from merc.models.data.labels import LabelSet
from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods.base import ERCMethod
from merc.models.methods.plugins import TrainingPlugin
from merc.models.train.reports import scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """How a method is trained (the same for every method in a comparison)."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    patience: int = 6
    drop: tuple[float, float, float] = (0.0, 0.0, 0.0)  # modality dropout (text, audio, face) in training
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def mean_loss(per_turn: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return per_turn.sum() / (labels >= 0).sum().clamp(min=1)


def _drop(batch: dict, rates: Sequence[float], generator: torch.Generator) -> dict:
    mask = batch["mask"]
    keep = torch.rand(mask.shape, generator=generator) >= torch.tensor(rates)
    return {**batch, "mask": mask & keep.to(mask.device)}


@torch.no_grad()
def predict_method(model: ERCMethod, data: Sequence[DialogueFeatures], device: str = "cpu",
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gold labels, predictions and probabilities over the labelled turns of `data`."""
    model.eval()
    gold, pred, probs = [], [], []
    for start in range(0, len(data), batch_size):
        batch = collate(data[start:start + batch_size], device)
        logits = model(batch["features"], batch["mask"], batch["speakers"]).logits
        labelled = batch["labels"] >= 0
        gold.append(batch["labels"][labelled].cpu().numpy())
        pred.append(logits.argmax(-1)[labelled].cpu().numpy())
        probs.append(torch.softmax(logits, -1)[labelled].cpu().numpy())
    return np.concatenate(gold), np.concatenate(pred), np.concatenate(probs)


def train_method(model: ERCMethod, train: Sequence[DialogueFeatures], valid: Sequence[DialogueFeatures],
                 label_set: LabelSet, fit: FitConfig, plugins: Sequence[TrainingPlugin] = (),
                 progress: bool = True,
                 resample: Callable[[int], Sequence[DialogueFeatures]] | None = None) -> tuple[ERCMethod, list[dict]]:
    """Train `model` (seeded by `fit.seed`); keep the weights of the best validation weighted F1.

    Plug-ins given here run after the method's own (`model.training_plugins()`). `resample(epoch)`,
    when given, supplies each epoch's training dialogues: the same dialogues in the same order as
    `train` (which fixes curricula), e.g. paired anew with other evidence."""
    random.seed(fit.seed)
    np.random.seed(fit.seed)
    torch.manual_seed(fit.seed)
    generator = torch.Generator().manual_seed(fit.seed)
    model.to(fit.device)
    plugins = [*model.training_plugins(), *plugins]
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=fit.lr,
                              weight_decay=fit.weight_decay)
    history, best_f1, best_state, stale = [], -1.0, None, 0
    bar = tqdm(range(1, fit.epochs + 1), desc=f"training {model.name}", unit="epoch", disable=not progress)
    for epoch in bar:
        started = time.time()
        model.train()
        pool = list(range(len(train)))
        for plugin in plugins:
            pool = plugin.epoch_pool(epoch, train) or pool
        pool = list(pool)
        random.shuffle(pool)
        losses = []
        epoch_train = resample(epoch) if resample is not None else train
        for start in range(0, len(pool), fit.batch_size):
            batch = collate([epoch_train[i] for i in pool[start:start + fit.batch_size]], fit.device)
            if any(fit.drop):
                batch = _drop(batch, fit.drop, generator)
            output = model(batch["features"], batch["mask"], batch["speakers"])
            per_turn = model.turn_loss(output, batch["labels"])
            loss = None
            for plugin in plugins:
                loss = plugin.batch_loss(per_turn, output, batch, epoch) if loss is None else loss
            loss = mean_loss(per_turn, batch["labels"]) if loss is None else loss
            supervised = model.label_loss(output, batch["labels"], batch["mask"])
            aux = output.aux_loss if supervised is None else (
                supervised if output.aux_loss is None else output.aux_loss + supervised)
            if aux is not None:
                loss = loss + aux
            optim.zero_grad()
            loss.backward()
            for plugin in plugins:
                plugin.after_backward(model, output, batch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), fit.grad_clip)
            optim.step()
            losses.append(loss.item())
        gold, pred, _ = predict_method(model, valid, fit.device)
        result = scores(gold, pred, label_set)
        record = {"epoch": epoch, "train_dialogues": len(pool), "train_loss": float(np.mean(losses)),
                  "valid_weighted_f1": result["weighted_f1"], "valid_accuracy": result["accuracy"],
                  "seconds": time.time() - started}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", valid_wf1=f"{100 * result['weighted_f1']:.2f}")
        log.debug("%s epoch %d: loss %.4f, valid wF1 %.4f", model.name, epoch, record["train_loss"],
                  result["weighted_f1"])
        if result["weighted_f1"] > best_f1:
            best_f1, stale = result["weighted_f1"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif all(p.pool_complete(epoch) for p in plugins):
            stale += 1
            if stale >= fit.patience:
                break
    if best_state is None:  # no epoch ran
        raise ValueError(f"training needs at least one epoch, not epochs={fit.epochs}")
    model.load_state_dict(best_state)
    return model.eval(), history
