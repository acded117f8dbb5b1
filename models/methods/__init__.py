"""The seed methods side by side (issue: CORECT, MultiDAG(+CL), Mi-CGA, Ada2I, SPCL, CMATH, DQF,
BALM, GSDNet) over the same features and splits.

Every method is an `ERCMethod` (`base.py`: padded dialogues in, turn logits out); training recipes
that are not architectures (MultiDAG+CL's curriculum, SPCL) are `TrainingPlugin`s that any method
can be trained with. Methods and plug-ins are named here and imported only when built, so that
one method's dependencies (torch-geometric for CORECT) do not load for the others.
"""
from __future__ import annotations

import importlib

from merc.models.methods.base import (
    ERCMethod,
    MethodConfig,
    MethodOutput,
    count_parameters,
)
from merc.models.methods.plugins import TrainingPlugin

METHODS: dict[str, str] = {
    "multidag": "merc.models.methods.multidag:MultiDAGMethod",
    "corect": "merc.models.methods.corect:CORECT",
    "micga": "merc.models.methods.micga:MiCGA",
    "ada2i": "merc.models.methods.ada2i:Ada2I",
    "cmath": "merc.models.methods.cmath:CMATH",
    "dqf": "merc.models.methods.dqf:DQF",
    "balm": "merc.models.methods.balm:BALM",
    "gsdnet": "merc.models.methods.gsdnet:GSDNet",
}
PLUGINS: dict[str, str] = {
    "cl": "merc.models.methods.plugins:BabyStepCurriculum",
    "spcl": "merc.models.methods.spcl:SelfPacedCurriculum",
}


def _load(table: dict[str, str], name: str, kind: str):
    try:
        module, attr = table[name].split(":")
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r} (known: {', '.join(table)})") from None
    return getattr(importlib.import_module(module), attr)


def build_method(name: str, config: MethodConfig) -> ERCMethod:
    """A fresh, untrained instance of method `name`."""
    return _load(METHODS, name, "method")(config)


def build_plugin(name: str, **options) -> TrainingPlugin:
    return _load(PLUGINS, name, "plug-in")(**options)


__all__ = ["ERCMethod", "METHODS", "MethodConfig", "MethodOutput", "PLUGINS", "TrainingPlugin", "build_method",
           "build_plugin", "count_parameters"]
