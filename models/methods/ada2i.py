"""Ada2I (dissertation §4.2; Nguyen et al., "Ada2I: Enhancing Modality Balance for Multimodal
Conversational Emotion Recognition", ACM MM 2024) as a seed method.

What is implemented, per dialogue of N turns and modalities m ∈ {text t, audio a, face v}:

* Encoders (Eq. 4.2): Z^m = φ(θ^(m), X^m), one Transformer per modality over the dialogue's
  turns. The input is first projected to ``hidden`` (the released code runs the Transformer on the
  raw feature width and projects after it; with 4-d audio that is no Transformer at all). No
  positional encoding, as in the released code. A modality absent at a turn enters as a learned
  absence embedding (its feature is never read).
* AFW (Eq. 4.3–4.7), ``afw_layers`` stacked layers: per turn i and modality m,
  G_Q = (Z W_Q1) ⊗₁ (Z W_Q2) and G_K likewise (rank r outer products, r×r),
  Θ^m = softmax(G_Q ⊙ G_K / √r) over the r×r entries (Eq. 4.4), A^(m)_i = mean of Θ^m over the
  turns turn i may see (Eq. 4.6's pooling), Att_m = Linear(vec(Θ^m A^(l) A^(l'))) for the two other
  modalities l, l' (the "mode-1/3 contraction" as the code does it: a matrix product with each
  other modality's pooled map), and Z^{f-adapt}_m = Att_m ⊙ Z^m + β Z^m (element-wise, Eq. 4.7).
* AMW (Eq. 4.8): Z^{m-adapt} = Σ_m s·cos(W^m_k, Z^{f-adapt}_m) + b_k, a sum of per-class cosine
  logits over the modalities *present* at the turn; prediction ŷ = MLP(Z^{m-adapt}) (Eq. 4.9,
  Linear–ReLU–Linear). ``modality_logits[m]`` = s·cos(W^m, Z^m) + b/M, the unimodal logits of
  Eq. 4.16.
* Losses (Eq. 4.10–4.14), unweighted as in Eq. 4.14: L_cls is the trainer's cross-entropy on ŷ;
  ``aux_loss`` = L_feature (Σ_m mean |Att_m − Φ_m(Z^m)| over real turns, Φ_m one Linear as in the
  code, summed over AFW layers); L_modal (cross-entropy on Z^{m-adapt}) needs labels, which
  `forward` does not get, so it is `Ada2I.label_loss`, which the trainer adds.
* Training (Eq. 4.15–4.20): `OGMGE`, returned by `training_plugins()`. Per batch,
  s^m = mean over labelled turns where m is present of softmax(modality_logits[m])_y (Eq. 4.16),
  ρ^m = s^m / min_j s^j over the modalities present in the batch (Eq. 4.17),
  k^m = 1 − tanh(α ρ^m) if ρ^m > 1 else 1 (Eq. 4.19); the gradients of encoder m are multiplied by
  k^m after the backward pass, plus Gaussian noise N(0, std(grad)) (generalisation enhancement,
  Eq. 4.20, as the released code's ``--normalize``), from epoch ``modulation_start`` on.

Options (``config.options``), with defaults (MELD column of Table 4.1 and the released run.sh):

* ``rank`` (6): tensor rank r. ``beta`` (0.55): β of Eq. 4.7. ``alpha`` (0.4): α of Eq. 4.19
  (Table 4.1's undefined "η" row, 0.4 on MELD; run.sh passes it as ``--alpha=0.42``).
* ``encoder_layers`` (2), ``heads`` (4, or the largest divisor of ``hidden`` below it): the
  Transformers (not stated in the dissertation; code: 2 layers); feed-forward width 2·hidden.
* ``afw_layers`` (2): stacked AFW layers (code ``mmt_nlayers``).
* ``cosine_scale`` (1.0): s, a scale on the cosine logits (MMCosine's s; Ada2I uses none).
* ``modulation_start`` (4): first epoch of gradient modulation (run.sh ``--start_mod=4``).
* ``noise`` (True): the GE noise of Eq. 4.20.

Causality (``config.future_window``): Ada2I is non-causal. None: as in the paper, every turn sees
the whole dialogue (Transformers and AFW's pooling). k ≥ 0: turn i sees turns ≤ i + k, both in the
Transformers' attention and in AFW's pooled A^(m); k = 0 is the streaming variant. Padding turns
are never attended to or pooled over.

Choices where the dissertation is silent or inconsistent:

* Eq. 4.4's softmax and 1/√d_k are kept (d_k = r; the released code has neither, which makes Att a
  12th-order polynomial of the features); the softmax runs over the r×r entries of each turn.
* Pooling A^(m) averages over turns (as the code does), not over d_m (as the text says, which is
  not an axis of Θ^m in the code); with a window, over the turns the window allows.
* Eq. 4.6 lists all three A's; the code contracts with the two other modalities only. Code kept.
* L_feature compares Att_m with Φ_m(Z^m) (Eq. 4.12); the code compares Φ_m(Z^m) with the AFW
  output by aliasing. Paper kept.
* Missing modalities: AMW sums the cosine logits of the modalities present at the turn only (an
  absent one's encoder output there is the absence embedding in context, not evidence); the
  pooled maps A^(m) average all visible turns, absent ones included (their Θ^m comes from the
  absence embedding in context), so AFW stays defined when a modality is missing. OGM-GE's
  score is a mean over turns where the modality is present (a sum would confound confidence with
  availability) and ignores modalities absent from the whole batch. With fewer than two
  modalities present no modulation (and no noise) is applied: there is nothing to balance. The
  noise goes to every modality's encoder in play, k^m = 1 or not, as in the code.
* AMW has no explicit modality weights: the weighting is the per-modality L2 normalisation, which
  bounds every modality's contribution to [−s, s] per class whatever its feature norm.
* The discontinuity of Eq. 4.19 at ρ = 1 (k jumps from 1 to 1 − tanh α) is OGM-GE's own; kept.
"""
from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.data.turns import MODALITIES
from merc.models.methods.base import (
    ERCMethod,
    MethodConfig,
    MethodOutput,
    time_window,
    turn_mask,
)
from merc.models.methods.plugins import TrainingPlugin


