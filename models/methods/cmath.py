"""CMATH (Zhu et al., "Cross-Modality Augmented Transformer with Hierarchical Variational
Distillation", digest Paper 1) as a seed method, at small scale. Not causal: its transformers
attend over the whole dialogue. ``future_window`` w limits every attention to w later turns (the
reconstruction convolution then looks back only); stacked layers compound, so with ``layers`` L a
turn's output depends on at most L·w later turns, and w = 0 is exactly causal.

What is implemented (equation numbers of the paper):

* Modality reconstruction (Eqs. 1-3): per modality a Conv1D over turns down to ``hidden``
  (U'_m) and a Conv1D back up (U''_m); L_rec is the squared error of U''_m against U_m over the
  turns where m is present.
* H_m = U'_m + S + P (Eqs. 5-8): learned speaker embedding and sinusoidal turn position.
* CMA-Transformer (Eqs. 9-14), one per central modality c with the other two as auxiliaries a:
  H_{a->c} = Norm(FFN(Ĥ) + Ĥ), Ĥ = Norm(CA(H_c, H_a, H_a) + H_c);
  H_{c->c} = Norm(FFN(Ĥ) + Ĥ), Ĥ = Norm(SA(H_c) + Σ_a H_{a->c} + H_c);
  H'_c = Gate(H_{c->c}, H_{a->c}...). Text-centred is the paper's main case; the audio- and
  face-centred blocks have the same form and their own parameters.
* Variational fusion (Eqs. 15-17): μ_m = MLP^μ_m(H'_m), σ_m = softplus(MLP^σ_m(H'_m)); μ_x, σ_x
  are the averages over the modalities present at the turn; H'_x = μ_x + ε σ_x in training, μ_x
  in evaluation. The prediction (``logits``) is Classifier_x(H'_x), the teacher.
* Hierarchical distillation (Eqs. 18-23): L_mse = Σ_m ||H'_x - H'_m||², L_kl = Σ_m KL(Y_x || Y_m),
  both over the turns where m is present; ``aux_loss`` = rec_weight·L_rec + γ1·L_mse + γ2·L_kl
  (Eq. 24). The per-modality cross-entropies of Eq. 22 need labels, which `forward` does not get:
  `turn_loss` adds them to each turn's loss in training.

Options (``config.options``) and defaults:

* ``layers`` (1): stacked CMA-Transformer layers (the paper gives no number);
* ``heads`` (4): attention heads;
* ``kernel`` (1): Conv1D kernel over turns of the reconstruction (paper: k_m, value not given;
  1 as in the MMGCN-style feature projections CMATH's feature set comes from; a larger kernel
  is centred over the dialogue, and looks back only when ``future_window`` is set);
* ``gamma_mse`` (1.0), ``gamma_kl`` (1.2): γ1, γ2 (the paper's MELD values; IEMOCAP used 1.8);
* ``rec_weight`` (1.0): weight of L_rec (unweighted in Eq. 24);
* ``max_speakers`` (16): speaker embedding rows; later indices share the last row;
* ``detach_teacher`` (True): distillation moves the students only (teacher → student).

Choices where the paper is silent or inconsistent:

* Missing modalities (the paper assumes all three present): a turn's absent modality enters as
  the learned absence embedding (`ModalityInputs`-style), is masked out as a key in every
  attention (a query with no visible key gets a zero message, never a NaN), an auxiliary with no
  visible key at a turn is left out of Eq. 11's sum and of the gate, an absent modality is left
  out of the average of Eq. 16 (a turn with no modality at all uses the text-centred one), and
  L_rec, L_mse, L_kl and the per-modality cross-entropy count only turns where m is present. A
  modality absent from the whole batch has its centred block skipped (its outputs would be
  unused); text-only corpora therefore cost one CMA block.
* Gate (form not given): per-dimension softmax over the available sources of a linear map of
  their concatenation.
* Loss scales: squared errors are averaged over dimensions and turns (PyTorch's MSELoss), KL is
  summed over classes and averaged over turns, so the γ's weigh terms of cross-entropy's size.
* No KL-to-prior term on the Gaussians (none is stated); σ is kept positive with softplus.
* Norm is LayerNorm (per turn: no statistics across turns, so ``future_window=0`` is causal).
* Sizes: ``config.hidden`` instead of d = 400-500, so that all methods are compared at one size.
  ``config.dropout`` drops H_m, every residual branch and the classifiers' inputs, not the
  attention weights. Adam and the paper's learning rates are the common trainer's AdamW.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.data.turns import MODALITIES
from merc.models.methods.base import (
    ERCMethod,
    MethodConfig,
    MethodOutput,
    per_turn_loss,
    time_window,
    turn_mask,
)

# ---------------------------------------------------------------------------------------------
# Pieces DQF shares (they would sit well in base.py / plugins.py)

@dataclass
class HeadsOutput(MethodOutput):
    """A `MethodOutput` with extra prediction heads whose cross-entropy the method's paper adds
    to the loss: ``head_logits[name]`` (B, T, C), counted where ``head_mask[name]`` (B, T)."""

    head_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    head_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # the parts of aux_loss, detached


def with_head_losses(per_turn: torch.Tensor, output: MethodOutput, labels: torch.Tensor) -> torch.Tensor:
    """`per_turn` plus each extra head's cross-entropy where its mask holds (CMATH's Eq. 22, DQF's
    Eq. 1): a method's `turn_loss`, so that a curriculum weighting turns (SPCL) weights all of it."""
    if not isinstance(output, HeadsOutput):  # no extra heads
        return per_turn
    for name, logits in output.head_logits.items():
        per_turn = per_turn + per_turn_loss(logits, labels) * output.head_mask[name]
    return per_turn


