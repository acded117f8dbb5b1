"""A turn still being spoken: what the segmenter hands on about once a second, and the local
agreement that keeps its provisional transcript from flickering.

While someone talks for ten seconds, the overlay should not stay blank. Every `partial_every`
seconds of a running turn the segmenter yields a `TurnInProgress`; the processor decodes it,
previews speaker and emotion without committing them, and publishes a `turn.partial`. Successive
decodes of a growing turn agree on most of their words; the words two decodes in a row agree on
are `stable` (the local-agreement policy of whisper_streaming), the rest may still change. The
final transcript is a decode of the whole turn as before, so a replay with and without partials
gives the same turns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from merc.models.data.asr_text import lower_nopunct
from merc.stream.capture.audio import SAMPLE_RATE


@dataclass(frozen=True)
class TurnInProgress:
    """The audio of a running turn so far."""

    t_start: float
    """Session time (s) of its first sample, as the finished turn will have it."""
    audio: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def t_end(self) -> float:
        return self.t_start + self.duration


@dataclass
class LocalAgreement:
    """The stable prefix of a growing turn's successive transcripts: words that two decodes in a
    row agree on (compared case- and punctuation-blind) are committed, and committed words stay
    (a later decode that reads them differently changes only what follows them)."""

    _turn: float | None = field(default=None, init=False)
    _previous: list[str] = field(default_factory=list, init=False)
    _committed: list[str] = field(default_factory=list, init=False)

    def update(self, t_start: float, text: str) -> tuple[str, str]:
        """(text, stable) after a new decode `text` of the turn that started at `t_start`: the
        committed words and, after them, the rest of this decode; `stable` the committed words."""
        words = text.split()
        if t_start != self._turn:  # a new turn: nothing agreed yet
            self._turn, self._previous, self._committed = t_start, [], []
        n = len(self._committed)
        if [_key(w) for w in words[:n]] == [_key(w) for w in self._committed]:
            agreed = n
            for a, b in zip(self._previous[n:], words[n:], strict=False):
                if _key(a) != _key(b):
                    break
                agreed += 1
            self._committed = self._committed + words[n:agreed]  # committed words keep their first form
        self._previous = words
        shown = self._committed + words[len(self._committed):]
        return " ".join(shown), " ".join(self._committed)


def _key(word: str) -> str:
    return lower_nopunct(word)
