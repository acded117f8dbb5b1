"""Where merc keeps things and how files are checksummed, importable without torch (serving uses it)."""
from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path


def cache_dir() -> Path:
    """Extracted weights, embedding caches and exported bundles (``MERC_CACHE`` overrides)."""
    root = os.environ.get("MERC_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "merc"
    return Path(root)


def default_model_dir() -> Path:
    """The bundled default model: text only, MELD's 7 labels."""
    return Path(str(resources.files("merc.models") / "default"))


def live_model_dir() -> Path:
    """The bundled model for live speech (merc-live, merc-replay): the default's recipe trained on
    text as Whisper writes it (models/data/asr_text.py), since live turns are ASR transcripts."""
    return Path(str(resources.files("merc.models") / "live"))


def default_experts_dir() -> Path:
    """The bundled experts: face_cnn.onnx (FER-2013) and audio_expert.onnx (EmoDB)."""
    return Path(str(resources.files("merc.models") / "experts"))


def sha256_file(path: Path) -> str:
    """Checksum of a file, read in blocks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contained_file(directory: Path, name: object, links: bool = False) -> Path | None:
    """`directory / name` when `name` is a relative path (a plain file name, normally) that stays
    inside `directory` once resolved: no "..", no absolute path, no symbolic link leading out. With
    `links`, the file itself may be a symbolic link (a bundle cloned by linking its files: the
    directory's owner put it there); the path leading to it may not. Else None.

    Manifests name the files beside them; a manifest from elsewhere must not make us read, or
    checksum, files outside its directory."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    path = directory / relative
    try:
        root = directory.resolve()
        resolved = path.parent.resolve() / path.name if links else path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unrepresentable name
        return None
    if resolved == root or not resolved.is_relative_to(root):
        return None
    return path


def end_of_turn_dir() -> Path:
    """The bundled end-of-turn classifier: is a partial transcript a complete utterance?"""
    return Path(str(resources.files("merc.models") / "end_of_turn"))
