"""CORECT-specific behaviour (merc.models.methods.corect): the RT-GCN graph follows Eq. 2.5-2.6 on
hand-made dialogues, missing modalities have no nodes, P-CM masking, and the future window."""
from __future__ import annotations

import pytest
import torch
from test_methods import DIMS, synthetic_dialogues

from merc.models.features.dialogue import collate
from merc.models.methods import MethodConfig, build_method
from merc.models.methods.base import time_window
from merc.models.methods.corect import RELATIONS, AttentionBlock, build_graph


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    options = kw.pop("options", {})
    return build_method("corect", MethodConfig(n_classes=6, dims=DIMS, hidden=32, dropout=0.0, options=options,
                                               **kw)).eval()


def edges(exists: torch.Tensor, past: int | None, future: int) -> set[tuple]:
    """The graph as {(dialogue, src turn, src modality, dst turn, dst modality, relation name)}."""
    where = exists.nonzero().tolist()  # node k -> (b, t, m)
    edge_index, edge_type = build_graph(exists, past, future)
    out = set()
    for s, d, r in zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_type.tolist()):
        (bs, ts, ms), (bd, td, md) = where[s], where[d]
        assert bs == bd, "an edge joins two dialogues"
        out.add((bs, ts, ms, td, md, RELATIONS[r]))
    return out


def expected(exists: torch.Tensor, past: int, future: int) -> set[tuple]:
    """Eq. 2.5-2.6 written out turn by turn: self-loops, cross-modal links inside a turn, and
    same-modality links from the P previous and F next turns."""
    names = ("text", "audio", "face")
    out = set()
    b, t, m = exists.shape
    for d in range(b):
        for i in range(t):
            for a in range(m):
                if not exists[d, i, a]:
                    continue
                out.add((d, i, a, i, a, f"self:{names[a]}"))
                for c in range(m):
                    if c != a and exists[d, i, c]:
                        out.add((d, i, c, i, a, f"cross:{names[c]}->{names[a]}"))
                for j in range(t):
                    if exists[d, j, a] and i - past <= j < i:
                        out.add((d, j, a, i, a, f"past:{names[a]}"))
                    if exists[d, j, a] and i < j <= i + future:
                        out.add((d, j, a, i, a, f"future:{names[a]}"))
    return out


def test_fifteen_relations():
    assert len(RELATIONS) == len(set(RELATIONS)) == 15
    assert sum(r.startswith("cross:") for r in RELATIONS) == 6
    assert sum(r.startswith(("past:", "future:")) for r in RELATIONS) == 6


def test_graph_edges_follow_the_window_rule():
    # one dialogue of 5 turns: text everywhere, audio at turns 0, 2, 3, face nowhere
    exists = torch.zeros(1, 5, 3, dtype=torch.bool)
    exists[0, :, 0] = True
    exists[0, [0, 2, 3], 1] = True
    got = edges(exists, past=2, future=1)
    assert got == expected(exists, 2, 1)
    into_text_2 = {(ts, r) for _, ts, ms, td, md, r in got if (td, md) == (2, 0)}
    assert into_text_2 == {(2, "self:text"), (0, "past:text"), (1, "past:text"), (3, "future:text"),
                           (2, "cross:audio->text")}
    into_audio_3 = {(ts, r) for _, ts, ms, td, md, r in got if (td, md) == (3, 1)}
    assert into_audio_3 == {(3, "self:audio"), (2, "past:audio"), (3, "cross:text->audio")}  # no audio at turn 1
    assert not any(2 in (ms, md) for _, _, ms, _, md, _ in got), "face is absent: no face node, no face edge"


def test_graph_of_a_batch_is_the_union_of_its_dialogues():
    batch = collate(synthetic_dialogues(3, seed=7))
    exists = batch["mask"] & (batch["speakers"] >= 0)[..., None]
    assert edges(exists, 3, 2) == expected(exists, 3, 2)
    assert edges(exists, None, 0) == expected(exists, exists.shape[1], 0)
    assert not any(r.startswith("future") for *_, r in edges(exists, 11, 0))


def test_future_window_sets_the_graph_and_attention_windows():
    assert model().graph_future == 9 and model().attend_future is None
    assert model(future_window=0).graph_future == 0
    assert model(future_window=3).graph_future == 3 and model(future_window=3).attend_future == 3
    assert model(future_window=30).graph_future == 9
    assert model(options={"future": 4, "past": 5}).graph_future == 4


