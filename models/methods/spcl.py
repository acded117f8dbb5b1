"""SPCL (dissertation §4.3; "Self-Paced Curriculum Learning for modality balance", Neural Computing
and Applications 2026; code github.com/np4s/SPCL) as a training plug-in for any seed method.

Per mini-batch (Algorithm 4), from the current model, with no parameters of its own:

* ℓ_ij: the cross-entropy of turn j of dialogue i (Eq. 4.23; the method's fused prediction).
* Conversation-level unimodal score (Eq. 4.25): s_i^m = Σ_j softmax(z_ij^m)_{y_ij}, from the
  method's ``modality_logits``; imbalance s_i = std_m s_i^m (Eq. 4.26, the unbiased std of the code).
* Difficulty (Eq. 4.27): ρ_ij = 2 s_i ℓ_ij / (s_i + ℓ_ij), the harmonic mean (0 if both are 0).
* Hard self-paced regulariser (Eq. 4.28): v_ij = 1 if ρ_ij ≤ λ else 0, and the loss
  L = Σ v_ij ℓ_ij / Σ v_ij (Eq. 4.32; 0 when nothing is selected).
* Exponential pacing (Eq. 4.29): λ = ε in the first epoch, multiplied by α at each new epoch
  (λ_e = ε α^(e−1) for the trainer's 1-based epochs).

Keyword options, with defaults: ``epsilon`` (0.8) and ``growth`` (α, 1.1): the best MMGCN setting
of Table 4.8, inside the ranges of §3.5 (ε ∈ [0.6, 1.2], α ∈ [1.05, 1.4]); ``regularizer``
("hard"; also "linear": v = max(0, 1 − ρ/λ), and "logistic": v = (1 + e^{−λ}) / (1 + e^{ρ−λ}),
the standard closed forms of the SPL literature that Table 4.11 cites but does not print);
``conversation_score`` (True; False gives the "w/o conv-score" ablation of Table 4.7, ρ = ℓ, paced
as below); ``total_epochs`` (30, the project's epoch budget; T of Table 4.9) and ``c0`` (0.01,
Platanios et al.'s initial competence): the competence pacing used where s is undefined (below);
``complete_fraction`` (0.95, see `pool_complete`).

Choices where the dissertation is silent, or our setting differs:

* Methods without unimodal logits (e.g. MultiDAG), and dialogues where fewer than two modalities
  are observed (text-only corpora, or after masking): s_i is undefined, and the difficulty is the
  loss alone, ρ_ij = ℓ_ij, as in the paper's "w/o conv-score" ablation (Table 4.7). Exponential
  pacing does not work on it: an untrained model's losses are all ≈ ln C (1.95 nats for MELD's 7
  classes) > ε, so nothing is selected for the first ln(ln C/ε)/ln α ≈ 9 epochs; and once the easy
  turns are fitted, the others' losses grow faster than λ (measured on the synthetic test data
  with MultiDAG, even with ℓ rescaled so that a chance-level turn has difficulty ε: the selection
  stalled at 51% of the turns while the training set's cross-entropy rose from 1.8 to 4.5 in five
  epochs). Those turns are paced instead by
  Table 4.9's competence-based schedule: λ = the c_e-quantile of their losses in the batch,
  c_e = min(1, √(e (1 − c0²)/T + c0²)), so a growing share of the easiest turns is selected and
  all of them from epoch T on (``total_epochs``). With unimodal logits this problem does not arise:
  an untrained model's modalities agree, s_i ≈ 0, so ρ ≈ 0 and nearly every turn is selected at
  first. ``conversation_score=False`` paces every turn this way.
* Missing modalities: s_i^m counts only turns where m is present, rescaled to the dialogue's
  labelled length, s_i^m = N_i · mean_{j: m present} p_ij^m (equal to Eq. 4.25 when nothing is
  missing); a plain sum would call a dialogue imbalanced just because one modality is often missing.
* SPCL runs each backbone per modality and sums the logits (Eq. 4.21–4.22); here the method is
  left as it is: its own fused prediction gives ℓ and its ``modality_logits`` give s.
* The loss is normalised by Σv (Eq. 4.32); the code divides by all turns. The code caps λ at 60;
  with these defaults λ stays far below it within any run of this project.
* Pacing: exponential (the default) wherever s is defined, competence-based (Table 4.9) where it
  is not; the cosine and moving-average schedules of Table 4.9 (ablations) are not implemented.
* The method's ``aux_loss`` and ``label_loss`` are not self-paced (the dissertation's backbones have
  none); its ``turn_loss`` (extra heads included) is.
"""
from __future__ import annotations

import math

import torch

from merc.models.data.turns import MODALITIES
from merc.models.methods.base import MethodOutput
from merc.models.methods.plugins import TrainingPlugin

REGULARIZERS = ("hard", "linear", "logistic")


