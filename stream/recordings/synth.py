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

Everything is deterministic given the seed, the dialogue and the espeak-ng version (recorded in the
manifest). Files are written atomically, manifest.json last: a directory with a manifest is complete.
"""
from __future__ import annotations

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
from dataclasses import asdict, dataclass, field
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
NOISE_KINDS = ("pink", "white")

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
            audio, rate = sf.read(wav, dtype="float64", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != SAMPLE_RATE:
            from scipy.signal import (
                resample_poly,  # scipy.signal takes seconds to import: only when used
            )

            ratio = Fraction(SAMPLE_RATE, rate)
            audio = resample_poly(audio, ratio.numerator, ratio.denominator)
        clip = _tighten(audio, max_internal_pause_s)
        if clip.size == 0:
            raise SynthError(f"espeak-ng produced silence for voice {voice.name!r} on {text!r}")
        return clip


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


def synthesize_dialogue(dialogue: Dialogue, config: SynthConfig, espeak: Espeak,
                        source: Mapping[str, Any] | None = None) -> Recording:
    """Speak `dialogue` as one recording; `source` (corpus, split, file name) is kept in the manifest."""
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
    seed = dialogue_seed(config.seed, dialogue.id)
    voices = assign_voices([s for _, s, _, _ in spoken], seed)
    clips = [espeak.speak(text, voices[speaker], config.max_internal_pause_s) for _, speaker, text, _ in spoken]

    rng = np.random.default_rng([seed, 1])
    sr = SAMPLE_RATE
    starts: list[int] = []
    ends: list[int] = []
    overlaps = 0
    for i, clip in enumerate(clips):
        draw_overlap, overlap, pause = rng.random(), rng.uniform(*config.overlap_s), rng.uniform(*config.pause_s)
        if i == 0:
            starts.append(round(config.edge_silence_s * sr))
        else:
            start = ends[-1] + round(pause * sr)
            if draw_overlap < config.overlap_prob and spoken[i][1] != spoken[i - 1][1]:
                ov = round(overlap * sr)
                earliest = (ends[-2] + round(0.2 * sr)) if i >= 2 else 0  # never into the turn before
                if 0 < ov <= min(clip.size, clips[i - 1].size) // 2 and ends[-1] - ov >= earliest:
                    start, overlaps = ends[-1] - ov, overlaps + 1
            starts.append(start)
        ends.append(starts[-1] + clip.size)
    audio = np.zeros(max(ends) + round(config.edge_silence_s * sr), np.float32)
    voiced = np.zeros(audio.size, bool)
    for start, end, clip in zip(starts, ends, clips, strict=True):
        audio[start:end] += clip
        voiced[start:end] = True

    noise_info = None
    if config.noise_snr_db is not None:
        speech_power = float(np.mean(audio[voiced].astype(np.float64) ** 2))
        gain = math.sqrt(speech_power / 10 ** (config.noise_snr_db / 10))
        audio += (gain * _noise(config.noise_kind, audio.size, np.random.default_rng([seed, 2]))).astype(np.float32)
        noise_info = {"kind": config.noise_kind, "snr_db": config.noise_snr_db,
                      "reference": "mean power of the voiced spans before noise"}
    np.clip(audio, -1.0, 1.0, out=audio)

    turns = tuple(GoldTurn(k, speaker, text, label, round(s / sr, 5), round(e / sr, 5))
                  for k, ((_, speaker, text, label), s, e) in enumerate(zip(spoken, starts, ends, strict=True)))
    synth = {
        "generator": "merc.stream.recordings.synth",
        **dict(source or {}),
        "dialogue_id": dialogue.id,
        "seed": config.seed,
        "dialogue_seed": seed,
        "espeak_ng": espeak.version,
        "voices": {speaker: asdict(v) for speaker, v in voices.items()},
        "pause_s": list(config.pause_s),
        "overlap_prob": config.overlap_prob,
        "overlap_s": list(config.overlap_s),
        "edge_silence_s": config.edge_silence_s,
        "max_internal_pause_s": config.max_internal_pause_s,
        "noise": noise_info,
        "max_turns": config.max_turns,
        "turns": len(turns),
        "overlaps": overlaps,
        "utterance_indices": [i for i, _, _, _ in spoken],
        "skipped_utterances": skipped,
        "level": {"rms_dbfs": round(20 * math.log10(_LEVEL_RMS), 1),
                  "peak_dbfs": round(20 * math.log10(_LEVEL_PEAK), 1)},
    }
    return Recording(recording_name(dialogue.id), audio, turns, synth)


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


def generate_recordings(dialogues: Iterable[Dialogue], out_dir: Path, config: SynthConfig, espeak: Espeak,
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
