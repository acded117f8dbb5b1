"""Which recordings an archive holds, and the output folder each one gets.

What merc-batch is given, each path in turn:

- a recording directory (it holds manifest.json or audio.wav): that recording;
- any other directory: the recordings directly inside it (with `recursive`, at any depth; the
  search never descends into a recording);
- a file: a list of recordings, one directory per line (UTF-8; blank lines and lines starting
  with # are skipped; relative paths are relative to the list's folder).

A directory with audio.wav but no manifest.json counts as a recording, so that its missing
manifest is reported as that recording's failure rather than silently skipped. A path that does
not exist, a folder with no recording in it, or a list that is not text is an `ArchiveError`
naming the file (and line): bad input, reported before anything runs.

Output names are the recordings' folder names. Two recordings of one run with the same folder
name, or a recording whose folder name is already claimed in the output folder by another
source, get the name followed by 8 hex digits of the hash of their resolved path: the same
recording always gets the same name, and no recording's outputs overwrite another's.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from merc.models.errors import MercError
from merc.stream.recordings.recording import AUDIO_FILE, MANIFEST_FILE

__all__ = ["ArchiveError", "find_recordings", "is_recording", "output_names", "read_list"]


class ArchiveError(MercError, ValueError):
    """A path given to merc-batch is unusable: missing, holding no recording, or a list that cannot
    be read (the message names the file and line)."""

    code = "archive_invalid"


def is_recording(directory: Path) -> bool:
    """A recording directory, or what is left of one (audio without its manifest counts)."""
    return (directory / MANIFEST_FILE).is_file() or (directory / AUDIO_FILE).is_file()


def read_list(path: Path) -> list[Path]:
    """The recording directories a list file names, each resolved against the list's folder and
    checked to exist (an ArchiveError names the line otherwise)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(f"{path}: not a list of recordings (not UTF-8 text); give one directory per "
                           "line") from None
    except OSError as err:
        raise ArchiveError(f"{path}: cannot read: {err.strerror or err}") from err
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        directory = path.parent / Path(entry).expanduser()
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "not found"
            raise ArchiveError(f"{path}:{number}: {entry}: {what} (each line names a recording directory)")
        found.append(directory)
    return found


def _search(folder: Path, recursive: bool) -> Iterator[Path]:
    """Recordings under `folder`, in name order: its children, or with `recursive` its whole tree
    (not looking inside recordings)."""
    try:
        children = sorted(child for child in folder.iterdir() if child.is_dir())
    except OSError as err:
        raise ArchiveError(f"{folder}: cannot list: {err.strerror or err}") from err
    for child in children:
        if is_recording(child):
            yield child
        elif recursive:
            yield from _search(child, recursive)


def find_recordings(paths: Sequence[Path], recursive: bool = False) -> list[Path]:
    """Every recording directory the paths name (see the module docstring), resolved, each once,
    in the order given."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ArchiveError(f"{path}: not found")
        if path.is_file():
            found.extend(read_list(path))
        elif is_recording(path):
            found.append(path)
        else:
            inside = list(_search(path, recursive))
            if not inside:
                deeper = "" if recursive else " (--recursive searches deeper folders too)"
                raise ArchiveError(f"{path}: no recordings in it: a recording is a directory with "
                                   f"{MANIFEST_FILE} and {AUDIO_FILE}{deeper}")
            found.extend(inside)
    unique: dict[Path, None] = {}
    for directory in found:
        unique.setdefault(directory.resolve(), None)
    return list(unique)


def path_digest(directory: Path) -> str:
    """8 hex digits of the hash of a resolved path: what tells two same-named recordings apart."""
    return hashlib.sha1(os.fsencode(directory.resolve())).hexdigest()[:8]


def output_names(recordings: Sequence[Path], claimed_by: Callable[[str], Path | None]) -> dict[Path, str]:
    """The output folder name of each recording: its folder name, unless another recording of this
    run has that name too, or `claimed_by(name)` says the folder already belongs to another source
    (then name-DIGEST, see `path_digest`)."""
    counts = Counter(directory.name for directory in recordings)
    names = {}
    for directory in recordings:
        name = directory.name
        owner = claimed_by(name)
        if counts[name] > 1 or (owner is not None and owner != directory):
            name = f"{name}-{path_digest(directory)}"
        names[directory] = name
    return names
