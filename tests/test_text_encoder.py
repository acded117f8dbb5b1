"""The text encoder: packaged MiniLM weights, causal turn inputs, the embedding cache and
fine-tuned encoders that load like any other."""
from __future__ import annotations

import numpy as np
import pytest

from merc.models.data.corpora import load_corpus
from merc.models.data.labels import MELD7
from merc.models.data.turns import ConversationSoFar, turn_inputs
from merc.models.features.embedding_cache import EmbeddingCache, encode_cached
from merc.models.features.text_encoder import (
    MINILM_ID,
    EncoderError,
    EncoderSpec,
    TextEncoder,
)
from merc.models.paths import default_model_dir
from merc.models.train.finetune import FinetuneConfig, finetune_text_encoder


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.load(MINILM_ID, device="cpu")


def test_turn_inputs_use_only_earlier_turns_most_recent_first():
    texts = ["a", "b", "c", "d"]
    assert turn_inputs(texts, 0) == [("a", ""), ("b", ""), ("c", ""), ("d", "")]
    assert turn_inputs(texts, 2) == [("a", ""), ("b", "a"), ("c", "b | a"), ("d", "c | b")]


def test_speaker_markers_tell_each_context_turn_s_relation_to_the_speaker():
    texts, speakers = ["a", "b", "c", "d"], ["Ann", "Bob", "Ann", None]
    assert turn_inputs(texts, 2, speakers) == [
        ("a", ""), ("b", "other: a"), ("c", "other: b | same: a"), ("d", "c | b")]  # unknown: unmarked
    # live tracking builds exactly the inputs of training, turn by turn
    so_far = ConversationSoFar(2, speaker_markers=True)
    live = []
    for text, speaker in zip(texts, speakers):
        live.append(so_far.encoder_input(text, speaker))
        so_far.result(speaker, text, ["x", "y"], [0.5, 0.5], ("text",), {})
    assert live == turn_inputs(texts, 2, speakers)


def test_encoder_ids_stay_stable_and_new_options_change_them(minilm):
    # the embedding-cache key of an encoder without speaker markers or LoRA is the one it always had:
    # MiniLM's, and that of the top-two-layers encoder of the default model before 2026-12-01
    assert minilm.id == "c9f18029a9b8c534"
    older = EncoderSpec(context_turns=2,
                        delta_sha256="bc95b8109f56e0fccae2c68c965bc1ce51cbfb096cf73ea72cb97043d8168559")
    assert TextEncoder(older, minilm.model, minilm.tokenizer).id == "af827cfd5ec9aff9"
    assert TextEncoder.load(default_model_dir() / "encoder", device="cpu").id == "bb1c1f3980e239e2"
    assert minilm.with_spec(speaker_markers=True).id != minilm.id
    assert minilm.with_spec(lora_rank=16, lora_layers=6).id != minilm.id


def test_packaged_minilm_gives_sentence_embeddings(minilm):
    vectors = minilm.encode([("I am so happy today!", ""), ("What a joyful day, I love it.", ""),
                             ("The invoice is attached as a PDF.", "")])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.2


def test_batching_does_not_change_embeddings(minilm):
    items = [("Hello there.", ""), ("Why would you say that to me?", ""), ("Fine.", "")]
    together = minilm.encode(items, batch_size=8)
    alone = np.concatenate([minilm.encode([item]) for item in items])
    assert np.allclose(together, alone, atol=1e-5)


def test_cache_returns_stored_vectors_without_encoding_again(minilm, tmp_path):
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    items = [("one", ""), ("two", ""), ("one", "")]
    first = encode_cached(minilm, items, cache)

    class Counting:
        """The real encoder, counting what it is asked to encode."""

        def __init__(self, inner):
            self.inner, self.calls = inner, []
            self.id, self.dim = inner.id, inner.dim

        def encode(self, todo, **kw):
            self.calls.append(list(todo))
            return self.inner.encode(todo, **kw)

    counting = Counting(minilm)
    again = encode_cached(counting, items + [("three", "")], cache)
    assert counting.calls == [[("three", "")]]
    assert np.allclose(again[:3], first)
    cache.close()


def test_unknown_encoder_path_is_a_clear_error(tmp_path):
    bogus = tmp_path / "not-a-model.txt"
    bogus.write_text("x")
    with pytest.raises(EncoderError, match="not-a-model"):
        TextEncoder.load(bogus)


def test_finetuned_encoder_round_trips_through_its_directory(data_dir, tmp_path):
    train = load_corpus("meld", data_dir, "train")[:6]
    valid = load_corpus("meld", data_dir, "valid")[:3]
    out = tmp_path / "enc"
    cfg = FinetuneConfig(context_turns=1, train_layers=1, epochs=1, batch_size=16)
    metrics = finetune_text_encoder(train, valid, MELD7, cfg, out, progress=False)
    assert metrics["best"]["epoch"] == 1
    loaded = TextEncoder.load(out, device="cpu")
    assert loaded.spec.context_turns == 1 and loaded.spec.delta_sha256
    base = TextEncoder.load(MINILM_ID, device="cpu")
    items = turn_inputs([u.text for u in valid[0].utterances], 1)
    changed = loaded.encode(items)
    assert not np.allclose(changed, base.with_spec(context_turns=1).encode(items), atol=1e-3)
    assert loaded.id != base.id
    # A corrupted parameter file is refused by its checksum.
    delta = out / "finetuned.safetensors"
    delta.write_bytes(delta.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(EncoderError, match="checksum"):
        TextEncoder.load(out)


def test_lora_finetuning_stores_small_factors_and_loads_as_a_plain_encoder(data_dir, tmp_path):
    from safetensors.torch import load_file

    train = load_corpus("meld", data_dir, "train")[:6]
    valid = load_corpus("meld", data_dir, "valid")[:3]
    out = tmp_path / "enc"
    cfg = FinetuneConfig(context_turns=1, train_layers=6, lora_rank=4, epochs=1, batch_size=16, lr=5e-3)
    finetune_text_encoder(train, valid, MELD7, cfg, out, progress=False)
    delta = load_file(str(out / "finetuned.safetensors"))
    # factors only, on all six layers' six linear maps: (A, B) x 6 x 6, about 1/10 of one layer's weights
    assert len(delta) == 72 and all(".lora_A." in k or ".lora_B." in k for k in delta)
    assert {k.split("encoder.layer.")[1].split(".")[0] for k in delta} == {str(i) for i in range(6)}
    assert sum(v.numel() for v in delta.values()) < 200_000
    loaded = TextEncoder.load(out, device="cpu")
    assert loaded.spec.lora_rank == 4 and loaded.spec.lora_layers == 6
    assert not any("lora" in k for k in loaded.model.state_dict())  # merged: serving and export see a plain model
    items = turn_inputs([u.text for u in valid[0].utterances], 1)
    # the merged weights compute what the base with its factors computes
    unmerged = TextEncoder.load(MINILM_ID, device="cpu").with_spec(context_turns=1).with_lora(4, 6)
    unmerged.model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=False)
    assert np.allclose(loaded.encode(items), unmerged.encode(items), atol=1e-4)
    base = TextEncoder.load(MINILM_ID, device="cpu").with_spec(context_turns=1)
    assert not np.allclose(loaded.encode(items), base.encode(items), atol=1e-3)
    assert loaded.id != base.id
