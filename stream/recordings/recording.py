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
import math
import os
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np

from merc.models.data.json_input import BadJSON, parse_json, read_json_file
from merc.models.errors import MercError
from merc.models.paths import contained_file
from merc.stream.capture.audio import SAMPLE_RATE, AudioSourceError, check_wav
from merc.stream.session.sinks import write_all

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
        """One event line, written through the file descriptor (the file object buffers nothing):
        merc-live calls this from its events-file sink's thread (stream/session/sinks.py), and a
        write stuck on the disk then holds no lock that `close` would wait for."""
        write_all(self._events.fileno(), (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))

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
        """The WAV file (its name checked by `open_recording` to stay inside the directory)."""
        return self.directory / self.manifest.get("audio", AUDIO_FILE)

    @property
    def gold_path(self) -> Path:
        return self.directory / GOLD_FILE

    @property
    def name(self) -> str:
        return self.directory.name


def open_recording(directory: str | Path) -> Recording:
    """Check a recording directory: manifest (every field used, its type), audio file (confined to the
    directory, a WAV header that holds up, some audio in it); a truncated WAV, a recording never
    closed, or a manifest whose sample_rate/channels contradict the WAV are problems, not failures
    (the WAV's own rate is the one used). Anything unusable is a RecordingError naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordingError(f"{directory}: recording directory not found")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise RecordingError(f"{path}: not found; is {directory} a recording (merc-live --record DIR)?")
    try:
        manifest = read_json_file(path)
    except BadJSON as err:
        raise RecordingError(f"{path}: not valid JSON: {err.reason}") from None
    except OSError as err:
        raise RecordingError(f"{path}: cannot read: {err.strerror or err}") from err
    if not isinstance(manifest, dict):
        raise RecordingError(f"{path}: expected a JSON object, not {_json_type(manifest)}")
    if manifest.get("format") != FORMAT:
        raise RecordingError(f"{path}: format is {_clip(manifest.get('format'))}, expected {FORMAT!r}")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise RecordingError(f"{path}: format_version must be a positive integer, not {_clip(version)}")
    if version > FORMAT_VERSION:
        raise RecordingError(f"{path}: format_version {version} is newer than this merc-live "
                             f"reads ({FORMAT_VERSION}); upgrade merc-live")
    for key in ("sample_rate", "channels"):
        if key in manifest and not (_is_int(manifest[key]) and manifest[key] > 0):
            raise RecordingError(f"{path}: {key} must be a positive integer, not {_clip(manifest[key])}")
    if not isinstance(manifest.get("complete", False), bool):
        raise RecordingError(f"{path}: complete must be true or false, not {_clip(manifest['complete'])}")
    name = manifest.get("audio", AUDIO_FILE)
    if not isinstance(name, str) or not name:
        raise RecordingError(f"{path}: audio must be the name of the WAV file, not {_clip(name)}")
    audio = contained_file(directory, name)
    if audio is None:
        raise RecordingError(f"{path}: audio {_clip(name)} is not a file inside the recording directory "
                             f"(give the file name of the WAV beside {MANIFEST_FILE})")
    if not audio.is_file():
        raise RecordingError(f"{audio}: audio file named by {path} not found")
    problems = []
    try:
        header = check_wav(audio)
    except AudioSourceError as err:
        raise RecordingError(str(err)) from err
    if not header.frames:
        raise RecordingError(f"{audio}: the recording holds no audio (0 frames); nothing to replay")
    rate = header.sample_rate
    if header.available < header.declared:
        problems.append(f"{audio.name}: truncated: the header declares {header.declared / rate:.2f} s but the file "
                        f"holds {header.available / rate:.2f} s; replaying what is there")
    for key, wav_value, unit in (("sample_rate", rate, " Hz"), ("channels", header.channels, "")):
        if key in manifest and manifest[key] != wav_value:
            problems.append(f"{path.name}: {key} {manifest[key]}{unit} contradicts {audio.name}, which has "
                            f"{wav_value}{unit}; using the WAV's")
    if manifest.get("complete") is False:
        problems.append(f"{path.name}: the recording was not closed (the recorder was killed?); "
                        "replaying what is there")
    return Recording(directory, manifest, tuple(problems))


def _seconds(value: object) -> bool:
    """A finite number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _clip(value: object, width: int = 60) -> str:
    """A value from a file, for a message: its repr, cut to `width` characters."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deeply nested JSON; a huge int
        text = f"<{_json_type(value)}>"
    return text if len(text) <= width else text[:width - 3] + "..."


def read_jsonl_lines(path: Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, object) of each line of a JSONL file. A torn last line (a writer killed
    mid-line) is skipped with a warning; a bad line elsewhere is an error naming the file and line.
    Only LF (or CRLF) ends a line: U+2028 and other separators may sit inside JSON strings."""
    if not path.is_file():
        raise RecordingError(f"{path}: not found")
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise RecordingError(f"{path}: not UTF-8 text: {err}") from err
    except OSError as err:
        raise RecordingError(f"{path}: cannot read: {err.strerror or err}") from err
    if lines and not lines[-1].strip():
        lines.pop()  # the newline ending the last line
    rows = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except BadJSON as err:
            if err.syntax and number == len(lines):
                log.warning("%s:%d: incomplete last line skipped (the writer was interrupted?)", path, number)
                break
            raise RecordingError(f"{path}:{number}: not valid JSON: {err.reason}") from None
        if not isinstance(row, dict):
            raise RecordingError(f"{path}:{number}: expected a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise RecordingError(f"{path}:{number}: missing {', '.join(missing)}")
        rows.append((number, row))
    return rows


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Objects of a JSONL file (see `read_jsonl_lines`)."""
    return [row for _, row in read_jsonl_lines(path, required)]


def check_span(row: dict, where: str, texts: tuple[str, ...], optional_texts: tuple[str, ...] = ()) -> None:
    """A turn's fields, as scoring reads them: t_start <= t_end (finite numbers of seconds), `texts`
    strings, `optional_texts` strings or null. RecordingError naming `where` (file:line) otherwise."""
    missing = [key for key in ("t_start", "t_end", *texts) if key not in row]
    if missing:
        raise RecordingError(f"{where}: missing {', '.join(missing)}")
    for key in ("t_start", "t_end"):
        value = row[key]
        if not _seconds(value):
            raise RecordingError(f"{where}: {key} must be a number of seconds, not {_clip(value)}")
    if row["t_end"] < row["t_start"]:
        raise RecordingError(f"{where}: t_end {row['t_end']} is before t_start {row['t_start']}")
    for key in texts:
        if not isinstance(row.get(key), str):
            raise RecordingError(f"{where}: {key} must be a string, not {_clip(row.get(key))}")
    for key in optional_texts:
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RecordingError(f"{where}: {key} must be a string or null, not {_clip(row[key])}")


def read_gold(recording: Recording) -> list[dict]:
    """The reference turns of a recording, in time order; each line checked (speaker, text, t_start,
    t_end; emotion when present). An empty gold file is an error: there is nothing to score against."""
    path = recording.gold_path
    rows = read_jsonl_lines(path, ("speaker", "text", "t_start", "t_end"))
    for number, row in rows:
        check_span(row, f"{path}:{number}", ("speaker", "text"), ("emotion",))
    if not rows:
        raise RecordingError(f"{path}: no gold turns (the file is empty); nothing to score against")
    return sorted((row for _, row in rows), key=lambda r: r["t_start"])


def example_recording() -> Path:
    """The bundled recording: a short synthetic conversation (espeak-ng voices, our own text)."""
    return Path(str(resources.files("merc.stream.recordings") / "examples" / EXAMPLE_RECORDING))
