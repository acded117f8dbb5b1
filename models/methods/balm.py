"""BALM ("A Model-Agnostic Framework for Balanced Multimodal Learning under Imbalanced Missing
Rates", CVPR 2026 submission; only its supplementary material is available, plus the released code
github.com/np4s/BALM_CVPR2026) on a small causal dialogue backbone. Causal.

BALM is a plug-in around a backbone (encoders φ^m, fusion F, predictor F_pred). Under imbalanced
missing rates a modality missing at rate r_m receives (1 − r_m) of its expected gradient
(supplement Lemma 1), learns more slowly and is dominated. BALM adds:

* FCM, feature calibration (Algorithm 1 line 6; the main-paper equations are unavailable, so this
  follows the released ``FCM`` class, a squeeze-and-excitation over modalities): per modality, the
  mean of the present features s^m; g = ReLU(W_g [s^t; s^a; s^v]) of width ``d_global``;
  x̂^m = 2σ(W_m g) ⊙ x^m on present turns. Causal: s^m at turn t averages turns ≤ t where m is
  present (the code averages the whole dialogue).
* GRM, gradient rebalancing, distribution-driven part (supplement Eq. 34 = main Eqs. 21–22):
  unimodal heads ŷ^m = head_m(z^m) on *detached* encoder outputs, trained in parallel by their own
  cross-entropy (Eq. 18; only turns where m is present); the discrepancy KL^m = KL(ŷ ‖ ŷ^m) between
  the fused and unimodal distributions (Eq. 19) over turns where m is present; Δ^m its decrease
  (the code's ``prev_kl − cur_kl``: a modality whose unimodal prediction approaches the fused one
  fastest is learning fastest); μ^m = ρ Σ_{m'≠m} Δ^{m'} / Σ_{m'} Δ^{m'}; the gradients of encoder
  φ^m are multiplied by μ^m after the backward pass (Eq. 22). See `GradientRebalancing`.
* GRM, spatial part: L = L_task + τ L_mod. Eq. 26 is unavailable; the released code's form is used:
  L_mod = (1/M) Σ_m |c^m cos(vec W^m_head, vec W_pred)|, with c^m = μ^m/ρ from the previous step
  (Algorithm 1 lines 1 and 17: L_mod starts at 0 and is updated after each step), W^m_head the
  unimodal heads' output weights (held fixed in L_mod, as in the code, where their gradient from it
  is discarded) and W_pred the backbone's output layer.

Backbone (our choice; BALM's papers use GCNet, MMGCN and MM-DFN): encoder φ^m = Linear–ReLU of
x̂^m on present turns, a learned absence embedding elsewhere; fusion h = ReLU(W_f [z^t; z^a; z^v])
plus a speaker embedding (dialogue-local index); a unidirectional GRU over the dialogue's turns
(causal: turn t sees turns ≤ t); predictor logits = W_pred ReLU(W_o [GRU(h)_t; h_t]).

Options (``config.options``), with defaults:

* ``rho`` (1.3): ρ, the code's default (Table 6: (1.1, 1.6]). ``tau`` (0.2): τ, the code's default
  (Table 6: (0.2, 0.8]).
* ``d_global`` (None: a quarter of the summed input widths, as 737 = (1582 + 1024 + 342)/4 in the
  IEMOCAP setting of Table 6; at least 16).
* ``fast`` (0.9), ``slow`` (0.98): momenta of two moving averages of KL^m, whose difference
  slow − fast is the recent decrease of KL^m (see below).
* ``eps`` (1e-3): smoothing of the ratio, μ^m = ρ (Σ_{m'≠m} Δ^{m'} + (n−1)ε) / (Σ Δ + nε), so that
  μ^m → ρ (n−1)/n when no modality is learning, and Σ_m μ^m = ρ (n − 1) as in Eq. 34.
* ``noise`` (False): the code's ``--norm_modulation``, Gaussian noise N(0, std(grad)) added to the
  rebalanced gradients.
* ``max_speakers`` (9): speaker embedding rows; larger indices share the last one.

Choices where the supplement is silent (or our setting differs):

* Δ^m: the code takes the difference of KLs on two consecutive batches, which hold different
  dialogues, so it is mostly sampling noise; we take the difference of a slow and a fast moving
  average of KL^m (its recent decrease). Trained from scratch, all heads start near uniform
  (KL ≈ 0) and KL^m then *rises* for the lagging modalities as the fused prediction sharpens, so the
  decreases are mostly negative and Eq. 34 with raw values changes sign (with values clipped at 0 it
  collapses to μ = ρ(n−1)/n for all). We therefore measure each decrease relative to the most
  lagging modality, Δ^m ← Δ^m − min_j Δ^j ≥ 0: the modality whose KL rises fastest (falls
  slowest) gets the largest μ (ρ at most), the one whose KL falls fastest the smallest. Checked on
  synthetic data (tests/test_method_balm.py): with audio and face equally informative, audio
  missing at rate 0.8 and face always present, the mean μ over training is 0.90 for audio and 0.54
  for face; with the rates swapped, 0.56 and 0.97.
* Modalities in play: those present at some turn of the batch. Only they are rebalanced
  (n = their number); with fewer than two there is nothing to rebalance: μ = 1 and L_mod = 0.
* The unimodal heads' cross-entropy needs labels, which `forward` does not get: the trainer adds it
  through `BALM.label_loss` (it only trains the heads: their inputs are detached).
* Masks are fixed by the data or the benchmark (the paper's masking operator is the benchmark's
  business, not the method's).
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.data.turns import MODALITIES
from merc.models.methods.base import ERCMethod, MethodConfig, MethodOutput
from merc.models.methods.plugins import TrainingPlugin


class _FCM(nn.Module):
    """Feature calibration: modality gates 2σ(·) from a causal running mean of all modalities."""

    def __init__(self, dims: dict[str, int], d_global: int) -> None:
        super().__init__()
        self.dims = dims
        self.squeeze = nn.Linear(sum(dims[m] for m in MODALITIES), d_global)
        self.excite = nn.ModuleDict({m: nn.Linear(d_global, dims[m]) for m in MODALITIES})

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Calibrated features, 0 where a modality is absent (its raw values are never read)."""
        clean, means = {}, []
        for k, m in enumerate(MODALITIES):
            present = mask[..., k:k + 1]
            x = features.get(m)
            x = (torch.zeros(*mask.shape[:-1], self.dims[m], device=mask.device) if x is None
                 else torch.where(present, x, torch.zeros((), dtype=x.dtype)))
            clean[m] = x
            count = present.float().cumsum(1).clamp(min=1)
            means.append(x.cumsum(1) / count)  # mean over turns <= t where m is present
        g = torch.relu(self.squeeze(torch.cat(means, -1)))
        return {m: 2 * torch.sigmoid(self.excite[m](g)) * clean[m] for m in MODALITIES}