class MaskedAttention(nn.Module):
    """Multi-head attention with a (B, Tq, Tk) bool mask of allowed keys. A query row with no
    allowed key gets exactly zero (softmax over an empty set would give NaN, also in gradients).
    No dropout on the attention weights: callers drop the residual branch (cheaper on CPU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        b, tq, d = query.shape
        some = allowed.any(-1, keepdim=True)  # (B, Tq, 1)
        safe = allowed | ~some  # rows with no key attend anywhere; their result is zeroed below
        out = F.scaled_dot_product_attention(self._split(self.q(query)), self._split(self.k(key)),
                                             self._split(self.v(value)), attn_mask=safe[:, None])
        return torch.where(some, self.out(out.transpose(1, 2).reshape(b, tq, d)), 0.0)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, heads, T, d / heads)
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)


class TurnConv(nn.Module):
    """Conv1d over a dialogue's turns: centred when the whole dialogue is visible (future None),
    otherwise over the current and earlier turns only, so that the future window is spent by the
    attention alone."""

    def __init__(self, d_in: int, d_out: int, kernel: int, future: int | None) -> None:
        super().__init__()
        self.right = (kernel - 1) // 2 if future is None else 0
        self.left = kernel - 1 - self.right
        self.conv = nn.Conv1d(d_in, d_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_in) -> (B, T, d_out)
        if self.conv.kernel_size[0] == 1:  # the same map, several times faster on CPU than conv1d
            return F.linear(x, self.conv.weight[..., 0], self.conv.bias)
        return self.conv(F.pad(x.transpose(1, 2), (self.left, self.right))).transpose(1, 2)


def feed_forward(dim: int) -> nn.Sequential:
    """Position-wise FFN (its residual branch is dropped by the caller)."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


