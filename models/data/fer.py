"""FER-2013 in its Kaggle folder layout: ``{train,test}/<emotion>/*.jpg``, 48x48 grayscale.

The official test folder holds both halves of the 2013 challenge test set (``PublicTest_*`` and
``PrivateTest_*``); both are test data here, and model selection uses a validation slice cut
from ``train`` (`validation_split`), never either test half. Decoded images are cached as one
uint8 array per split (keyed by the folder's file list), since decoding 36k JPEGs takes longer
than an epoch of the face CNN.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merc.models.data.corpora import CorpusError
from merc.models.data.labels import FER7

FER_LABELS = FER7.labels
FER_SIZE = 48


class FERError(CorpusError):
    """Bad FER-2013 input; the message names the folder or file."""

    code = "fer_invalid"


@dataclass(frozen=True)
class FERSplit:
    """Images (N, 48, 48) uint8, labels (N,) int into FER_LABELS, and file names (N,)."""

    images: np.ndarray
    labels: np.ndarray
    names: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> FERSplit:
        return FERSplit(self.images[index], self.labels[index], self.names[index])


def resolve_fer_dir(data_dir: str | Path | None = None) -> Path:
    """The FER-2013 folder: `data_dir`/fer2013, or MERC_DATA/fer2013, or ../shared/data/fer2013."""
    from merc.models.data.corpora import resolve_data_dir

    root = Path(data_dir) if data_dir else resolve_data_dir(None)
    folder = root / "fer2013" if (root / "fer2013").is_dir() else root
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise FERError(f"{folder}: not a FER-2013 folder (expected train/ and test/ with one folder per emotion)")
    return folder


def _files(split_dir: Path) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for k, label in enumerate(FER_LABELS):
        folder = split_dir / label
        if not folder.is_dir():
            raise FERError(f"{folder}: missing emotion folder (FER-2013 has {', '.join(FER_LABELS)})")
        found.extend((f"{label}/{p.name}", k) for p in sorted(folder.glob("*.jpg")))
    extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in FER_LABELS)
    if extra:
        raise FERError(f"{split_dir}: unknown emotion folder(s) {', '.join(extra)}")
    if not found:
        raise FERError(f"{split_dir}: no .jpg images")
    return found


def load_fer_split(split: str, data_dir: str | Path | None = None, cache: Path | None = None) -> FERSplit:
    """Decode one split ('train' or 'test'); a corrupt or wrongly sized image raises FERError naming it."""
    import cv2

    if split not in ("train", "test"):
        raise FERError(f"FER-2013 has splits 'train' and 'test', not {split!r}")
    split_dir = resolve_fer_dir(data_dir) / split
    files = _files(split_dir)
    key = hashlib.sha256("\n".join(f for f, _ in files).encode()).hexdigest()[:16]
    cached = cache / f"fer2013-{split}-{key}.npz" if cache else None
    if cached and cached.exists():
        with np.load(cached) as z:
            return FERSplit(z["images"], z["labels"], z["names"])
    images = np.empty((len(files), FER_SIZE, FER_SIZE), np.uint8)
    for i, (name, _) in enumerate(files):
        image = cv2.imread(str(split_dir / name), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FERError(f"{split_dir / name}: not a readable image")
        if image.shape != (FER_SIZE, FER_SIZE):
            image = cv2.resize(image, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)
        images[i] = image
    result = FERSplit(images, np.array([k for _, k in files], np.int64), np.array([f for f, _ in files]))
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=result.images, labels=result.labels, names=result.names)
        tmp.replace(cached)
    return result


def validation_split(data: FERSplit, fraction: float = 0.1, seed: int = 0) -> tuple[FERSplit, FERSplit]:
    """A stratified (train, validation) cut of FER's train split, for model selection."""
    rng = np.random.default_rng(seed)
    valid: list[int] = []
    for k in range(len(FER_LABELS)):
        idx = np.flatnonzero(data.labels == k)
        valid.extend(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    is_valid = np.zeros(len(data), bool)
    is_valid[valid] = True
    return data.subset(~is_valid), data.subset(is_valid)
