"""GSDNet (merc.models.methods.gsdnet): the spectral operator, the diffusion schedule and sampler,
feature recovery of missing modalities and its losses, and the per-turn graphs of the causal variant."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import DIMS, audio_from_text_dialogues, synthetic_dialogues

from merc.models.features.dialogue import DialogueFeatures, collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.base import per_turn_loss
from merc.models.methods.gsdnet import (
    graph_views,
    positional_encoding,
    rebuild,
    similarity_graph,
    spectrum,
    vp_schedule,
)
from merc.models.methods.trainer import mean_loss


def build(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("gsdnet", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, **kw))


def inputs(batch: dict) -> tuple:
    return batch["features"], batch["mask"], batch["speakers"]


A3 = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])


def test_spectral_operator_on_three_nodes():
    """A = U Λ Uᵀ; diffusing Λ keeps U: U diag(λ') Uᵀ has eigenvectors U and eigenvalues λ'."""
    lam, vec = spectrum(A3, torch.ones(3, dtype=torch.bool))
    np.testing.assert_allclose(lam.numpy(), np.sort(np.linalg.eigvalsh(A3.numpy()))[::-1], atol=1e-5)
    torch.testing.assert_close(rebuild(vec, lam), A3, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vec.T @ vec, torch.eye(3), atol=1e-5, rtol=1e-5)
    noisy = lam + torch.tensor([0.3, -0.1, 0.05])
    a_noisy = rebuild(vec, noisy)
    torch.testing.assert_close(a_noisy @ vec, vec * noisy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_noisy, a_noisy.T)


def test_a_view_inside_padding_has_the_same_spectrum():
    padded = torch.zeros(5, 5)
    padded[:3, :3] = A3
    view = torch.tensor([True, True, True, False, False])
    lam, vec = spectrum(padded, view)
    small, _ = spectrum(A3, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(lam[:3], small, atol=1e-5, rtol=1e-5)
    assert (lam[3:] == 0).all() and (vec[:, 3:] == 0).all() and vec[3:, :3].abs().max() < 1e-5
    torch.testing.assert_close(rebuild(vec, lam), padded, atol=1e-5, rtol=1e-5)
    empty_lam, empty_vec = spectrum(padded, torch.zeros(5, dtype=torch.bool))
    assert (empty_lam == 0).all() and (empty_vec == 0).all()


def test_similarity_graph():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    c = 2 ** -0.5
    torch.testing.assert_close(similarity_graph(x), torch.tensor([[1, c, 0], [c, 1, 0], [0, 0, 1.0]]))


def test_vp_schedule_and_positional_encoding():
    a0, s0 = vp_schedule(0.0, 0.1, 20.0)
    assert float(a0) == 1 and float(s0) == 0
    t = torch.linspace(0, 1, 11)
    a, s = vp_schedule(t, 0.1, 20.0)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones(11))
    assert (a[1:] < a[:-1]).all() and a[-1] < 0.01  # X(1) is close to the N(0, I) prior
    pe = positional_encoding(4, 6)
    assert pe[0].tolist() == [0, 1, 0, 1, 0, 1]
    assert pe[2, 0] == pytest.approx(np.sin(2)) and pe[2, 3] == pytest.approx(np.cos(2 / 10000 ** (2 / 6)))


def test_views_of_the_causal_variant_are_prefixes():
    speakers = torch.tensor([[0, 1, 0, -1]])
    assert graph_views(speakers, 0)[0].tolist() == [[True, False, False, False], [True, True, False, False],
                                                    [True, True, True, False], [False, False, False, False]]
    assert graph_views(speakers, 1)[0, 0].tolist() == [True, True, False, False]
    assert graph_views(speakers, None).tolist() == [[[True, True, True, False]]]


def test_turn_t_graph_has_no_later_turn_with_future_window_zero():
    model = build(future_window=0).eval()
    batch = collate(synthetic_dialogues(2, seed=1))
    features, mask, speakers = inputs(batch)
    present = mask & (speakers >= 0)[..., None]
    with torch.no_grad():
        completed, _, _ = model.recover_features(features, model.encode(features, present), present.permute(2, 0, 1))
        view = graph_views(speakers, 0)
        adj, _ = model.recover_graph(completed, present.permute(2, 0, 1), view)
    t = speakers.shape[1]
    v, i, j = torch.meshgrid(torch.arange(t), torch.arange(t), torch.arange(t), indexing="ij")
    assert (adj[:, (i > v) | (j > v)] == 0).all()  # view v (turn v's graph) has no edge to a later turn
    assert (adj[:, (i <= v) & (j <= v) & (i != j)] > 0).any()
    assert torch.isfinite(adj).all() and (adj >= 0).all()


def test_missing_features_are_recovered_and_observed_ones_kept():
    model = build().eval()
    batch = collate(synthetic_dialogues(3, seed=2))
    features, mask, speakers = inputs(batch)
    present = mask & (speakers >= 0)[..., None]
    here = present.permute(2, 0, 1)
    with torch.no_grad():
        x = model.encode(features, present)
        completed, generated, _ = model.recover_features(features, x, here)
        decoded = model.feature_decoder[1](generated[1])
    assert (~here[1] & (speakers >= 0)).any()
    torch.testing.assert_close(completed[here], x[here])
    torch.testing.assert_close(completed[~here], generated[~here])
    assert torch.isfinite(generated).all() and torch.isfinite(decoded).all() and decoded.shape[-1] == DIMS["audio"]


def test_predictions_are_deterministic():
    """The sampler starts from the prior's mean with no fresh noise: the same input gives the same output."""
    model = build()
    batch = collate(synthetic_dialogues(3, seed=3))
    first, second = model(*inputs(batch)), model(*inputs(batch))
    torch.testing.assert_close(first.logits, second.logits)
    assert first.aux_loss is not None and model.eval()(*inputs(batch)).aux_loss is None


def test_aux_loss_is_zero_with_nothing_present_and_positive_otherwise():
    model = build()
    batch = collate(synthetic_dialogues(3, seed=4))
    features, mask, speakers = inputs(batch)
    nothing = model(features, torch.zeros_like(mask), speakers)
    assert nothing.aux_loss == 0 and torch.isfinite(nothing.logits).all()
    out = model(features, mask, speakers)
    assert out.aux_loss > 0
    out.aux_loss.backward()
    assert model.feature_decoder[1][0].weight.grad.abs().sum() > 0


def test_spectral_losses_come_from_complete_graphs_only():
    """Audio present at every turn: its graph is known, so the eigenvalue networks get a loss; the
    same batch with one audio turn hidden in every dialogue (no complete audio graph, face absent
    and text complete) gives the eigenvalue networks a loss through the text graph only."""
    batch = collate(synthetic_dialogues(3, seed=5))
    features, mask, speakers = inputs(batch)
    full = mask.clone()
    full[..., :2] = speakers[..., None] >= 0
    full[..., 2] = False
    model = build()
    model(features, full, speakers).aux_loss.backward()
    grads_full = model.spectral_score.cond.grad.clone()
    assert grads_full[0].abs().sum() > 0 and grads_full[1].abs().sum() > 0 and grads_full[2].abs().sum() == 0
    holes = full.clone()
    holes[:, 0, 1] = False
    model.zero_grad()
    model(features, holes, speakers).aux_loss.backward()
    grads = model.spectral_score.cond.grad
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() == 0 and grads[2].abs().sum() == 0


def test_text_only_inputs_work():
    batch = collate(synthetic_dialogues(3, seed=6))
    features, mask, speakers = inputs(batch)
    mask = mask.clone()
    mask[..., 1:] = False
    for future in (None, 0):
        out = build(future_window=future)({"text": features["text"]}, mask, speakers)
        assert torch.isfinite(out.logits).all() and out.aux_loss > 0


def test_estimation_improves_with_training():
    """Audio is a function of text: after a few epochs of the full loss, the decoded recovery of a
    hidden audio turn is close to the true audio (relative to its spread), far closer than before."""
    train = audio_from_text_dialogues(40, seed=7)
    features, mask, speakers = inputs(collate(train[:10]))
    hide = mask.clone()
    hide[..., 1] = mask[..., 1] & (torch.arange(mask.shape[1]) % 2 == 0)  # audio of odd turns hidden
    hidden_turns = mask[..., 1] & ~hide[..., 1] & (speakers >= 0)

    def error(model) -> float:
        model.eval()
        with torch.no_grad():
            present = hide & (speakers >= 0)[..., None]
            x = model.encode(features, present)
            _, generated, _ = model.recover_features(features, x, present.permute(2, 0, 1))
            est, truth = model.feature_decoder[1](generated[1][hidden_turns]), features["audio"][hidden_turns]
        return float((est - truth).pow(2).sum(-1).mean() / (truth - truth.mean(0)).pow(2).sum(-1).mean())

    torch.set_num_threads(1)
    model = build()
    before = error(model)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(20):
        model.train()
        for start in range(0, len(train), 8):
            batch = collate(train[start:start + 8])
            out = model(*inputs(batch))
            loss = mean_loss(per_turn_loss(out.logits, batch["labels"]), batch["labels"]) + out.aux_loss
            optim.zero_grad()
            loss.backward()
            optim.step()
    after = error(model)
    assert after < 0.3 and after < 0.3 * before, (before, after)


def test_the_causal_variant_is_the_offline_model_run_live():
    """With future_window=0, turn t's output is what the offline model (same weights) gives the
    last turn of the dialogue cut after t: its graph, spectrum and GCN are those of turns ≤ t.
    (kernel 1, so that the two encoders align alike.)"""
    torch.manual_seed(0)
    live = build_method("gsdnet", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, future_window=0,
                                               options={"kernel": 1})).eval()
    offline = build_method("gsdnet", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0,
                                                  options={"kernel": 1})).eval()
    offline.load_state_dict(live.state_dict())
    d = synthetic_dialogues(1, seed=8)[0]
    full = live(*inputs(collate([d]))).logits[0]
    for t in range(len(d)):
        cut = DialogueFeatures(d.dialogue_id, {m: x[:t + 1] for m, x in d.features.items()}, d.mask[:t + 1],
                               d.speakers[:t + 1], d.labels[:t + 1])
        torch.testing.assert_close(offline(*inputs(collate([cut]))).logits[0, t], full[t], atol=1e-4, rtol=1e-4)
