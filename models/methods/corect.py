"""CORECT (dissertation §2.2; Nguyen et al., "Conversation Understanding using Relational Temporal
Graph Neural Networks with Auxiliary Cross-Modality Interaction", EMNLP 2023) as a seed method.

What is implemented, per dialogue of N turns and modalities τ ∈ {text l, audio a, face v}:

* Unimodal encoders (Eq. 2.1–2.2): text is projected to ``hidden`` and contextualised by a
  Transformer over the dialogue's turns; audio and face go through a 2-layer FC network
  (Linear–ReLU–Linear–ReLU, as in the released code). A modality absent at a turn gets a learned
  absence embedding instead (its feature is never read).
* Speaker embedding (Eq. 2.3–2.4): x_i^τ ← x_i^τ + η W_s^τ s_{p_i}, with d_s = ``hidden``.
* RT-GCN graph (Eq. 2.5–2.6): one node per (turn, modality) *present* at that turn, built for the
  whole batch as one torch-geometric graph. 15 relations: 3 self-loops and 6 directed cross-modal
  links inside a turn (R_multi), and per modality a "past" relation (message from u_j^τ to u_i^τ,
  i−P ≤ j < i) and a "future" relation (i < j ≤ i+F) (R_temp). See `RELATIONS`, `build_graph`.
* Graph learning (Eq. 2.7–2.10): one `RGCNConv` (per-relation mean, plus root weight W_0: exactly
  Eq. 2.7), then one `TransformerConv` with C heads concatenated (W_1 g_i + Σ_j α_ij W_2 g_j with
  scaled dot-product α: Eq. 2.8–2.9) over all edges, then LayerNorm and LeakyReLU. o_i^τ has
  C·hidden dims; a node that does not exist gets a learned absence vector in its slot.
* P-CM (Eq. 2.11–2.16): for each modality pair (α, β) and each direction β→α, D stacked pre-LN
  cross-modal blocks Z̄ = CM^{β→α}(LN(Z), LN(X^β)) + Z, Z = FFN(LN(Z̄)) + Z̄, Z^{[0]} = X^α, with
  multi-head scaled dot-product attention (Eq. 2.14) over the dialogue's turns, FFN width
  ``ffn``·hidden. Keys are the turns where β is present; a query with no key left gets a zero
  update (its residual only). Z_{α⇌β} = [Z^{β→α} ‖ Z^{α→β}] (both directions, Eq. 1.16–1.17),
  so P-CM gives 6·hidden dims.
* Classification (Eq. 2.17–2.21): h_i = [o^l ‖ o^a ‖ o^v ‖ Z_{l⇌a} ‖ Z_{l⇌v} ‖ Z_{a⇌v}],
  v_i = ReLU(Φ_0 h_i + b_0), logits = Φ_1 dropout(v_i) + b_1 for real turns (padding rows get
  zero logits); plain cross-entropy (the trainer's).

Options (``config.options``), with defaults:

* ``past`` (11) and ``future`` (9): the RT-GCN window [P, F], the best IEMOCAP setting of §2.2.6
  (MOSEI used [5, 4]). ``past=None`` connects the whole past.
* ``graph_heads`` (7): Graph Transformer heads C (§2.2.6), each of ``hidden`` channels (code).
* ``pcm_heads`` (2): P-CM attention heads (§2.2.6). ``pcm_layers`` (2): D, not stated in the
  dissertation; the released code's ``num_crossmodal`` default.
* ``pcm_input`` ("graph"): what P-CM attends over. "graph": X^τ = x^τ + W_p^τ o^τ, the encoder
  output plus its RT-GCN context projected back to ``hidden`` (§2.2.4: "after unimodal encoding
  and contextualization by RT-GCN"; the residual keeps the speaker in rows whose node is absent);
  "encoder": X^τ = x^τ, the speaker-aware encoder outputs, in parallel with RT-GCN (the released
  code).
* ``ffn`` (2): width of the position-wise FFN of Eq. 2.16 (and of the text Transformer), as a
  multiple of ``hidden``; not stated. MulT and the released code use 4; 2 cuts a quarter of the
  training cost on CPU (the FFNs are the largest share of it).
* ``text_layers`` (2) and ``text_heads`` (None: the code's rule, the first of 7..14 dividing
  ``hidden``, else 1): the text Transformer of Eq. 2.1.
* ``eta`` (1.0): η of Eq. 2.4 (not stated; the code adds the embedding at full weight).
* ``max_speakers`` (16): size of the speaker table; dialogue-local indices beyond it share the last
  row.

Causality (``config.future_window``): CORECT is non-causal. None: the paper's model, graph future
window F = ``future`` (9), P-CM and the text Transformer attend over the whole dialogue. k ≥ 0:
graph window min(F, k), attention masked by `time_window(T, k)`. k = 0 is the streaming variant:
turn t depends on turns ≤ t only. For k > 0 the window applies per layer, so stacked layers see
further than k turns ahead (as in any stacked windowed model); only k = 0 is exact.

Choices where the dissertation is silent or inconsistent (see the digest, §7):

* Window bounds: Eq. 2.6's strict inequalities give P−1 past and F−1 future neighbours, the code
  wp past and wf−1 future (and, through its edge direction, the reverse for the receiving node).
  We follow the prose ("the number of past and future utterances connected"): P past, F future.
* Missing modalities: nodes of absent modalities do not exist (no edges to or from them), as in the
  dissertation's unimodal and bimodal settings where R_multi between absent modalities vanishes;
  the text-only corpora thus give a text-only temporal graph. P-CM still runs with an absent side:
  its query rows carry the absence embedding (plus the speaker), its keys are present turns only.
* P-CM: the dissertation writes one direction per pair, the code a MulT design (cross-modal stacks
  per target, then a 3-layer self-attention "memory"). We keep the dissertation's pairwise
  equations, both directions concatenated, and no memory transformer.
* Normalisation after the Graph Transformer: LayerNorm instead of the code's BatchNorm, so that a
  dialogue's output never depends on the other dialogues of its batch (streaming, batch of one).
* Dropout (``config.dropout``, paper 0.5) on the speaker-aware encoder outputs and before the
  output layer; none inside the attention blocks (the code's P-CM uses none either).
* Text encoder: projected to ``hidden`` before the Transformer (the code runs it at the feature
  width, 768), pre-LN blocks like P-CM's, no positional encoding (as in the code); masked by the
  causal window and to turns with text.

Simplified: no class weights, no learning-rate scheduler (the trainer's AdamW is shared by all
methods); per-modality logits are not produced (CORECT has none).
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import RGCNConv, TransformerConv

from merc.models.data.turns import MODALITIES
from merc.models.methods.base import (
    ERCMethod,
    MethodConfig,
    MethodOutput,
    time_window,
    turn_mask,
)

M = len(MODALITIES)
CROSS = [(a, b) for a in range(M) for b in range(M) if a != b]  # (source, target) modality indices
RELATIONS: list[str] = ([f"self:{m}" for m in MODALITIES]
                        + [f"cross:{MODALITIES[a]}->{MODALITIES[b]}" for a, b in CROSS]
                        + [f"past:{m}" for m in MODALITIES] + [f"future:{m}" for m in MODALITIES])
PAST, FUTURE = 3 + len(CROSS), 3 + len(CROSS) + M  # first relation index of each temporal group
PAIRS = [(a, b) for a in range(M) for b in range(a + 1, M)]  # P-CM modality pairs


def build_graph(exists: torch.Tensor, past: int | None, future: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's RT-GCN graph (Eq. 2.5–2.6) over the nodes ``exists`` (B, T, M) marks, numbered in
    row-major (dialogue, turn, modality) order, i.e. as ``x[exists]`` lays them out.

    Returns edge_index (2, E), messages flowing edge_index[0] -> edge_index[1], and edge_type (E,)
    indexing `RELATIONS`."""
    b, t, m = exists.shape
    device = exists.device
    node = torch.full(exists.shape, -1, dtype=torch.long, device=device)
    node[exists] = torch.arange(int(exists.sum()), device=device)
    # self-loops: one per node, relation = its modality
    _, _, sm = exists.nonzero(as_tuple=True)
    ids = torch.arange(sm.numel(), device=device)
    src, dst, rel = [ids], [ids], [sm]
    # cross-modal links inside a turn, one relation per ordered modality pair
    cross_rel = torch.full((m, m), -1, dtype=torch.long, device=device)
    for k, (a, c) in enumerate(CROSS):
        cross_rel[a, c] = M + k
    off_diag = ~torch.eye(m, dtype=torch.bool, device=device)
    cb, ct, cs, cd = (exists[..., :, None] & exists[..., None, :] & off_diag).nonzero(as_tuple=True)
    src.append(node[cb, ct, cs])
    dst.append(node[cb, ct, cd])
    rel.append(cross_rel[cs, cd])
    # temporal links inside a modality: [i, j] = turn j sends to turn i
    offset = torch.arange(t, device=device)[None, :] - torch.arange(t, device=device)[:, None]  # j - i
    before = (offset < 0) if past is None else (offset < 0) & (offset >= -past)
    window = before | ((offset > 0) & (offset <= future))
    tb, ti, tj, tm = (exists[:, :, None, :] & exists[:, None, :, :] & window[None, :, :, None]).nonzero(as_tuple=True)
    src.append(node[tb, tj, tm])
    dst.append(node[tb, ti, tm])
    rel.append(torch.where(tj < ti, PAST + tm, FUTURE + tm))
    return torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(rel)


