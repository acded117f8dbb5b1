"""The synthetic "paired" multimodal set: conversation turns with audio and face evidence attached.

No corpus here has conversations with emotional audio and video, so each labelled turn of a
conversation corpus (IEMOCAP, MELD) is given

* audio evidence: the audio expert's probabilities for an EmoDB clip of the turn's mapped emotion;
* face evidence: the face CNN's probabilities for a FER-2013 image of the turn's mapped emotion

(`merc.models.data.label_map` has the mapping). What this shows: whether the dialogue graph can fuse
noisy, partly missing emotion evidence with the words and the context, and how it degrades as
modalities go missing. What it does not show: anything about real conversational audio or video,
where voice, face and words of one turn are correlated beyond their label.

Honesty rules, enforced here and tested:

* evidence pools are disjoint between training and test: EmoDB speakers are split (test speakers
  never reach training), FER-2013 test images serve only the test pairing;
* evidence is the expert's output on items it was not trained on: training-pool audio gets
  leave-one-speaker-out predictions, test audio a model fit on the training speakers; training
  face images come from the CNN's held-out validation slice, test images from FER's test split;
* within a pool and class, items are drawn without replacement until the class is exhausted
  (then reshuffled): for training, every epoch draws anew.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from merc.models.data.turns import MODALITIES
from merc.models.features.dialogue import DialogueFeatures

# EmoDB speakers held out for the paired test pool: two women, two men (132 of 339 clips).
EMODB_TEST_SPEAKERS = ("03", "08", "09", "10")


@dataclass(frozen=True)
class EvidencePool:
    """Expert outputs for the items of one modality and split: features (N, d), class (N,), id (N,)."""

    modality: str
    split: str
    features: np.ndarray
    classes: np.ndarray
    ids: np.ndarray
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0))  # e.g. the speaker of each clip

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES[1:]:
            raise ValueError(f"evidence pools are for audio or face, not {self.modality!r}")
        if not (len(self.features) == len(self.classes) == len(self.ids)):
            raise ValueError(f"{self.modality}/{self.split} pool: features, classes and ids differ in length")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


class Drawer:
    """Per-class draws without replacement; an exhausted class is reshuffled and drawn again."""

    def __init__(self, pool: EvidencePool, rng: np.random.Generator) -> None:
        self.pool = pool
        self.rng = rng
        self._queues: dict[int, list[int]] = {}

    def draw(self, cls: int) -> int | None:
        queue = self._queues.get(cls)
        if not queue:
            members = np.flatnonzero(self.pool.classes == cls)
            if members.size == 0:
                return None
            queue = self._queues[cls] = list(self.rng.permutation(members))
        return int(queue.pop())


def pair(dialogues: Sequence[DialogueFeatures], pools: dict[str, EvidencePool],
         mappings: dict[str, dict[int, int]], seed: int) -> list[DialogueFeatures]:
    """Attach evidence to every labelled turn whose label maps to an expert class.

    `pools` and `mappings` are keyed by modality ("audio", "face"); a mapping takes the
    conversation label index to the expert's class index. Unlabelled turns and unmapped labels
    get no evidence (mask False). The item ids used are kept in `DialogueFeatures.evidence`.
    """
    rng = np.random.default_rng(seed)
    drawers = {m: Drawer(p, rng) for m, p in pools.items()}
    paired = []
    for d in dialogues:
        features = dict(d.features)
        mask = d.mask.copy()
        evidence = {}
        for m, pool in pools.items():
            k = MODALITIES.index(m)
            x = np.zeros((len(d), pool.dim), np.float32)
            ids: list[str | None] = [None] * len(d)
            for i, label in enumerate(d.labels.tolist()):
                cls = mappings[m].get(label) if label >= 0 else None
                item = drawers[m].draw(cls) if cls is not None else None
                if item is not None:
                    x[i] = pool.features[item]
                    ids[i] = str(pool.ids[item])
            features[m] = x
            mask[:, k] = [i is not None for i in ids]
            evidence[m] = ids
        paired.append(replace(d, features=features, mask=mask, evidence=evidence))
    return paired


def apply_missing(dialogues: Sequence[DialogueFeatures], rates: dict[str, float], seed: int) -> list[DialogueFeatures]:
    """Hide each present modality of each turn with its own probability (Mi-CGA's whole-modality
    dropping per turn; `rates` keyed by modality, absent keys mean 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in dialogues:
        mask = d.mask.copy()
        for k, m in enumerate(MODALITIES):
            rate = rates.get(m, 0.0)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"missing rate for {m} must be in [0, 1], got {rate}")
            if rate:
                mask[:, k] &= rng.random(len(d)) >= rate
        out.append(replace(d, mask=mask))
    return out


def only(dialogues: Sequence[DialogueFeatures], modalities: Sequence[str]) -> list[DialogueFeatures]:
    """The same dialogues with every other modality removed (e.g. what a text-only model reads)."""
    keep = [m in modalities for m in MODALITIES]
    return [replace(d, features={m: x for m, x in d.features.items() if m in modalities}, mask=d.mask & keep)
            for d in dialogues]


def split_speakers(speakers: Sequence[str] | np.ndarray,
                   test_speakers: Sequence[str] = EMODB_TEST_SPEAKERS) -> np.ndarray:
    """True for clips of the held-out test speakers."""
    return np.isin(np.asarray(speakers), list(test_speakers))
