"""Synthetic conversational recordings: corpus dialogues read aloud by espeak-ng, one voice per speaker.

No corpus we may use has conversational audio, so the live pipeline (segmentation, ASR, speaker
attribution, latency) is exercised on dialogues spoken by a speech synthesiser. The voices carry
no acted emotion: the gold emotion labels are the corpus labels of the text.

A recording is a directory (the format `merc-replay` reads)::

    audio.wav      16 kHz mono PCM_16
    gold.jsonl     one object per spoken turn, in spoken order:
                   {"turn", "speaker", "text", "emotion", "t_start", "t_end"} (seconds, the voiced span)
    manifest.json  {"format": "merc-recording", "format_version": 1, "sample_rate", "channels", "audio",
                    "video": null, "duration_s", "created", "source": "synth", "synth": {parameters}}

How a recording is built (`synthesize_dialogue`):

* text is normalised so espeak-ng reads words (`clean_text`); turns left without words are skipped
  and listed in the manifest;
* each speaker gets a distinct voice (`assign_voices`): speakers alternate between a male and a
  female espeak-ng voice (variants chosen to be intelligible and far apart for a speaker encoder),
  each with its own pitch and speed, drawn from the seed and the dialogue id, so the first two
  speakers always differ clearly in pitch;
* each turn is synthesised, resampled 22050 -> 16000 Hz, trimmed to its voiced span (|x| above 1 %
  of the turn's peak), internal silences longer than `max_internal_pause_s` are shortened (the live
  segmenter ends a turn after ~0.6 s of silence, so a sentence break must not look like a turn end),
  and levelled to the same RMS;
* turns are laid out with pauses drawn uniformly from `pause_s`; with probability `overlap_prob` a
  turn by a different speaker starts `overlap_s` before the previous one ends (at most half of
  either turn, never overlapping two turns); overlapping turns are mixed by adding, then clipping;
* `edge_silence_s` of silence opens and closes the recording; optional white or pink background
  noise is added over the whole recording at `noise_snr_db` relative to the speech power.

Realistic conversations (all off by default, so the recordings above stay as they were):

* **voices from several engines** (`SynthConfig.engines`): espeak-ng, Debian's `flite` (voices kal16,
  awb, rms, slt) and `festival` (kal_diphone, ked_diphone, and cmu_us_slt_arctic_hts where installed).
  Each speaker draws an engine (the first speakers a shuffled round of the engines, so a dialogue mixes
  them) and a voice of it that no other speaker of the dialogue has (flite's kal16 and festival's
  kal_diphone are one person, Kal, as are the two slt voices: never two speakers). Engine versions go
  into the manifest (`engines`);
* **turn-taking as people do it** (`turn_taking="conversational"`): at a speaker change the next turn
  starts after a gap drawn from a lognormal distribution with median `gap_median_s` (0.2 s) and
  sigma 0.7 (about 90 % of gaps under 0.5 s), clipped to 0.02-1.5 s. Stivers et al. (2009,
  "Universals and cultural variation in turn-taking in conversation", PNAS 106(26):10587-10592) find
  across 10 languages that speakers avoid overlap and minimise silence, with average gaps within
  250 ms of the cross-language mean (typically about 200 ms); Heldner & Edlund (2010, "Pauses, gaps
  and overlaps in conversations", J. Phonetics 38) report distributions of the same kind. With
  probability `overlap_prob` a speaker change overlaps instead, by `overlap_s` (0.1-1.0 s, at most half
  of either turn). Consecutive utterances by one speaker are separated by a within-speaker pause
  (lognormal, median `same_speaker_pause_s`, sigma 0.4, 0.15-1.2 s);
* **back-channels** (`backchannel_prob`): a listener says "mm-hm", "yeah", "right" or "uh-huh" in the
  middle of another speaker's turn (turns of at least 1.5 s), 4 dB softer than the listener's turns.
  They are *not* gold turns: gold.jsonl lists the turns of the dialogue only, and the manifest lists
  the back-channels (`synth.backchannels`: speaker, text, t_start, t_end, inside_turn), so a scorer
  can count them as speech (diarization) while turn metrics ignore them;
* **loudness differences** (`loudness_range_db`): each speaker's level is lowered by a gain drawn
  uniformly from 0..range dB (manifest `gains_db`), so two speakers differ by up to `range` dB;
* **babble noise** (`noise_kind="babble"`): `babble_talkers` voices not used by the dialogue's speakers
  read unrelated sentences of ours (`BABBLE_SENTENCES`) continuously, summed, scaled to the SNR like
  white and pink noise;
* **EmoDB speakers** (`synthesize_emodb_dialogue`): real human voices (German) for segmentation and
  speaker attribution only: gold text is empty, the manifest says `language: "de"` and
  `text_scored: false` (no WER), the emotion is EmoDB's acted one (from the file name).

Everything is deterministic given the seed, the dialogue and the engine versions (recorded in the
manifest). Files are written atomically, manifest.json last: a directory with a manifest is complete.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from merc.models.data.corpora import Dialogue
from merc.models.errors import MercError

SAMPLE_RATE = 16000
FORMAT = "merc-recording"
FORMAT_VERSION = 1
NOISE_KINDS = ("pink", "white", "babble")
ENGINES = ("espeak", "flite", "festival")
TURN_TAKING = ("uniform", "conversational")
BACKCHANNELS = ("mm-hm", "yeah", "right", "uh-huh")
# Sentences of ours for babble noise: unrelated to any dialogue, read by voices that are not the speakers'.
BABBLE_SENTENCES = (
    "The train to the coast leaves from the second platform.",
    "Put the green folder on the shelf next to the window.",
    "We planted tomatoes and beans in the garden last spring.",
    "My brother repairs old bicycles in his spare time.",
    "The museum is closed on Mondays and public holidays.",
    "Add a pinch of salt before the water starts to boil.",
    "The meeting was moved to Thursday afternoon at three.",
    "A small boat drifted slowly past the harbour wall.",
    "She keeps her keys in the blue bowl by the door.",
    "The printer on the fourth floor is out of paper again.",
    "Most of the snow had melted by the end of the week.",
    "He asked whether the library still lends out maps.",
    "The soup needs another ten minutes on a low heat.",
    "Our neighbours are painting their fence dark red.",
    "Turn left at the bakery and walk up the hill.",
    "The concert hall was half empty on the first night.",
)
# Conversational turn-taking (see the module docstring): lognormal sigmas and clipping ranges, seconds.
GAP_SIGMA, GAP_RANGE_S = 0.7, (0.02, 1.5)
PAUSE_SIGMA, PAUSE_RANGE_S = 0.4, (0.15, 1.2)
BACKCHANNEL_MIN_TURN_S = 1.5
BACKCHANNEL_GAIN_DB = -4.0

_TRIM_REL = 0.01  # a sample is voiced when |x| exceeds this fraction of the turn's peak
_LEVEL_RMS = 0.1  # each turn is levelled to -20 dBFS RMS ...
_LEVEL_PEAK = 0.5  # ... with its peak kept below -6 dBFS, so two overlapping turns rarely clip


class SynthError(MercError, ValueError):
    """Bad synthesis input or a failing espeak-ng; the message names the dialogue, turn or file."""

    code = "synth_failed"


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of a recording besides the dialogue; all of it goes into the manifest."""

    seed: int = 0
    pause_s: tuple[float, float] = (0.7, 1.6)
    overlap_prob: float = 0.1
    overlap_s: tuple[float, float] = (0.2, 0.5)
    edge_silence_s: float = 0.5
    max_internal_pause_s: float = 0.4
    noise_snr_db: float | None = None
    noise_kind: str = "pink"
    max_turns: int | None = None
    engines: tuple[str, ...] = ("espeak",)
    turn_taking: str = "uniform"
    gap_median_s: float = 0.2
    same_speaker_pause_s: float = 0.4
    backchannel_prob: float = 0.0
    loudness_range_db: float = 0.0
    babble_talkers: int = 6

    def __post_init__(self) -> None:
        for name in ("pause_s", "overlap_s"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi and math.isfinite(hi)):
                raise SynthError(f"{name} must be a range 0 <= min <= max, got {lo}..{hi}")
        if not 0 <= self.overlap_prob <= 1:
            raise SynthError(f"overlap_prob must be in [0, 1], got {self.overlap_prob}")
        if not (math.isfinite(self.edge_silence_s) and self.edge_silence_s >= 0):
            raise SynthError(f"edge_silence_s must be >= 0, got {self.edge_silence_s}")
        if not self.max_internal_pause_s > 0:
            raise SynthError(f"max_internal_pause_s must be > 0, got {self.max_internal_pause_s}")
        if self.noise_snr_db is not None and not math.isfinite(self.noise_snr_db):
            raise SynthError(f"noise_snr_db must be a finite number of dB, got {self.noise_snr_db}")
        if self.noise_kind not in NOISE_KINDS:
            raise SynthError(f"unknown noise kind {self.noise_kind!r} (known: {', '.join(NOISE_KINDS)})")
        if self.max_turns is not None and self.max_turns < 1:
            raise SynthError(f"max_turns must be >= 1, got {self.max_turns}")
        if not self.engines or any(e not in ENGINES for e in self.engines) or len(set(self.engines)) < len(
                self.engines):
            raise SynthError(f"engines must be distinct names out of {', '.join(ENGINES)}, got {self.engines}")
        if self.turn_taking not in TURN_TAKING:
            raise SynthError(f"unknown turn taking {self.turn_taking!r} (known: {', '.join(TURN_TAKING)})")
        for name in ("gap_median_s", "same_speaker_pause_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SynthError(f"{name} must be > 0 seconds, got {value}")
        if not 0 <= self.backchannel_prob <= 1:
            raise SynthError(f"backchannel_prob must be in [0, 1], got {self.backchannel_prob}")
        if not (math.isfinite(self.loudness_range_db) and 0 <= self.loudness_range_db <= 40):
            raise SynthError(f"loudness_range_db must be 0-40 dB, got {self.loudness_range_db}")
        if self.babble_talkers < 1:
            raise SynthError(f"babble_talkers must be >= 1, got {self.babble_talkers}")

    @property
    def realistic(self) -> bool:
        """Whether any option beyond the original generator is on (voices, turn taking, levels, babble)."""
        return (self.engines != ("espeak",) or self.turn_taking != "uniform" or self.backchannel_prob > 0
                or self.loudness_range_db > 0 or self.noise_kind == "babble")


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (``-v``, language plus ``+variant``), pitch (``-p`` 0-99) and speed (``-s`` wpm)."""

    name: str
    pitch: int
    speed: int


# Built-in espeak-ng voices only (no mbrola): a language plus a variant, with a base pitch and speed.
# Chosen with espeak-ng 1.51 for two things at once (bench/synth_voices.py, results of 2026-11-23):
# intelligible to Whisper tiny.en (WER 0.12-0.23 on 14 of our own sentences; the accent voices used
# at first, at 165-175 wpm, scored 0.38-0.60) and apart in speaker-embedding space (Resemblyzer
# centroid cosine <= 0.74 within a gender, <= 0.68 across, below the attributor's 0.78 threshold).
# Speakers of one gender take consecutive entries of its ring.
# ("en-gb+<variant>" ignores the variant in 1.51, hence en-us bases.)
MALE_VOICES = (Voice("en-us+sandro", 35, 150), Voice("en-us+benjamin", 40, 145), Voice("en-us+m3", 40, 140))
FEMALE_VOICES = (Voice("en-us+steph", 60, 140), Voice("en-us+anika", 45, 140), Voice("en-us+f2", 65, 130))


def dialogue_seed(seed: int, dialogue_id: str) -> int:
    """Seed of one dialogue's recording: a recording does not depend on which others are generated."""
    return (seed * 1_000_003 + zlib.crc32(dialogue_id.encode("utf-8"))) % 2**63


def assign_voices(speakers: Sequence[str], seed: int) -> dict[str, Voice]:
    """A distinct voice per speaker, in order of first appearance, deterministic by `seed`.

    Speakers alternate female/male (which comes first is drawn), so neighbours in the speaker order
    differ in pitch range; within a gender they take consecutive voices of its ring
    (`MALE_VOICES`, `FEMALE_VOICES`) from a drawn offset. Pitch and speed get a small drawn jitter.
    Beyond three speakers of one gender the ring repeats with the pitch moved by 8 per round.
    """
    rng = np.random.default_rng(seed)
    female_first = bool(rng.integers(2))
    offsets = {"female": int(rng.integers(len(FEMALE_VOICES))), "male": int(rng.integers(len(MALE_VOICES)))}
    voices: dict[str, Voice] = {}
    for i, speaker in enumerate(dict.fromkeys(speakers)):
        gender = "female" if (i % 2 == 0) == female_first else "male"
        ring = FEMALE_VOICES if gender == "female" else MALE_VOICES
        k = offsets[gender] + i // 2
        base = ring[k % len(ring)]
        shift = 8 * ((i // 2) // len(ring)) * (1 if gender == "female" else -1)
        pitch = int(np.clip(base.pitch + shift + rng.integers(-3, 4), 0, 99))
        voices[speaker] = Voice(base.name, pitch, int(base.speed + rng.integers(-4, 5)))
    return voices


# ---------------------------------------------------------------- text


_C1 = re.compile("[\x80-\x9f]")
_ANNOTATION = re.compile(r"\[[^\]]*\]|\{[^}]*\}")  # [LAUGHTER] (IEMOCAP), [Monica flicks her back] (MELD)
# UTF-8 read as cp1252 ("â€™" for "’"): a lead byte (0xC2-0xF4) followed by continuation bytes (0x80-0xBF)
_CONT = "".join(bytes([b]).decode("cp1252", errors="ignore") for b in range(0x80, 0xC0))
_MOJIBAKE = re.compile("[" + bytes(range(0xC2, 0xF5)).decode("cp1252") + "][" + re.escape(_CONT) + "]{1,3}")
_TRANSLATE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2014": ", ", "\u2013": ", ", "\u2015": ", ", "\u2026": "...", "\u00a0": " ",
    "[": " ", "]": " ", "{": " ", "}": " ", "<": " ", ">": " ", "|": " ", "\\": " ", "_": " ", "*": " ",
    "~": " ", "^": " ",
})


def _fix_cp1252(match: re.Match[str]) -> str:
    return bytes([ord(match.group())]).decode("cp1252", errors="ignore")


def _fix_mojibake(match: re.Match[str]) -> str:
    try:
        return match.group().encode("cp1252").decode("utf-8")
    except UnicodeError:  # not one UTF-8 character after all: leave it
        return match.group()


def clean_text(text: str) -> str:
    """`text` as plain ASCII words and punctuation espeak-ng reads naturally; "" when nothing is left.

    Repairs text decoded with the wrong code page (C1 controls such as "\\x92" and UTF-8 read as
    cp1252, as in some MELD copies), drops bracketed annotations that are not speech ("[LAUGHTER]",
    stage directions), straightens typographic quotes, turns dashes into a clause break, strips
    accents, and drops what espeak would spell out or misparse (brackets start its phoneme input).
    """
    text = _MOJIBAKE.sub(_fix_mojibake, text)
    text = _C1.sub(_fix_cp1252, text)
    text = _ANNOTATION.sub(" ", text)
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = "".join(c if c.isascii() and c.isprintable() else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.!?;:])", r"\1", text)
    text = re.sub(r"^[-,;:\s]+", "", text)
    return text if re.search(r"[A-Za-z0-9]", text) else ""


