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
