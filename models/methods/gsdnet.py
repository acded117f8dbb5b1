"""GSDNet (Shou, Yao, Meng, Ai, Chen, Li: "Revisiting Incomplete Multimodality-Diffusion Emotion
Recognition from the Perspective of Graph Spectrum") as a seed method: missing modalities are
recovered by conditional score-based diffusion, of the node features and, with the eigenvectors
of the graph kept fixed, of its eigenvalues only; a GCN over the completed graph classifies.

What is implemented, per dialogue of N turns and modality m ∈ {text, audio, face}:

* Modality encoder (Eq. 12–14): X'_m = Conv1D(X_m, l_m) over the dialogue's turns to ``hidden``
  channels, plus the sinusoidal position encoding of the turn index. A feature behind a False mask
  is zero-filled before the convolution (never read).
* Feature diffusion (Eq. 8–11, 15–17): a VP SDE (β(t) = β_min + t(β_max − β_min) on t ∈ [0, 1],
  X(t) = α_t X(0) + σ_t ε). One network per modality m predicts X_m(0) from (X_m(t), t, the
  condition c_m = [X'_o, present_o] of the two other modalities o at the same turn); its score is
  s_θ = −(X_m(t) − α_t X̂_m(0)) / σ_t². L_s^θ (Eq. 11) is denoising score matching on the turns
  where m is present, X_m(0) = X'_m there (detached). Recovery runs the reverse process (Eq. 16)
  for ``steps`` steps from the prior's mean and gives X̂'_m; the refinement decoder D_X maps it
  back to the feature space, and L_rec (Eq. 17) compares D_X(X̂'_m) with the real features of the
  turns where m is present. The completed X̃_m is X'_m where m is present and X̂'_m where missing.
* Graph and spectral diffusion: per modality, the adjacency of a dialogue is the similarity graph
  A_m[i, j] = ReLU(cos(X̃_m,i, X̃_m,j)); A_m = U_m Λ_m U_mᵀ (eigh). Λ is diffused exactly like X
  (eigenvalues divided by the number of nodes, U fixed, as in the paper): a network per modality
  predicts the eigenvalues of A_m, rank by rank, from the other modalities' eigenvalues at the
  same rank (Eq. 8–11 for Λ; the condition also holds their fraction of present nodes, the
  relative rank and 1/N), D_Λ refines them (λ̂ = λ' + MLP), and L_s^φ and the eigenvalue part
  of L_rec are computed on the graphs whose modality is present at every node (the only ones whose
  true spectrum is known). A graph with a missing node is rebuilt as U_m diag(λ̂_m) U_mᵀ (U_m from
  the completed features, no gradient through eigh), clipped to ≥ 0.
* Fusion and prediction (Eq. 19–20): A = Σ_m w_m A_m / Σ_m w_m, w_m the fraction of the graph's
  nodes where m is present (a modality never observed adds no structure; text-only corpora give
  the text graph); H⁰ = W [X̃_t ‖ X̃_a ‖ X̃_v]; H^(l+1) = ReLU(Ã H^(l) W^(l)), Ã = D⁻¹(A + I);
  logits = W_o [H⁰ ‖ H^(L)]. Dropout (``config.dropout``) on the raw inputs, on H⁰ and before
  W_o. Loss: the trainer's cross-entropy (L_pred) plus ``aux_loss`` =
  β (L_rec + L_s^θ + L_s^φ) (Eq. 18, 20), in training mode only (it draws noise); None in eval.

Options (``config.options``), with defaults:

* ``kernel`` (3): l_m, the same for every modality (not given). ``steps`` (5): reverse steps
  ("after enough iterations"). ``beta`` (1.0): β of Eq. 20 (not given).
* ``beta_min`` (0.1), ``beta_max`` (20.0): the VP schedule (Song et al. 2021; the paper gives none).
* ``gcn_layers`` (2), ``score_hidden`` (``hidden``): width of the feature networks,
  ``spectral_hidden`` (32): width of the eigenvalue networks.

Causality (``config.future_window``): GSDNet is non-causal (its graph spans the conversation, its
convolution is centred). None (default): one graph per dialogue over all its turns, centred
convolution. k ≥ 0: turn t is classified on its own graph over turns ≤ t + k, decomposed, recovered
and passed through the GCN separately for each t (so the spectrum never mixes in later turns),
and the convolution's right reach is min(k, (l−1)/2). k = 0 is the streaming variant, exact: turn
t depends on turns ≤ t (it is the graph a live system has at turn t; with ``kernel`` 1 its output
at t is exactly the offline model's output for the dialogue cut after t, see the tests; with
l > 1 its convolution covers turns t−l+1 … t instead of being centred). For k > 0 the convolution
and the graph windows add up. Cost: the causal variant decomposes one graph per turn and modality
(eigenvalues of each view at its own size, batched by size; eigenvectors only of the graphs that
are rebuilt) and runs the GCN on O(T²) nodes per dialogue.

Choices where the paper is silent (digest, Paper 4 and the comparability warnings):

* The paper is evaluated on CMU-MOSI/MOSEI with complete training data; its L_rec needs the truth
  of the missing modality. We never read a feature behind a False mask: every target (L_rec,
  L_s^θ, L_s^φ) is computed where the modality is present, and the recovery network is built so
  that this is the same task as recovering a missing one (the condition never contains the
  modality being recovered).
* Missingness here is per turn, not per clip: the recovery is per turn (its condition carries
  context through the convolution), and a modality's graph is "missing" when any of its nodes is.
* How A is built, the SDE, the score and decoder networks and the GCN depth are not given: the
  similarity graph, VP SDE, two-hidden-layer SiLU MLPs predicting X(0), and 2 GCN layers are ours.
* Sampling: deterministic (the probability-flow / DDIM update with η = 0, started from the
  prior's mean 0) instead of Euler–Maruyama with fresh noise (Eq. 16), so that a prediction does
  not depend on a random draw (and the recovery in training is the one used at test time).
* Score-matching weight: the x(0)-prediction error ‖X̂(0) − X(0)‖², i.e. Eq. 11 weighted by
  σ_t⁴/α_t², which stays bounded as t → 0 (Eq. 11 unweighted does not).
* Targets in the encoder's space (L_s^θ) are detached, so the loss cannot fall by shrinking the
  encoder; L_rec is against raw features and trains the recovery path end to end.
* L_rec (Eq. 17, a sum of squared norms over the missing modalities) is, per modality, the mean
  squared error over the entries where the truth is known, summed over modalities; the same for
  the eigenvalues (over the known graphs' eigenvalues).
* Eigenvectors of a graph with a missing node come from the graph of the completed features (the
  paper does not say where U of a missing modality comes from). Each view's graph is decomposed
  on its own nodes, so later or padding turns never mix into its eigenpairs. Inside
  an exactly repeated eigenvalue U diag(λ̂) Uᵀ depends on the basis eigh returns (inherent to
  replacing Λ with U fixed); ReLU makes that common in small views (two turns whose cosine is
  ≤ 0 have the identity as their graph), and there the basis is whichever eigh returns.
* Text-only inputs: audio and face are recovered from text (their networks then learn only
  through the classification loss, having no observed target); their graphs get weight 0.
* The paper credits speaker modelling but describes none; none is used.

Simplified: no per-modality logits; padding rows get zero logits.
"""
from __future__ import annotations

