"""What every seed method shares: its inputs, its output, its configuration, and the pieces that
several of them build on (masked modality inputs, the padding mask, window masks).

A method is an `ERCMethod`: `forward(features, mask, speakers) -> MethodOutput` over padded
dialogues, exactly the batch `merc.models.features.dialogue.collate` makes:

* ``features[m]``: (B, T, dims[m]) for the modalities present in the batch (text, audio, face);
  a modality with no array is absent for every turn;
* ``mask``: (B, T, 3) bool, in `MODALITIES` order: is modality m of turn t present;
* ``speakers``: (B, T) long, the dialogue-local speaker index, -1 after a dialogue's end (padding)
  and `UNKNOWN_SPEAKER` (also -1) never occurs inside a corpus dialogue.

A method never reads a feature where the mask says absent (the trainer's modality dropout and the
missing-rate benchmark hide modalities through the mask only, the arrays keep their values).

`MethodOutput.logits` (B, T, C) is the turn-level prediction; `aux_loss` is what the method adds
to the cross-entropy without labels (reconstruction, distillation, estimation losses), already
weighted;
`modality_logits` are per-modality predictions (B, T, C) that balancing plug-ins read
(Ada2I's and BALM's modulation, SPCL's difficulty).

Losses that need the labels, which `forward` does not get, come from two hooks the trainer calls:
`turn_loss(output, labels)` is each turn's loss, (B, T): the cross-entropy of `logits` plus any
extra per-turn heads of the method's paper (CMATH, DQF), so that a curriculum weighting turns
(SPCL) weights all of it; `label_loss(output, labels, mask)` is a scalar added like `aux_loss`
(Ada2I's L_modal, BALM's unimodal heads).

Causality: a method with ``causal = True`` gives turn t an output that depends on turns <= t
only (it can run live, turn by turn). A non-causal method takes ``future_window``: how many later
turns each of its attention or graph layers lets a turn see (None: the method's own setting, as in
its paper; 0: its causal variant, exactly causal end to end). Stacked layers with k > 0 reach up
to k turns ahead per layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn

from merc.models.data.turns import MODALITIES


@dataclass(frozen=True)
class MethodConfig:
    """Shape and options of one method instance (written next to its results)."""

    n_classes: int
    dims: dict[str, int] = field(default_factory=lambda: {"text": 384, "audio": 4, "face": 7})
    hidden: int = 128
    dropout: float = 0.3
    future_window: int | None = None  # non-causal methods only: later turns visible (None = all, 0 = causal)
    options: dict = field(default_factory=dict)  # method-specific settings, documented by each method

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MethodOutput:
    """What a method returns for a padded batch."""

    logits: torch.Tensor  # (B, T, C)
    aux_loss: torch.Tensor | None = None  # scalar, added to the classification loss
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (B, T, C)


class ERCMethod(nn.Module):
    """Base class of the seed methods: one `forward` over padded dialogues, see the module doc."""

    name: ClassVar[str] = "method"
    causal: ClassVar[bool] = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor,
                speakers: torch.Tensor) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def turn_loss(self, output: MethodOutput, labels: torch.Tensor) -> torch.Tensor:
        """(B, T) loss of each turn, 0 where unlabelled (-1): by default the cross-entropy of the logits."""
        return per_turn_loss(output.logits, labels)

    def label_loss(self, output: MethodOutput, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """A scalar training loss that needs the labels, added to the loss like `aux_loss`; None: none."""
        return None

    def training_plugins(self) -> list:
        """Plug-ins the method's paper trains it with (e.g. Ada2I's gradient modulation)."""
        return []


def per_turn_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) cross-entropy per turn, 0 where the label is -1."""
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).clamp(min=0),
                                             reduction="none").reshape(labels.shape)
    return flat * (labels >= 0)


def turn_mask(speakers: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: real turns (not padding)."""
    return speakers >= 0


def time_window(length: int, future: int | None, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool, [i, j] = turn i may attend to turn j: every earlier turn and itself, plus
    `future` later turns (None: all of them)."""
    i = torch.arange(length, device=device)
    offset = i[None, :] - i[:, None]  # j - i
    return offset <= 0 if future == 0 else (torch.ones_like(offset, dtype=torch.bool) if future is None
                                           else offset <= future)


class ModalityInputs(nn.Module):
    """Per-modality projections to `hidden`, with a learned absence embedding where a modality is
    missing (never a zero vector posing as data). Returns modality -> (B, T, hidden) for all three."""

    def __init__(self, dims: dict[str, int], hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.project = nn.ModuleDict({m: nn.Linear(dims[m], hidden) for m in MODALITIES})
        self.absent = nn.Parameter(torch.randn(len(MODALITIES), hidden) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for k, m in enumerate(MODALITIES):
            present = mask[..., k:k + 1]
            x = features.get(m)
            absent = self.absent[k].expand(*mask.shape[:-1], -1)
            if x is None:
                out[m] = absent
            else:
                # Zero what is hidden before projecting, so that not even a NaN there reaches a gradient.
                x = x.masked_fill(~present, 0.0)
                out[m] = torch.where(present, self.project[m](self.dropout(x)), absent)
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
