"""Model directories: save/load round trip, compact packaging, and clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from merc.models.dag.checkpoint import ModelError, load_model, save_model
from merc.models.dag.graph import DAGConfig, MultiDAG
from merc.models.data.labels import MELD7
from merc.models.train.package_default import package


def _model() -> MultiDAG:
    torch.manual_seed(0)
    return MultiDAG(DAGConfig(n_classes=7, hidden=32, layers=2)).eval()


def test_round_trip_gives_the_same_outputs(tmp_path):
    dag = _model()
    save_model(tmp_path / "run", dag, MELD7, "sentence-transformers/all-MiniLM-L6-v2", {"corpus": "meld"})
    loaded = load_model(tmp_path / "run")
    x = {"text": torch.randn(1, 5, 384)}
    mask = torch.zeros(1, 5, 3, dtype=torch.bool)
    mask[..., 0] = True
    speakers = torch.tensor([[0, 1, 0, 1, 1]])
    with torch.no_grad():
        assert torch.equal(dag(x, mask, speakers), loaded.dag(x, mask, speakers))
    assert loaded.label_set == MELD7 and loaded.meta["corpus"] == "meld"


def test_packaged_model_is_fp16_and_close(tmp_path):
    dag = _model()
    save_model(tmp_path / "run", dag, MELD7, "sentence-transformers/all-MiniLM-L6-v2", {"corpus": "meld"})
    size = package(tmp_path / "run", tmp_path / "default")
    assert size < (tmp_path / "run" / "model.safetensors").stat().st_size
    packed = load_model(tmp_path / "default")
    x = {"text": torch.randn(1, 4, 384)}
    mask = torch.ones(1, 4, 3, dtype=torch.bool)
    speakers = torch.tensor([[0, 1, 0, 1]])
    with torch.no_grad():
        a = torch.softmax(dag(x, mask, speakers), -1)
        b = torch.softmax(packed.dag(x, mask, speakers), -1)
    assert (a - b).abs().max() < 1e-2


def test_mismatched_labels_and_weights_are_clear_errors(tmp_path):
    run = tmp_path / "run"
    save_model(run, _model(), MELD7, "minilm", {})
    info = json.loads((run / "model.json").read_text())
    info["labels"] = info["labels"][:6]
    (run / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="7 classes but 6 labels"):
        load_model(run)
    info["labels"] = list(MELD7.labels)
    info["dag"]["hidden"] = 64
    (run / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(run)
