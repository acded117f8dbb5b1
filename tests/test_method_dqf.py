"""DQF's own behaviour (merc.models.methods.dqf): the two sets of learnable queries, outputs for
every subset of modalities, training on incomplete inputs through the mask only, the seven
granularity heads, and how far ahead a turn may look."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_methods import DIMS, synthetic_dialogues

from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.base import per_turn_loss
from merc.models.methods.dqf import GRANULARITIES

HIDDEN = 32


def build(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    options = kw.pop("options", {})
    return build_method("dqf", MethodConfig(n_classes=6, dims=DIMS, hidden=HIDDEN, dropout=0.0, options=options, **kw))


@pytest.fixture(scope="module")
def batch():
    return collate(synthetic_dialogues(5, seed=8))


def test_queries_and_heads_have_the_papers_shapes(batch):
    model = build(options={"max_turns": 40, "layers": 2}).eval()
    for m in ("text", "audio", "face"):  # Q_m: one row per sequence position, d wide (Eq. 3)
        assert model.unimodal[m].query.shape == (40, HIDDEN)
        assert len(model.unimodal[m].updates) == len(model.unimodal[m].blocks) == 2
    assert {k: tuple(q.shape) for k, q in model.pair_query.items()} == {  # Q_ab shared per pair (Eq. 5)
        "text+audio": (40, HIDDEN), "text+face": (40, HIDDEN), "audio+face": (40, HIDDEN)}
    out = model(batch["features"], batch["mask"], batch["speakers"])
    b, t = batch["speakers"].shape
    assert GRANULARITIES == ("text", "audio", "face", "text+audio", "text+face", "audio+face", "text+audio+face")
    assert set(out.head_logits) == set(GRANULARITIES) and out.aux_loss is None
    assert all(x.shape == (b, t, 6) for x in out.head_logits.values())
    assert set(out.modality_logits) == {"text", "audio", "face"}


@pytest.mark.parametrize("present", list(itertools.product([False, True], repeat=3)))
def test_output_is_defined_for_every_subset_of_modalities(present, batch):
    model = build().eval()
    mask = batch["mask"] & torch.tensor(present)
    features = {m: batch["features"][m] for k, m in enumerate(("text", "audio", "face")) if present[k]}
    out = model(features, mask, batch["speakers"])
    assert all(torch.isfinite(x).all() for x in (out.logits, *out.head_logits.values()))
    # the same outputs whether the hidden modalities' arrays are missing or scrambled behind the mask
    scrambled = {m: x if m in features else torch.randn_like(x) * 1e3 for m, x in batch["features"].items()}
    torch.testing.assert_close(out.logits, model(scrambled, mask, batch["speakers"]).logits)


def test_training_hides_modalities_through_the_mask_only(batch):
    model = build().train()
    scrambled = {m: x.clone() for m, x in batch["features"].items()}
    for k, m in enumerate(("text", "audio", "face")):
        scrambled[m][~batch["mask"][..., k]] = 1e3
    torch.manual_seed(3)
    a = model(batch["features"], batch["mask"], batch["speakers"]).logits
    torch.manual_seed(3)
    b = model(scrambled, batch["mask"], batch["speakers"]).logits
    torch.testing.assert_close(a, b)  # same draw of hidden turns: unmasked values still never read
    eval_logits = model.eval()(batch["features"], batch["mask"], batch["speakers"]).logits
    assert not torch.allclose(a, eval_logits)  # training saw an incomplete version
    quiet = build(options={"train_missing": False}).train()
    torch.testing.assert_close(quiet(batch["features"], batch["mask"], batch["speakers"]).logits, eval_logits)


def test_turn_loss_adds_all_seven_granularity_losses(batch):
    model = build().eval()
    out = model(batch["features"], batch["mask"], batch["speakers"])
    labels = batch["labels"]
    expected = per_turn_loss(out.logits, labels) + sum(per_turn_loss(out.head_logits[g], labels) for g in GRANULARITIES)
    torch.testing.assert_close(model.turn_loss(out, labels), expected)


def test_turns_beyond_the_query_table_share_its_last_row():
    dialogues = synthetic_dialogues(3, seed=2)
    model = build(options={"max_turns": 3}).eval()
    alone = model(**_inputs(dialogues[:1])).logits[0]
    together = model(**_inputs(dialogues)).logits[0, :len(dialogues[0])]
    assert len(dialogues[0]) > 3 and torch.isfinite(together).all()
    torch.testing.assert_close(alone, together, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [1, 5])
def test_future_window_zero_is_causal_with_any_kernel(kernel):
    _check_reach(build(future_window=0, options={"kernel": kernel}), reach=0)


def test_future_window_one_reaches_two_turns_with_one_layer():
    _check_reach(build(future_window=1), reach=2)  # Q-UA then Q-CA: (3L - 1)·w


def _check_reach(model, reach: int) -> None:
    model.eval()
    d = next(d for d in synthetic_dialogues(10, seed=3) if len(d) >= 9)
    cut = 5
    features = {m: x.copy() for m, x in d.features.items()}
    for x in features.values():
        x[cut:] = np.random.default_rng(9).normal(size=x[cut:].shape)
    changed = DialogueFeatures(d.dialogue_id, features, d.mask.copy(), d.speakers.copy(), d.labels)
    full, other = model(**_inputs([d])).logits[0], model(**_inputs([changed])).logits[0]
    torch.testing.assert_close(full[:cut - reach], other[:cut - reach])
    if reach:
        assert not torch.allclose(full[cut - reach:cut], other[cut - reach:cut])
    assert not torch.allclose(full[cut:], other[cut:])


def _inputs(dialogues) -> dict:
    b = collate(dialogues)
    return {"features": b["features"], "mask": b["mask"], "speakers": b["speakers"]}
