"""EmoDB (Berlin Database of Emotional Speech): the audio expert's corpus.

File names encode everything: ``03a01Wa.wav`` = speaker 03, text a01, emotion letter at index 5,
version letter. The 4 emotions used here are W anger, F happiness (Freude), T sadness (Trauer) and
N neutral; the full corpus's L boredom, A fear and E disgust are left out, and how many files that
drops is logged (never silently). Speakers are the leave-one-speaker-out folds.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merc.models.data.corpora import CorpusError
from merc.models.data.labels import EMODB4

log = logging.getLogger(__name__)
EMOTION_LETTERS = {"W": "anger", "F": "happiness", "N": "neutral", "T": "sadness"}
OTHER_LETTERS = {"L": "boredom", "A": "fear", "E": "disgust"}
NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])\.wav$")
# Speaker sexes from the corpus documentation, for sex-balanced speaker splits.
SPEAKER_SEX = {"03": "m", "08": "f", "09": "f", "10": "m", "11": "m", "12": "m", "13": "f", "14": "f", "15": "m",
               "16": "f"}


class EmoDBError(CorpusError):
    """Bad EmoDB input; the message names the file."""

    code = "emodb_invalid"


@dataclass(frozen=True)
class EmoDBClip:
    path: Path
    speaker: str
    label: int  # index into EMODB4

    @property
    def name(self) -> str:
        return self.path.name


def resolve_emodb_dir(data_dir: str | Path | None = None) -> Path:
    """The folder of EmoDB wavs: `data_dir`/emodb/wav, $MERC_DATA/emodb/wav or ../shared/data/emodb/wav."""
    from merc.models.data.corpora import resolve_data_dir

    root = Path(data_dir) if data_dir else resolve_data_dir(None)
    for candidate in (root / "emodb" / "wav", root / "wav", root):
        if candidate.is_dir() and any(candidate.glob("*.wav")):
            return candidate
    raise EmoDBError(f"{root}: no EmoDB wav files (expected emodb/wav/*.wav, e.g. 03a01Wa.wav)")


def load_emodb(data_dir: str | Path | None = None) -> list[EmoDBClip]:
    """The 4-emotion clips, sorted by name. A file whose name does not follow EmoDB's scheme raises."""
    folder = resolve_emodb_dir(data_dir)
    clips: list[EmoDBClip] = []
    dropped: dict[str, int] = {}
    for path in sorted(folder.glob("*.wav")):
        match = NAME.match(path.name)
        if not match:
            raise EmoDBError(f"{path}: not an EmoDB file name (speaker, text, emotion letter, version: 03a01Wa.wav)")
        speaker, _, letter, _ = match.groups()
        if letter in EMOTION_LETTERS:
            clips.append(EmoDBClip(path, speaker, EMODB4.index(EMOTION_LETTERS[letter])))
        elif letter in OTHER_LETTERS:
            dropped[OTHER_LETTERS[letter]] = dropped.get(OTHER_LETTERS[letter], 0) + 1
        else:
            raise EmoDBError(f"{path}: unknown EmoDB emotion letter {letter!r}")
    if dropped:
        log.info("EmoDB: left out %s (not in the 4-emotion set)",
                 ", ".join(f"{n} {label}" for label, n in sorted(dropped.items())))
    if not clips:
        raise EmoDBError(f"{folder}: no clips of anger, happiness, neutral or sadness")
    return clips


def read_clip(clip: EmoDBClip) -> np.ndarray:
    """The clip as float32 mono 16 kHz."""
    import soundfile as sf

    from merc.models.data.audio import to_mono_16k

    try:
        signal, sr = sf.read(str(clip.path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise EmoDBError(f"{clip.path}: unreadable audio ({err})") from err
    return to_mono_16k(signal.mean(axis=1), sr)
