"""MultiDAG: an incremental, multimodal directed-acyclic dialogue graph after DAG-ERC.

One node per turn. Turn i's predecessors are found by walking back from turn i-1 and stopping
once the ω-th earlier turn by i's speaker has been added (DAG-ERC's rule), capped at
`max_predecessors` turns so that the cost of a turn is bounded whatever the dialogue length.

Each layer l updates turn i from its own state one layer down, H^{l-1}_i, and its
predecessors' states in this layer, H^l_j:

    a_ij = softmax_j( W_a [H^l_j ; H^{l-1}_i] )                       relation-blind attention
    M_i  = sum_j a_ij W_{r(i,j)} H^l_j                             r: same / other speaker
    H^l_i = GRU_H(input=H^{l-1}_i, hidden=M_i) + GRU_C(input=M_i, hidden=H^{l-1}_i)

and the classifier reads [H^0_i ; ... ; H^L_i]. Since turn i only needs earlier turns, the
graph is causal, and a dialogue can be processed turn by turn: `step` does exactly what the
batch `forward` does for one position, from a state that keeps the last `max_predecessors`
turns' layer states.

The node input H^0 fuses per-modality projections of text, audio and face features. A missing
modality is replaced by a learned absence embedding (never a zero vector posing as data), and
the modality mask itself is part of the input, so one set of weights serves any subset.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import nn

from merc.models.data.turns import MODALITIES, UNKNOWN_SPEAKER


@dataclass(frozen=True)
class DAGConfig:
    """Shape of a MultiDAG network."""

    n_classes: int
    dims: dict[str, int] = field(default_factory=lambda: {"text": 384, "audio": 88, "face": 55})
    hidden: int = 300
    layers: int = 2
    omega: int = 1
    max_predecessors: int = 16
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


def predecessors(previous_speakers: Sequence[int], speaker: int, omega: int, limit: int) -> list[int]:
    """Offsets back (1 = the previous turn) of a turn's predecessors.

    `previous_speakers` lists the speakers of earlier turns, most recent first. Walk back,
    adding each turn, until the `omega`-th turn by `speaker` has been added or `limit` turns
    are in. An unknown speaker matches nobody, not even another unknown one.
    """
    offsets, same = [], 0
    for back, other in enumerate(previous_speakers[:limit], start=1):
        offsets.append(back)
        if speaker != UNKNOWN_SPEAKER and other == speaker:
            same += 1
            if same == omega:
                break
    return offsets


@dataclass(frozen=True)
class DAGState:
    """What `step` needs of the past: the last turns' speakers and per-layer states, newest first."""

    speakers: tuple[int, ...] = ()
    layers: tuple[torch.Tensor, ...] = ()  # per layer 1..L: (n_kept, hidden), row 0 = newest turn

    @property
    def turns(self) -> int:
        return len(self.speakers)