# ---------------------------------------------------------------- espeak-ng


@dataclass(frozen=True)
class Espeak:
    """A located espeak-ng executable; `speak` turns one turn's text into a tight 16 kHz clip."""

    path: str
    version: str

    @classmethod
    def find(cls, command: str = "espeak-ng") -> Espeak:
        """Locate `command` (a name on PATH or a path) and read its version."""
        path = shutil.which(command)
        if path is None:
            raise SynthError(f"espeak-ng not found (looked for {command!r}); install the Debian package "
                             "espeak-ng (apt-get install espeak-ng) or pass the executable's path")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError) as err:
            raise SynthError(f"{path}: cannot run espeak-ng --version ({err})") from None
        m = re.search(r"text-to-speech:\s*(\S+)", out)
        return cls(path, m.group(1) if m else out.strip().splitlines()[0] if out.strip() else "unknown")

    def speak(self, text: str, voice: Voice, max_internal_pause_s: float = 0.4) -> np.ndarray:
        """`text` spoken by `voice`: float32 at 16 kHz, trimmed to the voiced span and levelled."""
        with tempfile.TemporaryDirectory(prefix="merc-synth-") as tmp:
            wav = Path(tmp) / "turn.wav"
            cmd = [self.path, "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "-w", str(wav),
                   "--stdin"]
            try:
                proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=120, check=False)
            except (OSError, subprocess.SubprocessError) as err:
                raise SynthError(f"espeak-ng failed for voice {voice.name!r} on {text!r}: {err}") from None
            if proc.returncode != 0 or not wav.is_file():
                msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
                raise SynthError(f"espeak-ng failed for voice {voice.name!r} on {text!r}: {msg}")
            clip = _read_clip(wav, max_internal_pause_s)
        if clip.size == 0:
            raise SynthError(f"espeak-ng produced silence for voice {voice.name!r} on {text!r}")
        return clip


