"""Training plug-ins: what a training recipe adds to plain cross-entropy training of any method.

A plug-in may choose each epoch's training dialogues (curricula), turn the per-turn losses into
the loss that is minimised (self-paced weights), and modulate gradients after the backward pass
(modality balancing). The trainer (`merc.models.methods.trainer`) calls, per epoch and batch:

    pool = plugin.epoch_pool(epoch, train)          # None: keep the pool given
    loss = plugin.batch_loss(per_turn, output, batch, epoch)   # None: keep the loss given
    plugin.after_backward(model, output, batch)     # e.g. scale the gradients of one modality
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from merc.models.features.dialogue import DialogueFeatures
from merc.models.methods.base import ERCMethod, MethodOutput
from merc.models.train import curriculum


class TrainingPlugin:
    """No-op base: override the hooks the recipe needs."""

    name = "plugin"

    def epoch_pool(self, epoch: int, train: Sequence[DialogueFeatures]) -> list[int] | None:
        return None

    def batch_loss(self, per_turn: torch.Tensor, output: MethodOutput, batch: dict, epoch: int) -> torch.Tensor | None:
        """per_turn: (B, T) cross-entropy of each turn, 0 where unlabelled."""
        return None

    def after_backward(self, model: ERCMethod, output: MethodOutput, batch: dict) -> None:
        return None

    def pool_complete(self, epoch: int) -> bool:
        """Whether the whole training set is in play (early stopping only counts from then on)."""
        return True


class BabyStepCurriculum(TrainingPlugin):
    """MultiDAG+CL's curriculum (dissertation Eq. 2.29, Algorithm 2): dialogues sorted by
    (emotion shifts + speakers) / (utterances + speakers) into k buckets, one added per epoch."""

    name = "cl"

    def __init__(self, buckets: int) -> None:
        self.k = buckets
        self._buckets: list[list[int]] | None = None

    def epoch_pool(self, epoch: int, train: Sequence[DialogueFeatures]) -> list[int]:
        if self._buckets is None:
            difficulties = [curriculum.difficulty(d.speakers.tolist(), d.labels.tolist()) for d in train]
            self._buckets = curriculum.buckets(difficulties, self.k)
        return curriculum.pool_for_epoch(self._buckets, epoch)

    def pool_complete(self, epoch: int) -> bool:
        return self._buckets is None or epoch >= len(self._buckets)
