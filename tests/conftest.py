"""Shared fixtures: where the real corpora live (never copied into the repo)."""
from __future__ import annotations

import os
import re
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


@pytest.fixture(scope="session")
def tiny_face_cnn(data_dir, tmp_path_factory) -> Path:
    """A face CNN trained for one epoch on 1/20 of FER-2013's train split (real images), saved as
    `merc-experts face` saves it: enough to exercise export, pairing and serving, not accuracy."""
    import numpy as np
    import torch

    from merc.models.data.fer import load_fer_split, validation_split
    from merc.models.experts.face_cnn import (
        FaceCNNConfig,
        save_face_cnn,
        train_face_cnn,
    )

    out = tmp_path_factory.mktemp("face-cnn")
    train, valid = validation_split(load_fer_split("train", data_dir, out / "cache"), 0.1, 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = train_face_cnn(FaceCNNConfig(epochs=1, widths=(8, 16, 32, 64)),
                                  train.subset(np.arange(0, len(train), 20)),
                                  valid.subset(np.arange(0, len(valid), 20)), progress=False)
    finally:
        torch.set_num_threads(previous)
    save_face_cnn(model, out, {"validation": {"fraction": 0.1, "seed": 0}})
    return out


def write_face_video(data_dir: Path, path: Path, seconds: float) -> Path:
    """A 10-fps camera stand-in: ten FER-2013 happy test faces (prepared as stills), one a second,
    looped for `seconds`; skips the test when the images are not there."""
    import cv2

    from merc.models.features.face_features import STILL_MARGIN, prepare

    files = sorted((data_dir / "fer2013" / "test" / "happy").glob("*.jpg"))[:10]
    if len(files) < 10:
        pytest.skip("FER-2013 test images not found")
    faces = [prepare(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), margin=STILL_MARGIN) for f in files]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (faces[0].shape[1], faces[0].shape[0]))
    for i in range(int(10 * seconds)):
        writer.write(faces[(i // 10) % len(faces)])
    writer.release()
    return path


# What no client-visible message may contain: a Python exception name, a traceback, or a
# filesystem path (any absolute POSIX path of two or more parts, or a Windows drive path). URLs
# ("ws://host/path") and units ("messages/s") do not match.
CLIENT_LEAK = re.compile(r"\b\w+(Error|Exception)\b|Traceback|(?<![\w:/.])/[\w.-]+/[\w./-]*|\b[A-Za-z]:\\")


def command(name: str) -> str:
    """The installed console script `name` of the interpreter running the tests (no activated
    environment needed: scripts are installed next to it)."""
    import shutil
    import sys

    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return found