def _read_clip(wav: Path, max_internal_pause_s: float) -> np.ndarray:
    """A synthesiser's (or a recording's) WAV as a tight, levelled 16 kHz clip (`_tighten`)."""
    audio, rate = sf.read(wav, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        from scipy.signal import (
            resample_poly,  # scipy.signal takes seconds to import: only when used
        )

        ratio = Fraction(SAMPLE_RATE, rate)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator)
    return _tighten(audio, max_internal_pause_s)


# ---------------------------------------------------------------- flite, festival, and voices of any engine


@dataclass(frozen=True)
class EngineVoice:
    """A voice of any engine. `pitch`: espeak-ng's -p (0-99) or flite's mean F0 in Hz (None: the voice's
    own); `speed`: espeak-ng's words per minute; `stretch`: flite's and festival's duration stretch
    (1.1 = 10 % slower)."""

    engine: str
    name: str
    pitch: int | None = None
    speed: int | None = None
    stretch: float | None = None


@dataclass(frozen=True)
class _PoolVoice:
    name: str
    sex: str
    person: str  # one person may be voiced by two engines (kal, slt): never two speakers of a dialogue
    pitch: int | None = None  # base pitch (espeak-ng -p; flite mean F0 in Hz)
    speed: int | None = None  # base espeak-ng speed


VOICE_POOL: dict[str, tuple[_PoolVoice, ...]] = {
    "espeak": tuple(_PoolVoice(v.name, "m", f"espeak:{v.name}", v.pitch, v.speed) for v in MALE_VOICES)
    + tuple(_PoolVoice(v.name, "f", f"espeak:{v.name}", v.pitch, v.speed) for v in FEMALE_VOICES),
    # flite's kal (8 kHz) is kal16's speaker at a lower rate: kal16 only; mean F0 of each voice from flite 2.2
    "flite": (_PoolVoice("kal16", "m", "kal", 105), _PoolVoice("awb", "m", "awb", 120),
              _PoolVoice("rms", "m", "rms", 110), _PoolVoice("slt", "f", "slt", 175)),
    "festival": (_PoolVoice("kal_diphone", "m", "kal"), _PoolVoice("ked_diphone", "m", "ked"),
                 _PoolVoice("cmu_us_slt_arctic_hts", "f", "slt")),
}


