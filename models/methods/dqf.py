"""DQF (Miyoshi et al., "Robust Multimodal Emotion Recognition from Incomplete Modalities via
Query-Based Unimodal and Cross-Modal Learning", digest Paper 2) as a seed method, at small scale.
Not causal: its transformers attend over the whole sequence. ``future_window`` w limits every
attention to w later turns (the Conv1D then looks back only); attention steps compound: with
``layers`` L a turn's output depends on at most (3L - 1)·w later turns (L Q-UA blocks, L Q-CA
cross-attention steps, L - 1 data-dependent query updates; 2w for the default L = 1), and w = 0
is exactly causal.

The paper's sequences are the frames of one utterance. Here the features are one vector per turn,
and a one-element sequence makes DQF degenerate (attention over a single key returns its value
whatever the key), so the sequence axis is the dialogue's turns: positions are turn indices and
every turn gets its own output. What is implemented (equation numbers of the paper):

* Incomplete training inputs (Sec. 3.1): in training, per mini-batch and modality a rate
  g_m ~ U[0, max_missing_rate] is drawn and each turn's modality m is hidden with probability
  g_m, through the mask only (on top of whatever the trainer hides).
* Q-UA (Eqs. 2-4): X̂_m = Conv1D(X̃_m) over turns; a learnable query Q_m (one row per turn
  position) is updated before every transformer block, Q ← LayerNorm(MHSA(Q) + Q), and added to
  the block's input: H_m = Transformer(X̂_m + Q̂_m).
* Q-CA (Eqs. 5-7) for the pairs ta, tv, av: a shared learnable query Q_αβ, updated as in Eq. 3,
  H_{α→β} = Attn(Attn(Q̂_αβ, H_α, Q̂_αβ), H_β, H_β) (the modality is the key, the query the value,
  then the result reads β), H_αβ = Linear([H_{α→β}, H_{β→α}]).
* Eqs. 8-9: [H_ta, H_tv, H_av, CLS] per turn through MHSA; the CLS output is Ĥ_ca (trimodal).
* Multi-granularity prediction (Eq. 1): the main MLP reads the concatenation of H_t, H_a, H_v,
  H_ta, H_tv, H_av, Ĥ_ca; each of the seven has its own MLP head whose cross-entropy is added
  unweighted by `turn_loss` (they need labels, which `forward` does not get).

Options (``config.options``) and defaults:

* ``layers`` (1): Q-UA and Q-CA layers (paper: 6; its Table 5 has L=2 within 0.5 points, and
  the CPU budget of the comparison allows one);
* ``heads`` (4): attention heads (the paper's 4);
* ``kernel`` (3): Conv1D kernel over turns ("local temporal patterns"; size not given), centred
  over the dialogue, looking back only when ``future_window`` is set;
* ``max_turns`` (128): rows of each learnable query; later turns share the last row;
* ``train_missing`` (True), ``max_missing_rate`` (1.0): the incomplete-input training above.

Choices where the paper is silent, and simplifications:

* Missing values are the learned absence embedding (`ModalityInputs`) instead of zero vectors,
  and, as in the paper, they stay in the sequence: the query added to them is what fills the
  hole. Only padding turns are masked out of attention.
* The learned queries are a fixed table (``max_turns`` rows, like the paper's fixed T_m) and
  Eq. 3 runs over the whole table: they carry no data, so this neither leaks the future nor
  depends on padding. Only Q-CA's later layers, whose query is data, update it under the masks.
* AvgPool (Eq. 8) pools an utterance's frames into one vector; with one element per turn it is
  the identity. "Pool" of Eq. 9 is read as taking the CLS output.
* Stacked Q-CA layers (not described): a layer's H_αβ is the next layer's shared query.
* Eq. 5 has no residuals or FFN and is kept so; the Q-UA transformer blocks are post-norm
  encoder layers (self-attention, FFN). The heads are two-layer MLPs.
* The seven auxiliary losses count every labelled turn, whatever is missing there (the paper
  trains them on masked inputs alike); on text-only corpora the audio and face streams are made
  of absence embeddings and queries only, and are still computed.
* ``config.dropout`` drops the inputs, every residual branch and the heads' hidden layer, not
  the attention weights. Speakers are not used (DQF models none). AdamW of the common trainer
  replaces momentum SGD (lr 1e-5, 100 epochs).
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn

from merc.models.data.turns import MODALITIES
from merc.models.methods.base import (
    ERCMethod,
    MethodConfig,
    MethodOutput,
    ModalityInputs,
    time_window,
    turn_mask,
)
from merc.models.methods.cmath import (
    HeadsOutput,
    MaskedAttention,
    TurnConv,
    feed_forward,
    key_masks,
    with_head_losses,
)

PAIRS: tuple[tuple[str, str], ...] = (("text", "audio"), ("text", "face"), ("audio", "face"))
GRANULARITIES: tuple[str, ...] = (*MODALITIES, *(f"{a}+{b}" for a, b in PAIRS), "+".join(MODALITIES))


class QueryUpdate(nn.Module):
    """Eq. 3: Q̂ = LayerNorm(MHSA(Q) + Q)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn, self.norm, self.drop = MaskedAttention(dim, heads), nn.LayerNorm(dim), nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        return self.norm(self.drop(self.attn(q, q, q, allowed)) + q)