class DAGLayer(nn.Module):
    """One MultiDAG layer: relation-aware attention over predecessors, then node and context GRUs.

    The attention W_a [H_j ; H_i] is split into a key part (of the predecessor) and a query part
    (of the turn), so a turn's key and relation messages are computed once, when the turn is
    produced, instead of once per successor.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.key = nn.Linear(hidden, 1, bias=False)
        self.query = nn.Linear(hidden, 1)
        self.w_same = nn.Linear(hidden, hidden, bias=False)
        self.w_other = nn.Linear(hidden, hidden, bias=False)
        self.node_gru = nn.GRUCell(hidden, hidden)
        self.context_gru = nn.GRUCell(hidden, hidden)

    def outgoing(self, h: torch.Tensor) -> torch.Tensor:
        """What successors read of a turn's state h (..., H): [key | same-speaker msg | other msg]."""
        return torch.cat([self.key(h), self.w_same(h), self.w_other(h)], dim=-1)

    def forward(self, below: torch.Tensor, preds: torch.Tensor, same: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """below: (N, H) the turn one layer down; preds: (N, W, 1 + 2H) the predecessors' `outgoing`
        in this layer; same: (N, W) bool, same speaker; valid: (N, W) bool, is a predecessor."""
        hidden = below.shape[-1]
        scores = preds[..., 0] + self.query(below)
        scores = scores.masked_fill(~valid, -1e9)
        alpha = torch.softmax(scores, dim=-1) * valid  # a turn with no predecessor gets M = 0
        messages = torch.where(same.unsqueeze(-1), preds[..., 1:1 + hidden], preds[..., 1 + hidden:])
        m = torch.bmm(alpha.unsqueeze(1), messages).squeeze(1)
        return self.node_gru(below, m) + self.context_gru(m, below)


class MultiDAG(nn.Module):
    """The incremental multimodal DAG: batch `forward` for training, `step` for live use."""

    def __init__(self, config: DAGConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.project = nn.ModuleDict({m: nn.Linear(config.dims[m], h) for m in MODALITIES})
        self.absent = nn.Parameter(torch.randn(len(MODALITIES), h) * 0.02)
        self.fuse = nn.Linear(len(MODALITIES) * h + len(MODALITIES), h)
        self.layers = nn.ModuleList(DAGLayer(h) for _ in range(config.layers))
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Sequential(
            nn.Linear((config.layers + 1) * h, h), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(h, config.n_classes)
        )

    def node_input(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """H^0 from per-modality features (..., dim_m) and mask (..., 3); absent modalities are
        replaced by their learned absence embedding."""
        parts = []
        for k, m in enumerate(MODALITIES):
            present = mask[..., k:k + 1]
            x = features.get(m)
            projected = (self.project[m](self.dropout(x)) if x is not None
                         else self.absent[k].expand(*mask.shape[:-1], -1))
            parts.append(torch.where(present, projected, self.absent[k]))
        parts.append(mask.to(parts[0].dtype))
        return self.dropout(torch.relu(self.fuse(torch.cat(parts, dim=-1))))

    def _turn(self, h0: torch.Tensor, preds: list[torch.Tensor], same: torch.Tensor,
              valid: torch.Tensor) -> list[torch.Tensor]:
        """All layer states of one turn (per row of a batch) given its predecessors' layer states."""
        states = [h0]
        for layer, pred in zip(self.layers, preds, strict=True):
            states.append(self.dropout(layer(states[-1], pred, same, valid)))
        return states

    def _logits(self, states: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(torch.cat(states, dim=-1))

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, C) for padded dialogues: features[m] (B, T, dim_m), mask (B, T, 3) bool,
        speakers (B, T) long. Padding after a dialogue's end does not affect its turns."""
        t = speakers.shape[1]
        h0 = self.node_input(features, mask)
        same, valid = self._batch_predecessors(speakers)
        # Turn i reads only as far back as its farthest predecessor in any row of the batch: the
        # slots beyond are masked out anyway, and skipping them keeps each turn's work (and the
        # gradient bookkeeping of the turns it reads) to what the graph actually has.
        slot = torch.arange(1, valid.shape[-1] + 1, device=valid.device)
        reach = (valid * slot).amax(dim=(0, 2)).tolist() if valid.numel() else [0] * t
        history: list[list[torch.Tensor]] = [[] for _ in self.layers]  # per layer, per turn: outgoing (B, 1+2H)
        outputs = []
        for i in range(t):
            k = reach[i]
            preds = [torch.stack(layer_hist[i - k:i][::-1], dim=1) if k else
                     h0.new_zeros(h0.shape[0], 0, 1 + 2 * self.config.hidden) for layer_hist in history]
            states = self._turn(h0[:, i], preds, same[:, i, :k], valid[:, i, :k])
            for layer, layer_hist, s in zip(self._dag_layers, history, states[1:], strict=True):
                layer_hist.append(layer.outgoing(s))
            outputs.append(torch.cat(states, dim=-1))
        return self.classifier(torch.stack(outputs, dim=1))

    @property
    def _dag_layers(self) -> Sequence[DAGLayer]:
        """`self.layers` as what it holds (a ModuleList yields plain Modules to a type checker)."""
        return cast(Sequence[DAGLayer], self.layers)

    def _batch_predecessors(self, speakers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, W) bool masks: same speaker, and is a predecessor, with W = max_predecessors."""
        b, t = speakers.shape
        w = self.config.max_predecessors
        spk = speakers.tolist()
        windows = [[self._window(spk[row][max(0, i - w):i][::-1], spk[row][i]) for i in range(t)] for row in range(b)]
        same = torch.tensor([[s for s, _ in row] for row in windows], dtype=torch.bool).reshape(b, t, w)
        valid = torch.tensor([[v for _, v in row] for row in windows], dtype=torch.bool).reshape(b, t, w)
        return same.to(speakers.device), valid.to(speakers.device)

    def _window(self, previous: Sequence[int], speaker: int) -> tuple[list[bool], list[bool]]:
        """Per window slot (1 back .. W back): same speaker, and is a predecessor."""
        w = self.config.max_predecessors
        offsets = predecessors(previous, speaker, self.config.omega, w)
        valid = [False] * w
        same = [False] * w
        for back in offsets:
            valid[back - 1] = True
            same[back - 1] = speaker != UNKNOWN_SPEAKER and previous[back - 1] == speaker
        return same, valid

    def initial_state(self) -> DAGState:
        return DAGState()

    def step(self, state: DAGState, features: dict[str, torch.Tensor], mask: torch.Tensor,
             speaker: int) -> tuple[torch.Tensor, DAGState]:
        """One new turn: features[m] (dim_m,), mask (3,) bool, speaker id (or UNKNOWN_SPEAKER).
        Returns class probabilities (C,) and the state including this turn."""
        w = self.config.max_predecessors
        h0 = self.node_input({m: x.unsqueeze(0) for m, x in features.items()}, mask.unsqueeze(0))
        same, valid = self._window(state.speakers, speaker)
        zero = h0.new_zeros(1, w, 1 + 2 * self.config.hidden)
        preds = []
        for k, layer in enumerate(self._dag_layers):
            kept = layer.outgoing(state.layers[k]).unsqueeze(0) if state.layers else zero[:, :0]
            preds.append(torch.cat([kept, zero[:, kept.shape[1]:]], dim=1))
        device = h0.device
        states = self._turn(h0, preds, torch.tensor([same], device=device), torch.tensor([valid], device=device))
        probs = torch.softmax(self._logits(states), dim=-1)[0]
        layers = tuple(
            torch.cat([s, state.layers[k]], dim=0)[:w] if state.layers else s
            for k, s in enumerate(states[1:])
        )
        new_state = DAGState(speakers=((speaker,) + state.speakers)[:w], layers=layers)
        return probs, new_state