def _program(command: str, what: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise SynthError(f"{what} not found (looked for {command!r}); install the Debian package(s) {package} "
                         f"(apt-get install {package}) or pass the executable's path")
    return path


def _version(cmd: list[str], pattern: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise SynthError(f"{cmd[0]}: cannot run {' '.join(cmd[1:])} ({err})") from None
    out = (proc.stdout + proc.stderr).strip()
    m = re.search(pattern, out)
    return m.group(1) if m else (out.splitlines()[0] if out else "unknown")


@dataclass(frozen=True)
class Flite:
    """A located flite (Debian package flite): voices kal, kal16, awb, rms, slt are built in."""

    path: str
    version: str

    @classmethod
    def find(cls, command: str = "flite") -> Flite:
        path = _program(command, "flite", "flite")
        return cls(path, _version([path, "--version"], r"version:\s*(\S+)"))

    def speak(self, text: str, voice: EngineVoice, max_internal_pause_s: float = 0.4) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="merc-synth-") as tmp:
            wav = Path(tmp) / "turn.wav"
            cmd = [self.path, "-voice", voice.name]
            if voice.stretch is not None:
                cmd += ["--setf", f"duration_stretch={voice.stretch}"]
            if voice.pitch is not None:
                cmd += ["--setf", f"int_f0_target_mean={voice.pitch}"]
            cmd += ["-t", text, "-o", str(wav)]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
            except (OSError, subprocess.SubprocessError) as err:
                raise SynthError(f"flite failed for voice {voice.name!r} on {text!r}: {err}") from None
            if proc.returncode != 0 or not wav.is_file():
                msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
                raise SynthError(f"flite failed for voice {voice.name!r} on {text!r}: {msg}")
            clip = _read_clip(wav, max_internal_pause_s)
        if clip.size == 0:
            raise SynthError(f"flite produced silence for voice {voice.name!r} on {text!r}")
        return clip


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", " ").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Festival:
    """A located festival (Debian packages festival, festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts).
    Several texts of one voice are spoken by one festival process (`speak_many`): starting festival costs
    ~0.5 s."""

    path: str
    version: str

    @classmethod
    def find(cls, command: str = "festival") -> Festival:
        path = _program(command, "festival", "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts")
        return cls(path, _version([path, "--version"], r"System:\s*([^\s:]+)"))

    def voices(self) -> list[str]:
        """The voices festival can load (from its voice folders)."""
        roots = [Path("/usr/share/festival/voices"), Path(self.path).resolve().parent.parent / "share" /
                 "festival" / "voices"]
        return sorted({d.name for r in roots if r.is_dir() for d in r.glob("*/*") if d.is_dir()})

    def speak(self, text: str, voice: EngineVoice, max_internal_pause_s: float = 0.4) -> np.ndarray:
        return self.speak_many([text], voice, max_internal_pause_s)[0]

    def speak_many(self, texts: Sequence[str], voice: EngineVoice, max_internal_pause_s: float = 0.4
                   ) -> list[np.ndarray]:
        if not re.fullmatch(r"[A-Za-z0-9_]+", voice.name):
            raise SynthError(f"not a festival voice name: {voice.name!r}")
        with tempfile.TemporaryDirectory(prefix="merc-synth-") as tmp:
            lines = [f"(voice_{voice.name})"]
            if voice.stretch is not None:
                lines.append(f"(Parameter.set 'Duration_Stretch {voice.stretch})")
            wavs = [Path(tmp) / f"turn{i}.wav" for i in range(len(texts))]
            lines += [f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(t)})) {_scheme_string(str(w))} "
                      "'riff)" for t, w in zip(texts, wavs, strict=True)]
            script = Path(tmp) / "speak.scm"
            script.write_text("\n".join(lines) + "\n", encoding="utf-8")
            try:
                proc = subprocess.run([self.path, "-b", str(script)], capture_output=True, timeout=600, check=False)
            except (OSError, subprocess.SubprocessError) as err:
                raise SynthError(f"festival failed for voice {voice.name!r}: {err}") from None
            missing = [t for t, w in zip(texts, wavs, strict=True) if not w.is_file()]
            if proc.returncode != 0 or missing:
                msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
                raise SynthError(f"festival failed for voice {voice.name!r} on {missing[:1]!r}: {msg}")
            clips = [_read_clip(w, max_internal_pause_s) for w in wavs]
        for text, clip in zip(texts, clips, strict=True):
            if clip.size == 0:
                raise SynthError(f"festival produced silence for voice {voice.name!r} on {text!r}")
        return clips


class Engines:
    """The synthesisers a recording may use, by engine name, with a cache of spoken clips (babble and
    back-channels repeat)."""

    def __init__(self, engines: Mapping[str, Espeak | Flite | Festival]) -> None:
        self.engines = dict(engines)
        self._cache: dict[tuple[EngineVoice, str, float], np.ndarray] = {}

    @classmethod
    def find(cls, names: Sequence[str], espeak: str = "espeak-ng", flite: str = "flite",
             festival: str = "festival") -> Engines:
        """Locate the engines named (SynthError naming the Debian package when one is missing)."""
        found: dict[str, Espeak | Flite | Festival] = {}
        for name in names:
            if name == "espeak":
                found[name] = Espeak.find(espeak)
            elif name == "flite":
                found[name] = Flite.find(flite)
            elif name == "festival":
                found[name] = Festival.find(festival)
            else:
                raise SynthError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
        return cls(found)

    def versions(self) -> dict[str, str]:
        return {name: engine.version for name, engine in self.engines.items()}

    def pool(self, name: str) -> tuple[_PoolVoice, ...]:
        """The voices of engine `name` this machine has."""
        voices = VOICE_POOL[name]
        engine = self.engines.get(name)
        if isinstance(engine, Festival):
            installed = set(engine.voices())
            voices = tuple(v for v in voices if v.name in installed)
        return voices

    def speak_many(self, texts: Sequence[str], voice: EngineVoice, max_internal_pause_s: float = 0.4
                   ) -> list[np.ndarray]:
        engine = self.engines.get(voice.engine)
        if engine is None:
            raise SynthError(f"engine {voice.engine!r} is not available here (have: {', '.join(self.engines)})")
        todo = [t for t in dict.fromkeys(texts) if (voice, t, max_internal_pause_s) not in self._cache]
        if todo:
            if isinstance(engine, Festival):
                clips = engine.speak_many(todo, voice, max_internal_pause_s)
            elif isinstance(engine, Espeak):
                espeak_voice = Voice(voice.name, int(voice.pitch or 50), int(voice.speed or 160))
                clips = [engine.speak(t, espeak_voice, max_internal_pause_s) for t in todo]
            else:
                clips = [engine.speak(t, voice, max_internal_pause_s) for t in todo]
            for text, clip in zip(todo, clips, strict=True):
                self._cache[(voice, text, max_internal_pause_s)] = clip
        return [self._cache[(voice, t, max_internal_pause_s)] for t in texts]


def assign_engine_voices(speakers: Sequence[str], seed: int, engines: Engines,
                         names: Sequence[str]) -> dict[str, EngineVoice]:
    """A voice per speaker (in order of first appearance) from the engines `names`, deterministic by `seed`.

    The first speakers take a shuffled round of the engines (so a dialogue of two or more speakers mixes
    engines), later ones an engine drawn at random; each takes a voice of its engine whose person no other
    speaker has (drawn at random; when one engine runs out, the others are used; when all do, voices
    repeat with their pitch moved). Pitch and speed (or duration stretch) get a small drawn jitter.
    """
    rng = np.random.default_rng([seed, 5])
    pools = {name: list(engines.pool(name)) for name in names}
    names = [n for n in names if pools[n]]
    if not names:
        raise SynthError("no voices available for the engines asked for")
    order = [names[i] for i in rng.permutation(len(names))]
    used: set[str] = set()
    voices: dict[str, EngineVoice] = {}
    for i, speaker in enumerate(dict.fromkeys(speakers)):
        engine = order[i] if i < len(order) else names[int(rng.integers(len(names)))]
        free = [v for v in pools[engine] if v.person not in used]
        if not free:
            others = [n for n in names if any(v.person not in used for v in pools[n])]
            if others:
                engine = others[int(rng.integers(len(others)))]
                free = [v for v in pools[engine] if v.person not in used]
            else:
                free = list(pools[engine])
        base = free[int(rng.integers(len(free)))]
        repeat = base.person in used
        used.add(base.person)
        jitter_pitch, jitter_speed, jitter_stretch = rng.integers(-3, 4), rng.integers(-4, 5), rng.uniform(0.92, 1.08)
        if engine == "espeak":
            shift = 10 if repeat else 0
            voices[speaker] = EngineVoice(engine, base.name, int(np.clip((base.pitch or 50) + shift + jitter_pitch,
                                                                         0, 99)),
                                          int((base.speed or 160) + jitter_speed))
        elif engine == "flite":
            pitch = int((base.pitch or 120) * (1.25 if repeat else 1.0) + 2 * jitter_pitch)
            voices[speaker] = EngineVoice(engine, base.name, pitch, None, round(float(jitter_stretch), 3))
        else:
            voices[speaker] = EngineVoice(engine, base.name, None, None, round(float(jitter_stretch), 3))
    return voices


