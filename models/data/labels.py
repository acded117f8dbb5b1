"""Label sets of the supported corpora: the order of labels fixes the classifier's output order."""
from __future__ import annotations

from dataclasses import dataclass

from merc.models.errors import MercError


class LabelError(MercError, KeyError):
    """A label or label set that is not known; the message lists the known ones."""

    code = "label_unknown"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of emotion labels, named after the corpus protocol it comes from."""

    name: str
    labels: tuple[str, ...]

    def index(self, label: str) -> int:
        """Position of `label`; raises KeyError naming the allowed labels."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise LabelError(f"unknown label {label!r} for label set {self.name} "
                             f"(allowed: {', '.join(self.labels)})") from None

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self.labels


MELD7 = LabelSet("meld-7", ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"))
IEMOCAP6 = LabelSet("iemocap-6", ("hap", "sad", "neu", "ang", "exc", "fru"))
# The experts' corpora (see merc.models.data.label_map for how they map onto the conversation sets).
FER7 = LabelSet("fer2013-7", ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"))
EMODB4 = LabelSet("emodb-4", ("anger", "happiness", "neutral", "sadness"))

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (MELD7, IEMOCAP6, FER7, EMODB4)}


def get_label_set(name: str) -> LabelSet:
    """Look up a label set by name ("meld-7", "iemocap-6")."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise LabelError(f"unknown label set {name!r} (known: {', '.join(LABEL_SETS)})") from None
