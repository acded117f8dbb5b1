"""Torch-free pieces of tracking that serving shares with the training stack.

`stream.tracker` and `models.text_encoder` import torch, so serving cannot import them. What it
needs from them is restated here, and `tests/test_export.py` checks that both copies agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MODALITIES = ("text", "audio", "face")  # = merc.models.dag.MODALITIES
UNKNOWN_SPEAKER = -1  # = merc.models.dag.UNKNOWN_SPEAKER


@dataclass(frozen=True)
class TurnResult:
    """The tracker's verdict on one turn (the same fields as `merc.stream.tracker.TurnResult`)."""

    index: int
    speaker: str | None
    text: str
    label: str
    confidence: float
    probs: dict[str, float]
    modalities: tuple[str, ...]
    timings_ms: dict[str, float]


def turn_inputs(texts: Sequence[str], context_turns: int) -> list[tuple[str, str]]:
    """(turn text, context) for each turn: `merc.models.text_encoder.turn_inputs`, without torch."""
    inputs = []
    for i, text in enumerate(texts):
        previous = texts[max(0, i - context_turns):i][::-1] if context_turns else []
        inputs.append((text, " | ".join(previous)))
    return inputs
