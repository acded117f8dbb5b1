"""CMATH's own behaviour (merc.models.methods.cmath): the hierarchical variational distillation
loss, the asymmetric augmentation with auxiliaries missing, the per-modality cross-entropy
plug-in, and how far ahead a turn may look."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import DIMS, synthetic_dialogues

from merc.models.data.labels import IEMOCAP6
from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.base import per_turn_loss
from merc.models.methods.cmath import MaskedAttention
from merc.models.methods.trainer import FitConfig, train_method


def build(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    options = kw.pop("options", {})
    return build_method("cmath", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, options=options, **kw))


def run(model, batch, features=None, mask=None):
    return model(batch["features"] if features is None else features,
                 batch["mask"] if mask is None else mask, batch["speakers"])


@pytest.fixture(scope="module")
def batch():
    return collate(synthetic_dialogues(6, seed=7))


def test_aux_loss_is_the_weighted_sum_of_positive_parts(batch):
    model = build(options={"gamma_mse": 0.5, "gamma_kl": 2.0, "rec_weight": 3.0}).train()
    out = run(model, batch)
    parts = out.losses
    assert all(parts[k] > 0 for k in ("rec", "mse", "kl"))
    torch.testing.assert_close(out.aux_loss.detach(), 3.0 * parts["rec"] + 0.5 * parts["mse"] + 2.0 * parts["kl"])


def test_distillation_falls_with_training(batch):
    torch.set_num_threads(1)
    model = build()

    def distillation() -> float:
        model.eval()
        with torch.no_grad():
            parts = run(model, batch).losses
        return float(parts["mse"] + parts["kl"])

    before = distillation()
    train_method(model, synthetic_dialogues(24, seed=4), synthetic_dialogues(8, seed=5), IEMOCAP6,
                 FitConfig(epochs=5, batch_size=8, lr=3e-3, patience=10), progress=False)
    assert 0 < distillation() < before


def test_teacher_is_the_prediction_and_evaluation_uses_the_mean(batch):
    model = build().eval()
    a, b = run(model, batch).logits, run(model, batch).logits
    torch.testing.assert_close(a, b)  # no sampling in evaluation: H'_x = mu_x
    model.train()
    assert not torch.allclose(run(model, batch).logits, run(model, batch).logits)  # reparameterised sample


def test_text_only_is_well_defined_and_equals_hidden_audio_and_face(batch):
    """With audio and face absent the text path's cross-attention has no key at all: the result
    must be finite (also its gradients), and the same whether the arrays are missing or masked."""
    model = build().train()
    text_only = {"text": batch["features"]["text"]}
    mask = batch["mask"].clone()
    mask[..., 1:] = False
    torch.manual_seed(1)
    out = run(model, batch, text_only, mask)
    assert torch.isfinite(out.logits).all() and set(out.modality_logits) == {"text"}
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    scrambled = {m: torch.randn_like(x) * 1e3 for m, x in batch["features"].items() if m != "text"}
    model.eval()
    torch.testing.assert_close(run(model, batch, text_only, mask).logits,
                               run(model, batch, {**text_only, **scrambled}, mask).logits)


def test_turns_without_any_modality_get_an_output(batch):
    model = build().eval()
    mask = batch["mask"].clone()
    mask[:, 1] = False  # turn 1 of every dialogue has nothing
    out = run(model, batch, mask=mask)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.aux_loss)


def test_attention_with_no_allowed_key_gives_zero_and_finite_gradients():
    torch.manual_seed(0)
    attn = MaskedAttention(8, 2)
    x = torch.randn(2, 3, 8, requires_grad=True)
    allowed = torch.ones(2, 3, 3, dtype=torch.bool)
    allowed[0, 1] = False
    out = attn(x, x, x, allowed)
    assert torch.equal(out[0, 1], torch.zeros(8)) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_turn_loss_adds_each_present_modality_cross_entropy(batch):
    model = build().eval()
    out = run(model, batch)
    labels = batch["labels"]
    expected = per_turn_loss(out.logits, labels)
    for k, m in enumerate(("text", "audio", "face")):
        expected = expected + per_turn_loss(out.modality_logits[m], labels) * (batch["mask"][..., k])
    torch.testing.assert_close(model.turn_loss(out, labels), expected)
    assert model.training_plugins() == []


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("future", [0, 1])
def test_future_window_bounds_the_reach(kernel, future):
    model = build(future_window=future, options={"kernel": kernel}).eval()
    dialogue = next(d for d in synthetic_dialogues(10, seed=3) if len(d) >= 9)
    full = model(**_inputs([dialogue])).logits[0]
    cut = 4
    changed = _changed_from(dialogue, cut)
    other = model(**_inputs([changed])).logits[0]
    unaffected = cut - future  # one layer: turns < cut - future never see turn cut
    torch.testing.assert_close(full[:unaffected], other[:unaffected])
    assert not torch.allclose(full[unaffected:], other[unaffected:])


def _changed_from(d: DialogueFeatures, cut: int) -> DialogueFeatures:
    features = {m: x.copy() for m, x in d.features.items()}
    for x in features.values():
        x[cut:] = np.random.default_rng(9).normal(size=x[cut:].shape)
    return DialogueFeatures(d.dialogue_id, features, d.mask.copy(), d.speakers.copy(), d.labels)


def _inputs(dialogues) -> dict:
    b = collate(dialogues)
    return {"features": b["features"], "mask": b["mask"], "speakers": b["speakers"]}