def _tighten(audio: np.ndarray, max_pause_s: float) -> np.ndarray:
    """Trim to the voiced span, shorten long internal silences, level to the common RMS/peak."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 1e-6:
        return np.zeros(0, np.float32)
    loud = np.flatnonzero(np.abs(audio) > _TRIM_REL * peak)
    keep = np.zeros(audio.size, bool)
    keep[loud[0]: loud[-1] + 1] = True
    max_gap = max(1, round(max_pause_s * SAMPLE_RATE))
    gaps = np.diff(loud) - 1
    for k in np.flatnonzero(gaps > max_gap):  # silent run loud[k]+1 .. loud[k+1]-1
        first = loud[k] + 1 + max_gap // 2
        keep[first: first + gaps[k] - max_gap] = False
    clip = audio[keep]
    scale = min(_LEVEL_RMS / float(np.sqrt(np.mean(clip**2))), _LEVEL_PEAK / peak)
    return (clip * scale).astype(np.float32)


# ---------------------------------------------------------------- recordings


@dataclass(frozen=True)
class GoldTurn:
    """One spoken turn of a recording: what gold.jsonl holds, times in seconds of audio.wav."""

    turn: int
    speaker: str
    text: str
    emotion: str | None
    t_start: float
    t_end: float


@dataclass(frozen=True)
class Recording:
    """A synthesised recording in memory; `write_recording` stores it in the recording format."""

    name: str
    audio: np.ndarray  # float32, mono, SAMPLE_RATE
    turns: tuple[GoldTurn, ...]
    synth: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


def recording_name(dialogue_id: str) -> str:
    """Directory name of a dialogue's recording: its id with path-unsafe characters replaced by "_"."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", dialogue_id).strip(".")
    if not name:
        raise SynthError(f"dialogue id {dialogue_id!r} gives no usable directory name")
    return name


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white or pink (1/f power) noise."""
    noise = rng.standard_normal(n)
    if kind == "pink" and n > 1:
        spectrum = np.fft.rfft(noise)
        spectrum[0] = 0.0
        spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
        noise = np.fft.irfft(spectrum, n)
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _uniform_layout(sizes: Sequence[int], speakers: Sequence[str], config: SynthConfig,
                    rng: np.random.Generator) -> tuple[list[int], list[int], int]:
    """The original layout: pauses drawn uniformly from `pause_s`, an overlap with `overlap_prob`."""
    sr = SAMPLE_RATE
    starts: list[int] = []
    ends: list[int] = []
    overlaps = 0
    for i, size in enumerate(sizes):
        draw_overlap, overlap, pause = rng.random(), rng.uniform(*config.overlap_s), rng.uniform(*config.pause_s)
        if i == 0:
            starts.append(round(config.edge_silence_s * sr))
        else:
            start = ends[-1] + round(pause * sr)
            if draw_overlap < config.overlap_prob and speakers[i] != speakers[i - 1]:
                ov = round(overlap * sr)
                earliest = (ends[-2] + round(0.2 * sr)) if i >= 2 else 0  # never into the turn before
                if 0 < ov <= min(size, sizes[i - 1]) // 2 and ends[-1] - ov >= earliest:
                    start, overlaps = ends[-1] - ov, overlaps + 1
            starts.append(start)
        ends.append(starts[-1] + size)
    return starts, ends, overlaps


def _lognormal(rng: np.random.Generator, median: float, sigma: float, bounds: tuple[float, float]) -> float:
    return float(np.clip(median * math.exp(sigma * rng.standard_normal()), *bounds))


def conversational_layout(sizes: Sequence[int], speakers: Sequence[str], config: SynthConfig,
                          rng: np.random.Generator) -> tuple[list[int], list[int], int]:
    """Start and end samples of turns of `sizes` samples, laid out as people take turns.

    At a speaker change: with probability `overlap_prob` the next turn starts `overlap_s` (drawn
    uniformly) before the current one ends, cut to half of the shorter turn and to 0.2 s after the turn
    before (an overlap shorter than `overlap_s[0]` after cutting becomes a gap); otherwise it starts
    after a lognormal gap (median `gap_median_s`, sigma `GAP_SIGMA`, clipped to `GAP_RANGE_S`). The same
    speaker goes on after a lognormal pause (median `same_speaker_pause_s`, sigma `PAUSE_SIGMA`, clipped
    to `PAUSE_RANGE_S`). Returns (starts, ends, overlaps).
    """
    sr = SAMPLE_RATE
    starts: list[int] = []
    ends: list[int] = []
    overlaps = 0
    for i, size in enumerate(sizes):
        draw_overlap, overlap = rng.random(), rng.uniform(*config.overlap_s)
        gap = _lognormal(rng, config.gap_median_s, GAP_SIGMA, GAP_RANGE_S)
        pause = _lognormal(rng, config.same_speaker_pause_s, PAUSE_SIGMA, PAUSE_RANGE_S)
        if i == 0:
            start = round(config.edge_silence_s * sr)
        elif speakers[i] == speakers[i - 1]:
            start = ends[-1] + round(pause * sr)
        else:
            start = ends[-1] + round(gap * sr)
            if draw_overlap < config.overlap_prob:
                earliest = (ends[-2] + round(0.2 * sr)) if i >= 2 else 0
                ov = min(round(overlap * sr), min(size, sizes[i - 1]) // 2, ends[-1] - earliest)
                if ov >= max(1, round(config.overlap_s[0] * sr)):
                    start, overlaps = ends[-1] - ov, overlaps + 1
        starts.append(start)
        ends.append(start + size)
    return starts, ends, overlaps


def floor_transfer_offsets(turns: Sequence[GoldTurn]) -> list[float]:
    """Next start minus previous end at each speaker change, seconds (negative: an overlap)."""
    return [round(b.t_start - a.t_end, 5) for a, b in itertools.pairwise(turns) if a.speaker != b.speaker]


def _person(voice: EngineVoice) -> str:
    for v in VOICE_POOL.get(voice.engine, ()):
        if v.name == voice.name:
            return v.person
    return f"{voice.engine}:{voice.name}"


def _babble(n: int, rng: np.random.Generator, engines: Engines, exclude: set[str], config: SynthConfig
            ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Unit-power babble of `n` samples: `babble_talkers` voices whose persons are not in `exclude`
    (when there are too few, they repeat), each reading `BABBLE_SENTENCES` in its own order, summed."""
    pool = [EngineVoice(name, v.name, v.pitch, v.speed, None) for name in engines.engines
            for v in engines.pool(name) if v.person not in exclude]
    if not pool:
        pool = [EngineVoice(name, v.name, v.pitch, v.speed, None) for name in engines.engines
                for v in engines.pool(name)]
    if not pool:
        raise SynthError("babble noise needs a speech synthesiser; none is available")
    order = rng.permutation(len(pool))
    talkers = [pool[order[k % len(pool)]] for k in range(config.babble_talkers)]
    mix = np.zeros(n, np.float64)
    for voice in talkers:
        clips = engines.speak_many(BABBLE_SENTENCES, voice, config.max_internal_pause_s)
        stream: list[np.ndarray] = []
        length = 0
        offset = int(rng.integers(SAMPLE_RATE * 4))
        while length < n + offset:
            for k in rng.permutation(len(clips)):
                gap = np.zeros(round(rng.uniform(0.1, 0.4) * SAMPLE_RATE), np.float32)
                stream += [clips[k], gap]
                length += clips[k].size + gap.size
        mix += np.concatenate(stream)[offset: offset + n]
    std = float(mix.std())
    return (mix / std if std > 0 else mix), [asdict(v) for v in talkers]


