"""The end-of-turn classifier served with ONNX Runtime: transcript so far -> P(complete utterance).

The graph (frozen MiniLM, pooling and head; models/features/end_of_turn.py) is exported once per
classifier into CACHE/end_of_turn/<key>/ by merc.export.build.end_of_turn, with its tokenizer and a
manifest of checksums; this side only verifies and runs it (no torch).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from merc.export.serve.runtime import open_session
from merc.models.data.utterance_ends import completeness_text
from merc.models.errors import MercError
from merc.models.paths import cache_dir, contained_file, sha256_file

log = logging.getLogger(__name__)

FORMAT = "merc-end-of-turn"
FORMAT_VERSION = 1
GRAPH_FILE = "end_of_turn.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "complete"


class EndOfTurnExportError(MercError, RuntimeError):
    """A cached end-of-turn export is missing or damaged; the message names the file."""

    code = "end_of_turn_invalid"
    hint = "delete it: it is exported again on next use"


def export_key(head_dir: Path) -> str:
    """The cache key of a classifier directory: its files' checksums and the export format."""
    digest = hashlib.sha256(f"{FORMAT}:{FORMAT_VERSION}".encode())
    root = Path(head_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()[:16]


def export_dir(head_dir: Path, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "end_of_turn" / export_key(head_dir)


def verify_export(directory: Path) -> dict:
    """The manifest of an export, after checking every file's sha256 against it."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        raise EndOfTurnExportError(f"{manifest_path}: unreadable end-of-turn manifest ({err})") from err
    if not isinstance(files, dict):
        raise EndOfTurnExportError(f"{manifest_path}: 'files' must map file names to checksums")
    for name, expected in files.items():
        path = contained_file(directory, name)  # a manifest never makes us read outside its folder
        if path is None:
            raise EndOfTurnExportError(f"{manifest_path}: {name!r} is not a file name inside {directory}")
        if not path.is_file() or sha256_file(path) != expected:
            raise EndOfTurnExportError(f"{path}: missing, or its checksum differs from {manifest_path}")
    return manifest


def cached_export(head_dir: Path, cache: Path | None = None) -> Path | None:
    """The verified export of `head_dir` in the cache, or None (no torch needed to ask)."""
    target = export_dir(head_dir, cache)
    if not (target / MANIFEST_FILE).exists():
        return None
    try:
        verify_export(target)
    except EndOfTurnExportError as err:
        log.warning("end-of-turn export unusable, exporting again: %s", err)
        return None
    return target


class CompletenessModel:
    """`model(text) -> P(complete)`: is this transcript a finished utterance?"""

    def __init__(self, directory: Path, device: str = "cpu", threads: int | None = 1, verify: bool = True) -> None:
        """`verify`: check every file's sha256 first (False when the caller just did: `cached_export`)."""
        from tokenizers import Tokenizer

        manifest = verify_export(directory) if verify else json.loads((directory / MANIFEST_FILE).read_text())
        self.max_tokens = int(manifest["max_tokens"])
        self.session = open_session(directory / GRAPH_FILE, device, threads)
        try:
            self.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as err:  # tokenizers raises a bare Exception on a bad file
            raise EndOfTurnExportError(f"{directory / TOKENIZER_FILE}: cannot load tokenizer: {err}") from err
        self.tokenizer.no_padding()
        # a long transcript keeps its end: how it stops is what matters
        self.tokenizer.enable_truncation(self.max_tokens, direction="left")

    def __call__(self, text: str) -> float | None:
        """P(complete) of a transcript; None when it has no words (nothing to judge)."""
        words = completeness_text(text)
        if not words:
            return None
        encoding = self.tokenizer.encode(words)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        mask = np.asarray([encoding.attention_mask], dtype=np.int64)
        return float(self.session.run([OUTPUT], {"input_ids": ids, "attention_mask": mask})[0][0])
