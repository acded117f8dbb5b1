"""BALM's own behaviour (merc.models.methods.balm): feature calibration, the unimodal heads, the
KL-driven gradient rebalancing and its reaction to imbalanced missing rates, the spatial loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import DIMS, synthetic_dialogues

from merc.models.data.labels import IEMOCAP6
from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.balm import GradientRebalancing, discrepancies, unimodal_loss
from merc.models.methods.trainer import FitConfig, train_method

torch.set_num_threads(1)


def build(dims=DIMS, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("balm", MethodConfig(n_classes=6, dims=dims, hidden=32, dropout=0.0, options=options))


def inputs(batch: dict) -> dict:
    return {"features": batch["features"], "mask": batch["mask"], "speakers": batch["speakers"]}


def test_calibration_gates_present_features_and_is_causal():
    batch = collate(synthetic_dialogues(3, seed=1))
    model = build()
    calibrated = model.fcm(batch["features"], batch["mask"])
    for k, m in enumerate(("text", "audio", "face")):
        present = batch["mask"][..., k]
        assert (calibrated[m][~present] == 0).all()
        x, y = batch["features"][m][present], calibrated[m][present]
        gate = y[x.abs() > 1e-3] / x[x.abs() > 1e-3]
        assert ((gate > 0) & (gate < 2)).all()  # 2σ(·) ∈ (0, 2)
    later = {m: x.clone() for m, x in batch["features"].items()}
    for x in later.values():
        x[:, 3:] = torch.randn_like(x[:, 3:]) * 10
    moved = model.fcm(later, batch["mask"])
    for m in calibrated:
        torch.testing.assert_close(moved[m][:, :3], calibrated[m][:, :3])


def test_mu_attenuates_the_fastest_modality_and_sums_to_rho_times_n_minus_one():
    plugin = GradientRebalancing(rho=1.3, fast=0.5, slow=0.9, eps=1e-3)
    for step in range(30):  # text's KL falls fast, face's slowly, audio's rises (it lags)
        mu = plugin.update({"text": 1.0 - 0.03 * step, "audio": 0.2 + 0.01 * step, "face": 1.0 - 0.01 * step})
    assert mu["text"] < mu["face"] < mu["audio"] <= 1.3
    assert sum(mu.values()) == pytest.approx(1.3 * 2)
    still = GradientRebalancing(rho=1.3)
    for _ in range(5):  # nothing learning: every modality gets ρ (n − 1) / n
        mu = still.update({"text": 0.5, "audio": 0.5})
    assert mu == pytest.approx({"text": 0.65, "audio": 0.65})
    assert GradientRebalancing().update({"text": 0.4}) == {}  # one modality: nothing to rebalance


def test_rebalancing_scales_each_encoder_by_its_mu_and_nothing_else():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build().train()
    out = model(**inputs(batch))
    plugin = model.training_plugins()[0]
    (out.logits.logsumexp(-1).sum() + out.aux_loss + model.label_loss(out, batch["labels"], batch["mask"])).backward()
    plugin.averages = {"text": [0.1, 0.9], "audio": [0.5, 0.5], "face": [0.4, 0.6]}  # text learns fastest
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    plugin.after_backward(model, out, batch)
    mu = plugin.last
    assert mu["text"] < mu["face"] < mu["audio"]
    for name, p in model.named_parameters():
        if name not in grads:
            continue
        parts = name.split(".")
        factor = mu[parts[1]] if parts[0] == "encoders" else 1.0
        torch.testing.assert_close(p.grad, grads[name] * factor)
    torch.testing.assert_close(model.balance, torch.tensor([mu[m] / 1.3 for m in ("text", "audio", "face")]))


def test_unimodal_heads_learn_from_detached_features_only():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build().train()
    out = model(**inputs(batch))
    unimodal_loss(out, batch["labels"], batch["mask"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is None for p in model.fcm.parameters())


def test_absent_turns_do_not_count_in_heads_or_discrepancies():
    batch = collate(synthetic_dialogues(4, seed=1))
    model = build().eval()
    out = model(**inputs(batch))
    kl, ce = discrepancies(out, batch), unimodal_loss(out, batch["labels"], batch["mask"])
    absent = ~batch["mask"][..., 1]
    out.modality_logits["audio"] = torch.where(absent.unsqueeze(-1), torch.randn_like(out.logits) * 50,
                                               out.modality_logits["audio"])
    assert discrepancies(out, batch) == pytest.approx(kl)
    torch.testing.assert_close(unimodal_loss(out, batch["labels"], batch["mask"]), ce)


def test_spatial_loss_starts_at_zero_and_follows_the_balance():
    batch = collate(synthetic_dialogues(2, seed=1))
    model = build(tau=0.5)
    assert model(**inputs(batch)).aux_loss.item() == 0.0  # L_mod ← 0 before the first step
    model.balance.copy_(torch.tensor([1.0, 0.5, 0.0]))
    target = model.predict.weight.flatten()
    cos = [torch.nn.functional.cosine_similarity(model.heads[m].out.weight.flatten(), target, dim=0).item()
           for m in ("text", "audio")]
    expected = 0.5 * (abs(cos[0]) + 0.5 * abs(cos[1])) / 3
    assert model(**inputs(batch)).aux_loss.item() == pytest.approx(expected, rel=1e-5)


class Recording(GradientRebalancing):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[dict[str, float]] = []

    def after_backward(self, model, output, batch) -> None:
        super().after_backward(model, output, batch)
        self.history.append(dict(self.last))


def _two_equal_modalities(n: int, seed: int, rates: tuple[float, float, float]) -> list[DialogueFeatures]:
    """Audio and face carry the label equally well, text carries nothing; masks at `rates`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(4, 12))
        labels = rng.integers(0, 6, size=t)
        feats = {"text": rng.normal(size=(t, 8)),
                 "audio": np.eye(6)[labels] + rng.normal(scale=0.7, size=(t, 6)),
                 "face": np.eye(6)[labels] + rng.normal(scale=0.7, size=(t, 6))}
        mask = rng.random((t, 3)) >= np.array(rates)
        out.append(DialogueFeatures(f"d{i}", {m: x.astype(np.float32) for m, x in feats.items()}, mask,
                                    rng.integers(0, 2, size=t), labels))
    return out


