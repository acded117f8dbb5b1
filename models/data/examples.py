"""The bundled example dialogue: a short conversation we wrote, in the JSONL dialogue format.

`merc-track` tracks it by default, and the ONNX export checks parity on it.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

EXAMPLE_DIALOGUE = "example_dialogue.jsonl"


def example_dialogue() -> Path:
    """The path of the bundled example dialogue (JSONL, one dialogue per line)."""
    return Path(str(resources.files("merc.models.data") / "examples" / EXAMPLE_DIALOGUE))