class EncoderBlock(nn.Module):
    """A post-norm transformer encoder layer over turns."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn, self.ffn = MaskedAttention(dim, heads), feed_forward(dim)
        self.norm = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = self.norm[0](self.drop(self.attn(x, x, x, allowed)) + x)
        return self.norm[1](self.drop(self.ffn(x)) + x)


class QUA(nn.Module):
    """Unimodal encoder with querying unimodal attention (Eqs. 2-4)."""

    def __init__(self, dim: int, heads: int, layers: int, kernel: int, max_turns: int, future: int | None,
                 dropout: float) -> None:
        super().__init__()
        self.conv = TurnConv(dim, dim, kernel, future)
        self.query = nn.Parameter(torch.randn(max_turns, dim) * 0.02)
        self.updates = nn.ModuleList([QueryUpdate(dim, heads, dropout) for _ in range(layers)])
        self.blocks = nn.ModuleList([EncoderBlock(dim, heads, dropout) for _ in range(layers)])

    def forward(self, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        q = self.query[None]
        for update, block in zip(self.updates, self.blocks, strict=True):
            q = update_table(cast(QueryUpdate, update), q)  # the query is updated at each layer ...
            x = block(x + q[:, positions], allowed)  # ... and added to the block's input
        return x


def update_table(update: QueryUpdate, table: torch.Tensor) -> torch.Tensor:
    """Eq. 3 over a whole (1, max_turns, d) table of learned queries. The queries carry no data,
    so they see each other whatever the future window, and a turn's query does not depend on
    the length of its dialogue or of the batch (as with the paper's fixed-length queries)."""
    everything = torch.ones(1, table.shape[1], table.shape[1], dtype=torch.bool, device=table.device)
    return update(table, everything)


class QCALayer(nn.Module):
    """Eqs. 5-7 for one pair: both directions through the shared query, then a linear fusion."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.update = QueryUpdate(dim, heads, dropout)
        self.attn = nn.ModuleList([MaskedAttention(dim, heads) for _ in range(4)])
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, q: torch.Tensor, ha: torch.Tensor, hb: torch.Tensor, allowed: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, T, d) the previous layer's fused pair, or with `positions` the (1, max_turns, d)
        table of learned queries (first layer)."""
        if positions is None:
            q = self.update(q, allowed)
        else:
            q = update_table(self.update, q)[:, positions].expand(ha.shape[0], -1, -1)
        a_to_b = self.attn[1](self.attn[0](q, ha, q, allowed), hb, hb, allowed)
        b_to_a = self.attn[3](self.attn[2](q, hb, q, allowed), ha, ha, allowed)
        return self.fuse(torch.cat([a_to_b, b_to_a], -1))


def mlp(d_in: int, dim: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, out))


class DQF(ERCMethod):
    name = "dqf"
    causal = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o, d, p = config.options, config.hidden, config.dropout
        layers, heads, kernel = int(o.get("layers", 1)), int(o.get("heads", 4)), int(o.get("kernel", 3))
        self.max_turns = int(o.get("max_turns", 128))
        self.train_missing = bool(o.get("train_missing", True))
        self.max_missing_rate = float(o.get("max_missing_rate", 1.0))
        self.inputs = ModalityInputs(config.dims, d, p)
        self.unimodal = nn.ModuleDict({m: QUA(d, heads, layers, kernel, self.max_turns, config.future_window, p)
                                       for m in MODALITIES})
        self.pair_query = nn.ParameterDict({f"{a}+{b}": nn.Parameter(torch.randn(self.max_turns, d) * 0.02)
                                            for a, b in PAIRS})
        self.pairs = nn.ModuleDict({f"{a}+{b}": nn.ModuleList([QCALayer(d, heads, p) for _ in range(layers)])
                                    for a, b in PAIRS})
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.fusion = QueryUpdate(d, heads, p)  # LayerNorm(MHSA(tokens) + tokens), Eq. 9
        self.heads = nn.ModuleDict({g: mlp(d, d, config.n_classes, p) for g in GRANULARITIES})
        self.main = mlp(len(GRANULARITIES) * d, d, config.n_classes, p)

    def turn_loss(self, output: MethodOutput, labels: torch.Tensor) -> torch.Tensor:
        return with_head_losses(super().turn_loss(output, labels), output, labels)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> HeadsOutput:
        b, t = speakers.shape
        real = turn_mask(speakers)
        if self.training and self.train_missing:  # incomplete inputs, g_m per modality and mini-batch
            rate = torch.rand(len(MODALITIES), device=mask.device) * self.max_missing_rate
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= rate)
        x = self.inputs(features, mask)  # absence embedding where a modality is missing
        allowed = key_masks(time_window(t, self.config.future_window, speakers.device), real)
        positions = torch.arange(t, device=speakers.device).clamp(max=self.max_turns - 1)
        h = {m: self.unimodal[m](torch.where(real[..., None], x[m], 0.0), positions, allowed) for m in MODALITIES}
        for a, bb in PAIRS:
            name = f"{a}+{bb}"
            pair = cast(nn.ModuleList, self.pairs[name])
            q = pair[0](self.pair_query[name][None], h[a], h[bb], allowed, positions)
            for layer in pair[1:]:
                q = layer(q, h[a], h[bb], allowed)  # a layer's fused pair is the next layer's query
            h[name] = q
        tokens = torch.stack([*(h[f"{a}+{bb}"] for a, bb in PAIRS), self.cls.expand(b, t, -1)], -2)  # (B, T, 4, d)
        flat = tokens.reshape(b * t, len(PAIRS) + 1, -1)
        everything = torch.ones(b * t, flat.shape[1], flat.shape[1], dtype=torch.bool, device=flat.device)
        h[GRANULARITIES[-1]] = self.fusion(flat, everything)[:, -1].reshape(b, t, -1)
        head_logits = {g: self.heads[g](h[g]) for g in GRANULARITIES}
        logits = self.main(torch.cat([h[g] for g in GRANULARITIES], -1))
        return HeadsOutput(logits, None, {m: head_logits[m] for m in MODALITIES}, head_logits=head_logits,
                           head_mask={g: real for g in GRANULARITIES})
