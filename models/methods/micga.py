"""Mi-CGA (dissertation ch. 3; Nguyen et al., "Cross-modal Graph Attention under incomplete
modalities", Neurocomputing 623:129342, 2025) as a seed method.

What is implemented, per dialogue of N turns, modalities in `MODALITIES` order (text, audio, face):

* IMR, unimodal encoders (Eq. 3.1–3.3): audio and face x_i = W_e u_i + b; text a BiLSTM over the
  dialogue's turns, ``hidden``/2 units per direction. A feature behind a False mask is zero-filled
  *before* encoding (it is never read), and the encoded blocks are masked, X^miss = X ⊙ Ω
  (Eq. 3.7), at the modality-block level of each turn.
* Speaker embedding (Eq. 3.8–3.9): X^miss_spk = η S_emb ⊕ X^miss, S_emb the one-hot dialogue-local
  speaker (|S| = ``max_speakers`` columns), so d̄ = |S| + 3·``hidden``.
* Feature Estimation, FE (Eq. 3.10–3.13): a GCN encoder f_φ over the dialogue graph and a linear
  decoder g_θ per modality block give X^coarse; observed blocks are kept and missing ones filled
  with the estimate, then X^FE = (1−λ) X^coarse + λ X^miss_spk (observed blocks stay as they are,
  a missing block becomes (1−λ)·estimate).
* MulGAT (Eq. 3.14–3.19): ``gat_layers`` layers of H = ``heads`` S-GAT heads with GATv2 scores
  e_ij = φᵀ LeakyReLU(Θ [x_i ⊕ x_j]), aggregation x_agg,i = Σ_j α_ij W_agg x_j and state update
  x_com,i = ELU(Σ_j α_ij W_com x_agg,j) (the same α twice), heads concatenated and projected by Ψ.
* CMA (Eq. 3.20–3.25): single-head scaled dot-product attention in both directions for the pairs
  (a, t), (t, v), (v, a), over the modality slices of X^FE (not of the GAT output).
* Classifier (Eq. 3.26–3.27): [X_GAT ‖ X_Cross] → ReLU(W_l ·) → W_s → logits; the trainer's
  cross-entropy is L_cls (Eq. 3.29).
* Reconstruction loss L_rct (Eq. 3.28–3.31) in `MethodOutput.aux_loss`: MSE (L_1, the default of
  §3.2.5) or the sparse-autoencoder KL (L_2), times ``rec_weight``; deterministic, so it is
  returned in eval mode too.

Options (``config.options``), with defaults:

* ``lam`` (0.5): λ of Eq. 3.13 (§3.3.1). ``eta`` (1.0): η of Eq. 3.9 (not given).
* ``loss`` ("mse"): "mse" (L_1), "kl" (L_2) or "none" (L_3). ``sparsity`` (0.2): p of Eq. 3.31.
  ``rec_weight`` (1.0): Eq. 3.28 adds L_rct unweighted.
* ``gat_layers`` (2) and ``heads`` (4): §3.3.1. ``att_dim`` (``hidden``/``heads``): d_att.
* ``max_speakers`` (16): one-hot width; dialogue-local indices beyond it share the last column.

Causality (``config.future_window``): Mi-CGA is non-causal (BiLSTM, and a graph that connects every
pair of turns of the conversation). None (default): the paper's complete graph and full BiLSTM.
k ≥ 0: the graph, the GAT and the cross-modal attention see turns j ≤ i + k (`time_window`), and
the backward LSTM of turn i runs over turns i+k … i only (k = 0: over turn i alone). k = 0 is the
streaming variant, exact: turn t depends on turns ≤ t. For k > 0 the window applies per stage
(BiLSTM, FE, each GAT layer, CMA), so stacked stages see further than k turns ahead.

Choices where the dissertation is silent or inconsistent (digest §1 and §7):

* Default loss: §3.2.5 adopts L_1 (MSE); the results prose and Fig. 3.8 (p = 0.2 "the default")
  suggest L_2 (KL). We default to MSE, the one that measures estimation, and offer "kl".
* Targets of L_MSE: Eq. 3.30 compares X^FE with the complete X, including the missing blocks,
  whose truth we never read. We evaluate it where the truth is known, the *observed* blocks, on
  the value FE would put there if the block were missing, ((1−λ)·estimate − x)², averaged over the
  observed entries (Eq. 3.30's 1/|X|). The targets are the encoder outputs, detached, so that
  the loss cannot fall by shrinking the encoders. With this reading λ scales the estimate only,
  and the linear decoder can absorb it. No observed entry: the loss is 0.
* FE encoder f_φ: Eq. 3.10 names a GCN on Ã = D̂^-1/2 (A + I) D̂^-1/2, but on the paper's
  complete graph that gives every turn the same embedding (the dialogue mean), which cannot
  estimate one turn's missing block. Following the footnote ("other GNN variants"), f_φ is one
  GCN layer with a root weight, z_i = ReLU(Σ_j Ã_ij W_g x_j + W_r x_i + b), and the estimate of
  block m at turn i leaves out turn i's own block m (from the self-loop and the root term), so
  training on observed blocks is the same task as filling a missing one: estimate block m of
  turn i from its other blocks, its speaker and every block of its neighbours. Ã is the row
  normalisation D̂^-1 Â, which equals the symmetric one on the complete graph and, unlike it,
  keeps a windowed graph causal.
* KL loss: p̂_j is the mean of Sigmoid(X^FE_j) over the batch's real turns (never padding), for
  the modality dimensions (not the speaker one-hot).
* The text block's estimate reads its neighbours' BiLSTM states, which contain the turn's own text
  when it is observed (in training), not when it is missing: the paper's order (BiLSTM before FE)
  has the same optimism, kept as is.
* Widths: the paper's d_a, d_t, d_v, d_Q, d_K, d_V are not given; all are ``hidden``. Each S-GAT
  head has ``hidden``/``heads`` channels (the paper writes W_agg ∈ R^{d̄×d̄} per head, 4·2·d̄² weights
  per layer), concatenated to ``hidden`` and projected by Ψ; W_l maps to ``hidden``.
* σ in Eq. 3.18: ELU (GAT's). Dropout (``config.dropout``, not given) on the encoder inputs,
  between GAT layers, on X_Final and before the output layer.

Simplified: no per-modality logits, no padding-row predictions (their logits are 0); missing
masks come from the data and the trainer's modality dropout, not from Mi-CGA's own ρ sampler.
"""
from __future__ import annotations

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

