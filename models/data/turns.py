"""What training, the PyTorch tracker and ONNX serving share about turns, free of torch so that
serving can import it: modality names, the unknown-speaker id, the encoder input of a turn, and
the per-turn result."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def turn_inputs(texts: Sequence[str], context_turns: int,
                speakers: Sequence[str | None] | None = None) -> list[tuple[str, str]]:
    """(turn text, context) for each turn of a dialogue, using only earlier turns (causal).

    Context is the previous `context_turns` texts, most recent first, so that truncation
    drops the oldest turns first. With `speakers` (one per text, None when unknown), each earlier
    text is marked with its speaker's relation to this turn's speaker, "same: " or "other: " (the
    DAG's two relations; unmarked when either speaker is unknown), so that the encoder can tell
    a speaker's own mood from a reply. Training and live tracking both build encoder inputs here.
    """
    inputs = []
    for i, text in enumerate(texts):
        start = max(0, i - context_turns)
        previous = list(texts[start:i]) if context_turns else []
        if speakers is not None and previous:
            previous = [_marked(t, speakers[j], speakers[i]) for j, t in enumerate(previous, start=start)]
        inputs.append((text, " | ".join(previous[::-1])))
    return inputs


def _marked(text: str, speaker: str | None, current: str | None) -> str:
    if speaker is None or current is None:
        return text
    return ("same: " if speaker == current else "other: ") + text


class ConversationSoFar:
    """What a tracker keeps of the conversation besides the graph state: speaker ids in order of
    first appearance, the last few transcripts (the encoder's context) and the turn count.
    Shared by the PyTorch tracker and ONNX serving so both build identical inputs."""

    def __init__(self, context_turns: int, speaker_markers: bool = False) -> None:
        self.context_turns = context_turns
        self.speaker_markers = speaker_markers
        self.speakers: dict[str, int] = {}
        self.recent_texts: list[str] = []
        self.recent_speakers: list[str | None] = []
        self.turns = 0

    def speaker_id(self, speaker: str | None) -> int:
        """A dialogue-local id; None (unknown) maps to UNKNOWN_SPEAKER."""
        if speaker is None:
            return UNKNOWN_SPEAKER
        return self.speakers.setdefault(speaker, len(self.speakers))

    def encoder_input(self, text: str, speaker: str | None = None) -> tuple[str, str]:
        """(text, context) of a new turn by `speaker`, from the earlier turns only."""
        speakers = self.recent_speakers + [speaker] if self.speaker_markers else None
        return turn_inputs(self.recent_texts + [text], self.context_turns, speakers)[-1]

    def result(self, speaker: str | None, text: str, labels: Sequence[str], probs: Sequence[float],
               modalities: tuple[str, ...], timings_ms: dict[str, float]) -> TurnResult:
        """Record the turn and return its result (the most probable label and its confidence)."""
        best = max(range(len(probs)), key=probs.__getitem__)
        result = TurnResult(index=self.turns, speaker=speaker, text=text, label=labels[best],
                            confidence=float(probs[best]), probs=dict(zip(labels, map(float, probs), strict=True)),
                            modalities=modalities, timings_ms=timings_ms)
        if self.context_turns:
            self.recent_texts = (self.recent_texts + [text])[-self.context_turns:]
            self.recent_speakers = (self.recent_speakers + [speaker])[-self.context_turns:]
        self.turns += 1
        return result
