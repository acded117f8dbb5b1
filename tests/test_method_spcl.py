"""SPCL's self-paced curriculum (merc.models.methods.spcl) as a plug-in for any method: pacing,
difficulty, easier turns first, fall-backs without unimodal logits, and training with MultiDAG and
Ada2I through `train_method`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_methods import DIMS, synthetic_dialogues

from merc.models.data.labels import IEMOCAP6
from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import MethodConfig, MethodOutput, build_method, build_plugin
from merc.models.methods.base import per_turn_loss
from merc.models.methods.spcl import SelfPacedCurriculum
from merc.models.methods.trainer import (
    FitConfig,
    predict_method,
    train_method,
)

torch.set_num_threads(1)


def batch_and_output(seed: int = 1, n: int = 6,
                     with_modalities: bool = True) -> tuple[dict, MethodOutput, torch.Tensor]:
    batch = collate(synthetic_dialogues(n, seed=seed))
    g = torch.Generator().manual_seed(seed)
    shape = (*batch["labels"].shape, 6)
    logits = torch.randn(shape, generator=g) * 2
    modality = {m: torch.randn(shape, generator=g) * 2 for m in ("text", "audio", "face")} if with_modalities else {}
    output = MethodOutput(logits, None, modality)
    return batch, output, per_turn_loss(logits, batch["labels"])


def test_threshold_grows_exponentially_from_epsilon():
    spcl = SelfPacedCurriculum(epsilon=0.6, growth=1.2)
    assert spcl.threshold(1) == pytest.approx(0.6)
    assert spcl.threshold(4) == pytest.approx(0.6 * 1.2 ** 3)
    defaults = build_plugin("spcl")
    assert (defaults.epsilon, defaults.growth, defaults.regularizer) == (0.8, 1.1, "hard")


def test_difficulty_is_the_harmonic_mean_of_loss_and_imbalance():
    labels = torch.tensor([[0, 1, -1]])
    batch = {"labels": labels, "mask": torch.ones(1, 3, 3, dtype=torch.bool), "speakers": torch.tensor([[0, 1, -1]])}
    sure, unsure = torch.tensor([5.0, 0, 0, 0, 0, 0]), torch.zeros(6)
    text = torch.stack([sure, sure.roll(1), unsure])[None]
    flat = torch.zeros(1, 3, 6)
    output = MethodOutput(torch.zeros(1, 3, 6), None, {"text": text, "audio": flat, "face": flat})
    per_turn = torch.tensor([[0.5, 2.0, 0.0]])
    p = math.exp(5) / (math.exp(5) + 5)
    s = float(torch.tensor([2 * p, 2 / 6, 2 / 6]).std())  # Eq. 4.25–4.26: sums over 2 labelled turns
    rho, alone = SelfPacedCurriculum().difficulty(per_turn, output, batch)
    assert not alone.any()
    assert rho[0, 0].item() == pytest.approx(2 * s * 0.5 / (s + 0.5), rel=1e-5)
    assert rho[0, 1].item() == pytest.approx(2 * s * 2.0 / (s + 2.0), rel=1e-5)


def test_easier_turns_first_and_the_selection_only_grows():
    batch, output, per_turn = batch_and_output()
    spcl = SelfPacedCurriculum(epsilon=0.3, growth=1.3)
    rho, alone = spcl.difficulty(per_turn, output, batch)
    labelled = batch["labels"] >= 0
    previous = torch.zeros_like(rho)
    counts = []
    for epoch in range(1, 12):
        v = spcl.weights(rho, alone, labelled, epoch)
        assert (v >= previous).all()
        chosen, left = rho[(v > 0) & labelled], rho[(v == 0) & labelled]
        if len(chosen) and len(left):
            assert chosen.max() <= left.min()  # every selected turn is easier than every other
        counts.append(int(v.sum()))
        previous = v
    assert counts[0] < counts[-1] and counts == sorted(counts)


def test_batch_loss_averages_the_selected_turns_only():
    batch, output, per_turn = batch_and_output()
    spcl = SelfPacedCurriculum(epsilon=0.5)
    v = spcl.weights(*spcl.difficulty(per_turn, output, batch), batch["labels"] >= 0, 1)
    loss = spcl.batch_loss(per_turn, output, batch, epoch=1)
    assert loss.item() == pytest.approx(float((per_turn * v).sum() / v.sum()), rel=1e-6)
    assert spcl.selected_fraction(1) == pytest.approx(float(v.sum() / (batch["labels"] >= 0).sum()))
    none = SelfPacedCurriculum(epsilon=1e-9).batch_loss(per_turn, output, batch, epoch=1)
    assert none.item() == 0.0 and torch.isfinite(none)


def test_soft_regularizers_weight_easier_turns_more():
    rho = torch.linspace(0, 5, 11)
    for name in ("linear", "logistic"):
        v = SelfPacedCurriculum(epsilon=2.0, regularizer=name).regularize(rho, 2.0)
        assert ((v >= 0) & (v <= 1 + 1e-6)).all() and (v[1:] <= v[:-1]).all()
    with pytest.raises(ValueError, match="unknown regularizer"):
        SelfPacedCurriculum(regularizer="nope")


def test_falls_back_to_the_loss_paced_by_competence_without_unimodal_evidence():
    spcl = SelfPacedCurriculum(total_epochs=4)
    cases = [batch_and_output(with_modalities=False)]  # e.g. MultiDAG
    batch, output, per_turn = batch_and_output()
    batch["mask"][..., 1:] = False  # text only: one modality, no imbalance to measure
    cases.append((batch, output, per_turn))
    for batch, output, per_turn in cases:
        rho, alone = spcl.difficulty(per_turn, output, batch)
        torch.testing.assert_close(rho, per_turn)  # Table 4.7, "w/o conv-score"
        assert alone.all()
        labelled = batch["labels"] >= 0
        fractions = []
        for epoch in range(1, 6):
            v = spcl.weights(rho, alone, labelled, epoch)
            chosen, left = rho[(v > 0) & labelled], rho[(v == 0) & labelled]
            if len(left):
                assert chosen.max() <= left.min()
            fractions.append(float(v.sum() / labelled.sum()))
            assert fractions[-1] == pytest.approx(spcl.competence(epoch), abs=2 / labelled.sum().item())
        assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == 1.0
    batch, output, per_turn = batch_and_output()
    assert SelfPacedCurriculum(conversation_score=False).difficulty(per_turn, output, batch)[1].all()
    assert SelfPacedCurriculum(total_epochs=30).competence(1) == pytest.approx(math.sqrt((1 - 1e-4) / 30 + 1e-4))


def test_absent_turns_do_not_count_in_the_imbalance():
    batch, output, per_turn = batch_and_output()
    spcl = SelfPacedCurriculum()
    before = spcl.difficulty(per_turn, output, batch)[0]
    absent = ~batch["mask"][..., 2]
    output.modality_logits["face"] = torch.where(absent.unsqueeze(-1), torch.randn_like(output.logits) * 50,
                                                 output.modality_logits["face"])
    torch.testing.assert_close(spcl.difficulty(per_turn, output, batch)[0], before)
    assert torch.isfinite(before).all()


def test_spcl_trains_multidag_and_lowers_the_loss():
    train, valid = synthetic_dialogues(24, seed=4), synthetic_dialogues(8, seed=5)
    torch.manual_seed(0)
    model = build_method("multidag", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0))
    gold, _, probs = predict_method(model, train)
    before = float(-np.log(probs[np.arange(len(gold)), gold]).mean())
    spcl = build_plugin("spcl", total_epochs=3)
    _, history = train_method(model, train, valid, IEMOCAP6, FitConfig(epochs=6, batch_size=8, lr=3e-3, patience=10),
                              plugins=[spcl], progress=False)
    fractions = [spcl.selected_fraction(h["epoch"]) for h in history]
    assert 0 < fractions[0] < fractions[1] < 1 and fractions[2:] == [1.0] * 4
    assert not spcl.pool_complete(1) and spcl.pool_complete(3)
    # from epoch 3 on every turn counts: the loss is the plain mean cross-entropy, below the start
    assert history[-1]["train_loss"] < history[2]["train_loss"] and history[-1]["train_loss"] < before - 0.3


def test_spcl_with_a_balancing_method_uses_its_unimodal_logits():
    train, valid = synthetic_dialogues(16, seed=4), synthetic_dialogues(4, seed=5)
    torch.manual_seed(0)
    model = build_method("ada2i", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0))
    batch = collate(train[:4])
    output = model(batch["features"], batch["mask"], batch["speakers"])
    assert SelfPacedCurriculum().imbalance(output, batch) is not None
    spcl = SelfPacedCurriculum(epsilon=0.6, growth=1.4)
    _, history = train_method(model, train, valid, IEMOCAP6, FitConfig(epochs=3, batch_size=8, lr=3e-3, patience=10),
                              plugins=[spcl], progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert spcl.selected_fraction(3) >= spcl.selected_fraction(1) > 0


def test_text_only_dialogues_train():
    dialogues = [DialogueFeatures(d.dialogue_id, {"text": d.features["text"]},
                                  np.stack([np.ones(len(d), bool), np.zeros(len(d), bool), np.zeros(len(d), bool)], 1),
                                  d.speakers, d.labels) for d in synthetic_dialogues(12, seed=6)]
    torch.manual_seed(0)
    model = build_method("balm", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0))
    _, history = train_method(model, dialogues, dialogues[:4], IEMOCAP6,
                              FitConfig(epochs=2, batch_size=6, lr=3e-3, patience=10),
                              plugins=[SelfPacedCurriculum()], progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in history)