M = len(MODALITIES)
CMA_PAIRS = [("audio", "text"), ("text", "face"), ("face", "audio")]  # Eq. 3.24: a⇄t, t⇄v, v⇄a


def allowed_pairs(speakers: torch.Tensor, future: int | None) -> torch.Tensor:
    """(B, T, T) bool, [b, i, j]: turn j is a neighbour of turn i (both real, j within the window);
    every turn, padding included, keeps itself so that no attention row is empty."""
    t = speakers.shape[1]
    real = turn_mask(speakers)
    eye = torch.eye(t, dtype=torch.bool, device=speakers.device)
    return (time_window(t, future, speakers.device)[None] & real[:, None, :] & real[:, :, None]) | eye


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=dim)


class WindowedBiLSTM(nn.Module):
    """Eq. 3.3 over padded dialogues: the forward LSTM reads turns ≤ i; the backward one reads the
    dialogue's end down to i (window None) or turns i+k … i (window k), never padding."""

    def __init__(self, dim: int, hidden: int, future: int | None) -> None:
        super().__init__()
        self.forward_lstm = nn.LSTM(dim, hidden // 2, batch_first=True)
        self.backward_lstm = nn.LSTM(dim, hidden - hidden // 2, batch_first=True)
        self.future = future

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        ahead, _ = self.forward_lstm(x)  # padding only follows a dialogue: it never reaches a real turn
        pos = torch.arange(t, device=x.device)
        if self.future is None:  # reverse each dialogue inside its length; padding stays at the end
            idx = torch.where(pos[None] < lengths[:, None], lengths[:, None] - 1 - pos[None], pos[None])
            rev = x.gather(1, idx[..., None].expand_as(x))
            back, _ = self.backward_lstm(rev)
            back = back.gather(1, idx[..., None].expand(-1, -1, back.shape[-1]))
        else:  # one short sequence per turn i: x_{i+r}, …, x_i with r = min(k, last turn - i)
            k = min(self.future, t - 1)
            reach = (lengths[:, None] - 1 - pos[None]).clamp(0, k)  # (B, T)
            steps = torch.arange(k + 1, device=x.device)
            src = (pos[None, :, None] + reach[..., None] - steps[None, None]).clamp(0, t - 1)  # (B, T, k+1)
            seqs = x[torch.arange(b, device=x.device)[:, None, None], src]  # (B, T, k+1, D); steps past r unused
            out, _ = self.backward_lstm(seqs.reshape(b * t, k + 1, -1))
            out = out.reshape(b, t, k + 1, -1)
            back = out.gather(2, reach[..., None, None].expand(-1, -1, 1, out.shape[-1]))[:, :, 0]
        return torch.cat([ahead, back], dim=-1)


class MulGATLayer(nn.Module):
    """H S-GAT heads (Eq. 3.15–3.18), concatenated and projected by Ψ (Eq. 3.19)."""

    def __init__(self, dim: int, hidden: int, heads: int, att_dim: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.att_dim = heads, hidden // heads, att_dim
        self.theta = nn.Linear(dim, 2 * heads * att_dim)  # Θ_att acting on x_i and on x_j
        self.phi = nn.Parameter(torch.randn(heads, att_dim) / att_dim ** 0.5)
        self.w_agg = nn.Linear(dim, hidden, bias=False)
        self.w_com = nn.Parameter(torch.randn(heads, self.head_dim, self.head_dim) / self.head_dim ** 0.5)
        self.psi = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qi, kj = self.theta(x).view(b, t, 2, self.heads, self.att_dim).unbind(2)
        e = torch.einsum("bijha,ha->bhij", F.leaky_relu(qi[:, :, None] + kj[:, None], 0.2), self.phi)  # Eq. 3.17
        alpha = masked_softmax(e, allowed[:, None], dim=-1)  # Eq. 3.16
        v = self.w_agg(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        agg = alpha @ v  # Eq. 3.15
        com = F.elu(alpha @ torch.einsum("bhtd,hde->bhte", agg, self.w_com))  # Eq. 3.18
        return self.psi(com.transpose(1, 2).reshape(b, t, -1))  # Eq. 3.19


class CrossModalAttention(nn.Module):
    """CMA_{δ→γ} (Eq. 3.20–3.21): queries from γ, keys and values from δ."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, source: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(self.q(target), self.k(source), self.v(source), attn_mask=allowed)


class MiCGA(ERCMethod):
    """IMR (encoders, speaker, feature estimation) then CGA-Net (MulGAT ‖ CMA); see the module doc."""

    name = "micga"
    causal = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o, h = config.options, config.hidden
        self.lam = float(o.get("lam", 0.5))
        self.eta = float(o.get("eta", 1.0))
        self.loss = o.get("loss", "mse")
        if self.loss not in ("mse", "kl", "none"):
            raise ValueError(f"loss must be 'mse', 'kl' or 'none', not {self.loss!r}")
        self.sparsity = float(o.get("sparsity", 0.2))
        self.rec_weight = float(o.get("rec_weight", 1.0))
        self.max_speakers = int(o.get("max_speakers", 16))
        heads = int(o.get("heads", 4))
        att_dim = int(o.get("att_dim", h // heads))
        self.future = config.future_window
        d_bar = self.max_speakers + M * h
        self.blocks = [slice(self.max_speakers + k * h, self.max_speakers + (k + 1) * h) for k in range(M)]

        self.dropout = nn.Dropout(config.dropout)
        self.text_encoder = WindowedBiLSTM(config.dims["text"], h, self.future)
        self.encoders = nn.ModuleDict({m: nn.Linear(config.dims[m], h) for m in MODALITIES if m != "text"})
        self.fe_graph = nn.Linear(d_bar, h)  # W_g of f_φ (neighbours, self-loop included)
        self.fe_root = nn.Linear(d_bar, h, bias=False)  # W_r of f_φ (the turn itself)
        self.fe_decoder = nn.ModuleList(nn.Linear(h, h) for _ in range(M))  # g_θ, one block per modality
        self.gat = nn.ModuleList(MulGATLayer(d_bar if i == 0 else h, h, heads, att_dim)
                                 for i in range(int(o.get("gat_layers", 2))))
        self.cma = nn.ModuleDict({f"{s}->{t}": CrossModalAttention(h)
                                  for a, c in CMA_PAIRS for s, t in ((a, c), (c, a))})
        self.hidden_layer = nn.Linear(h + 2 * len(CMA_PAIRS) * h, h)
        self.output = nn.Linear(h, config.n_classes)

    def encode(self, features: dict[str, torch.Tensor], present: torch.Tensor,
               speakers: torch.Tensor) -> torch.Tensor:
        """X^miss_spk (B, T, d̄), Eq. 3.1–3.9: speaker one-hot, then the masked modality blocks."""
        b, t = speakers.shape
        real = turn_mask(speakers)
        lengths = real.sum(1)
        spk = F.one_hot(speakers.clamp(0, self.max_speakers - 1), self.max_speakers).float() * real[..., None]
        out = [self.eta * spk]
        for k, m in enumerate(MODALITIES):
            here = present[..., k:k + 1]
            if m not in features:
                out.append(spk.new_zeros(b, t, self.config.hidden))
                continue
            u = self.dropout(features[m].masked_fill(~here, 0.0))  # zero-filled: never read where absent
            x = self.text_encoder(u, lengths) if m == "text" else self.encoders[m](u)
            out.append(x * here)  # Eq. 3.7
        return torch.cat(out, dim=-1)

    def estimate(self, x: torch.Tensor, allowed: torch.Tensor) -> list[torch.Tensor]:
        """g_θ(f_φ(X^miss_spk, Ã)) per modality block (Eq. 3.10–3.11), each turn's own block left out."""
        a_hat = allowed.float()
        a_norm = a_hat / a_hat.sum(-1, keepdim=True)  # D̂^-1 Â
        self_weight = a_norm.diagonal(dim1=1, dim2=2)[..., None]
        graph = a_norm @ self.fe_graph(x)
        root = self.fe_root(x)
        estimates = []
        for k, cols in enumerate(self.blocks):
            own = x[..., cols]
            z = (graph - self_weight * F.linear(own, self.fe_graph.weight[:, cols])
                 + root - F.linear(own, self.fe_root.weight[:, cols]))
            estimates.append(self.fe_decoder[k](F.relu(z)))
        return estimates

    def reconstruction_loss(self, x_miss: torch.Tensor, x_fe: torch.Tensor, estimates: list[torch.Tensor],
                            present: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """L_rct (Eq. 3.30 or 3.31), see the module doc for what it is computed on."""
        if self.loss == "mse":
            err, count = x_fe.new_zeros(()), 0
            for k, cols in enumerate(self.blocks):
                here = present[..., k]
                diff = (1 - self.lam) * estimates[k][here] - x_miss[..., cols][here].detach()
                err, count = err + diff.pow(2).sum(), count + diff.numel()
            return self.rec_weight * err / max(count, 1)
        if self.loss == "kl":
            if not real.any():
                return x_fe.new_zeros(())
            p = self.sparsity
            p_hat = torch.sigmoid(x_fe[real][:, self.max_speakers:]).mean(0).clamp(1e-6, 1 - 1e-6)
            kl = p * torch.log(p / p_hat) + (1 - p) * torch.log((1 - p) / (1 - p_hat))
            return self.rec_weight * kl.sum()
        return x_fe.new_zeros(())

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> MethodOutput:
        real = turn_mask(speakers)
        present = mask & real[..., None] & torch.tensor([m in features for m in MODALITIES], device=mask.device)
        allowed = allowed_pairs(speakers, self.future)
        x_miss = self.encode(features, present, speakers)
        estimates = self.estimate(x_miss, allowed)
        # Eq. 3.12-3.13: observed blocks kept in X^coarse, missing ones filled, then blended with X^miss
        coarse = x_miss.clone()
        for k, cols in enumerate(self.blocks):
            coarse[..., cols] = torch.where(present[..., k:k + 1], x_miss[..., cols], estimates[k])
        x_fe = (1 - self.lam) * coarse + self.lam * x_miss
        aux = self.reconstruction_loss(x_miss, x_fe, estimates, present, real)

        g = x_fe
        for i, layer in enumerate(self.gat):
            g = layer(self.dropout(g) if i else g, allowed)
        slices = {m: x_fe[..., self.blocks[k]] for k, m in enumerate(MODALITIES)}
        cross = [self.cma[f"{s}->{t}"](slices[s], slices[t], allowed)
                 for a, c in CMA_PAIRS for s, t in ((a, c), (c, a))]  # Eq. 3.23-3.25: [H^γ, H^δ] per pair
        final = torch.cat([g, *cross], dim=-1)  # Eq. 3.26
        logits = self.output(self.dropout(F.relu(self.hidden_layer(self.dropout(final)))))
        return MethodOutput(logits * real[..., None], aux_loss=aux)
