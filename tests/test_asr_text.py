"""ASR-style text: the transforms, the seeded training augmentation, the training option (which
changes the training split's text only) and merc-eval's --text-style, on real MELD text."""
from __future__ import annotations

import json
import string
from collections import Counter
from dataclasses import replace

import pytest

from merc.cli.train import eval_main, train_main
from merc.models.data.asr_text import (
    AsrAugment,
    apply_style,
    augment_dialogues,
    lower_nopunct,
    no_exclaim,
    styled_dialogues,
    whisper_style,
    word_noise,
)
from merc.models.data.corpora import load_corpus
from merc.models.train.config import TrainConfig
from merc.models.train.finetune import FinetuneConfig, epoch_training_dialogues, selection_score
from merc.models.train.training import text_views

PUNCTUATION = set(string.punctuation) - {"'"} | set("\u2018\u2019\u201c\u201d\u2026\u2013\u2014")


@pytest.fixture(scope="module")
def meld_train(data_dir):
    return load_corpus("meld", data_dir, "train")[:200]


@pytest.fixture(scope="module")
def meld_valid(data_dir):
    return load_corpus("meld", data_dir, "valid")[:40]


def _texts(dialogues) -> list[str]:
    return [u.text for d in dialogues for u in d.utterances]


def test_the_evaluation_forms_have_no_exclamation_and_no_punctuation(meld_train):
    texts = _texts(meld_train)
    assert sum("!" in t for t in texts) > 100  # the corpus leans on "!", which ASR never writes
    for text in texts:
        assert "!" not in no_exclaim(text)
        assert no_exclaim(text).count(".") == text.count(".") + text.count("!")
        bare = lower_nopunct(text)
        assert bare == bare.lower() and not PUNCTUATION & set(bare), (text, bare)
        assert "  " not in bare and bare == bare.strip()
        whisper = whisper_style(text)
        assert "!" not in whisper and "..." not in whisper and "\u2026" not in whisper
        assert not set("\u2018\u2019\u201c\u201d\"") & set(whisper), (text, whisper)
        assert whisper[:1] == whisper[:1].upper()


def test_whisper_style_examples():
    assert whisper_style("Push!") == "Push."
    assert whisper_style("Where\u2019s number 27?!") == "Where's number 27?"
    assert whisper_style("Wait... what?? No!!!") == "Wait. What? No."
    assert lower_nopunct("Oh. That\u2019s so Monica, y'know?!") == "oh that's so monica y'know"
    assert apply_style("Hi!", "gold") == "Hi!"
    with pytest.raises(ValueError, match="unknown text style"):
        apply_style("Hi!", "shouting")


def test_styled_dialogues_change_text_only(meld_valid):
    styled = styled_dialogues(meld_valid, "lower_nopunct")
    assert styled_dialogues(meld_valid, "gold") == list(meld_valid)
    for before, after in zip(meld_valid, styled, strict=True):
        assert before.id == after.id and len(before.utterances) == len(after.utterances)
        for u, v in zip(before.utterances, after.utterances, strict=True):
            assert (u.speaker, u.label, u.start, u.end) == (v.speaker, v.label, v.start, v.end)
            assert v.text == lower_nopunct(u.text) or v.text == "."  # a turn of punctuation only keeps a mark


def test_augmentation_is_deterministic_and_order_free(meld_train):
    cfg = AsrAugment()
    first = augment_dialogues(meld_train, cfg, seed=3, epoch=1)
    assert first == augment_dialogues(meld_train, cfg, seed=3, epoch=1)
    # The same dialogue gets the same text whatever else is in the list and in which order.
    reversed_run = augment_dialogues(meld_train[::-1], cfg, seed=3, epoch=1)[::-1]
    assert reversed_run == first
    # Another epoch or seed draws differently.
    assert augment_dialogues(meld_train, cfg, seed=3, epoch=2) != first
    assert augment_dialogues(meld_train, cfg, seed=4, epoch=1) != first
    # Labels and speakers never change.
    for before, after in zip(meld_train, first, strict=True):
        assert [(u.speaker, u.label) for u in before.utterances] == [(u.speaker, u.label) for u in after.utterances]


def test_augmentation_draws_styles_at_the_configured_rates(meld_train):
    cfg = AsrAugment(p_whisper=0.5, p_lower=0.25, word_noise=0.0, p_digits=0.0)
    texts = _texts(meld_train)
    augmented = _texts(augment_dialogues(meld_train, cfg, seed=0))
    kinds = Counter()
    for gold, text in zip(texts, augmented, strict=True):
        if text == gold:
            kinds["gold-or-same"] += 1
        elif text == lower_nopunct(gold) or (text == "." and not lower_nopunct(gold)):
            kinds["lower"] += 1
        elif text == whisper_style(gold):
            kinds["whisper"] += 1
        else:
            kinds["other"] += 1
    n = len(texts)
    assert kinds["other"] == 0
    assert 0.20 < kinds["lower"] / n < 0.30
    # Many turns are already in Whisper's form ("Okay."), so they count as "same".
    assert 0.15 < kinds["whisper"] / n < 0.5
    assert 0.70 < (kinds["whisper"] + kinds["gold-or-same"]) / n < 0.80
    augmented_all = _texts(augment_dialogues(meld_train, replace(cfg, p_whisper=0.0, p_lower=0.0), seed=0))
    assert augmented_all == texts  # no ASR styles: the corpus text as it is
    with pytest.raises(ValueError, match="at most 1"):
        AsrAugment(p_whisper=0.8, p_lower=0.3)