import itertools
import math

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
OTHERS = [[o for o in range(M) if o != k] for k in range(M)]


def vp_schedule(t: torch.Tensor | float, beta_min: float, beta_max: float):
    """(α_t, σ_t) of the VP SDE: X(t) = α_t X(0) + σ_t ε."""
    t = torch.as_tensor(t, dtype=torch.float32)
    alpha = torch.exp(-0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min)
    return alpha, torch.sqrt(1 - alpha ** 2)


def time_features(t: torch.Tensor) -> torch.Tensor:
    """(…, 1) diffusion time -> (…, 8) Fourier features."""
    k = torch.arange(1, 5, dtype=t.dtype, device=t.device) * math.pi
    return torch.cat([torch.sin(k * t), torch.cos(k * t)], dim=-1)


def positional_encoding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Eq. 13: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(…)."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, :dim // 2]
    return pe


def graph_views(speakers: torch.Tensor, future: int | None) -> torch.Tensor:
    """The node sets of the graphs, (B, V, T) bool. future None: one view per dialogue (V = 1, its
    real turns), every turn classified in it. k: one view per turn t (V = T), turns ≤ t + k (empty
    for a padding turn), turn t classified in view t."""
    t = speakers.shape[1]
    real = turn_mask(speakers)
    if future is None:
        return real[:, None, :]
    return time_window(t, future, speakers.device)[None] & real[:, None, :] & real[:, :, None]


def similarity_graph(x: torch.Tensor) -> torch.Tensor:
    """(…, T, D) -> (…, T, T): ReLU of the cosine similarity of every pair of turns."""
    unit = F.normalize(x, dim=-1)
    return F.relu(unit @ unit.transpose(-1, -2))


