"""Per-turn model inputs of a dialogue: modality features, modality mask, speakers and labels."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from merc.models.data.corpora import Dialogue
from merc.models.data.labels import LabelSet
from merc.models.data.turns import MODALITIES
from merc.models.features.embedding_cache import EmbeddingCache, encode_cached
from merc.models.features.text_encoder import TextEncoder


@dataclass
class DialogueFeatures:
    """Arrays for one dialogue of T turns. Absent modalities have no array and a False mask."""

    dialogue_id: str
    features: dict[str, np.ndarray]  # modality -> (T, dim)
    mask: np.ndarray  # (T, 3) bool, in MODALITIES order
    speakers: np.ndarray  # (T,) int, index into the dialogue's speakers
    labels: np.ndarray  # (T,) int, -1 where unlabelled
    evidence: dict[str, list] = field(default_factory=dict)  # paired sets: the expert item behind each turn

    def __len__(self) -> int:
        return len(self.speakers)


def text_features(encoder: TextEncoder, dialogues: Sequence[Dialogue], label_set: LabelSet | None,
                  cache: EmbeddingCache | None = None, progress: bool = False) -> list[DialogueFeatures]:
    """Embed every turn's text (with the encoder's causal context) and pack each dialogue."""
    items: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    for d in dialogues:
        start = len(items)
        items.extend(encoder.spec.dialogue_inputs(d.utterances))
        spans.append((start, len(items)))
    vectors = encode_cached(encoder, items, cache, progress=progress)
    packed = []
    for d, (start, end) in zip(dialogues, spans, strict=True):
        mask = np.zeros((end - start, len(MODALITIES)), dtype=bool)
        mask[:, 0] = [bool(u.text.strip()) for u in d.utterances]
        labels = np.array([label_set.index(u.label) if (label_set and u.label is not None) else -1
                           for u in d.utterances], dtype=np.int64)
        packed.append(DialogueFeatures(d.id, {"text": vectors[start:end]}, mask,
                                       np.array(d.speaker_indices(), dtype=np.int64), labels))
    return packed


def collate(batch: Sequence[DialogueFeatures], device: torch.device | str = "cpu") -> dict:
    """Pad dialogues to the longest: features, mask (False), speakers (-1), labels (-1)."""
    t = max(len(d) for d in batch)
    b = len(batch)
    mask = torch.zeros(b, t, len(MODALITIES), dtype=torch.bool)
    speakers = torch.full((b, t), -1, dtype=torch.long)
    labels = torch.full((b, t), -1, dtype=torch.long)
    names = sorted({m for d in batch for m in d.features})
    feats = {m: torch.zeros(b, t, next(d.features[m].shape[1] for d in batch if m in d.features)) for m in names}
    for row, d in enumerate(batch):
        n = len(d)
        mask[row, :n] = torch.from_numpy(d.mask)
        speakers[row, :n] = torch.from_numpy(d.speakers)
        labels[row, :n] = torch.from_numpy(d.labels)
        for m, x in d.features.items():
            feats[m][row, :n] = torch.from_numpy(x)
    return {"features": {m: x.to(device) for m, x in feats.items()}, "mask": mask.to(device),
            "speakers": speakers.to(device), "labels": labels.to(device)}