def _heads(hidden: int, wanted: int) -> int:
    return max(h for h in range(1, wanted + 1) if hidden % h == 0)


class _Encoder(nn.Module):
    """φ^m: projection (absence embedding where m is absent), then a Transformer over turns."""

    def __init__(self, dim: int, hidden: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Linear(dim, hidden)
        self.absent = nn.Parameter(torch.randn(hidden) * 0.02)
        self.heads = heads
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor | None, present: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) or None; present: (B, T) bool; attend: (B*heads, T, T) additive mask."""
        absent = self.absent.expand(*present.shape, -1)
        if x is None:
            h = absent
        else:
            keep = present.unsqueeze(-1)
            h = torch.where(keep, self.project(torch.where(keep, x, torch.zeros((), dtype=x.dtype))), absent)
        return self.transformer(h, mask=attend)


class _AFWLayer(nn.Module):
    """One Adaptive Feature Weighting layer (Eq. 4.3–4.7, 4.11–4.12)."""

    def __init__(self, hidden: int, rank: int, beta: float, dropout: float) -> None:
        super().__init__()
        self.rank, self.beta = rank, beta
        self.q = nn.ModuleDict({m: nn.Linear(hidden, 2 * rank) for m in MODALITIES})  # W_Q^(1), W_Q^(2)
        self.k = nn.ModuleDict({m: nn.Linear(hidden, 2 * rank) for m in MODALITIES})  # W_K^(1), W_K^(2)
        self.out = nn.ModuleDict({m: nn.Linear(rank * rank, hidden) for m in MODALITIES})
        self.mapping = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in MODALITIES})  # Φ_m
        self.dropout = nn.Dropout(dropout)

    def _theta(self, m: str, z: torch.Tensor) -> torch.Tensor:
        r = self.rank
        q1, q2 = self.q[m](z).split(r, dim=-1)
        k1, k2 = self.k[m](z).split(r, dim=-1)
        g = (q1.unsqueeze(-1) * q2.unsqueeze(-2)) * (k1.unsqueeze(-1) * k2.unsqueeze(-2))  # G_Q ⊙ G_K
        return torch.softmax(g.flatten(-2) / math.sqrt(r), dim=-1).unflatten(-1, (r, r))

    def forward(self, z: dict[str, torch.Tensor], pool: torch.Tensor,
                real: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """pool: (B, T, T) row-normalised weights over the turns each turn sees; real: (B, T)."""
        theta = {m: self._theta(m, z[m]) for m in MODALITIES}
        pooled = {m: torch.einsum("bij,bjrs->birs", pool, theta[m]) for m in MODALITIES}  # A^(m) per turn
        out, loss = {}, z[MODALITIES[0]].new_zeros(())
        n_real = real.sum().clamp(min=1)
        for m in MODALITIES:
            att = theta[m]
            for other in MODALITIES:
                if other != m:
                    att = att @ pooled[other]
            att = self.out[m](att.flatten(-2))  # Att_m, (B, T, hidden)
            out[m] = self.dropout(att * z[m] + self.beta * z[m])
            gap = (att - self.mapping[m](z[m])).abs().mean(-1)
            loss = loss + (gap * real).sum() / n_real
        return out, loss


class Ada2I(ERCMethod):
    name = "ada2i"
    causal = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o = config.options
        hidden, c = config.hidden, config.n_classes
        self.rank = int(o.get("rank", 6))
        self.beta = float(o.get("beta", 0.55))
        self.alpha = float(o.get("alpha", 0.4))
        self.scale = float(o.get("cosine_scale", 1.0))
        self.modulation_start = int(o.get("modulation_start", 4))
        self.noise = bool(o.get("noise", True))
        heads = _heads(hidden, int(o.get("heads", 4)))
        layers = int(o.get("encoder_layers", 2))
        self.encoders = nn.ModuleDict({m: _Encoder(config.dims[m], hidden, heads, layers, config.dropout)
                                       for m in MODALITIES})
        self.afw = nn.ModuleList(_AFWLayer(hidden, self.rank, self.beta, config.dropout)
                                 for _ in range(int(o.get("afw_layers", 2))))
        self.amw = nn.ModuleDict({m: nn.Linear(hidden, c, bias=False) for m in MODALITIES})  # W^m
        self.amw_bias = nn.Parameter(torch.zeros(c))
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(hidden, c))

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> MethodOutput:
        b, t = speakers.shape
        real = turn_mask(speakers)
        sees = time_window(t, self.config.future_window, speakers.device).unsqueeze(0) & real.unsqueeze(1)
        heads = cast(_Encoder, self.encoders[MODALITIES[0]]).heads
        attend = torch.zeros(b, t, t, device=speakers.device).masked_fill(~sees, float("-inf"))
        attend = attend.repeat_interleave(heads, dim=0)
        z = {m: self.encoders[m](features.get(m), mask[..., k], attend) for k, m in enumerate(MODALITIES)}
        pool = sees.float()
        pool = pool / pool.sum(-1, keepdim=True).clamp(min=1)
        feature_loss = z[MODALITIES[0]].new_zeros(())
        for layer in self.afw:
            z, loss = layer(z, pool, real.float())
            feature_loss = feature_loss + loss
        modality_logits, fused = {}, self.amw_bias.expand(b, t, -1)
        for k, m in enumerate(MODALITIES):
            weight = cast(nn.Linear, self.amw[m]).weight
            cosine = self.scale * (F.normalize(z[m], dim=-1) @ F.normalize(weight, dim=-1).T)
            modality_logits[m] = cosine + self.amw_bias / len(MODALITIES)
            fused = fused + cosine * mask[..., k:k + 1]
        logits = self.mlp(fused)
        return MethodOutput(logits, feature_loss, modality_logits)

    def modal_loss(self, output: MethodOutput, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_modal (Eq. 4.13): cross-entropy on Z^{m-adapt}, rebuilt from the unimodal logits
        (Σ_present (cos_m + b/M) + (1 − n_present/M) b = Σ_present cos_m + b). It needs labels,
        which `forward` does not get: the trainer adds it through `label_loss`."""
        present = mask.float()
        fused = sum(output.modality_logits[m] * present[..., k:k + 1] for k, m in enumerate(MODALITIES))
        fused = fused + (1 - present.sum(-1, keepdim=True) / len(MODALITIES)) * self.amw_bias
        labelled = labels >= 0
        if not labelled.any():
            return fused.sum() * 0
        return F.cross_entropy(fused[labelled], labels[labelled])

    def label_loss(self, output: MethodOutput, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.modal_loss(output, labels, mask)

    def training_plugins(self) -> list[TrainingPlugin]:
        return [OGMGE(self, self.alpha, self.modulation_start, self.noise)]


def scale_gradients(module: nn.Module, factor: float, noise: bool) -> None:
    """grad ← factor·grad (+ N(0, std(grad)) noise: OGM-GE's generalisation enhancement)."""
    for p in module.parameters():
        if p.grad is None:
            continue
        p.grad.mul_(factor)
        if noise and p.grad.numel() > 1:
            p.grad.add_(torch.randn_like(p.grad) * (p.grad.std() + 1e-8))


class OGMGE(TrainingPlugin):
    """Ada2I's training strategy (Eq. 4.15–4.20): on-the-fly gradient modulation of each modality's
    encoder by its confidence relative to the weakest modality, plus Gaussian noise."""

    name = "ada2i-ogm-ge"

    def __init__(self, model: Ada2I, alpha: float, start_epoch: int = 1, noise: bool = True) -> None:
        self.model, self.alpha, self.start_epoch, self.noise = model, alpha, start_epoch, noise
        self.epoch = 0
        self.last: dict[str, float] = {}  # the coefficients k^m of the last modulated batch

    def batch_loss(self, per_turn: torch.Tensor, output: MethodOutput, batch: dict, epoch: int) -> None:
        self.epoch = epoch  # modulation starts at `start_epoch`; the loss is left as it is
        return None

    def coefficients(self, output: MethodOutput, batch: dict) -> dict[str, float]:
        """k^m per modality present in the batch (Eq. 4.16, 4.17, 4.19); {} below two modalities."""
        labels, mask = batch["labels"], batch["mask"]
        labelled = labels >= 0
        scores = {}
        with torch.no_grad():
            for k, m in enumerate(MODALITIES):
                seen = labelled & mask[..., k]
                if m in output.modality_logits and seen.any():
                    p = torch.softmax(output.modality_logits[m].float(), -1)
                    p = p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                    scores[m] = float(p[seen].mean())
        if len(scores) < 2:
            return {}
        weakest = max(min(scores.values()), 1e-12)
        ratios = {m: s / weakest for m, s in scores.items()}
        return {m: 1 - math.tanh(self.alpha * r) if r > 1 else 1.0 for m, r in ratios.items()}

    def after_backward(self, model: ERCMethod, output: MethodOutput, batch: dict) -> None:
        if self.epoch < self.start_epoch:
            return
        if not isinstance(model, Ada2I):
            raise TypeError(f"{self.name} modulates an Ada2I model, not {type(model).__name__}")
        coefficients = self.coefficients(output, batch)
        for m, k in coefficients.items():
            scale_gradients(model.encoders[m], k, self.noise)
        self.last = coefficients