def speaker_gains(speakers: Sequence[str], seed: int, range_db: float) -> dict[str, float]:
    """A gain in dB per speaker (order of first appearance), drawn uniformly from -range_db..0."""
    rng = np.random.default_rng([seed, 4])
    return {s: round(-float(rng.uniform(0, range_db)), 2) for s in dict.fromkeys(speakers)}


def _compose(name: str, turns: Sequence[tuple[str, str, str | None]], clips: Sequence[np.ndarray],
             config: SynthConfig, seed: int, engines: Engines | None,
             voices: Mapping[str, EngineVoice] | None) -> tuple[Recording, dict[str, Any]]:
    """Lay out, level, mix and add noise to spoken turns (speaker, text, label) with their clips.

    Returns the recording (synth info still to be completed by the caller) and the layout's own part
    of the manifest. `voices` (with `engines`) is what back-channels and babble are spoken with."""
    sr = SAMPLE_RATE
    speakers = [speaker for speaker, _, _ in turns]
    info: dict[str, Any] = {}
    gains: dict[str, float] = {}
    if config.loudness_range_db > 0:
        gains = speaker_gains(speakers, seed, config.loudness_range_db)
        clips = [(clip * 10 ** (gains[s] / 20)).astype(np.float32) for s, clip in zip(speakers, clips, strict=True)]
        info["gains_db"] = gains
    sizes = [clip.size for clip in clips]
    if config.turn_taking == "uniform":
        starts, ends, overlaps = _uniform_layout(sizes, speakers, config, np.random.default_rng([seed, 1]))
    else:
        starts, ends, overlaps = conversational_layout(sizes, speakers, config, np.random.default_rng([seed, 3]))

    extras: list[tuple[int, np.ndarray]] = []  # back-channels: (start, clip)
    backchannels: list[dict[str, Any]] = []
    if config.backchannel_prob > 0 and voices is not None and engines is not None and len(set(speakers)) > 1:
        bc_rng = np.random.default_rng([seed, 6])
        taken: list[tuple[int, int]] = []
        for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
            draw, token, where = bc_rng.random(), BACKCHANNELS[int(bc_rng.integers(len(BACKCHANNELS)))], \
                bc_rng.uniform(0.3, 0.7)
            pick = bc_rng.random()
            if draw >= config.backchannel_prob or (end - start) < BACKCHANNEL_MIN_TURN_S * sr:
                continue
            neighbours = [speakers[j] for j in (i - 1, i + 1) if 0 <= j < len(speakers) and speakers[j] != speakers[i]]
            others = neighbours or sorted(set(speakers) - {speakers[i]})
            listener = others[int(pick * len(others))]
            clip = engines.speak_many([token], voices[listener], config.max_internal_pause_s)[0]
            clip = (clip * 10 ** ((gains.get(listener, 0.0) + BACKCHANNEL_GAIN_DB) / 20)).astype(np.float32)
            at = round(start + where * (end - start) - clip.size / 2)
            lo, hi = start + round(0.2 * (end - start)), end - round(0.2 * (end - start))
            if at < lo or at + clip.size > hi:
                continue
            clash = any(j != i and starts[j] < at + clip.size and at < ends[j] for j in range(len(starts)))
            if clash or any(a < at + clip.size and at < b for a, b in taken):
                continue
            taken.append((at, at + clip.size))
            extras.append((at, clip))
            backchannels.append({"speaker": listener, "text": token, "t_start": round(at / sr, 5),
                                 "t_end": round((at + clip.size) / sr, 5), "inside_turn": i})

    audio = np.zeros(max(ends) + round(config.edge_silence_s * sr), np.float32)
    voiced = np.zeros(audio.size, bool)
    for start, end, clip in zip(starts, ends, clips, strict=True):
        audio[start:end] += clip
        voiced[start:end] = True
    for start, clip in extras:
        audio[start:start + clip.size] += clip
        voiced[start:start + clip.size] = True

    noise_info = None
    if config.noise_snr_db is not None:
        speech_power = float(np.mean(audio[voiced].astype(np.float64) ** 2))
        gain = math.sqrt(speech_power / 10 ** (config.noise_snr_db / 10))
        noise_rng = np.random.default_rng([seed, 2])
        talkers = None
        if config.noise_kind == "babble":
            if engines is None:
                raise SynthError("babble noise needs a speech synthesiser (engines)")
            exclude = {_person(v) for v in (voices or {}).values()}
            noise, talkers = _babble(audio.size, noise_rng, engines, exclude, config)
        else:
            noise = _noise(config.noise_kind, audio.size, noise_rng)
        audio += (gain * noise).astype(np.float32)
        noise_info = {"kind": config.noise_kind, "snr_db": config.noise_snr_db,
                      "reference": "mean power of the voiced spans before noise"}
        if talkers is not None:
            noise_info["talkers"] = talkers
            noise_info["sentences"] = len(BABBLE_SENTENCES)
    np.clip(audio, -1.0, 1.0, out=audio)

    gold = tuple(GoldTurn(k, speaker, text, label, round(s / sr, 5), round(e / sr, 5))
                 for k, ((speaker, text, label), s, e) in enumerate(zip(turns, starts, ends, strict=True)))
    info.update(noise=noise_info, overlaps=overlaps)
    if config.realistic:
        info.update(turn_taking=config.turn_taking, backchannels=backchannels,
                    loudness_range_db=config.loudness_range_db)
        if config.turn_taking == "conversational":
            info.update(gap_median_s=config.gap_median_s, gap_sigma=GAP_SIGMA, gap_range_s=list(GAP_RANGE_S),
                        same_speaker_pause_s=config.same_speaker_pause_s, pause_sigma=PAUSE_SIGMA,
                        pause_range_s=list(PAUSE_RANGE_S))
        offsets = floor_transfer_offsets(gold)
        info.update(speaker_changes=len(offsets), floor_transfer_offsets_s=offsets)
    return Recording(name, audio, gold, {}), info