@pytest.mark.parametrize("rates, lagging, dominant", [((0.0, 0.8, 0.0), "audio", "face"),
                                                      ((0.0, 0.0, 0.8), "face", "audio")])
def test_rebalancing_amplifies_the_modality_missing_more_often(rates, lagging, dominant):
    """Two equally informative modalities: the one missing at rate 0.8 lags (Lemma 1) and gets the
    larger μ on average over training; swapping the rates swaps the order."""
    dims = {"text": 8, "audio": 6, "face": 6}
    model = build(dims)
    recorder = Recording(model.rho, model.fast, model.slow, model.eps)
    model.training_plugins = lambda: [recorder]
    train_method(model, _two_equal_modalities(200, 0, rates), _two_equal_modalities(8, 99, rates), IEMOCAP6,
                 FitConfig(epochs=6, batch_size=8, lr=3e-3, patience=10), progress=False)
    mean = {m: np.mean([h[m] for h in recorder.history if m in h]) for m in (lagging, dominant)}
    assert mean[lagging] > mean[dominant] + 0.1, mean


def test_text_only_degrades_to_plain_training():
    def text_only(dialogues):
        return [DialogueFeatures(d.dialogue_id, {"text": d.features["text"]},
                                 np.stack([np.ones(len(d), bool), np.zeros(len(d), bool), np.zeros(len(d), bool)], 1),
                                 d.speakers, d.labels) for d in dialogues]

    model = build()
    recorder = Recording(model.rho)
    model.training_plugins = lambda: [recorder]
    _, history = train_method(model, text_only(synthetic_dialogues(16, seed=4)),
                              text_only(synthetic_dialogues(4, seed=5)), IEMOCAP6,
                              FitConfig(epochs=3, batch_size=8, lr=3e-3, patience=10), progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h == {} for h in recorder.history)
    assert (model.balance == 0).all()
