"""Scores and plots: weighted F1 as the literature reports it, per-class reports, confusion
matrices and training curves."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
)

from merc.models.data.labels import LabelSet  # noqa: E402


def scores(gold: np.ndarray, pred: np.ndarray, label_set: LabelSet) -> dict:
    """Accuracy, weighted F1 (support-weighted), macro F1, per-class F1 and the confusion matrix."""
    ids = list(range(len(label_set)))
    per_class = f1_score(gold, pred, labels=ids, average=None, zero_division=0)
    return {
        "n": int(len(gold)),
        "accuracy": float(accuracy_score(gold, pred)),
        "weighted_f1": float(f1_score(gold, pred, labels=ids, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "per_class_f1": {label: float(f) for label, f in zip(label_set.labels, per_class, strict=True)},
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
        "labels": list(label_set.labels),
    }


def class_report(gold: np.ndarray, pred: np.ndarray, label_set: LabelSet) -> str:
    return classification_report(gold, pred, labels=list(range(len(label_set))), target_names=list(label_set.labels),
                                 digits=4, zero_division=0)


def plot_confusion(result: dict, path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts, so rare classes stay readable."""
    matrix = np.array(result["confusion_matrix"], dtype=float)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ConfusionMatrixDisplay(normalised, display_labels=result["labels"]).plot(ax=ax, cmap="Blues", values_format=".2f",
                                                                          colorbar=True)
    ax.set_title(f"{title}\nweighted F1 {100 * result['weighted_f1']:.2f}, rows normalised")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: Path, title: str, valid_loss: str = "valid_loss",
                loss_name: str = "cross-entropy", metric: str = "valid_weighted_f1",
                metric_name: str = "weighted F1 (%)", scale: float = 100.0) -> None:
    """Training and validation loss, and a validation metric, per epoch (by default: weighted F1
    of an emotion model; the end-of-turn classifier plots its log loss and AUC)."""
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    left.plot(epochs, [h[valid_loss] for h in history], marker="o", label="valid")
    left.set(xlabel="epoch", ylabel=loss_name, title="loss")
    left.legend()
    right.plot(epochs, [scale * h[metric] for h in history], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel=metric_name, title=f"validation {metric_name}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
