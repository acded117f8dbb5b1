"""MultiDAG (dissertation §2.3, after DAG-ERC) as a seed method: the live tracker's own graph
(`merc.models.dag.graph.MultiDAG`), wrapped in the common method interface. Causal.

Options: ``layers`` (default 2), ``omega`` (1), ``max_predecessors`` (16). MultiDAG+CL is this
method trained with the `BabyStepCurriculum` plug-in."""
from __future__ import annotations

import torch

from merc.models.dag.graph import DAGConfig, MultiDAG
from merc.models.methods.base import ERCMethod, MethodConfig, MethodOutput


class MultiDAGMethod(ERCMethod):
    name = "multidag"
    causal = True

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        o = config.options
        self.dag = MultiDAG(DAGConfig(n_classes=config.n_classes, dims=dict(config.dims), hidden=config.hidden,
                                      layers=o.get("layers", 2), omega=o.get("omega", 1),
                                      max_predecessors=o.get("max_predecessors", 16), dropout=config.dropout))

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor, speakers: torch.Tensor) -> MethodOutput:
        return MethodOutput(self.dag(features, mask, speakers))