class AttentionBlock(nn.Module):
    """One pre-LN (cross-)attention block, Eq. 2.15–2.16: Z̄ = MHA(LN(Z), LN(X)) + Z, then
    Z = FFN(LN(Z̄)) + Z̄. Self-attention when X is None (the text Transformer of Eq. 2.1)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn * hidden), nn.ReLU(), nn.Linear(ffn * hidden, hidden))

    def forward(self, z: torch.Tensor, x: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
        """z (B, Tq, H) queries, x (B, Tk, H) keys/values, allowed (B, Tq, Tk) bool."""
        some = allowed.any(-1, keepdim=True)  # a query with no key gets no update, not NaN
        if some.any():  # else the update is zero for every query (e.g. a modality absent from the batch)
            b, tq, h = z.shape
            zq = self.norm_q(z)
            kv = zq if x is None else self.norm_kv(x)
            split = lambda y: y.view(b, -1, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
            out = F.scaled_dot_product_attention(split(self.q(zq)), split(self.k(kv)), split(self.v(kv)),
                                                 attn_mask=(allowed | ~some)[:, None])
            z = z + self.o(out.transpose(1, 2).reshape(b, tq, h)) * some
        return z + self.ffn(self.norm_ff(z))


class CORECT(ERCMethod):
    """RT-GCN over (turn, modality) nodes plus P-CM pairwise cross-modal attention; see the module doc."""

    name = "corect"
    causal = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o = config.options
        h = config.hidden
        self.past: int | None = o.get("past", 11)
        paper_future = int(o.get("future", 9))
        self.graph_future = paper_future if config.future_window is None else min(paper_future, config.future_window)
        self.attend_future = config.future_window
        self.eta = float(o.get("eta", 1.0))
        self.pcm_input = o.get("pcm_input", "graph")
        if self.pcm_input not in ("graph", "encoder"):
            raise ValueError(f"pcm_input must be 'graph' or 'encoder', not {self.pcm_input!r}")
        heads = int(o.get("graph_heads", 7))
        text_heads = o.get("text_heads") or next((n for n in range(7, 15) if h % n == 0), 1)
        pcm_heads, pcm_layers = int(o.get("pcm_heads", 2)), int(o.get("pcm_layers", 2))
        ffn = int(o.get("ffn", 2))

        # encoders (Eq. 2.1-2.2) and absence embeddings, in MODALITIES order
        self.encode = nn.ModuleDict({
            m: nn.Linear(config.dims[m], h) if m == "text" else
            nn.Sequential(nn.Linear(config.dims[m], h), nn.ReLU(), nn.Linear(h, h), nn.ReLU()) for m in MODALITIES})
        self.absent = nn.Parameter(torch.randn(M, h) * 0.02)
        self.text_blocks = nn.ModuleList(AttentionBlock(h, int(text_heads), ffn)
                                         for _ in range(int(o.get("text_layers", 2))))
        # speaker embedding (Eq. 2.3-2.4)
        self.max_speakers = int(o.get("max_speakers", 16))
        self.speaker = nn.Embedding(self.max_speakers, h)
        self.speaker_proj = nn.ModuleDict({m: nn.Linear(h, h, bias=False) for m in MODALITIES})
        # RT-GCN (Eq. 2.7-2.10)
        self.rgcn = RGCNConv(h, h, num_relations=len(RELATIONS), aggr="mean")
        self.graph_transformer = TransformerConv(h, h, heads=heads, concat=True)
        self.graph_norm = nn.LayerNorm(heads * h)
        self.absent_node = nn.Parameter(torch.randn(M, heads * h) * 0.02)
        # P-CM (Eq. 2.11-2.16): one stack per direction source -> target
        if self.pcm_input == "graph":
            self.pcm_proj = nn.ModuleDict({m: nn.Linear(heads * h, h) for m in MODALITIES})
        self.pcm = nn.ModuleDict({
            f"{MODALITIES[s]}->{MODALITIES[t]}": nn.ModuleList(AttentionBlock(h, pcm_heads, ffn)
                                                                for _ in range(pcm_layers))
            for a, c in PAIRS for s, t in ((c, a), (a, c))})
        # classifier (Eq. 2.19-2.20)
        self.dropout = nn.Dropout(config.dropout)
        self.hidden_layer = nn.Linear(M * heads * h + 2 * len(PAIRS) * h, h)
        self.output = nn.Linear(h, config.n_classes)

    def encode_inputs(self, features: dict[str, torch.Tensor], present: torch.Tensor, speakers: torch.Tensor,
                      window: torch.Tensor) -> torch.Tensor:
        """(B, T, M, H) speaker-aware unimodal vectors; the absence embedding where a modality is absent."""
        b, t = speakers.shape
        spk = self.speaker(speakers.clamp(0, self.max_speakers - 1))
        out = []
        for k, m in enumerate(MODALITIES):
            here = present[..., k:k + 1]
            x = self.absent[k].expand(b, t, -1)
            if m in features:  # zero what is hidden first: no NaN/inf behind the mask reaches a gradient
                x = torch.where(here, self.encode[m](features[m].masked_fill(~here, 0.0)), x)
            if m == "text":
                allowed = window[None] & present[:, None, :, k]
                for block in self.text_blocks:
                    x = block(x, None, allowed)
            out.append(x + self.eta * self.speaker_proj[m](spk))
        return self.dropout(torch.stack(out, dim=2))

    def graph(self, x: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
        """RT-GCN over the batch: (B, T, M, C·H), the learned absence vector where no node exists."""
        b, t = exists.shape[:2]
        dense = self.absent_node.expand(b, t, -1, -1).clone()
        if exists.any():
            edge_index, edge_type = build_graph(exists, self.past, self.graph_future)
            g = self.rgcn(x[exists], edge_index, edge_type)
            dense[exists] = F.leaky_relu(self.graph_norm(self.graph_transformer(g, edge_index)))
        return dense

    def cross_modal(self, x: torch.Tensor, present: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """P-CM: (B, T, 6H), [Z^{β→α} ‖ Z^{α→β}] for each pair (α, β)."""
        out = []
        for a, c in PAIRS:
            for s, t in ((c, a), (a, c)):
                z, allowed = x[:, :, t], window[None] & present[:, None, :, s]
                for block in cast(nn.ModuleList, self.pcm[f"{MODALITIES[s]}->{MODALITIES[t]}"]):
                    z = block(z, x[:, :, s], allowed)
                out.append(z)
        return torch.cat(out, dim=-1)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> MethodOutput:
        b, t = speakers.shape
        present = mask & turn_mask(speakers)[..., None]
        window = time_window(t, self.attend_future, device=speakers.device)
        x = self.encode_inputs(features, present, speakers, window)
        o = self.graph(x, present)
        if self.pcm_input == "graph":
            pcm_in = x + torch.stack([self.pcm_proj[m](o[:, :, k]) for k, m in enumerate(MODALITIES)], dim=2)
        else:
            pcm_in = x
        fused = torch.cat([o.reshape(b, t, -1), self.cross_modal(pcm_in, present, window)], dim=-1)
        real = turn_mask(speakers)  # classify real turns only; padding rows get zero logits
        logits = fused.new_zeros(b, t, self.config.n_classes)
        logits[real] = self.output(self.dropout(F.relu(self.hidden_layer(fused[real]))))
        return MethodOutput(logits)
