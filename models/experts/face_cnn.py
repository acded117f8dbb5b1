"""The face emotion expert: a small VGG-style CNN over 48x48 grayscale face crops (FER-2013).

Chosen by measurement over the run-time MediaPipe face features (bench/face_expert.py): a
classifier on the 55 blendshape + head-pose values scores far lower on FER-2013's test split and
only sees the ~96% of images in which MediaPipe finds a face. Each image is standardised to zero
mean and unit variance before the network, so the camera's exposure and FER's contrast do not
matter. Training augments with flips, small rotations, scalings and shifts, selects the epoch on
a validation slice of the train split, and reports the official test split with flip averaging.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from merc.models.data.fer import FER_LABELS, FER_SIZE, FERSplit

log = logging.getLogger(__name__)
WEIGHTS_FILE = "face_cnn.safetensors"
CONFIG_FILE = "face_cnn.json"


@dataclass(frozen=True)
class FaceCNNConfig:
    """Network shape and training schedule."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    convs: tuple[int, ...] = (2, 2, 3, 3)
    hidden: int = 256
    dropout: float = 0.4
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 0  # 0 = torch's default

    def to_dict(self) -> dict:
        return asdict(self)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """(N, 48, 48) or (N, 1, 48, 48) pixels in [0, 255] -> (N, 1, 48, 48), zero mean, unit std per image."""
    x = images.float().reshape(images.shape[0], 1, FER_SIZE, FER_SIZE)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    return (x - mean) / std


class FaceCNN(nn.Module):
    """VGG-style stages (conv-BN-ReLU x n, max-pool), then a two-layer classifier over 3x3 maps."""

    def __init__(self, config: FaceCNNConfig = FaceCNNConfig(), n_classes: int = len(FER_LABELS)) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 1
        for width, n in zip(config.widths, config.convs, strict=True):
            for _ in range(n):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = FER_SIZE // 2 ** len(config.widths)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(channels * side * side, config.hidden),
            nn.ReLU(inplace=True), nn.Dropout(config.dropout), nn.Linear(config.hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 7) for standardised crops (N, 1, 48, 48)."""
        return self.classifier(self.features(x))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip, rotation (+-10 deg), scale (0.9-1.1) and shift (+-10%) in one affine warp."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.2  # grid units: 0.2 = 10% of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


@torch.no_grad()
def predict_proba(model: FaceCNN, images: np.ndarray, batch_size: int = 512, flip_average: bool = True) -> np.ndarray:
    """Class probabilities (N, 7) for uint8 crops (N, 48, 48); flip averaging as at test time."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = standardize(torch.from_numpy(images[start:start + batch_size]))
        p = torch.softmax(model(x), -1)
        if flip_average:
            p = (p + torch.softmax(model(torch.flip(x, dims=[3])), -1)) / 2
        out.append(p.numpy())
    return np.concatenate(out) if out else np.zeros((0, len(FER_LABELS)), np.float32)


def train_face_cnn(config: FaceCNNConfig, train: FERSplit, valid: FERSplit,
                   progress: bool = True) -> tuple[FaceCNN, list[dict]]:
    """SGD (Nesterov) with a one-cycle schedule; keeps the epoch with the best validation accuracy."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    # ~1.5x faster convolutions on CPU; torch's stub of Module.to lacks memory_format
    model = FaceCNN(config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optim = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                            weight_decay=config.weight_decay)
    steps = math.ceil(len(train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    history, best_acc, best_state = [], -1.0, None
    bar = tqdm(range(1, config.epochs + 1), desc="training face CNN", unit="epoch", disable=not progress)
    for epoch in bar:
        started = time.time()
        model.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            x = augment(standardize(images[idx]), generator).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(x), labels[idx], label_smoothing=config.label_smoothing)
            optim.zero_grad()
            loss.backward()
            optim.step()
            schedule.step()
            losses.append(loss.item())
        acc = float((predict_proba(model, valid.images).argmax(1) == valid.labels).mean())
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "valid_accuracy": acc,
                  "seconds": time.time() - started}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", valid_acc=f"{100 * acc:.1f}")
        log.info("epoch %d: train loss %.4f, valid accuracy %.4f (%.0f s)", epoch, record["train_loss"], acc,
                 record["seconds"])
        if acc > best_acc:
            best_acc = acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), history


def save_face_cnn(model: FaceCNN, out_dir: Path, extra: dict | None = None) -> None:
    """Weights (safetensors) and a JSON with the config and labels: what `load_face_cnn` reads."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    meta = {"config": model.config.to_dict(), "labels": list(FER_LABELS), **(extra or {})}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_face_cnn(model_dir: Path) -> FaceCNN:
    from safetensors.torch import load_file

    meta = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    config = FaceCNNConfig(**fields)
    model = FaceCNN(config, n_classes=len(meta["labels"]))
    model.load_state_dict(load_file(str(Path(model_dir) / WEIGHTS_FILE)))
    return model.eval()
