"""ONNX export of the unimodal experts, each checked against its PyTorch/numpy original.

    audio_expert.onnx   input "features" (N, D) float32 pooled acoustic features -> "probs" (N, 4)
    face_cnn.onnx       input "pixels" (N, 48, 48) float32 grey levels 0..255    -> "probs" (N, 7)

The face graph contains the per-image standardisation and the flip averaging, so serving feeds
raw crops and gets exactly what the test accuracy was measured on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from merc.models.experts.audio_expert import AudioExpert
from merc.models.experts.face_cnn import FaceCNN, standardize

OPSET = 17
TOLERANCE = 1e-4


class _AudioHead(nn.Module):
    mean: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(self, expert: AudioExpert) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(expert.mean))
        self.register_buffer("scale", torch.from_numpy(expert.scale))
        self.linear = nn.Linear(expert.coef.shape[1], expert.coef.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(expert.coef))
            self.linear.bias.copy_(torch.from_numpy(expert.intercept))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear((features - self.mean) / self.scale), dim=-1)


class _FaceHead(nn.Module):
    def __init__(self, model: FaceCNN) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = standardize(pixels)
        p = torch.softmax(self.model(x), -1) + torch.softmax(self.model(torch.flip(x, dims=[3])), -1)
        return p / 2


def _export(module: nn.Module, example: torch.Tensor, input_name: str, path: Path, meta: dict) -> float:
    import onnx
    import onnxruntime as ort

    from merc.export.build.onnx_export import _onnx_export

    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()  # batch norm and dropout as at inference, before and after tracing
    with torch.no_grad():
        expected = module(example).numpy()
        _onnx_export(module, (example,), path, [input_name], ["probs"], {input_name: {0: "n"}, "probs": {0: "n"}},
                     OPSET)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {input_name: example.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {TOLERANCE})")
    return diff


def export_audio_expert(expert: AudioExpert, path: Path, example: np.ndarray | None = None) -> float:
    """Write the audio expert as ONNX; returns the max |ORT - numpy| on `example` (random if None)."""
    if example is None:
        example = np.random.default_rng(0).normal(size=(8, expert.coef.shape[1])).astype(np.float32) * expert.scale \
            + expert.mean
    diff = _export(_AudioHead(expert), torch.from_numpy(example.astype(np.float32)), "features", path,
                   {"labels": list(expert.labels), "features": expert.kind})
    numpy_diff = float(np.abs(expert.predict_proba(example) - _AudioHead(expert)(torch.from_numpy(example)).detach()
                              .numpy()).max())
    return max(diff, numpy_diff)


def export_face_cnn(model: FaceCNN, path: Path, example: np.ndarray | None = None, meta: dict | None = None) -> float:
    """Write the face CNN (standardisation + flip averaging inside) as ONNX; returns the max |ORT - torch|.

    `meta` (e.g. the validation slice held out in training, its test accuracy) goes into the
    graph's metadata next to the labels."""
    from merc.models.data.fer import FER_LABELS

    if example is None:
        example = np.random.default_rng(0).integers(0, 256, size=(4, 48, 48)).astype(np.float32)
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch's stub lacks it
    return _export(_FaceHead(model), torch.from_numpy(example.astype(np.float32)), "pixels", path,
                   {"labels": list(FER_LABELS), **(meta or {})})