def spectrum(adj: torch.Tensor, view: torch.Tensor, vectors: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigen-decomposition A = U diag(λ) Uᵀ of each view's graph, eigenvalues in descending order.

    adj (…, T, T) symmetric, zero outside the view; view (…, T). Each view's graph is decomposed
    on its own nodes only (views of one size together, one batched eigh per size), which is the
    decomposition of the padded graph restricted to the view: outside it, eigenvalues and vector
    entries are 0. Empty views are skipped (all 0). With `vectors` False only λ is computed
    (eigvalsh) and None is returned for U."""
    t = adj.shape[-1]
    flat_adj, flat_view = adj.reshape(-1, t, t), view.reshape(-1, t)
    lam = adj.new_zeros(flat_view.shape)
    vec = torch.zeros_like(flat_adj) if vectors else None
    sizes = flat_view.sum(-1)
    for size in sizes.unique().tolist():
        if size == 0:
            continue
        rows = (sizes == size).nonzero().squeeze(-1)
        nodes = flat_view[rows].nonzero()[:, 1].reshape(-1, size)  # (n, s): the view's turns, ascending
        sub = (flat_adj[rows].gather(-2, nodes[..., None].expand(-1, -1, t))
               .gather(-1, nodes[:, None, :].expand(-1, size, -1)))
        if vec is not None:  # vectors requested
            val, u = torch.linalg.eigh(sub)
            placed = sub.new_zeros(len(rows), t, t)
            placed[..., :size] = placed[..., :size].scatter(-2, nodes[..., None].expand(-1, -1, size), u.flip(-1))
            vec[rows] = placed
        else:
            val = torch.linalg.eigvalsh(sub)
        lam[rows, :size] = val.flip(-1)
    return lam.reshape(view.shape), vec.reshape(adj.shape) if vec is not None else None


def rebuild(vec: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """U diag(λ) Uᵀ."""
    return (vec * lam[..., None, :]) @ vec.transpose(-1, -2)


class StackedMLP(nn.Module):
    """One SiLU MLP per modality, run together: (M, …, in) -> (M, …, out). `first` is added to the
    first layer's pre-activation (a condition projected once, see `Denoiser`)."""

    def __init__(self, copies: int, sizes: list[int]) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(copies, a, b) / a ** 0.5)
                                        for a, b in itertools.pairwise(sizes))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(copies, 1, b)) for b in sizes[1:])

    def forward(self, x: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], -1, shape[-1])
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i == 0 and first is not None:
                x = x + first.reshape(x.shape)
            if i + 1 < len(self.weights):
                x = F.silu(x)
        return x.reshape(*shape[:-1], -1)


