"""Shared fixtures: where the real corpora live (never copied into the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data dir: $MERC_DATA, else ../shared/data next to the project root."""
    env = os.environ.get("MERC_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MERC_DATA)")
    return path


@pytest.fixture(scope="session")
def model_path() -> Path:
    """MediaPipe's face_landmarker.task from ../shared/models (the dev and test copy)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "face_landmarker.task"
    if not path.is_file():
        pytest.skip(f"face landmarker model not found at {path}")
    return path