def test_word_noise_makes_whisper_like_errors_at_its_rate(meld_train):
    import random

    texts = [whisper_style(t) for t in _texts(meld_train)]
    words = sum(len(t.split()) for t in texts)
    rng = random.Random(0)
    noisy = [word_noise(t, 0.05, rng) for t in texts]
    changed = sum(a != b for a, b in zip(texts, noisy, strict=True))
    assert 0 < changed < len(texts) * 0.5
    length_change = abs(sum(len(t.split()) for t in noisy) - words) / words
    assert length_change < 0.05
    assert word_noise("to be or not to be", 0.0, random.Random(0)) == "to be or not to be"
    assert [word_noise("to be or not to be", 0.5, random.Random(s)) for s in range(5)] == \
        [word_noise("to be or not to be", 0.5, random.Random(s)) for s in range(5)]


def test_training_option_changes_training_text_only(meld_train, meld_valid):
    plain = TrainConfig()
    train_text, valid_asr = text_views(plain, meld_train, meld_valid)
    assert train_text == list(meld_train) and valid_asr is None
    asr = TrainConfig(asr_augment=True, seed=1)
    train_text, valid_asr = text_views(asr, meld_train, meld_valid)
    assert _texts(train_text) != _texts(meld_train)
    assert train_text == augment_dialogues(meld_train, AsrAugment(), seed=1)
    shared, _ = text_views(replace(asr, asr_seed=0), meld_train, meld_valid)
    assert shared == augment_dialogues(meld_train, AsrAugment(), seed=0) != train_text
    # validation is scored as written, and a Whisper-style copy of it is added for selection
    assert _texts(valid_asr) == _texts(styled_dialogues(meld_valid, "whisper"))
    assert all("!" not in t for t in _texts(valid_asr))
    # fine-tuning: a fresh draw per epoch, the corpus text without the option
    ft = FinetuneConfig(asr=AsrAugment())
    assert epoch_training_dialogues(meld_train, ft, 0, 1) != epoch_training_dialogues(meld_train, ft, 0, 2)
    assert epoch_training_dialogues(meld_train, FinetuneConfig(), 0, 1) == list(meld_train)


def test_selection_score():
    assert selection_score(0.6, None, "mean") == 0.6
    assert selection_score(0.6, 0.5, "mean") == pytest.approx(0.55)
    assert selection_score(0.6, 0.5, "whisper") == 0.5
    assert selection_score(0.6, 0.5, "gold") == 0.6


@pytest.fixture(scope="module")
def asr_run(data_dir, tmp_path_factory):
    """A small real run with --asr-augment: a few MELD dialogues, frozen MiniLM, two DAG epochs."""
    corpus = tmp_path_factory.mktemp("corpus") / "meld-small.jsonl"
    lines = []
    for split, n in (("train", 8), ("valid", 4), ("test", 4)):
        for d in load_corpus("meld", data_dir, split)[:n]:
            lines.append(json.dumps({"dialogue_id": d.id, "split": split, "utterances": [
                {"speaker": u.speaker, "text": u.text, "emotion": u.label} for u in d.utterances]}))
    corpus.write_text("\n".join(lines) + "\n")
    run = tmp_path_factory.mktemp("runs") / "asr"
    code = train_main(["--corpus", "jsonl", "--data-dir", str(corpus), "--label-set", "meld-7", "--asr-augment",
                       "true", "--asr-p-lower", "0.4", "--epochs", "2", "--hidden", "32",
                       "--cache-dir", str(tmp_path_factory.mktemp("cache")), "--out", str(run), "--quiet"])
    assert code == 0
    return run, corpus


def test_training_option_is_recorded_and_selects_on_both_styles(asr_run):
    run, _ = asr_run
    config = json.loads((run / "config.json").read_text())
    assert config["asr_augment"] is True and config["asr_p_lower"] == 0.4
    metrics = json.loads((run / "metrics.json").read_text())
    assert "weighted_f1" in metrics["valid_whisper"] and metrics["asr_select"] == "mean"
    for epoch in metrics["history"]:
        assert epoch["select_score"] == pytest.approx((epoch["valid_weighted_f1"]
                                                       + epoch["valid_whisper_weighted_f1"]) / 2)
    model = json.loads((run / "model.json").read_text())
    assert model["text_training"]["asr_augment"]["p_lower"] == 0.4


@pytest.mark.parametrize("style", ["no_exclaim", "lower_nopunct"])
def test_eval_text_style_is_honoured(asr_run, style, capsys):
    run, corpus = asr_run
    assert eval_main([str(run), "--split", "test", "--text-style", style, "--quiet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((run / f"eval-test-{style}" / "metrics.json").read_text())
    assert printed["text_style"] == stored["text_style"] == style
    assert eval_main([str(run), "--split", "test", "--quiet", "--json"]) == 0
    gold = json.loads(capsys.readouterr().out)
    assert gold["text_style"] == "gold" and gold["n"] == stored["n"]
    # Scoring other text gives other probabilities: the flag reaches the encoder.
    assert gold["loss"] != stored["loss"]


def test_eval_text_style_is_refused_for_replays(tmp_path, capsys):
    with pytest.raises(SystemExit):
        eval_main(["--replay", str(tmp_path), "--text-style", "no_exclaim"])
    assert "--text-style" in capsys.readouterr().err
