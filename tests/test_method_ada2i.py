"""Ada2I's own behaviour (merc.models.methods.ada2i): OGM-GE over three modalities, AMW over the
present modalities, L_modal, and the non-causal context with its causal variant."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_methods import DIMS, synthetic_dialogues

from merc.models.data.labels import IEMOCAP6
from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.ada2i import OGMGE
from merc.models.methods.trainer import FitConfig, train_method

torch.set_num_threads(1)


def build(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("ada2i", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, options=options))


def inputs(batch: dict) -> dict:
    return {"features": batch["features"], "mask": batch["mask"], "speakers": batch["speakers"]}


def backward(model, batch):
    model.train()
    out = model(**inputs(batch))
    (out.logits.logsumexp(-1).sum() + out.aux_loss).backward()
    return out


def grads(module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def confident(labels: torch.Tensor, strength: float) -> torch.Tensor:
    """(B, T, 6) logits that give the gold class a margin of `strength`."""
    return torch.nn.functional.one_hot(labels.clamp(min=0), 6).float() * strength


def test_ogm_ge_scales_down_only_the_dominant_encoder():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build(noise=False)
    out = backward(model, batch)
    # text confident, audio and face at chance: text dominates, the other two tie as weakest
    out.modality_logits = {"text": confident(batch["labels"], 4.0), "audio": torch.zeros(*batch["labels"].shape, 6),
                           "face": torch.zeros(*batch["labels"].shape, 6)}
    before = {m: grads(model.encoders[m]) for m in ("text", "audio", "face")}
    plugin = model.training_plugins()[0]
    plugin.epoch = plugin.start_epoch
    plugin.after_backward(model, out, batch)
    p_text = math.exp(4) / (math.exp(4) + 5)
    k_text = 1 - math.tanh(model.alpha * p_text / (1 / 6))
    assert plugin.last == pytest.approx({"text": k_text, "audio": 1.0, "face": 1.0})
    assert 0 < k_text < 1
    for g0, g1 in zip(before["text"], grads(model.encoders["text"])):
        torch.testing.assert_close(g1, g0 * k_text)
    for m in ("audio", "face"):
        for g0, g1 in zip(before[m], grads(model.encoders[m])):
            torch.testing.assert_close(g1, g0)
    # AFW, AMW and the MLP are not encoder parameters: untouched either way


def test_middle_modality_is_scaled_by_its_own_ratio():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build(noise=False)
    out = backward(model, batch)
    zeros = torch.zeros(*batch["labels"].shape, 6)
    out.modality_logits = {"text": confident(batch["labels"], 4.0), "audio": confident(batch["labels"], 1.0),
                           "face": zeros}
    k = OGMGE(model, alpha=0.4).coefficients(out, batch)
    assert k["face"] == 1.0 and k["text"] < k["audio"] < 1.0


def test_modulation_ignores_absent_turns_and_modalities():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build()
    out = model(**inputs(batch))
    plugin = OGMGE(model, alpha=0.4)
    base = plugin.coefficients(out, batch)
    # logits behind a False mask do not count, however confident
    audio_absent = ~batch["mask"][..., 1]
    out.modality_logits["audio"] = torch.where(audio_absent.unsqueeze(-1), confident(batch["labels"], 50.0),
                                               out.modality_logits["audio"])
    assert plugin.coefficients(out, batch) == pytest.approx(base)
    # a modality absent from the whole batch is not modulated at all
    batch["mask"][..., 2] = False
    assert set(plugin.coefficients(out, batch)) == {"text", "audio"}


def test_no_modulation_before_the_start_epoch():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build()
    out = backward(model, batch)
    out.modality_logits["text"] = confident(batch["labels"], 6.0)
    before = grads(model.encoders["text"])
    plugin = model.training_plugins()[0]
    plugin.batch_loss(torch.zeros_like(batch["labels"], dtype=torch.float), out, batch, epoch=plugin.start_epoch - 1)
    plugin.after_backward(model, out, batch)
    for g0, g1 in zip(before, grads(model.encoders["text"])):
        torch.testing.assert_close(g1, g0)


def test_ge_noise_is_added_when_modulating():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build(noise=True)
    out = backward(model, batch)
    before = grads(model.encoders["audio"])
    plugin = model.training_plugins()[0]
    plugin.epoch = plugin.start_epoch
    plugin.after_backward(model, out, batch)
    after = grads(model.encoders["audio"])
    assert any(not torch.allclose(g0 * plugin.last["audio"], g1) for g0, g1 in zip(before, after))
    assert all(torch.isfinite(g).all() for g in after)


def test_amw_sums_cosine_logits_of_present_modalities_only():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build().eval()
    captured = {}
    hook = model.mlp.register_forward_pre_hook(lambda mod, args: captured.update(fused=args[0]))
    out = model(**inputs(batch))
    hook.remove()
    bias = model.amw_bias / 3
    for m in ("text", "audio", "face"):  # cosine logits are bounded by the scale (1)
        assert ((out.modality_logits[m] - bias).abs() <= 1 + 1e-5).all()
    # perturbing the face classifier moves only turns where face is present
    with torch.no_grad():
        model.amw["face"].weight.add_(torch.randn_like(model.amw["face"].weight))
    moved = model(**inputs(batch)).logits
    face = batch["mask"][..., 2]
    torch.testing.assert_close(moved[~face], out.logits[~face])
    assert not torch.allclose(moved[face], out.logits[face])
    # L_modal is the cross-entropy of exactly the AMW logits the MLP saw
    labels = batch["labels"]
    expected = torch.nn.functional.cross_entropy(captured["fused"][labels >= 0], labels[labels >= 0])
    torch.testing.assert_close(model.modal_loss(out, labels, batch["mask"]), expected)


def test_l_modal_is_the_label_loss_and_the_plugin_leaves_the_loss_alone():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build()
    out = model(**inputs(batch))
    feature_loss = out.aux_loss.detach().clone()
    torch.testing.assert_close(model.label_loss(out, batch["labels"], batch["mask"]),
                               model.modal_loss(out, batch["labels"], batch["mask"]))
    plugin = model.training_plugins()[0]
    assert plugin.batch_loss(torch.zeros(batch["labels"].shape), out, batch, epoch=1) is None
    torch.testing.assert_close(out.aux_loss, feature_loss)


def test_whole_dialogue_context_by_default_causal_with_window_zero():
    dialogue = synthetic_dialogues(1, seed=3)[0]
    changed = DialogueFeatures(dialogue.dialogue_id, {m: x.copy() for m, x in dialogue.features.items()},
                               dialogue.mask.copy(), dialogue.speakers.copy(), dialogue.labels)
    changed.features["text"][-1] += 5.0
    for window, first_moves in ((None, True), (0, False)):
        torch.manual_seed(0)
        model = build_method("ada2i", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0,
                                                   future_window=window)).eval()
        a = model(**inputs(collate([dialogue]))).logits[0, 0]
        b = model(**inputs(collate([changed]))).logits[0, 0]
        assert (not torch.allclose(a, b)) == first_moves


def _text_only(dialogues: list[DialogueFeatures]) -> list[DialogueFeatures]:
    out = []
    for d in dialogues:
        mask = d.mask.copy()
        mask[:, 1:] = False
        out.append(DialogueFeatures(d.dialogue_id, {"text": d.features["text"]}, mask, d.speakers, d.labels))
    return out


def test_text_only_trains_without_modulation_or_nan():
    train, valid = _text_only(synthetic_dialogues(16, seed=4)), _text_only(synthetic_dialogues(4, seed=5))
    model = build(modulation_start=1)
    plugin = model.training_plugins()[0]
    model.training_plugins = lambda: [plugin]
    _, history = train_method(model, train, valid, IEMOCAP6, FitConfig(epochs=3, batch_size=8, lr=3e-3, patience=10),
                              progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert plugin.last == {}
    assert all(torch.isfinite(p).all() for p in model.parameters())
