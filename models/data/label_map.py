"""How the experts' emotion labels map onto the conversation label sets.

A conversation turn labelled `l` gets expert evidence of class `MAPS[(expert_set, conversation_set)][l]`;
a label with no entry has no evidence in that corpus, and the modality is absent for that turn.

Choices, by meaning (the corpora do not share a taxonomy):

* IEMOCAP ``exc`` (excited) and ``hap`` both map to happiness: EmoDB and FER-2013 have one positive
  emotion. ``fru`` (frustrated) maps to anger: the nearest negative, aroused category in both
  expert corpora (IEMOCAP's own annotators confuse fru and ang more than any other pair).
* MELD ``joy`` maps to happiness / happy. MELD ``surprise``, ``disgust`` and ``fear`` exist in
  FER-2013 but not in the 4 EmoDB emotions used here, so MELD turns with those labels have no
  audio evidence. That makes "audio absent" itself a hint at those labels, which is why the paired
  benchmark runs on IEMOCAP, where every label has both kinds of evidence.
"""
from __future__ import annotations

from merc.models.data.labels import EMODB4, FER7, IEMOCAP6, MELD7, LabelSet

MAPS: dict[tuple[str, str], dict[str, str]] = {
    (EMODB4.name, IEMOCAP6.name): {"hap": "happiness", "exc": "happiness", "sad": "sadness", "neu": "neutral",
                                   "ang": "anger", "fru": "anger"},
    (FER7.name, IEMOCAP6.name): {"hap": "happy", "exc": "happy", "sad": "sad", "neu": "neutral", "ang": "angry",
                                 "fru": "angry"},
    (EMODB4.name, MELD7.name): {"joy": "happiness", "sadness": "sadness", "neutral": "neutral", "anger": "anger"},
    (FER7.name, MELD7.name): {"joy": "happy", "sadness": "sad", "neutral": "neutral", "anger": "angry",
                              "surprise": "surprise", "disgust": "disgust", "fear": "fear"},
}


def label_mapping(expert: LabelSet, conversation: LabelSet) -> dict[int, int]:
    """Conversation label index -> expert class index, for the labels that have evidence."""
    try:
        names = MAPS[(expert.name, conversation.name)]
    except KeyError:
        raise KeyError(f"no mapping from {expert.name} to {conversation.name} "
                       f"(known: {', '.join(f'{a}->{b}' for a, b in MAPS)})") from None
    return {conversation.index(c): expert.index(e) for c, e in names.items()}
