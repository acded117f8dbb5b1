"""Did the voice change across a pause? The segmenter's cue for ending a turn without a long silence.

Two stretches of speech, the end of the turn so far and the first moments after a pause, are
embedded by the same voice encoder that attributes speakers, and compared by cosine similarity.
Measured on the first conversation benchmark (8 MELD test dialogues voiced by espeak-ng, 45
consecutive-turn pairs): with 0.75 s after the pause and up to 3 s before it, same-voice pairs
scored 0.74-0.80 (10th-90th percentile) and changes 0.44-0.60; a threshold of 0.70 separated
97.8 % of pairs. Shorter probes are noisier (0.5 s: 90.9 %), longer ones delay the previous
turn's event by as much.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Embed = Callable[[npt.NDArray[np.float32]], "npt.NDArray[np.float32] | None"]
"""A voice embedding of some speech (unit norm), or None when it holds no usable voice."""


class VoiceChangeDetector:
    """`(before, after) -> similarity`: the cosine of the two stretches' voice embeddings, None
    when either has no usable voice (the segmenter then keeps one turn). The segmenter holds the
    thresholds (SegmenterOptions.change_threshold*)."""

    def __init__(self, embed: Embed) -> None:
        self.embed = embed
        self.last_similarity: float | None = None
        """The similarity of the last comparison (for logs and benchmarks)."""

    def __call__(self, before: npt.NDArray[np.float32], after: npt.NDArray[np.float32]) -> float | None:
        a, b = self.embed(before), self.embed(after)
        if a is None or b is None:
            self.last_similarity = None
        else:
            self.last_similarity = float(np.dot(np.asarray(a, np.float64), np.asarray(b, np.float64)))
        return self.last_similarity
