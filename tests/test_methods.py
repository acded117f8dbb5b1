"""The contract every seed method keeps (merc.models.methods.base): shapes, padding, masks,
causality, and training that lowers the loss. Method-specific behaviour is tested in
tests/test_method_<name>.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from merc.models.data.labels import IEMOCAP6
from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import (
    METHODS,
    MethodConfig,
    build_method,
    build_plugin,
    count_parameters,
)
from merc.models.methods.base import time_window
from merc.models.methods.trainer import FitConfig, predict_method, train_method

DIMS = {"text": 24, "audio": 4, "face": 7}


def synthetic_dialogues(n: int, seed: int = 0, classes: int = 6) -> list[DialogueFeatures]:
    """Dialogues whose label is readable from a noisy text feature and, more weakly, from audio
    and face class evidence: enough signal that any method's loss must fall."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, DIMS["text"]))
    out = []
    for i in range(n):
        t = int(rng.integers(4, 12))
        labels = rng.integers(0, classes, size=t)
        text = centres[labels] + rng.normal(scale=1.0, size=(t, DIMS["text"]))
        audio = np.eye(4)[labels % 4] * 0.7 + rng.random((t, 4)) * 0.3
        face = np.eye(7)[labels % 7] * 0.7 + rng.random((t, 7)) * 0.3
        mask = rng.random((t, 3)) > np.array([0.0, 0.3, 0.3])
        speakers = rng.integers(0, 2, size=t)
        out.append(DialogueFeatures(f"d{i}", {"text": text.astype(np.float32), "audio": audio.astype(np.float32),
                                              "face": face.astype(np.float32)}, mask, speakers, labels))
    return out


def audio_from_text_dialogues(n: int, seed: int = 7) -> list[DialogueFeatures]:
    """`synthetic_dialogues` whose audio is a fixed function of the text: what a method that
    estimates a missing modality from the present ones can learn."""
    proj = np.random.default_rng(0).normal(size=(DIMS["text"], DIMS["audio"]))
    return [DialogueFeatures(d.dialogue_id, {**d.features, "audio": np.tanh(d.features["text"] @ proj / 4)
                                             .astype(np.float32)}, d.mask, d.speakers, d.labels)
            for d in synthetic_dialogues(n, seed=seed)]


def build(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method(name, MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, **kw)).eval()


@pytest.fixture(scope="module")
def batch():
    return collate(synthetic_dialogues(4, seed=1))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shapes_and_probabilities(name, batch):
    model = build(name)
    out = model(batch["features"], batch["mask"], batch["speakers"])
    b, t = batch["speakers"].shape
    assert out.logits.shape == (b, t, 6)
    assert torch.isfinite(out.logits).all()
    assert out.aux_loss is None or out.aux_loss.dim() == 0
    for m, logits in out.modality_logits.items():
        assert m in ("text", "audio", "face") and logits.shape == (b, t, 6)
    assert count_parameters(model) > 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_padding_does_not_change_a_dialogue(name):
    dialogues = synthetic_dialogues(3, seed=2)
    model = build(name)
    alone = model(**_inputs(collate(dialogues[:1]))).logits[0]
    together = model(**_inputs(collate(dialogues))).logits[0, :len(dialogues[0])]
    torch.testing.assert_close(alone, together, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_absent_features_are_never_read(name, batch):
    """Values behind a False mask (any modality, text included: BALM's settings drop text) must not
    change any output."""
    model = build(name)
    mask = batch["mask"].clone()
    mask[:, ::3, 0] = False  # every third turn without its transcript
    before = model(batch["features"], mask, batch["speakers"]).logits
    scrambled = {m: x.clone() for m, x in batch["features"].items()}
    for k, m in enumerate(("text", "audio", "face")):
        hidden = ~mask[..., k]
        scrambled[m][hidden] = torch.randn_like(scrambled[m][hidden]) * 100
    after = model(scrambled, mask, batch["speakers"]).logits
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_causal_methods_do_not_see_the_future(name):
    """A causal method, or a non-causal one with future_window=0, gives turn t the same output
    whatever follows it."""
    model = build(name) if build(name).causal else build(name, future_window=0)
    dialogue = synthetic_dialogues(1, seed=3)[0]
    full = model(**_inputs(collate([dialogue]))).logits[0]
    cut = 3
    changed = DialogueFeatures(dialogue.dialogue_id, {m: x.copy() for m, x in dialogue.features.items()},
                               dialogue.mask.copy(), dialogue.speakers.copy(), dialogue.labels)
    for x in changed.features.values():
        x[cut:] = np.random.default_rng(9).normal(size=x[cut:].shape)
    other = model(**_inputs(collate([changed]))).logits[0]
    torch.testing.assert_close(full[:cut], other[:cut], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full[cut:], other[cut:])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_few_epochs_lower_the_loss(name):
    torch.set_num_threads(1)
    train, valid = synthetic_dialogues(24, seed=4), synthetic_dialogues(8, seed=5)
    model = build(name)
    _, history = train_method(model, train, valid, IEMOCAP6, FitConfig(epochs=4, batch_size=8, lr=3e-3, patience=10),
                              progress=False)
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0], losses
    gold, pred, probs = predict_method(model, valid)
    assert len(gold) == len(pred) == sum(int((d.labels >= 0).sum()) for d in valid)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_curriculum_plugin_grows_the_pool():
    train = synthetic_dialogues(10, seed=6)
    cl = build_plugin("cl", buckets=5)
    sizes = [len(cl.epoch_pool(e, train)) for e in range(1, 7)]
    assert sizes == [2, 4, 6, 8, 10, 10] and not cl.pool_complete(4) and cl.pool_complete(5)


def test_time_window():
    assert time_window(3, 0).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert time_window(3, 1).tolist() == [[True, True, False], [True, True, True], [True, True, True]]
    assert time_window(2, None).all()


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        build_method("nope", MethodConfig(n_classes=2))


def _inputs(batch: dict) -> dict:
    return {"features": batch["features"], "mask": batch["mask"], "speakers": batch["speakers"]}
