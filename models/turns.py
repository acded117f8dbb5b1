"""What training, the PyTorch tracker and ONNX serving share about turns, free of torch so that
serving can import it: modality names, the unknown-speaker id, the encoder input of a turn, and
the per-turn result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MODALITIES = ("text", "audio", "face")
UNKNOWN_SPEAKER = -1  # a speaker nobody matches, not even another unknown one


@dataclass(frozen=True)
class TurnResult:
    """The tracker's verdict on one turn."""

    index: int
    speaker: str | None
    text: str
    label: str
    confidence: float
    probs: dict[str, float]
    modalities: tuple[str, ...]
    timings_ms: dict[str, float]


def turn_inputs(texts: Sequence[str], context_turns: int) -> list[tuple[str, str]]:
    """(turn text, context) for each turn of a dialogue, using only earlier turns (causal).

    Context is the previous `context_turns` texts, most recent first, so that truncation
    drops the oldest turns first. Training and live tracking both build encoder inputs here.
    """
    inputs = []
    for i, text in enumerate(texts):
        previous = texts[max(0, i - context_turns):i][::-1] if context_turns else []
        inputs.append((text, " | ".join(previous)))
    return inputs
