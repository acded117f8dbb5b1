"""What training, the PyTorch tracker and ONNX serving share about turns, free of torch so that
serving can import it: modality names, the unknown-speaker id, the encoder input of a turn, the
per-turn result, and the replay buffer both trackers revise earlier turns' speakers with."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

MODALITIES = ("text", "audio", "face")
UNKNOWN_SPEAKER = -1  # a speaker nobody matches, not even another unknown one
REVISABLE_TURNS = 32
"""How many of the latest turns a tracker can still revise (`RevisableTurns`): older ones are final."""
REVISION_TOLERANCE = 1e-4
"""A revised turn whose speaker and label stay and whose probabilities move less than this is not
reported as changed (its recomputed state is kept all the same)."""


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

    def peek_speaker_id(self, speaker: str | None) -> int:
        """The id `speaker_id` would give, without registering a new speaker (a preview)."""
        if speaker is None:
            return UNKNOWN_SPEAKER
        return self.speakers.get(speaker, len(self.speakers))

    def preview(self, speaker: str | None, text: str, labels: Sequence[str], probs: Sequence[float],
                modalities: tuple[str, ...], timings_ms: dict[str, float]) -> TurnResult:
        """The result the next turn would have, recording nothing (a turn still in progress)."""
        return verdict(self.turns, speaker, text, labels, probs, modalities, timings_ms)

    def encoder_input(self, text: str, speaker: str | None = None) -> tuple[str, str]:
        """(text, context) of a new turn by `speaker`, from the earlier turns only."""
        speakers = self.recent_speakers + [speaker] if self.speaker_markers else None
        return turn_inputs(self.recent_texts + [text], self.context_turns, speakers)[-1]

    def result(self, speaker: str | None, text: str, labels: Sequence[str], probs: Sequence[float],
               modalities: tuple[str, ...], timings_ms: dict[str, float]) -> TurnResult:
        """Record the turn and return its result (the most probable label and its confidence)."""
        result = verdict(self.turns, speaker, text, labels, probs, modalities, timings_ms)
        if self.context_turns:
            self.recent_texts = (self.recent_texts + [text])[-self.context_turns:]
            self.recent_speakers = (self.recent_speakers + [speaker])[-self.context_turns:]
        self.turns += 1
        return result

    def revise_speaker(self, index: int, speaker: str | None) -> None:
        """Turn `index` was said by `speaker` after all: later encoder inputs mark it so (when the
        encoder uses speaker markers). Its own and other earlier vectors are not re-encoded."""
        position = index - (self.turns - len(self.recent_speakers))
        if 0 <= position < len(self.recent_speakers):
            self.recent_speakers[position] = speaker


def verdict(index: int, speaker: str | None, text: str, labels: Sequence[str], probs: Sequence[float],
            modalities: tuple[str, ...], timings_ms: dict[str, float]) -> TurnResult:
    """The result of turn `index` from its class probabilities: the most probable label and its confidence."""
    best = max(range(len(probs)), key=probs.__getitem__)
    return TurnResult(index=index, speaker=speaker, text=text, label=labels[best], confidence=float(probs[best]),
                      probs=dict(zip(labels, map(float, probs), strict=True)), modalities=modalities,
                      timings_ms=timings_ms)


State = TypeVar("State")
Step = Callable[[State, dict[str, Any], int], tuple[Sequence[float], State]]
"""One DAG step as a pure function: (state before, the turn's features, speaker id) -> (probs, state after)."""


@dataclass
class _Kept(Generic[State]):
    result: TurnResult
    features: dict[str, Any]  # what the DAG step read: encoded vectors, never re-encoded on revision
    before: State  # the graph state just before this turn


class RevisableTurns(Generic[State]):
    """A tracker's last `size` turns as its graph read them, so that their speakers can be corrected.

    For each kept turn: its result, the features the DAG step read (the text vector and any audio
    or face vectors) and the graph state just before it. `revise` restores the state before the
    earliest corrected turn and runs the DAG steps again over the kept turns from there, with the
    corrected speakers: the state after the last one is the one tracking continues from, exactly as
    if the turns had had those speakers all along, as far as the graph is concerned. Two things are
    not recomputed (documented approximations):

    - turns older than the buffer are final: a correction naming one is ignored;
    - the text encoder's context: a turn's vector was encoded with the context it had (with
      "same: "/"other: " markers when the encoder uses them, after the speakers known then). Later
      turns' contexts do use the corrected speakers (`ConversationSoFar.revise_speaker`).

    Memory is bounded by `size` turns whatever the length of the conversation.
    """

    def __init__(self, size: int = REVISABLE_TURNS) -> None:
        if size < 1:
            raise ValueError("a revision buffer keeps at least one turn")
        self._kept: deque[_Kept[State]] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def indices(self) -> range:
        """The indices of the turns that can still be revised."""
        if not self._kept:
            return range(0)
        return range(self._kept[0].result.index, self._kept[-1].result.index + 1)

    def clear(self) -> None:
        self._kept.clear()

    def keep(self, result: TurnResult, features: dict[str, Any], before: State) -> None:
        """Remember a turn just tracked (the oldest kept one is dropped when the buffer is full)."""
        self._kept.append(_Kept(result, features, before))

    def revise(self, speakers: Mapping[int, str | None], so_far: ConversationSoFar, labels: Sequence[str],
               step: Step[State]) -> tuple[list[TurnResult], State | None]:
        """Apply corrected speakers (turn index -> label; indices not kept are ignored) and recompute.

        Returns the turns whose speaker, label or probabilities changed (in order, with their
        indices) and the state after the last kept turn, or ([], None) when nothing changed.
        """
        first = self._kept[0].result.index if self._kept else 0
        changed = {index: speaker for index, speaker in speakers.items()
                   if index in self.indices and self._kept[index - first].result.speaker != speaker}
        if not changed:
            return [], None
        state = self._kept[min(changed) - first].before
        revised = []
        for kept in list(self._kept)[min(changed) - first:]:
            old = kept.result
            speaker = changed.get(old.index, old.speaker)
            started = time.perf_counter()
            # speaker_id: a revised label already seen keeps its id, a new one gets the next free id
            probs, after = step(state, kept.features, so_far.speaker_id(speaker))
            new = verdict(old.index, speaker, old.text, labels, probs, old.modalities,
                          {"graph": 1000 * (time.perf_counter() - started)})
            kept.before, kept.result, state = state, new, after
            if (new.speaker != old.speaker or new.label != old.label
                    or max(abs(new.probs[k] - old.probs[k]) for k in new.probs) >= REVISION_TOLERANCE):
                revised.append(new)
        for index, speaker in changed.items():
            so_far.revise_speaker(index, speaker)
        return revised, state
