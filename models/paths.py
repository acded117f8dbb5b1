"""Where merc keeps things, importable without torch (serving uses it too)."""
from __future__ import annotations

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