class SelfPacedCurriculum(TrainingPlugin):
    """SPCL: each turn's loss counts only once its difficulty falls under a growing threshold."""

    name = "spcl"

    def __init__(self, epsilon: float = 0.8, growth: float = 1.1, regularizer: str = "hard",
                 conversation_score: bool = True, total_epochs: int = 30, c0: float = 0.01,
                 complete_fraction: float = 0.95) -> None:
        if regularizer not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {regularizer!r} (known: {', '.join(REGULARIZERS)})")
        if epsilon <= 0 or growth < 1:
            raise ValueError("SPCL needs epsilon > 0 and growth >= 1")
        self.epsilon, self.growth, self.regularizer = epsilon, growth, regularizer
        self.conversation_score = conversation_score
        self.total_epochs, self.c0 = max(int(total_epochs), 1), c0
        self.complete_fraction = complete_fraction
        self.selected: dict[int, list[float]] = {}  # epoch -> [Σ v, labelled turns]

    def threshold(self, epoch: int) -> float:
        """λ for a 1-based epoch (Eq. 4.29)."""
        return self.epsilon * self.growth ** max(epoch - 1, 0)

    def imbalance(self, output: MethodOutput, batch: dict) -> torch.Tensor | None:
        """(B,) s_i (Eq. 4.25–4.26), NaN where fewer than two modalities are observed in the
        dialogue; None when the method gives no unimodal logits."""
        labels, mask = batch["labels"], batch["mask"]
        labelled = labels >= 0
        scores, seen = [], []
        for k, m in enumerate(MODALITIES):
            if m not in output.modality_logits:
                continue
            p = torch.softmax(output.modality_logits[m].detach().float(), -1)
            p = p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            present = (labelled & mask[..., k]).float()
            count = present.sum(1)
            scores.append(labelled.sum(1) * (p * present).sum(1) / count.clamp(min=1))
            seen.append(count > 0)
        if not scores:
            return None
        s, ok = torch.stack(scores, 1), torch.stack(seen, 1).float()  # (B, M)
        n = ok.sum(1)
        mean = (s * ok).sum(1) / n.clamp(min=1)
        var = ((s - mean.unsqueeze(1)) ** 2 * ok).sum(1) / (n - 1).clamp(min=1)
        return torch.where(n >= 2, var.sqrt(), torch.full_like(var, float("nan")))

    def difficulty(self, per_turn: torch.Tensor, output: MethodOutput,
                   batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ρ_ij (Eq. 4.27), and (B, T) bool: turns whose dialogue has no imbalance score,
        where ρ_ij = ℓ_ij (the "w/o conv-score" difficulty, paced by competence)."""
        loss = per_turn.detach().float()
        s = self.imbalance(output, batch) if self.conversation_score else None
        if s is None:
            return loss, torch.ones_like(loss, dtype=torch.bool)
        s = s.unsqueeze(1).expand_as(loss)
        both = s + loss
        harmonic = torch.where(both > 0, 2 * s * loss / both.clamp(min=1e-12), torch.zeros_like(loss))
        alone = torch.isnan(s)
        return torch.where(alone, loss, harmonic), alone

    def competence(self, epoch: int) -> float:
        """c_t = min(1, √(t (1 − c0²) / T + c0²)), Table 4.9's competence-based pacing."""
        return min(1.0, math.sqrt(epoch * (1 - self.c0 ** 2) / self.total_epochs + self.c0 ** 2))

    def regularize(self, difficulty: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
        """v = g(ρ, λ): Eq. 4.28, or a soft regulariser."""
        if self.regularizer == "hard":
            return (difficulty <= lam).float()
        lam = torch.as_tensor(lam, dtype=difficulty.dtype).clamp(min=1e-8)
        if self.regularizer == "linear":
            return (1 - difficulty / lam).clamp(min=0)
        return (1 + torch.exp(-lam)) / (1 + torch.exp((difficulty - lam).clamp(max=80)))

    def weights(self, difficulty: torch.Tensor, alone: torch.Tensor, labelled: torch.Tensor,
                epoch: int) -> torch.Tensor:
        """(B, T) v_ij, 0 on unlabelled turns: threshold λ_e where ρ uses the imbalance score;
        elsewhere λ = the c_e-quantile of those turns' losses in the batch."""
        v = self.regularize(difficulty, self.threshold(epoch))
        pool = alone & labelled
        if pool.any():
            lam = torch.quantile(difficulty[pool], self.competence(epoch))
            v = torch.where(alone, self.regularize(difficulty, lam), v)
        return v * labelled

    def batch_loss(self, per_turn: torch.Tensor, output: MethodOutput, batch: dict, epoch: int) -> torch.Tensor:
        labelled = batch["labels"] >= 0
        with torch.no_grad():
            v = self.weights(*self.difficulty(per_turn, output, batch), labelled, epoch)
        record = self.selected.setdefault(epoch, [0.0, 0.0])
        record[0] += float(v.sum())
        record[1] += float(labelled.sum())
        return (per_turn * v).sum() / v.sum().clamp(min=1e-8)

    def selected_fraction(self, epoch: int) -> float | None:
        """Σ v over the labelled turns seen in `epoch` (None if it saw none)."""
        chosen, total = self.selected.get(epoch, (0.0, 0.0))
        return chosen / total if total else None

    def pool_complete(self, epoch: int) -> bool:
        """The whole training set is in play once `complete_fraction` of an epoch's labelled turns
        were selected (weighted, for soft regularisers): early stopping only counts from then on."""
        fraction = self.selected_fraction(epoch)
        return fraction is None or fraction >= self.complete_fraction
