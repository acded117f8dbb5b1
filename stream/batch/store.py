"""The output folder of a batch run, laid out so that a run killed at any moment can be resumed.

    OUT/batch.json              the session options the outputs were made with (a later run into
                                OUT must use the same, or the outputs would mix two pipelines)
    OUT/<name>/source.json      which recording the folder belongs to (written first: it claims the name)
    OUT/<name>/events.jsonl     the replay's events, as merc-replay writes them
    OUT/<name>/scores.json      merc-eval --replay's scores against the recording's gold.jsonl (when it has one)
    OUT/<name>/result.json      turns, audio and processing seconds, problems: written last, it marks
                                the recording done
    OUT/failures.jsonl          this run's failed and damaged recordings, one JSON object per line
    OUT/summary.json            this run's counts and every recording's status and output name

Every file is written under a temporary name and renamed into place, so a reader (or a resumed
run) sees a complete file or none; a recording counts as done only once result.json is there and
names the same source.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merc.models.data.json_input import BadJSON, read_json_file

__all__ = ["EVENTS_FILE", "FAILURES_FILE", "RESULT_FILE", "RUN_FILE", "SCORES_FILE", "SOURCE_FILE", "SUMMARY_FILE",
           "RecordingOutput", "read_json", "write_atomic", "write_json"]

RUN_FILE = "batch.json"
SOURCE_FILE = "source.json"
EVENTS_FILE = "events.jsonl"
SCORES_FILE = "scores.json"
RESULT_FILE = "result.json"
FAILURES_FILE = "failures.jsonl"
SUMMARY_FILE = "summary.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, synced and renamed:
    readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, atomically (see `write_atomic`)."""
    write_atomic(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable (a folder from a killed run)."""
    try:
        return read_json_file(path)
    except (OSError, BadJSON):
        return None


@dataclass(frozen=True)
class RecordingOutput:
    """The output folder of one recording (OUT/<name>/)."""

    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def events(self) -> Path:
        return self.directory / EVENTS_FILE

    @property
    def scores(self) -> Path:
        return self.directory / SCORES_FILE

    @property
    def result(self) -> Path:
        return self.directory / RESULT_FILE

    def claimed_by(self) -> Path | None:
        """The recording this folder belongs to, or None for a folder not yet claimed."""
        source = read_json(self.directory / SOURCE_FILE)
        return Path(source["source"]) if isinstance(source, dict) and isinstance(source.get("source"), str) else None

    def claim(self, source: Path) -> None:
        """Create the folder for `source` (before its replay starts, so no other recording takes the name)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.claimed_by() != source:
            write_json(self.directory / SOURCE_FILE, {"source": str(source)})

    def completed(self, source: Path) -> dict[str, Any] | None:
        """The result of a finished replay of `source` in this folder, or None: done means
        result.json is there, names `source`, and the events file it vouches for exists."""
        result = read_json(self.result)
        if not isinstance(result, dict) or result.get("source") != str(source) or not self.events.is_file():
            return None
        return result

    def write_events(self, events: list[dict[str, Any]]) -> None:
        """The replay's events, one JSON object per line as merc-replay writes them. A result from an
        earlier run is removed first, so that an interrupted rewrite never looks done."""
        self.result.unlink(missing_ok=True)
        lines = "".join(json.dumps(event, ensure_ascii=False) + "\n" for event in events)
        write_atomic(self.events, lines.encode("utf-8"))

    def write_scores(self, scores: dict[str, Any] | None) -> None:
        """The scores against gold (None: the recording has no gold, and an older scores file goes)."""
        if scores is None:
            self.scores.unlink(missing_ok=True)
        else:
            write_json(self.scores, scores)

    def finish(self, result: dict[str, Any]) -> None:
        """Mark the recording done: result.json, written after everything it vouches for."""
        write_json(self.result, result)