def test_turn_zero_sees_later_turns_only_without_the_causal_limit():
    dialogue = synthetic_dialogues(1, seed=3)[0]
    changed = collate([dialogue])
    original = collate([dialogue])
    changed["features"]["text"][0, 3:] += 3.0  # only later turns change
    for window, sees in ((None, True), (0, False)):
        net = model(future_window=window)
        a = net(original["features"], original["mask"], original["speakers"]).logits[0, 0]
        b = net(changed["features"], changed["mask"], changed["speakers"]).logits[0, 0]
        assert (not torch.allclose(a, b, atol=1e-5)) == sees, window


def test_p_cm_reads_only_allowed_keys_and_leaves_keyless_queries_to_their_residual():
    torch.manual_seed(0)
    block = AttentionBlock(8, 2, 2).eval()
    z, x = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    allowed = torch.tensor([[[True, False, False, False], [True, True, False, False],
                             [False, False, False, False], [True, True, True, False]]])
    out = block(z, x, allowed)
    x2 = x.clone()
    x2[0, 3] = torch.randn(8) * 100  # key 3 is allowed for no query
    torch.testing.assert_close(out, block(z, x2, allowed))
    keyless = z[0, 2] + block.ffn(block.norm_ff(z[0, 2]))
    torch.testing.assert_close(out[0, 2], keyless)
    none = block(z, x, torch.zeros_like(allowed))  # no key anywhere: residual and FFN only, no NaN
    torch.testing.assert_close(none, z + block.ffn(block.norm_ff(z)))


def test_p_cm_is_masked_by_the_time_window():
    net = model(future_window=0)
    x = torch.randn(2, 5, 3, 32)
    present = torch.ones(2, 5, 3, dtype=torch.bool)
    window = time_window(5, 0)
    out = net.cross_modal(x, present, window)
    x2 = x.clone()
    x2[:, 2:] = torch.randn_like(x2[:, 2:])
    torch.testing.assert_close(out[:, :2], net.cross_modal(x2, present, window)[:, :2])
    assert out.shape == (2, 5, 6 * 32)


def test_a_missing_modality_has_no_node_only_its_absence_vector():
    net = model()
    batch = collate(synthetic_dialogues(2, seed=8))
    present = batch["mask"] & (batch["speakers"] >= 0)[..., None]
    window = time_window(present.shape[1], None)
    x = net.encode_inputs(batch["features"], present, batch["speakers"], window)
    o = net.graph(x, present)
    for k in range(3):
        missing = ~present[..., k]
        assert missing.any()
        torch.testing.assert_close(o[..., k, :][missing], net.absent_node[k].expand(int(missing.sum()), -1))
    with torch.no_grad():
        assert not torch.allclose(o[..., 0, :][present[..., 0]][0], net.absent_node[0])


def test_text_only_inputs_equal_hidden_audio_and_face():
    dialogues = synthetic_dialogues(3, seed=9)
    batch = collate(dialogues)
    mask = batch["mask"].clone()
    mask[..., 1:] = False
    net = model()
    with_arrays = net(batch["features"], mask, batch["speakers"]).logits
    text_only = net({"text": batch["features"]["text"]}, mask, batch["speakers"]).logits
    torch.testing.assert_close(with_arrays, text_only)
    assert torch.isfinite(text_only).all()


@pytest.mark.parametrize("options", [{"pcm_input": "encoder"}, {"graph_heads": 2, "pcm_layers": 1, "past": None},
                                     {"text_layers": 0, "ffn": 4, "eta": 0.0}])
def test_options_build_working_models(options):
    batch = collate(synthetic_dialogues(2, seed=10))
    out = model(options=options)(batch["features"], batch["mask"], batch["speakers"]).logits
    assert out.shape[-1] == 6 and torch.isfinite(out).all()


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="pcm_input"):
        model(options={"pcm_input": "both"})
    with pytest.raises(ValueError, match="divisible"):
        model(options={"pcm_heads": 3})


def test_speakers_change_the_prediction():
    batch = collate(synthetic_dialogues(1, seed=11))
    net = model()
    a = net(batch["features"], batch["mask"], batch["speakers"]).logits
    b = net(batch["features"], batch["mask"], 1 - batch["speakers"]).logits
    assert not torch.allclose(a, b)


def test_nan_behind_the_mask_reaches_neither_output_nor_gradient():
    batch = collate(synthetic_dialogues(3, seed=12))
    features = {m: x.clone() for m, x in batch["features"].items()}
    for k, m in enumerate(("audio", "face"), start=1):
        features[m][~batch["mask"][..., k]] = float("nan")
    net = model().train()
    out = net(features, batch["mask"], batch["speakers"]).logits
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
