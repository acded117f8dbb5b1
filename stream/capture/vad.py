"""Silero VAD as a streaming voice-probability model on ONNX Runtime, without torch.

The `silero-vad` package ships the ONNX model; its own Python wrapper needs torch, so we read
only the file and keep the recurrent state and the 64-sample context ourselves: one call per
32 ms frame (512 samples at 16 kHz), state carried across calls (a true streaming VAD, unlike
a batch `get_speech_timestamps`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from merc.models.errors import MercError

SAMPLE_RATE = 16000
FRAME = 512  # samples per call at 16 kHz: the model's fixed window
CONTEXT = 64  # samples of the previous frame the model expects in front of each window
MODEL_FILE = "silero_vad.onnx"


class VADError(MercError, RuntimeError):
    """The VAD model is missing or unusable."""

    code = "vad_unavailable"
    hint = "reinstall the silero-vad package"


def silero_model_path(explicit: str | Path | None = None) -> Path:
    """The ONNX file: `explicit`, else the copy inside the installed `silero-vad` package (located
    without importing it, since its __init__ imports torch)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise VADError(f"{path}: VAD model file not found")
        return path
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VADError("the silero-vad package is not installed (pip install silero-vad); it ships the VAD model")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise VADError(f"{path}: the installed silero-vad package lacks its ONNX model")
    return path


class SileroVAD:
    """Speech probability of consecutive 512-sample frames of one 16 kHz stream."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        import onnxruntime as ort

        path = silero_model_path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # 0.1 ms a frame: a thread pool only adds hand-over cost
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime has no common exception base
            raise VADError(f"{path}: not a loadable ONNX model: {err}") from err
        self.path = path
        self.reset()

    def reset(self) -> None:
        """Start a new stream: clear the recurrent state and the context."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        """Probability that this 512-sample frame (float32 in [-1, 1]) is speech."""
        if frame.shape != (FRAME,):
            raise ValueError(f"the VAD takes frames of {FRAME} samples at 16 kHz, got shape {frame.shape}")
        x = np.concatenate([self._context, frame[None, :].astype(np.float32, copy=False)], axis=1)
        out, self._state = self.session.run(
            ["output", "stateN"], {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)})
        self._context = x[:, -CONTEXT:]
        return float(out[0, 0])
