"""Live tracking with the bundled default model: step by step equals the batch forward on real
dialogues, and the main command runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from merc.models.checkpoint import ModelError, load_model
from merc.models.corpora import load_corpus
from merc.models.features import collate, text_features
from merc.models.labels import MELD7
from merc.stream.tracker import DialogueTracker, default_model_dir


@pytest.fixture(scope="module")
def tracker() -> DialogueTracker:
    return DialogueTracker.load(device="cpu")


def test_default_model_is_small_text_only_meld7():
    model = load_model(default_model_dir())
    assert model.label_set.labels == MELD7.labels
    size = sum(p.stat().st_size for p in default_model_dir().rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024


def test_step_by_step_matches_batch_forward_on_real_dialogues(tracker, data_dir):
    dialogues = load_corpus("meld", data_dir, "test")[:4]
    data = text_features(tracker.encoder, dialogues, MELD7)
    batch = collate(data)
    with torch.no_grad():
        expected = torch.softmax(tracker.model.dag(batch["features"], batch["mask"], batch["speakers"]), -1)
    worst = 0.0
    for row, dialogue in enumerate(dialogues):
        tracker.reset()
        for i, utt in enumerate(dialogue.utterances):
            result = tracker.track(utt.speaker, utt.text)
            got = torch.tensor([result.probs[label] for label in tracker.labels])
            worst = max(worst, float((got - expected[row, i]).abs().max()))
    assert worst <= 1e-5


def test_tracking_is_causal(tracker):
    """A turn's result does not depend on what is said after it."""
    tracker.reset()
    first = [tracker.track("A", "I can't believe you did that!"), tracker.track("B", "I'm sorry.")]
    tracker.reset()
    again = [tracker.track("A", "I can't believe you did that!"), tracker.track("B", "I'm sorry."),
             tracker.track("A", "Whatever, it's fine.")]
    for a, b in zip(first, again):
        assert a.label == b.label and abs(a.confidence - b.confidence) < 1e-6


def test_unknown_speaker_and_empty_text_are_tracked(tracker):
    tracker.reset()
    result = tracker.track(None, "Hello?")
    silent = tracker.track("A", "   ")
    assert result.label in tracker.labels and silent.modalities == ()
    assert abs(sum(silent.probs.values()) - 1) < 1e-5


def test_bad_model_directory_is_a_clear_error(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="model.json"):
        DialogueTracker.load(tmp_path)


def test_main_command_tracks_the_bundled_example():
    out = subprocess.run([sys.executable, "-m", "merc.stream.cli"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "example-flat-hunt" in out.stdout and "turns match the gold labels" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 12


def test_main_command_json_output_and_bad_input(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"dialogue_id": "x", "utterances": []}\n')
    out = subprocess.run([sys.executable, "-m", "merc.stream.cli", "--dialogue", str(bad)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "d.jsonl" in out.stderr
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"dialogue_id": "g", "utterances": [{"speaker": "A", "text": "Hi!"},
                                                                     {"speaker": "B", "text": "Oh no."}]}) + "\n")
    out = subprocess.run([sys.executable, "-m", "merc.stream.cli", "--dialogue", str(good), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    turns = [json.loads(line) for line in out.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [0, 1] and all(t["label"] in MELD7.labels for t in turns)


@pytest.mark.parametrize("command", ["merc-live", "merc-train", "merc-eval"])
def test_every_command_explains_itself(command):
    out = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and len(out.stdout) > 400
