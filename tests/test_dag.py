"""The incremental DAG: predecessor rule, missing modalities, and step == batch forward."""
from __future__ import annotations

import torch

from merc.models.dag.graph import (
    MODALITIES,
    UNKNOWN_SPEAKER,
    DAGConfig,
    MultiDAG,
    predecessors,
)


def test_predecessors_walk_back_to_the_omega_th_turn_of_the_same_speaker():
    # Most recent first: B, B, A, B, A
    previous = [1, 1, 0, 1, 0]
    assert predecessors(previous, 0, omega=1, limit=16) == [1, 2, 3]
    assert predecessors(previous, 0, omega=2, limit=16) == [1, 2, 3, 4, 5]
    assert predecessors(previous, 1, omega=1, limit=16) == [1]
    assert predecessors(previous, 0, omega=1, limit=2) == [1, 2]
    assert predecessors([], 0, omega=1, limit=16) == []


def test_unknown_speaker_matches_nobody():
    previous = [UNKNOWN_SPEAKER, 0, UNKNOWN_SPEAKER]
    assert predecessors(previous, UNKNOWN_SPEAKER, omega=1, limit=16) == [1, 2, 3]


def _random_dialogues(model: MultiDAG, b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, t, d, generator=g) for m, d in model.config.dims.items()}
    mask = torch.rand(b, t, 3, generator=g) > 0.3
    speakers = torch.randint(0, 3, (b, t), generator=g)
    return feats, mask, speakers


def test_step_matches_batch_forward_with_any_modality_subset():
    torch.manual_seed(0)
    model = MultiDAG(DAGConfig(n_classes=7, layers=3, max_predecessors=5)).eval()
    feats, mask, speakers = _random_dialogues(model, 3, 14)
    with torch.no_grad():
        batch = torch.softmax(model(feats, mask, speakers), -1)
        for row in range(3):
            state = model.initial_state()
            for i in range(14):
                probs, state = model.step(state, {m: x[row, i] for m, x in feats.items()}, mask[row, i],
                                          int(speakers[row, i]))
                assert torch.allclose(probs, batch[row, i], atol=1e-5)


def test_absent_modality_ignores_its_feature_values():
    """A masked-out modality contributes its learned absence embedding, not its (garbage) values."""
    torch.manual_seed(0)
    model = MultiDAG(DAGConfig(n_classes=4, layers=1)).eval()
    feats, _, speakers = _random_dialogues(model, 1, 6)
    mask = torch.zeros(1, 6, 3, dtype=torch.bool)
    mask[..., 0] = True  # text only
    noisy = {**feats, "audio": feats["audio"] * 100, "face": -feats["face"]}
    with torch.no_grad():
        a = model(feats, mask, speakers)
        b = model(noisy, mask, speakers)
        c = model({"text": feats["text"]}, mask, speakers)  # audio and face arrays not even given
    assert torch.allclose(a, b) and torch.allclose(a, c)


def test_missing_modality_changes_the_prediction_input():
    torch.manual_seed(0)
    model = MultiDAG(DAGConfig(n_classes=4, layers=1)).eval()
    feats, _, speakers = _random_dialogues(model, 1, 4)
    full = torch.ones(1, 4, 3, dtype=torch.bool)
    no_audio = full.clone()
    no_audio[..., 1] = False
    with torch.no_grad():
        assert not torch.allclose(model(feats, full, speakers), model(feats, no_audio, speakers))


def test_padding_after_a_dialogue_does_not_change_its_turns():
    torch.manual_seed(0)
    model = MultiDAG(DAGConfig(n_classes=5, layers=2)).eval()
    feats, mask, speakers = _random_dialogues(model, 1, 8)
    with torch.no_grad():
        short = model({m: x[:, :5] for m, x in feats.items()}, mask[:, :5], speakers[:, :5])
        long = model(feats, mask, speakers)
    assert torch.allclose(short, long[:, :5], atol=1e-6)


def test_step_state_is_bounded_by_the_window():
    model = MultiDAG(DAGConfig(n_classes=3, layers=2, max_predecessors=4)).eval()
    state = model.initial_state()
    x = {m: torch.randn(d) for m, d in model.config.dims.items()}
    with torch.no_grad():
        for i in range(30):
            _, state = model.step(state, x, torch.tensor([True, True, False]), i % 3)
    assert state.turns == 4
    assert all(layer.shape == (4, model.config.hidden) for layer in state.layers)


def test_gradients_reach_every_modality_projection():
    torch.manual_seed(0)
    model = MultiDAG(DAGConfig(n_classes=3, layers=1))
    feats, _, speakers = _random_dialogues(model, 2, 5)
    mask = torch.ones(2, 5, 3, dtype=torch.bool)
    model(feats, mask, speakers).sum().backward()
    for m in MODALITIES:
        assert model.project[m].weight.grad.abs().sum() > 0