def key_masks(window: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, T, T) allowed keys: within the time window and a valid key turn (keys: (B, T))."""
    return window[None] & keys[:, None, :]


# ---------------------------------------------------------------------------------------------

def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, dim) Eqs. 6-7: sin on even, cos on odd dimensions of the turn index."""
    i = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    k = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    angle = i / torch.pow(10000.0, k / dim)
    p = torch.zeros(length, dim, device=device)
    p[:, 0::2] = torch.sin(angle)
    p[:, 1::2] = torch.cos(angle[:, :dim // 2])
    return p


class CMABlock(nn.Module):
    """One CMA-Transformer centred on one modality (Eqs. 9-12)."""

    def __init__(self, auxiliaries: tuple[str, ...], dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.auxiliaries = auxiliaries
        self.cross = nn.ModuleDict({a: MaskedAttention(dim, heads) for a in auxiliaries})
        self.cross_ffn = nn.ModuleDict({a: feed_forward(dim) for a in auxiliaries})
        self.cross_norm = nn.ModuleDict({a: nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
                                         for a in auxiliaries})
        self.self_attn = MaskedAttention(dim, heads)
        self.ffn = feed_forward(dim)
        self.norm = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.gate = nn.Linear((1 + len(auxiliaries)) * dim, (1 + len(auxiliaries)) * dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, central: str, h: dict[str, torch.Tensor], allowed: dict[str, torch.Tensor]) -> torch.Tensor:
        hc = h[central]
        injected, sources, on = self.drop(self.self_attn(hc, hc, hc, allowed[central])), [], []
        for a in self.auxiliaries:
            if a not in h:  # modality absent from the whole batch
                sources.append(torch.zeros_like(hc))
                on.append(torch.zeros_like(hc[..., :1], dtype=torch.bool))
                continue
            visible = allowed[a].any(-1, keepdim=True)  # (B, T, 1): some auxiliary key in reach
            norms = cast(nn.ModuleList, self.cross_norm[a])
            x = norms[0](self.drop(self.cross[a](hc, h[a], h[a], allowed[a])) + hc)  # Eq. 9
            x = norms[1](self.drop(self.cross_ffn[a](x)) + x)
            injected = injected + x * visible  # Eq. 11's sum, available auxiliaries only
            sources.append(x)
            on.append(visible)
        x = self.norm[0](injected + hc)
        hcc = self.norm[1](self.drop(self.ffn(x)) + x)
        stack = torch.stack([hcc, *sources], dim=-2)  # (B, T, S, d)
        weights = self.gate(stack.flatten(-2)).reshape(stack.shape)
        available = torch.cat([torch.ones_like(on[0]), *on], dim=-1)[..., None]  # (B, T, S, 1)
        weights = torch.softmax(weights.masked_fill(~available, float("-inf")), dim=-2)  # Eq. 12
        return (weights * stack).sum(-2)


class CMATH(ERCMethod):
    name = "cmath"
    causal = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o, d, p = config.options, config.hidden, config.dropout
        self.layers, heads, kernel = int(o.get("layers", 1)), int(o.get("heads", 4)), int(o.get("kernel", 1))
        self.gamma_mse, self.gamma_kl = float(o.get("gamma_mse", 1.0)), float(o.get("gamma_kl", 1.2))
        self.rec_weight = float(o.get("rec_weight", 1.0))
        self.detach_teacher = bool(o.get("detach_teacher", True))
        self.max_speakers = int(o.get("max_speakers", 16))
        fw = config.future_window
        self.down = nn.ModuleDict({m: TurnConv(config.dims[m], d, kernel, fw) for m in MODALITIES})  # Eq. 1
        self.up = nn.ModuleDict({m: TurnConv(d, config.dims[m], kernel, fw) for m in MODALITIES})  # Eq. 2
        self.absent = nn.Parameter(torch.randn(len(MODALITIES), d) * 0.02)
        self.speaker = nn.Embedding(self.max_speakers, d)  # Eq. 5
        self.blocks = nn.ModuleList([
            nn.ModuleDict({c: CMABlock(tuple(m for m in MODALITIES if m != c), d, heads, p) for c in MODALITIES})
            for _ in range(self.layers)])
        self.mu = nn.ModuleDict({m: _mlp(d) for m in MODALITIES})  # Eq. 15
        self.sigma = nn.ModuleDict({m: _mlp(d) for m in MODALITIES})
        self.classify = nn.ModuleDict({m: nn.Linear(d, config.n_classes) for m in (*MODALITIES, "fused")})
        self.drop = nn.Dropout(p)

    def turn_loss(self, output: MethodOutput, labels: torch.Tensor) -> torch.Tensor:
        return with_head_losses(super().turn_loss(output, labels), output, labels)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> HeadsOutput:
        b, t = speakers.shape
        real = turn_mask(speakers)
        present = mask & real[..., None]  # (B, T, 3)
        # centred blocks run for text and for any modality present somewhere in the batch
        active = [m for k, m in enumerate(MODALITIES) if m == "text" or (m in features and present[..., k].any())]
        window = time_window(t, self.config.future_window, speakers.device)
        positions = sinusoidal_positions(t, self.config.hidden, speakers.device)
        context = self.speaker(speakers.clamp(0, self.max_speakers - 1)) + positions  # S + P
        h, allowed, rec = {}, {}, []
        for m in active:
            k = MODALITIES.index(m)
            here = present[..., k:k + 1]
            if m in features:
                x = torch.where(here, features[m], 0.0)  # absent values are never read
                down = self.down[m](x)
                recon = self.up[m](down)
                rec.append(_masked_mean(((recon - x) ** 2).mean(-1), here[..., 0], x.new_zeros(())))  # Eq. 3
                u = torch.where(here, down, self.absent[k])
            else:
                u = self.absent[k].expand(b, t, -1)
            h[m] = self.drop(u + context)  # Eq. 8
            allowed[m] = key_masks(window, present[..., k])
        for layer in self.blocks:
            h = {c: cast(nn.ModuleDict, layer)[c](c, h, allowed) for c in active}  # Eqs. 13-14
        # variational fusion over the modalities present at each turn (Eqs. 15-17)
        weight = torch.stack([present[..., MODALITIES.index(m)] for m in active], -1).float()  # (B, T, M)
        weight[..., 0] = torch.where(weight.sum(-1) == 0, 1.0, weight[..., 0])  # no modality: text-centred
        weight = (weight / weight.sum(-1, keepdim=True))[..., None]
        mu = torch.stack([self.mu[m](h[m]) for m in active], -2)
        sigma = torch.stack([F.softplus(self.sigma[m](h[m])) for m in active], -2)
        mu_x, sigma_x = (weight * mu).sum(-2), (weight * sigma).sum(-2)
        fused = mu_x + torch.randn_like(sigma_x) * sigma_x if self.training else mu_x
        logits = self.classify["fused"](self.drop(fused))
        modality_logits = {m: self.classify[m](self.drop(h[m])) for m in active}
        # hierarchical distillation (Eqs. 18, 23); teacher = fused
        teacher_h = fused.detach() if self.detach_teacher else fused
        teacher_logp = torch.log_softmax(logits.detach() if self.detach_teacher else logits, -1)
        zero = logits.new_zeros(())
        mse, kl = zero, zero
        for m in active:
            here = present[..., MODALITIES.index(m)]
            mse = mse + _masked_mean(((teacher_h - h[m]) ** 2).mean(-1), here, zero)
            student_logp = torch.log_softmax(modality_logits[m], -1)
            kl_turn = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
            kl = kl + _masked_mean(kl_turn, here, zero)
        rec_loss = sum(rec, zero)
        aux = self.rec_weight * rec_loss + self.gamma_mse * mse + self.gamma_kl * kl  # Eq. 24 less L_ce
        head_mask = {m: present[..., MODALITIES.index(m)] for m in active}
        return HeadsOutput(logits, aux, modality_logits, head_logits=modality_logits, head_mask=head_mask,
                           losses={"rec": rec_loss.detach(), "mse": mse.detach(), "kl": kl.detach()})


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def _masked_mean(values: torch.Tensor, where: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, T) over where (B, T); `empty` when nothing is selected."""
    n = where.sum()
    return (values * where).sum() / n if n > 0 else empty
