"""`MultiDAG.step` as a graph without Python control flow, for ONNX export.

The window is a fixed-size buffer of the last `max_predecessors` (P) turns, newest first, plus
a count of how many of its rows hold real turns. The walk-back of `predecessors()` becomes a
mask: offset j (row j-1) is a predecessor iff j <= count and fewer than omega turns by the
same (known) speaker lie at offsets 1..j-1. The number of predecessors is therefore dynamic
(0..P) while every tensor has a static shape.

Inputs (one turn):
    text (D_text,), audio (D_audio,), face (D_face,)   float32 features; ignored where absent
    mask (3,) bool                                     which of text/audio/face are present
    speaker () int64                                   speaker id, -1 = unknown
    window_speakers (P,) int64                         speakers of kept turns, newest first
    window_states (L, P, H) float32                    per-layer states of kept turns
    window_count () int64                              rows of the window that hold turns
Outputs:
    probs (C,), new_window_speakers (P,), new_window_states (L, P, H), new_window_count ()

The audio and face projections (`MultiDAG.node_input`) are inside this graph.
"""
from __future__ import annotations

import torch
from torch import nn

from merc.models.dag.graph import MODALITIES, UNKNOWN_SPEAKER, MultiDAG

INPUT_NAMES = ("text", "audio", "face", "mask", "speaker", "window_speakers", "window_states", "window_count")
OUTPUT_NAMES = ("probs", "new_window_speakers", "new_window_states", "new_window_count")


def _gru_cell(cell: nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """nn.GRUCell written out (r, z, n gates in PyTorch's order) so it exports as plain ops."""
    gi = x @ cell.weight_ih.t() + cell.bias_ih
    gh = h @ cell.weight_hh.t() + cell.bias_hh
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


class DAGStep(nn.Module):
    """One incremental step of a trained MultiDAG (its weights, shared, in eval mode)."""

    def __init__(self, dag: MultiDAG) -> None:
        super().__init__()
        self.dag = dag.eval()
        self.omega = dag.config.omega
        self.window = dag.config.max_predecessors
        self.hidden = dag.config.hidden
        self.eval()  # the wrapper too: exporters restore the top module's mode on every submodule

    def predecessor_masks(self, speaker: torch.Tensor, window_speakers: torch.Tensor,
                          window_count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) bool masks over offsets 1..P: is a predecessor, and is by the same speaker."""
        kept = torch.arange(self.window, dtype=torch.int64) < window_count
        same = kept & (window_speakers == speaker) & (speaker != UNKNOWN_SPEAKER)
        same_i = same.to(torch.int64)
        same_before = torch.cumsum(same_i, dim=0) - same_i  # same-speaker turns at offsets 1..j-1
        valid = kept & (same_before < self.omega)
        return valid, same & valid

    def forward(self, text, audio, face, mask, speaker, window_speakers, window_states, window_count):
        dag = self.dag
        h0 = dag.node_input({"text": text.unsqueeze(0), "audio": audio.unsqueeze(0), "face": face.unsqueeze(0)},
                            mask.unsqueeze(0))[0]
        valid, same = self.predecessor_masks(speaker, window_speakers, window_count)
        states = [h0]
        for k, layer in enumerate(dag.layers):
            kept = window_states[k]  # (P, H)
            below = states[-1]
            scores = layer.key(kept)[:, 0] + layer.query(below)
            scores = scores.masked_fill(~valid, -1e9)
            alpha = torch.softmax(scores, dim=-1) * valid.to(scores.dtype)
            messages = torch.where(same.unsqueeze(-1), layer.w_same(kept), layer.w_other(kept))
            m = alpha @ messages
            states.append(_gru_cell(layer.node_gru, below, m) + _gru_cell(layer.context_gru, m, below))
        probs = torch.softmax(dag.classifier(torch.cat(states, dim=-1)), dim=-1)
        new_rows = torch.stack(states[1:], dim=0).unsqueeze(1)  # (L, 1, H)
        new_states = torch.cat([new_rows, window_states[:, :-1]], dim=1)
        new_speakers = torch.cat([speaker.reshape(1), window_speakers[:-1]], dim=0)
        new_count = torch.clamp(window_count + 1, max=self.window)
        return probs, new_speakers, new_states, new_count

    def example_inputs(self, turns: int = 3) -> tuple[torch.Tensor, ...]:
        """Inputs of a mid-dialogue turn, for tracing (every branch of the graph is data-driven)."""
        dims = self.dag.config.dims
        g = torch.Generator().manual_seed(0)
        feats = [torch.randn(dims[m], generator=g) for m in MODALITIES]
        layers, window, hidden = len(self.dag.layers), self.window, self.hidden
        speakers = torch.full((window,), -1, dtype=torch.int64)
        speakers[:turns] = torch.arange(turns) % 2
        return (*feats, torch.tensor([True, False, True]), torch.tensor(0, dtype=torch.int64), speakers,
                torch.randn(layers, window, hidden, generator=g), torch.tensor(min(turns, window), dtype=torch.int64))