class Denoiser(nn.Module):
    """X̂(0) from (X(t), condition, t): the score networks of the M modalities (features or
    eigenvalues), each an MLP with two hidden layers on [X(t) ‖ t-features ‖ condition], run side
    by side on (M, …) inputs. The condition's share of the first layer is computed once per
    reverse process (`project`), not once per step."""

    def __init__(self, dim: int, cond_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = StackedMLP(M, [dim + 8, hidden, hidden, dim])
        self.cond = nn.Parameter(torch.randn(M, cond_dim, hidden) / (dim + 8 + cond_dim) ** 0.5)

    def project(self, cond: torch.Tensor) -> torch.Tensor:
        shape = cond.shape
        return torch.bmm(cond.reshape(shape[0], -1, shape[-1]), self.cond).reshape(*shape[:-1], -1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """cond: `project`ed."""
        return self.net(torch.cat([x, time_features(t)], dim=-1), first=cond)


def masked_mean(err: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Σ_m mean of err[m] over its known entries: (M, …) -> scalar; a modality with none adds 0."""
    err, known = err.flatten(1), known.flatten(1).to(err.dtype)
    return ((err * known).sum(1) / known.sum(1).clamp(min=1)).sum()


class GSDNet(ERCMethod):
    """Conv1D encoders, feature and graph-spectral diffusion recovery, GCN; see the module doc."""

    name = "gsdnet"
    causal = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o, h = config.options, config.hidden
        self.kernel = int(o.get("kernel", 3))
        self.steps = int(o.get("steps", 5))
        self.beta = float(o.get("beta", 1.0))
        self.beta_min, self.beta_max = float(o.get("beta_min", 0.1)), float(o.get("beta_max", 20.0))
        self.future = config.future_window
        reach = (self.kernel - 1) // 2
        self.right = reach if self.future is None else min(reach, self.future)
        score_hidden, spectral_hidden = int(o.get("score_hidden", h)), int(o.get("spectral_hidden", 32))

        self.dropout = nn.Dropout(config.dropout)
        self.conv = nn.ModuleList(nn.Conv1d(config.dims[m], h, self.kernel) for m in MODALITIES)
        self.feature_score = Denoiser(h, 2 * h + 2, score_hidden)  # s_θ, one per modality
        self.feature_decoder = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, config.dims[m]))
                                             for m in MODALITIES)  # D_X
        self.spectral_score = Denoiser(1, 6, spectral_hidden)  # s_φ, one per modality
        self.spectral_decoder = StackedMLP(M, [3, spectral_hidden, 1])  # D_Λ (residual)
        self.node = nn.Linear(M * h, h)
        self.gcn = nn.ModuleList(nn.Linear(h, h) for _ in range(int(o.get("gcn_layers", 2))))
        self.output = nn.Linear(2 * h, config.n_classes)

    # -- diffusion -----------------------------------------------------------------------------
    def schedule(self, t):
        return vp_schedule(t, self.beta_min, self.beta_max)

    def sample(self, net: Denoiser, cond: torch.Tensor, dim: int) -> torch.Tensor:
        """Reverse process (Eq. 15–16), deterministic: `steps` DDIM (η = 0) steps from X(1) = 0."""
        x = cond.new_zeros(*cond.shape[:-1], dim)
        cond = net.project(cond)
        times = [(self.steps - i) / self.steps for i in range(self.steps)]
        for i, t in enumerate(times):
            x0 = net(x, cond, cond.new_full((*cond.shape[:-1], 1), t))
            if i + 1 < len(times):
                (a, s), (a_next, s_next) = self.schedule(t), self.schedule(times[i + 1])
                x = a_next * x0 + s_next * (x - a * x0) / s
        return x0

    def score_matching(self, net: Denoiser, x0: torch.Tensor, cond: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Eq. 11 (x(0)-weighted) where X(0) is known: noise it to a random t, predict it back."""
        t = torch.rand(*x0.shape[:-1], 1, device=x0.device) * (1 - 1e-3) + 1e-3
        a, s = self.schedule(t)
        return masked_mean((net(a * x0 + s * torch.randn_like(x0), net.project(cond), t) - x0).pow(2).mean(-1), known)

    # -- model ---------------------------------------------------------------------------------
    def encode(self, features: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """X'_m (M, B, T, H), Eq. 12–14."""
        b, t = present.shape[:2]
        pe = positional_encoding(t, self.config.hidden, present.device)
        out = []
        for k, m in enumerate(MODALITIES):
            x = features[m].masked_fill(~present[..., k:k + 1], 0.0) if m in features else \
                present.new_zeros(b, t, self.config.dims[m], dtype=torch.float32)
            x = F.pad(self.dropout(x).transpose(1, 2), (self.kernel - 1 - self.right, self.right))
            out.append(self.conv[k](x).transpose(1, 2) + pe)
        return torch.stack(out)

    def recover_features(self, features: dict[str, torch.Tensor], x: torch.Tensor,
                         here: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (M, B, T, H), here (M, B, T): the completed X̃ (observed X'_m kept, missing ones
        generated), the generated X̂'_m everywhere, and L_rec (feature part) + L_s^θ."""
        flags = here.to(x.dtype)
        cond = torch.stack([torch.cat([x[o1], x[o2], flags[o1, ..., None], flags[o2, ..., None]], dim=-1)
                            for o1, o2 in OTHERS])  # c_m: the other two modalities of the same turn
        generated = self.sample(self.feature_score, cond, x.shape[-1])
        completed = torch.where(here[..., None], x, generated)
        loss = x.new_zeros(())
        if self.training:
            loss = loss + self.score_matching(self.feature_score, x.detach(), cond, here)
            for k, m in enumerate(MODALITIES):
                if here[k].any():
                    loss = loss + (self.feature_decoder[k](generated[k][here[k]]) - features[m][here[k]]).pow(2).mean()
        return completed, generated, loss

    def recover_graph(self, completed: torch.Tensor, here: torch.Tensor,
                      view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused adjacency of every view (B, V, T, T), and L_rec (Λ part) + L_s^φ."""
        t = completed.shape[2]
        pair = (view[..., :, None] & view[..., None, :]).to(completed.dtype)  # (B, V, T, T)
        similarity = similarity_graph(completed)  # (M, B, T, T); a view's graph is it times `pair`
        views = view.expand(M, *view.shape)
        with torch.no_grad():  # U is kept fixed; no gradient through eigh
            adj = similarity.detach()[:, :, None] * pair  # (M, B, V, T, T)
            lam, _ = spectrum(adj, views, vectors=False)
        size = view.sum(-1)  # (B, V)
        nodes = size.clamp(min=1).to(completed.dtype)
        count = (view[None] & here[:, :, None, :]).sum(-1)  # (M, B, V)
        frac = count / nodes
        complete = (count == size) & (size > 0)  # every node of the view has the modality
        lam = lam / nodes[..., None]
        rank = (torch.arange(t, device=view.device, dtype=completed.dtype) / nodes[..., None])  # (B, V, T)
        inv = (1 / nodes)[..., None].expand_as(rank)
        valid = torch.arange(t, device=view.device) < size[..., None]
        # the eigenvalue networks run on the real eigenvalues only, (M, n) over the views' ranks
        lam_v, frac_v = lam[:, valid], frac[..., None].expand(M, *rank.shape)[:, valid]
        rank_v, inv_v = rank[valid].expand(M, -1), inv[valid].expand(M, -1)
        cond = torch.stack([torch.stack([lam_v[o1], lam_v[o2], frac_v[o1], frac_v[o2], rank_v[k], inv_v[k]], dim=-1)
                            for k, (o1, o2) in enumerate(OTHERS)])  # (M, n, 6): the other modalities, rank by rank
        generated = self.sample(self.spectral_score, cond, 1)
        refine_in = torch.cat([generated, rank_v[..., None], inv_v[..., None]], -1)
        refined = (generated + self.spectral_decoder(refine_in))[..., 0]
        lam_hat = lam.new_zeros(lam.shape)
        lam_hat[:, valid] = refined
        # Fusion A = Σ_m w_m A_m / Σ_m w_m. A complete graph is its similarity graph on the view;
        # only a weighted graph with a missing node is rebuilt (one whose modality is absent from
        # every node has weight 0), so the (M, B, V, T, T) stack is never built with gradients.
        weights = frac  # (M, B, V)
        fused = torch.einsum("mbv,mbij->bvij", weights * complete, similarity) * pair
        needed = ~complete & (count > 0)
        if needed.any():
            with torch.no_grad():
                _, vec = spectrum(adj[needed], views[needed])
            if vec is None:
                raise RuntimeError("spectrum returned no eigenvectors although they were requested")
            scaled = (lam_hat * nodes[..., None])[needed]
            rebuilt = F.relu(rebuild(vec, scaled)) * pair.expand_as(adj)[needed]  # (n, T, T)
            _, b, v = needed.nonzero(as_tuple=True)
            fused = fused.index_put((b, v), rebuilt * weights[needed][:, None, None], accumulate=True)
        fused = fused / weights.sum(0).clamp(min=1e-6)[..., None, None]
        loss = completed.new_zeros(())
        if self.training:
            known = complete[..., None].expand(M, *valid.shape)[:, valid]  # (M, n)
            loss = (self.score_matching(self.spectral_score, lam_v[..., None], cond, known)
                    + masked_mean((refined - lam_v).pow(2), known))
        return fused, loss

    def propagate(self, h0: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Eq. 19 on each view; turn t's output is row t of its view (of view 0 if there is one)."""
        b, v, t, _ = adj.shape
        a = adj + torch.eye(t, device=adj.device, dtype=adj.dtype)
        a = a / a.sum(-1, keepdim=True)  # D⁻¹(A + I)
        x = h0  # (B, T, H) while the node states are the same in every view, then (B, V, T, H)
        for layer in self.gcn[:-1]:
            z = layer(x)
            x = F.relu((a.reshape(b, v * t, t) @ z).reshape(b, v, t, -1) if z.dim() == 3 else a @ z)
        if v == 1:
            agg = a[:, 0] @ (x if x.dim() == 3 else x[:, 0])
        else:  # one view per turn: row t of view t
            rows = a.diagonal(dim1=1, dim2=2).transpose(1, 2)  # (B, T, T): [b, t] = a[b, t, t, :]
            agg = rows @ x if x.dim() == 3 else (rows[:, :, None, :] @ x)[:, :, 0]
        return F.relu(self.gcn[-1](agg))

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> MethodOutput:
        real = turn_mask(speakers)
        present = mask & real[..., None] & torch.tensor([m in features for m in MODALITIES], device=mask.device)
        here = present.permute(2, 0, 1)  # (M, B, T)
        x = self.encode(features, present)
        completed, _, feature_loss = self.recover_features(features, x, here)
        view = graph_views(speakers, self.future)
        adj, graph_loss = self.recover_graph(completed, here, view)
        h0 = self.dropout(self.node(completed.permute(1, 2, 0, 3).flatten(2)))
        out = self.propagate(h0, adj)
        logits = self.output(self.dropout(torch.cat([h0, out], dim=-1))) * real[..., None]
        aux = self.beta * (feature_loss + graph_loss) if self.training else None
        return MethodOutput(logits, aux_loss=aux)
