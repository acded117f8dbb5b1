"""Recordings: a directory a session is written into as it happens, and read back for replay.

    DIR/audio.wav      16 kHz mono PCM-16, the microphone as heard
    DIR/manifest.json  format, sample rate, what is in the directory, how it was made
    DIR/events.jsonl   the events the session emitted, one JSON object per line
    DIR/gold.jsonl     optional reference: {"turn", "speaker", "text", "emotion", "t_start", "t_end"}

Writing is incremental and crash-tolerant: the WAV header is rewritten after every block (the
standard library's `wave` patches it on each write) and flushed, each event line is flushed as
it is written, and the manifest is replaced atomically. A process killed mid-session leaves a
readable recording that lacks at most the turn in progress.
"""
from __future__ import annotations

import json
import logging
import os
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np

from merc.models.errors import MercError
from merc.stream.capture.audio import SAMPLE_RATE, AudioSourceError, wav_data_frames

FORMAT = "merc-recording"
FORMAT_VERSION = 1
AUDIO_FILE = "audio.wav"
MANIFEST_FILE = "manifest.json"
EVENTS_FILE = "events.jsonl"
REPLAY_EVENTS = "replay.events.jsonl"  # what merc-replay writes next to a recording
EXAMPLE_RECORDING = "recording"
GOLD_FILE = "gold.jsonl"

log = logging.getLogger(__name__)


class RecordingError(MercError, ValueError):
    """A recording directory or one of its files is unusable (the message names the file and line)."""

    code = "recording_invalid"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RecordingWriter:
    """Writes a session into DIR while it runs: `write_audio` per captured block, `write_event`
    per event, `close` at the end."""

    def __init__(self, directory: str | Path, info: dict | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in (AUDIO_FILE, EVENTS_FILE):
            if (self.directory / name).exists():
                raise RecordingError(f"{self.directory / name}: already exists; record into a new directory")
        self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "sample_rate": SAMPLE_RATE,
                         "channels": 1, "audio": AUDIO_FILE, "video": None, "events": EVENTS_FILE,
                         "created": datetime.now(UTC).isoformat(timespec="seconds"),
                         "complete": False, "duration_s": 0.0, **(info or {})}
        write_json_atomic(self.directory / MANIFEST_FILE, self.manifest)
        # wave has no public flush, so it writes into a file object of ours, which we flush and close
        self._wav_file = open(self.directory / AUDIO_FILE, "wb")
        self._wav = wave.open(self._wav_file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._events = open(self.directory / EVENTS_FILE, "a", encoding="utf-8")
        self._frames = 0
        self._last_manifest = time.monotonic()

    def write_audio(self, samples: np.ndarray) -> None:
        # x 32768, as readers divide: PCM-16 audio round-trips exactly (a replay hears what was heard)
        pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
        self._wav.writeframes(pcm.tobytes())  # also rewrites the header's sizes
        self._wav_file.flush()
        self._frames += len(pcm)
        if time.monotonic() - self._last_manifest > 5.0:
            self._update_manifest()

    def write_event(self, event: dict) -> None:
        self._events.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._events.flush()

    def _update_manifest(self, complete: bool = False) -> None:
        self.manifest.update(duration_s=round(self._frames / SAMPLE_RATE, 3), complete=complete)
        write_json_atomic(self.directory / MANIFEST_FILE, self.manifest)
        self._last_manifest = time.monotonic()

    def close(self) -> None:
        try:
            self._wav.close()  # writes the final header; leaves the file object (ours) open
        finally:
            self._wav_file.close()
        self._events.close()
        self._update_manifest(complete=True)


@dataclass(frozen=True)
class Recording:
    """A recording directory, checked."""

    directory: Path
    manifest: dict
    problems: tuple[str, ...]
    """What is wrong but not fatal (a truncated audio file): replay what is there and report it.
    Each is one of our own sentences naming a file of the recording by name (never a path), so it
    may go to clients."""

    @property
    def audio(self) -> Path:
        return self.directory / self.manifest.get("audio", AUDIO_FILE)

    @property
    def gold_path(self) -> Path:
        return self.directory / GOLD_FILE

    @property
    def name(self) -> str:
        return self.directory.name


def open_recording(directory: str | Path) -> Recording:
    """Check a recording directory: manifest, audio file; a truncated WAV is a problem, not a failure."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordingError(f"{directory}: recording directory not found")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise RecordingError(f"{path}: not found; is {directory} a recording (merc-live --record DIR)?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordingError(f"{path}: not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise RecordingError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise RecordingError(f"{path}: format_version {manifest['format_version']} is newer than this merc-live "
                             f"reads ({FORMAT_VERSION}); upgrade merc-live")
    audio = directory / manifest.get("audio", AUDIO_FILE)
    if not audio.is_file():
        raise RecordingError(f"{audio}: audio file named by {path} not found")
    problems = []
    try:
        declared, available, _ = wav_data_frames(audio)
    except AudioSourceError as err:
        raise RecordingError(str(err)) from err
    if available < declared:
        problems.append(f"{audio.name}: truncated: the header declares {declared / SAMPLE_RATE:.2f} s but the file "
                        f"holds {available / SAMPLE_RATE:.2f} s; replaying what is there")
    if manifest.get("complete") is False:
        problems.append(f"{path.name}: the recording was not closed (the recorder was killed?); "
                        "replaying what is there")
    return Recording(directory, manifest, tuple(problems))


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Objects of a JSONL file. A torn last line (a writer killed mid-line) is skipped with a
    warning; a bad line elsewhere is an error naming the file and line."""
    if not path.is_file():
        raise RecordingError(f"{path}: not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise RecordingError(f"{path}: not UTF-8 text: {err}") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning("%s:%d: incomplete last line skipped (the writer was interrupted?)", path, number)
                break
            raise RecordingError(f"{path}:{number}: not valid JSON: {err}") from err
        if not isinstance(row, dict):
            raise RecordingError(f"{path}:{number}: expected a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise RecordingError(f"{path}:{number}: missing {', '.join(missing)}")
        rows.append(row)
    return rows


def read_gold(recording: Recording) -> list[dict]:
    """The reference turns of a recording, in time order."""
    rows = read_jsonl(recording.gold_path, ("speaker", "text", "t_start", "t_end"))
    return sorted(rows, key=lambda r: r["t_start"])


def example_recording() -> Path:
    """The bundled recording: a short synthetic conversation (espeak-ng voices, our own text)."""
    return Path(str(resources.files("merc.stream.recordings") / "examples" / EXAMPLE_RECORDING))