def _spoken_turns(dialogue: Dialogue, config: SynthConfig) -> tuple[list[tuple[int, str, str, str | None]], list[int]]:
    spoken: list[tuple[int, str, str, str | None]] = []  # (utterance index, speaker, text, label)
    skipped: list[int] = []
    for i, utt in enumerate(dialogue.utterances):
        text = clean_text(utt.text)
        if not text:
            skipped.append(i)
        elif config.max_turns is None or len(spoken) < config.max_turns:
            spoken.append((i, utt.speaker, text, utt.label))
    if not spoken:
        raise SynthError(f"dialogue {dialogue.id!r}: no turn has words to speak")
    return spoken, skipped


def synthesize_dialogue(dialogue: Dialogue, config: SynthConfig, espeak: Espeak | Engines,
                        source: Mapping[str, Any] | None = None) -> Recording:
    """Speak `dialogue` as one recording; `source` (corpus, split, file name) is kept in the manifest.

    `espeak` is the espeak-ng to speak with, or the `Engines` when `config.engines` names others (or
    babble noise or back-channels are asked for)."""
    spoken, skipped = _spoken_turns(dialogue, config)
    seed = dialogue_seed(config.seed, dialogue.id)
    engines = espeak if isinstance(espeak, Engines) else Engines({"espeak": espeak})
    speakers = [s for _, s, _, _ in spoken]
    voice_info: dict[str, Any]
    if config.engines == ("espeak",):
        found = engines.engines.get("espeak")
        if not isinstance(found, Espeak):
            raise SynthError("espeak-ng is needed (engines: espeak) but was not given")
        voices = assign_voices(speakers, seed)
        clips = [found.speak(text, voices[speaker], config.max_internal_pause_s) for _, speaker, text, _ in spoken]
        engine_voices = {s: EngineVoice("espeak", v.name, v.pitch, v.speed) for s, v in voices.items()}
        voice_info = {speaker: asdict(v) for speaker, v in voices.items()}
    else:
        engine_voices = assign_engine_voices(speakers, seed, engines, config.engines)
        by_speaker: dict[str, list[int]] = {}
        for k, s in enumerate(speakers):
            by_speaker.setdefault(s, []).append(k)
        clip_of: dict[int, np.ndarray] = {}
        for s, ks in by_speaker.items():
            said = engines.speak_many([spoken[k][2] for k in ks], engine_voices[s], config.max_internal_pause_s)
            clip_of.update(zip(ks, said, strict=True))
        clips = [clip_of[k] for k in range(len(spoken))]
        voice_info = {speaker: asdict(v) for speaker, v in engine_voices.items()}

    rec, layout = _compose(recording_name(dialogue.id), [(s, t, label) for _, s, t, label in spoken], clips,
                           config, seed, engines, engine_voices)
    espeak_found = engines.engines.get("espeak")
    synth: dict[str, Any] = {
        "generator": "merc.stream.recordings.synth",
        **dict(source or {}),
        "dialogue_id": dialogue.id,
        "seed": config.seed,
        "dialogue_seed": seed,
        "espeak_ng": espeak_found.version if espeak_found is not None else None,
        "voices": voice_info,
        "pause_s": list(config.pause_s),
        "overlap_prob": config.overlap_prob,
        "overlap_s": list(config.overlap_s),
        "edge_silence_s": config.edge_silence_s,
        "max_internal_pause_s": config.max_internal_pause_s,
        "noise": layout.pop("noise"),
        "max_turns": config.max_turns,
        "turns": len(rec.turns),
        "overlaps": layout.pop("overlaps"),
        "utterance_indices": [i for i, _, _, _ in spoken],
        "skipped_utterances": skipped,
        "level": {"rms_dbfs": round(20 * math.log10(_LEVEL_RMS), 1),
                  "peak_dbfs": round(20 * math.log10(_LEVEL_PEAK), 1)},
    }
    if config.realistic:
        synth.update(engines={name: engines.engines[name].version for name in config.engines},
                     voice_pools={name: [v.name for v in engines.pool(name)] for name in config.engines},
                     language="en", text_scored=True, **layout)
    return Recording(rec.name, rec.audio, rec.turns, synth)


# ---------------------------------------------------------------- EmoDB: real human voices


@dataclass(frozen=True)
class EmoDBTurn:
    speaker: str  # EmoDB speaker id ("03")
    path: Path
    emotion: str  # EmoDB's acted emotion (anger, happiness, neutral, sadness)


@dataclass(frozen=True)
class EmoDBDialogue:
    """A made-up conversation between EmoDB speakers: who says which of their recorded sentences."""

    id: str
    turns: tuple[EmoDBTurn, ...]