class _Encoder(nn.Module):
    """φ^m: Linear–ReLU on present turns, a learned absence embedding elsewhere."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Linear(dim, hidden)
        self.absent = nn.Parameter(torch.randn(hidden) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return torch.where(present.unsqueeze(-1), torch.relu(self.project(self.dropout(x))), self.absent)


class _Head(nn.Module):
    """A unimodal prediction head (the code's ``Classifier``): Linear–ReLU–Linear."""

    def __init__(self, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.proj(z)))


class BALM(ERCMethod):
    name = "balm"
    causal = True
    balance: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o = config.options
        hidden, c = config.hidden, config.n_classes
        self.rho = float(o.get("rho", 1.3))
        self.tau = float(o.get("tau", 0.2))
        self.fast, self.slow = float(o.get("fast", 0.9)), float(o.get("slow", 0.98))
        self.eps = float(o.get("eps", 1e-3))
        self.noise = bool(o.get("noise", False))
        d_global = o.get("d_global") or max(16, sum(config.dims[m] for m in MODALITIES) // 4)
        self.max_speakers = int(o.get("max_speakers", 9))
        self.fcm = _FCM(dict(config.dims), int(d_global))
        self.encoders = nn.ModuleDict({m: _Encoder(config.dims[m], hidden, config.dropout) for m in MODALITIES})
        self.fuse = nn.Linear(len(MODALITIES) * hidden, hidden)
        self.speaker = nn.Embedding(self.max_speakers, hidden)
        self.context = nn.GRU(hidden, hidden, batch_first=True)
        self.hidden_layer = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.predict = nn.Linear(hidden, c)  # W_pred
        self.heads = nn.ModuleDict({m: _Head(hidden, c) for m in MODALITIES})
        # c^m = μ^m / ρ of the last rebalanced step, read by L_mod (0: L_mod starts at 0)
        self.register_buffer("balance", torch.zeros(len(MODALITIES)), persistent=False)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> MethodOutput:
        calibrated = self.fcm(features, mask)
        z = {m: self.encoders[m](calibrated[m], mask[..., k]) for k, m in enumerate(MODALITIES)}
        h = torch.relu(self.fuse(torch.cat([z[m] for m in MODALITIES], -1)))
        h = self.dropout(h + self.speaker(speakers.clamp(0, self.max_speakers - 1)))
        context, _ = self.context(h)
        logits = self.predict(self.dropout(torch.relu(self.hidden_layer(torch.cat([context, h], -1)))))
        modality_logits = {m: self.heads[m](z[m].detach()) for m in MODALITIES}
        return MethodOutput(logits, self.tau * self.spatial_loss(), modality_logits)

    def spatial_loss(self) -> torch.Tensor:
        """L_mod: (1/M) Σ_m |c^m cos(vec W^m_head, vec W_pred)| (the released code's form)."""
        target = self.predict.weight.flatten()
        cos = torch.stack([F.cosine_similarity(cast(_Head, self.heads[m]).out.weight.detach().flatten(), target, dim=0)
                           for m in MODALITIES])
        return (self.balance * cos).abs().mean()

    def label_loss(self, output: MethodOutput, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return unimodal_loss(output, labels, mask)

    def training_plugins(self) -> list[TrainingPlugin]:
        return [GradientRebalancing(self.rho, self.fast, self.slow, self.eps, self.noise)]


def unimodal_loss(output: MethodOutput, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_m cross-entropy of head m over the labelled turns where m is present (Eq. 18)."""
    labelled = labels >= 0
    total = output.logits.new_zeros(())
    for k, m in enumerate(MODALITIES):
        seen = labelled & mask[..., k]
        if m in output.modality_logits and seen.any():
            total = total + F.cross_entropy(output.modality_logits[m][seen], labels[seen])
    return total


def discrepancies(output: MethodOutput, batch: dict) -> dict[str, float]:
    """KL^m = KL(fused ‖ unimodal m), averaged over the real turns where m is present (Eq. 19)."""
    real, mask = batch["speakers"] >= 0, batch["mask"]
    with torch.no_grad():
        fused = torch.log_softmax(output.logits.float(), -1)
        out = {}
        for k, m in enumerate(MODALITIES):
            seen = real & mask[..., k]
            if m in output.modality_logits and seen.any():
                uni = torch.log_softmax(output.modality_logits[m].float(), -1)
                kl = (fused.exp() * (fused - uni)).sum(-1)
                out[m] = float(kl[seen].mean())
    return out


class GradientRebalancing(TrainingPlugin):
    """BALM's GRM, distribution-driven part: encoder gradients scaled by μ^m (Eq. 34), which
    attenuates the modalities learning fastest and amplifies those that lag (e.g. the often
    missing ones). Also feeds c^m to the spatial loss."""

    name = "balm-grm"

    def __init__(self, rho: float = 1.3, fast: float = 0.9, slow: float = 0.98, eps: float = 1e-3,
                 noise: bool = False) -> None:
        self.rho, self.fast, self.slow, self.eps, self.noise = rho, fast, slow, eps, noise
        self.averages: dict[str, list[float]] = {}  # modality -> [fast, slow] moving averages of KL^m
        self.last: dict[str, float] = {}  # μ^m of the last batch

    def update(self, kl: dict[str, float]) -> dict[str, float]:
        """Record this batch's KL^m; μ^m for the modalities in play ({} below two)."""
        for m, value in kl.items():
            fast, slow = self.averages.setdefault(m, [value, value])
            self.averages[m] = [self.fast * fast + (1 - self.fast) * value, self.slow * slow + (1 - self.slow) * value]
        if len(kl) < 2:
            return {}
        delta = {m: self.averages[m][1] - self.averages[m][0] for m in kl}  # recent decrease of KL^m
        floor = min(delta.values())
        delta = {m: d - floor for m, d in delta.items()}  # relative to the most lagging modality
        n, total = len(delta), sum(delta.values())
        return {m: self.rho * (total - d + (n - 1) * self.eps) / (total + n * self.eps) for m, d in delta.items()}

    def after_backward(self, model: ERCMethod, output: MethodOutput, batch: dict) -> None:
        if not isinstance(model, BALM):
            raise TypeError(f"{self.name} rebalances a BALM model, not {type(model).__name__}")
        mu = self.update(discrepancies(output, batch))
        balance = torch.zeros(len(MODALITIES))
        for k, m in enumerate(MODALITIES):
            if m in mu:
                _scale(model.encoders[m], mu[m], self.noise)
                balance[k] = mu[m] / self.rho
        model.balance.copy_(balance)
        self.last = mu


def _scale(module: nn.Module, factor: float, noise: bool) -> None:
    """grad ← factor·grad (+ N(0, std(grad)) noise, the code's ``--norm_modulation``)."""
    for p in module.parameters():
        if p.grad is None:
            continue
        p.grad.mul_(factor)
        if noise and p.grad.numel() > 1:
            p.grad.add_(torch.randn_like(p.grad) * (p.grad.std() + 1e-8))
