"""Complete utterances against their cut-off beginnings: the training data of the end-of-turn cue.

When someone pauses, the live pipeline must tell "I'll see you tomorrow" (done: answer now) from
"So what I think is" (wait). Every corpus utterance of two words or more gives one example of each:
the whole utterance (complete) and its first k words, k drawn uniformly from 1..n-1 (not yet
complete). One-word utterances ("Yeah", "Okay") give only the complete example. Text takes the
barest ASR form (`lower_nopunct`): Whisper ends a cut-off phrase with a period as readily as a
sentence, so punctuation must not be what the classifier learns.

Draws come from a generator seeded by (seed, dialogue id): the same seed gives the same examples in
any order of dialogues.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from merc.models.data.asr_text import dialogue_rng, lower_nopunct
from merc.models.data.corpora import Dialogue


@dataclass(frozen=True)
class UtteranceEnd:
    """One example: a transcript, and whether the speaker had finished saying it."""

    text: str
    complete: bool
    dialogue: str


def completeness_text(text: str) -> str:
    """The form the end-of-turn classifier reads: lowercase, no punctuation (training and live alike)."""
    return lower_nopunct(text)


def utterance_ends(dialogues: Sequence[Dialogue], seed: int) -> list[UtteranceEnd]:
    """Each utterance whole (complete) and, with two words or more, one seeded prefix (incomplete)."""
    examples: list[UtteranceEnd] = []
    for dialogue in dialogues:
        rng: random.Random = dialogue_rng(seed, 0, dialogue.id)
        for utterance in dialogue.utterances:
            words = completeness_text(utterance.text).split()
            if not words:
                continue
            examples.append(UtteranceEnd(" ".join(words), True, dialogue.id))
            if len(words) >= 2:
                cut = rng.randint(1, len(words) - 1)
                examples.append(UtteranceEnd(" ".join(words[:cut]), False, dialogue.id))
    return examples