def parse_speaker_range(text: str) -> tuple[int, int]:
    """"2" -> (2, 2), "3-4" -> (3, 4); SynthError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not m:
        raise SynthError(f"speakers must be a number or a range like 3-4, got {text!r}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 1 <= lo <= hi:
        raise SynthError(f"speakers must be a range 1 <= min <= max, got {text!r}")
    return lo, hi


def speaker_count(dialogue: Dialogue, max_turns: int | None = None) -> int:
    """Distinct speakers among the turns that would be spoken (words left after `clean_text`)."""
    spoken = [u.speaker for u in dialogue.utterances if clean_text(u.text)]
    return len(set(spoken[:max_turns] if max_turns else spoken))


def filter_by_speakers(dialogues: Sequence[Dialogue], speakers: tuple[int, int] | None,
                       max_turns: int | None = None, min_turns: int | None = None) -> list[Dialogue]:
    """The dialogues whose spoken turns (the first `max_turns`) have `speakers` (min, max) speakers and,
    with `min_turns`, at least that many spoken turns."""
    lo, hi = speakers or (1, 10**9)
    out = []
    for d in dialogues:
        spoken = sum(1 for u in d.utterances if clean_text(u.text))
        if min_turns is not None and min(spoken, max_turns or spoken) < min_turns:
            continue
        if lo <= speaker_count(d, max_turns) <= hi:
            out.append(d)
    return out


def emodb_dialogues(data_dir: str | Path | None, count: int, speakers: tuple[int, int] = (2, 2),
                    turns: int = 10, seed: int = 0, same_speaker_prob: float = 0.15) -> list[EmoDBDialogue]:
    """`count` conversations of EmoDB speakers, deterministic by `seed`: each draws its number of speakers
    from `speakers`, the speakers (sex-balanced where it can), and `turns` turns: the next speaker is
    another one, or with `same_speaker_prob` the same; each turn is one of that speaker's recordings,
    none repeated within a dialogue."""
    from merc.models.data.emodb import SPEAKER_SEX, load_emodb
    from merc.models.data.labels import EMODB4

    clips = load_emodb(data_dir)
    by_speaker: dict[str, list[Any]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    ids = sorted(by_speaker)
    lo, hi = speakers
    if hi > len(ids):
        raise SynthError(f"EmoDB has {len(ids)} speakers; cannot make dialogues of {hi}")
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, 7, k])
        n = int(rng.integers(lo, hi + 1))
        females = [s for s in ids if SPEAKER_SEX.get(s) == "f"]
        males = [s for s in ids if s not in females]
        rng.shuffle(females)
        rng.shuffle(males)
        first, second = (females, males) if rng.random() < 0.5 else (males, females)
        chosen = [x for pair in zip(first, second, strict=False) for x in pair][:n]
        remaining = {s: list(rng.permutation(len(by_speaker[s]))) for s in chosen}
        sequence: list[EmoDBTurn] = []
        current = chosen[int(rng.integers(n))]
        for t in range(turns):
            if t > 0 and not (rng.random() < same_speaker_prob and remaining[current]):
                others = [s for s in chosen if s != current and remaining[s]]
                if not others:
                    break
                current = others[int(rng.integers(len(others)))]
            if not remaining[current]:
                break
            clip = by_speaker[current][remaining[current].pop()]
            sequence.append(EmoDBTurn(current, clip.path, EMODB4.labels[clip.label]))
        out.append(EmoDBDialogue(f"emodb-{n}spk-{k:02d}", tuple(sequence)))
    return out


def synthesize_emodb_dialogue(dialogue: EmoDBDialogue, config: SynthConfig, engines: Engines | None = None,
                              source: Mapping[str, Any] | None = None) -> Recording:
    """EmoDB recordings laid out as a conversation (gaps, overlaps, levels and noise as `config` says;
    `engines` only for babble noise). Gold text is empty: the speech is German."""
    if not dialogue.turns:
        raise SynthError(f"EmoDB dialogue {dialogue.id!r} has no turns")
    seed = dialogue_seed(config.seed, dialogue.id)
    clips = []
    for turn in dialogue.turns:
        clip = _read_clip(turn.path, config.max_internal_pause_s)
        if clip.size == 0:
            raise SynthError(f"{turn.path}: silent recording")
        clips.append(clip)
    rec, layout = _compose(recording_name(dialogue.id), [(t.speaker, "", t.emotion) for t in dialogue.turns],
                           clips, replace(config, backchannel_prob=0.0), seed, engines, None)
    from merc.models.data.emodb import SPEAKER_SEX

    synth: dict[str, Any] = {
        "generator": "merc.stream.recordings.synth",
        "corpus": "emodb",
        **dict(source or {}),
        "dialogue_id": dialogue.id,
        "seed": config.seed,
        "dialogue_seed": seed,
        "voices": {s: {"engine": "human", "name": f"emodb:{s}", "sex": SPEAKER_SEX.get(s)}
                   for s in dict.fromkeys(t.speaker for t in dialogue.turns)},
        "files": [t.path.name for t in dialogue.turns],
        "language": "de",
        "text_scored": False,
        "text": "empty: EmoDB's German sentences are not transcribed here; score turns and speakers, not words",
        "emotion": "EmoDB's acted emotion of each file (from its name)",
        "overlap_prob": config.overlap_prob,
        "overlap_s": list(config.overlap_s),
        "pause_s": list(config.pause_s),
        "edge_silence_s": config.edge_silence_s,
        "max_internal_pause_s": config.max_internal_pause_s,
        "noise": layout.pop("noise"),
        "turns": len(rec.turns),
        "overlaps": layout.pop("overlaps"),
        "engines": engines.versions() if engines is not None and config.noise_kind == "babble" else {},
        "turn_taking": config.turn_taking,
        "loudness_range_db": config.loudness_range_db,
        **layout,
    }
    synth.setdefault("floor_transfer_offsets_s", floor_transfer_offsets(rec.turns))
    synth.pop("backchannels", None)
    return Recording(rec.name, rec.audio, rec.turns, synth)


# ---------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Run `write` on a temporary file beside `path`, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_recording(recording: Recording, directory: Path, overwrite: bool = False) -> Path:
    """Store `recording` in `directory` (created): audio.wav, gold.jsonl, then manifest.json."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if manifest_path.exists() and not overwrite:
        raise SynthError(f"{directory}: a recording is already there (manifest.json); pass overwrite to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.clip(recording.audio, -1.0, 1.0) * 32767).astype(np.int16)
    _atomic_write(directory / "audio.wav",
                  lambda p: sf.write(p, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    gold = "".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in recording.turns)
    _atomic_write(directory / "gold.jsonl", lambda p: p.write_text(gold, encoding="utf-8"))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "audio": "audio.wav",
        "video": None,
        "duration_s": round(pcm.size / SAMPLE_RATE, 5),
        "created": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "source": "synth",
        "synth": recording.synth,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(manifest_path, lambda p: p.write_text(text, encoding="utf-8"))
    return directory


def select_dialogues(dialogues: Sequence[Dialogue], ids: Sequence[str] | None = None,
                     count: int | None = None, where: str = "the dialogues") -> list[Dialogue]:
    """`ids` in the order given (all must exist in `where`), else the first `count`, else all."""
    if ids:
        by_id = {d.id: d for d in dialogues}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            known = list(by_id)
            sample = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
            raise SynthError(f"unknown dialogue id(s) {', '.join(map(repr, unknown))} in {where} "
                             f"({len(known)} dialogues: {sample})")
        return [by_id[i] for i in dict.fromkeys(ids)]
    if count is not None:
        if count < 1:
            raise SynthError(f"count must be >= 1, got {count}")
        return list(dialogues[:count])
    return list(dialogues)


def generate_recordings(dialogues: Iterable[Dialogue], out_dir: Path, config: SynthConfig, espeak: Espeak | Engines,
                        source: Mapping[str, Any] | None = None, overwrite: bool = False,
                        on_written: Callable[[Path, Recording], None] | None = None) -> list[Path]:
    """One recording directory per dialogue under `out_dir`, named by `recording_name`."""
    dialogues = list(dialogues)
    names: dict[str, str] = {}
    for d in dialogues:
        name = recording_name(d.id)
        if name in names:
            raise SynthError(f"dialogue ids {names[name]!r} and {d.id!r} map to the same directory {name!r}")
        names[name] = d.id
        if (Path(out_dir) / name / "manifest.json").exists() and not overwrite:
            raise SynthError(f"{Path(out_dir) / name}: a recording is already there; pass overwrite to replace it")
    written = []
    for d in dialogues:
        recording = synthesize_dialogue(d, config, espeak, source)
        path = write_recording(recording, Path(out_dir) / recording.name, overwrite=overwrite)
        written.append(path)
        if on_written is not None:
            on_written(path, recording)
    return written
