"""Mi-CGA (merc.models.methods.micga): feature estimation of missing blocks, its loss, the masks of
the causal variant, and that estimation is learned."""
from __future__ import annotations

import pytest
import torch
from test_methods import DIMS, audio_from_text_dialogues, synthetic_dialogues

from merc.models.features.dialogue import collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.micga import WindowedBiLSTM, allowed_pairs


def build(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    options = kw.pop("options", {})
    return build_method("micga", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, options=options, **kw))


def inputs(batch: dict) -> tuple:
    return batch["features"], batch["mask"], batch["speakers"]


def test_missing_blocks_are_estimated_and_observed_ones_kept():
    model = build().eval()
    batch = collate(synthetic_dialogues(3, seed=1))
    features, mask, speakers = inputs(batch)
    present = mask & (speakers >= 0)[..., None]
    with torch.no_grad():
        x_miss = model.encode(features, present, speakers)
        estimates = model.estimate(x_miss, allowed_pairs(speakers, None))
    audio = model.blocks[1]
    missing = ~mask[..., 1] & (speakers >= 0)
    assert missing.any() and mask[..., 1].any()
    assert (x_miss[..., audio][missing] == 0).all()  # Eq. 3.7: X ⊙ Ω
    est = estimates[1][missing]
    assert torch.isfinite(est).all() and est.abs().sum() > 0
    # X^FE as forward builds it: observed blocks unchanged, missing ones (1 - λ)·estimate
    coarse = torch.where(present[..., 1:2], x_miss[..., audio], estimates[1])
    x_fe = (1 - model.lam) * coarse + model.lam * x_miss[..., audio]
    torch.testing.assert_close(x_fe[mask[..., 1]], x_miss[..., audio][mask[..., 1]])
    torch.testing.assert_close(x_fe[missing], (1 - model.lam) * est)


def test_an_estimate_never_reads_its_own_block():
    """Block m of turn i is estimated without turn i's block m: changing it changes nothing."""
    model = build().eval()
    batch = collate(synthetic_dialogues(1, seed=2))
    features, mask, speakers = inputs(batch)
    mask = torch.ones_like(mask)
    with torch.no_grad():
        x_miss = model.encode(features, mask, speakers)
        allowed = allowed_pairs(speakers, None)
        before = model.estimate(x_miss, allowed)
        changed = x_miss.clone()
        changed[0, 2, model.blocks[1]] += 5.0  # audio of turn 2
        after = model.estimate(changed, allowed)
    torch.testing.assert_close(before[1][0, 2], after[1][0, 2])
    assert not torch.allclose(before[1][0, 3], after[1][0, 3])  # a neighbour's estimate reads it
    assert not torch.allclose(before[0][0, 2], after[0][0, 2])  # so does the turn's text estimate


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_reconstruction_loss_is_positive_with_observed_blocks(loss):
    model = build(options={"loss": loss})
    out = model(*inputs(collate(synthetic_dialogues(3, seed=3))))
    assert out.aux_loss.dim() == 0 and out.aux_loss > 0
    out.aux_loss.backward()
    assert model.fe_decoder[1].weight.grad.abs().sum() > 0 or loss == "kl"


def test_no_observed_block_gives_zero_mse_loss_and_none_gives_zero():
    batch = collate(synthetic_dialogues(2, seed=4))
    features, mask, speakers = inputs(batch)
    out = build()(features, torch.zeros_like(mask), speakers)
    assert out.aux_loss == 0 and torch.isfinite(out.logits).all()
    assert build(options={"loss": "none"})(features, mask, speakers).aux_loss == 0
    with pytest.raises(ValueError, match="loss must be"):
        build(options={"loss": "l1"})


def test_hidden_text_is_never_read():
    batch = collate(synthetic_dialogues(3, seed=5))
    features, mask, speakers = inputs(batch)
    mask = mask.clone()
    mask[0, 1, 0] = mask[1, 3, 0] = False
    model = build().eval()
    before = model(features, mask, speakers).logits
    scrambled = {m: x.clone() for m, x in features.items()}
    scrambled["text"][~mask[..., 0]] = 100.0
    torch.testing.assert_close(before, model(scrambled, mask, speakers).logits)


def test_text_only_inputs_work():
    batch = collate(synthetic_dialogues(3, seed=6))
    features, mask, speakers = inputs(batch)
    mask = mask.clone()
    mask[..., 1:] = False
    for model in (build().eval(), build(future_window=0).eval()):
        out = model({"text": features["text"]}, mask, speakers)
        assert torch.isfinite(out.logits).all() and out.aux_loss > 0  # text blocks are reconstructed


def test_causal_masks():
    speakers = torch.tensor([[0, 1, 0, -1]])
    allowed = allowed_pairs(speakers, 0)[0]
    assert allowed.tolist() == [[True, False, False, False], [True, True, False, False],
                                [True, True, True, False], [False, False, False, True]]  # padding: itself only
    assert allowed_pairs(speakers, None)[0, 0].tolist() == [True, True, True, False]


@pytest.mark.parametrize("future, sees", [(None, [True, True, True]), (0, [False, False, False]),
                                          (1, [True, False, False])])
def test_backward_lstm_window(future, sees):
    """Does turn 1's output change when turn j (2, 3, 4) changes? Turn 5 and later are padding."""
    torch.manual_seed(0)
    lstm = WindowedBiLSTM(3, 8, future).eval()
    x = torch.randn(2, 7, 3)
    x[0, 5:] = 0
    lengths = torch.tensor([5, 7])
    with torch.no_grad():
        base = lstm(x, lengths)
        out = []
        for j in (2, 3, 4):
            y = x.clone()
            y[0, j] += 1.0
            out.append(not torch.allclose(lstm(y, lengths)[0, 1], base[0, 1]))
        alone = lstm(x[:1, :5], lengths[:1])
    assert out == sees
    torch.testing.assert_close(alone[0], base[0, :5])  # padding never reaches a real turn


def test_the_reconstruction_loss_teaches_estimation():
    """Audio is a function of text: after training on L_rct (observed blocks only), the FE estimate
    of a hidden audio block is close to the encoding of the true audio (relative to that encoding's
    spread), far closer than before."""
    train = audio_from_text_dialogues(40, seed=7)
    test = collate(train[:10])
    features, mask, speakers = inputs(test)
    hide = torch.zeros_like(mask)
    hide[..., 0] = mask[..., 0]
    hide[..., 1] = mask[..., 1] & (torch.arange(mask.shape[1]) % 2 == 0)  # audio of odd turns hidden
    hidden_turns = mask[..., 1] & ~hide[..., 1] & (speakers >= 0)

    def error(model) -> float:
        model.eval()
        with torch.no_grad():
            estimates = model.estimate(model.encode(features, hide, speakers), allowed_pairs(speakers, None))
            truth = model.encoders["audio"](features["audio"])[hidden_turns]
            est = (1 - model.lam) * estimates[1][hidden_turns]
        return float((est - truth).pow(2).sum(-1).mean() / (truth - truth.mean(0)).pow(2).sum(-1).mean())

    torch.set_num_threads(1)
    model = build()
    before = error(model)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _epoch in range(20):
        for start in range(0, len(train), 8):
            loss = model(*inputs(collate(train[start:start + 8]))).aux_loss
            optim.zero_grad()
            loss.backward()
            optim.step()
    after = error(model)
    assert after < 0.3 and after < 0.2 * before, (before, after)
