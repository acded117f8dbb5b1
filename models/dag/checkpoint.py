"""A trained model directory: the DAG's weights and config, its label set and its text encoder.

    model.json          DAG config, label set, encoder reference, training corpus
    model.safetensors   DAG weights
    encoder/            the fine-tuned text encoder, when there is one

The encoder reference is either "encoder" (the sub-directory) or a hub id / model name, so a
directory is self-contained and can be copied anywhere (the bundled default model is one).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from merc.models.dag.graph import DAGConfig, MultiDAG
from merc.models.data.labels import LabelSet
from merc.models.errors import MercError

MODEL_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


class ModelError(MercError, RuntimeError):
    """A model directory is missing, incomplete or inconsistent."""

    code = "model_invalid"
    hint = "give a run directory written by merc-train"


@dataclass(frozen=True)
class TrainedModel:
    dag: MultiDAG
    label_set: LabelSet
    encoder_ref: str  # resolved: an absolute path to the encoder dir, or a hub id
    meta: dict


def save_model(run_dir: Path, dag: MultiDAG, label_set: LabelSet, encoder_ref: str, meta: dict,
               half: bool = False) -> None:
    """Write model.json and model.safetensors (fp16 when `half`, to keep shipped models small)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in dag.state_dict().items()},
              str(run_dir / WEIGHTS_FILE))
    info = {"dag": dag.config.to_dict(), "label_set": label_set.name, "labels": list(label_set.labels),
            "encoder": encoder_ref, **meta}
    (run_dir / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_model(run_dir: str | Path) -> TrainedModel:
    """Load a model directory written by `save_model` (a training run or the bundled default)."""
    run_dir = Path(run_dir)
    info_path = run_dir / MODEL_FILE
    if not info_path.exists():
        raise ModelError(f"{info_path}: not found; is {run_dir} a training run directory?")
    try:
        info = json.loads(info_path.read_text())
        config = DAGConfig(**info["dag"])
        label_set = LabelSet(info["label_set"], tuple(info["labels"]))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{info_path}: malformed model description: {err}") from err
    if config.n_classes != len(label_set):
        raise ModelError(f"{info_path}: {config.n_classes} classes but {len(label_set)} labels")
    weights_path = run_dir / WEIGHTS_FILE
    if not weights_path.exists():
        raise ModelError(f"{weights_path}: not found")
    dag = MultiDAG(config)
    try:
        dag.load_state_dict({k: v.float() for k, v in load_file(str(weights_path)).items()})
    except (RuntimeError, OSError) as err:
        raise ModelError(f"{weights_path}: does not match {info_path}: {err}") from err
    encoder_ref = info["encoder"]
    if (run_dir / encoder_ref).is_dir():
        encoder_ref = str((run_dir / encoder_ref).resolve())
    return TrainedModel(dag.eval(), label_set, encoder_ref, info)
