"""The unimodal experts at serving time, on ONNX Runtime (no torch).

`AudioEmotionExpert` turns a turn's audio into the expert's emotion probabilities: the run-time
acoustic features (merc.models.features.audio_features) then audio_expert.onnx. `FaceEmotionExpert` turns
48x48 grey face crops into probabilities with face_cnn.onnx. Their outputs are what multimodal
bundles read as the audio and face inputs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from merc.models.errors import MercError


class ExpertError(MercError, RuntimeError):
    """An expert model is missing or unusable; the message names the file."""

    code = "expert_invalid"
    hint = "export the expert again with merc-experts"


def open_expert(path: Path, input_name: str):
    """An ONNX Runtime session for an expert graph and its metadata (labels, features, ...)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ExpertError(f"{path}: expert model not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ExpertError(f"{path}: ONNX Runtime cannot load it ({err})") from err
    if [i.name for i in session.get_inputs()] != [input_name]:
        raise ExpertError(f"{path}: expected one input {input_name!r}, found {[i.name for i in session.get_inputs()]}")
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    return session, meta


class FaceEmotionExpert:
    """face_cnn.onnx: crops (N, 48, 48) uint8 -> probabilities (N, 7) in `labels` order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._session, self.meta = open_expert(self.path, "pixels")
        self.labels: tuple[str, ...] = tuple(self.meta.get("labels", ()))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim == 2:
            crops = crops[None]
        if crops.ndim != 3 or crops.shape[1:] != (48, 48):
            raise ValueError(f"expected 48x48 grey crops (N, 48, 48), got shape {crops.shape}")
        return self._session.run(["probs"], {"pixels": crops.astype(np.float32)})[0]

    def turn_features(self, observations: Sequence[Any]) -> np.ndarray | None:
        """Mean probabilities over a turn's observations that carry a crop; None when none does."""
        crops = [o.crop for o in observations if getattr(o, "crop", None) is not None]
        if not crops:
            return None
        return self(np.stack(crops)).mean(axis=0).astype(np.float32)


class AudioEmotionExpert:
    """audio_expert.onnx over `featurizer` (an AcousticFeaturizer of the kind the expert was fit on)."""

    def __init__(self, path: str | Path, featurizer: Any) -> None:
        self.path = Path(path)
        self._session, meta = open_expert(self.path, "features")
        self.labels: tuple[str, ...] = tuple(meta.get("labels", ()))
        self.kind = meta.get("features")
        if self.kind is not None and getattr(featurizer, "kind", self.kind) != self.kind:
            raise ExpertError(f"{self.path}: fit on {self.kind} features, given a {featurizer.kind} featurizer")
        self.featurizer = featurizer

    def probs(self, features: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for pooled features (N, D) or (D,)."""
        return self._session.run(["probs"], {"features": np.atleast_2d(features).astype(np.float32)})[0]

    def __call__(self, audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
        """The turn's emotion probabilities (classes,) from its mono audio."""
        return self.probs(self.featurizer(audio, sample_rate))[0]
