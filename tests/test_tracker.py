"""Live tracking with the bundled default model: step by step equals the batch forward on real
dialogues, revising earlier turns' speakers equals having tracked them so, and the main command runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import command as installed

from merc.models.dag.checkpoint import ModelError, load_model
from merc.models.dag.tracker import DialogueTracker, default_model_dir
from merc.models.data.corpora import load_corpus
from merc.models.data.labels import MELD7
from merc.models.features.dialogue import collate, text_features


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
    out = subprocess.run([sys.executable, "-m", "merc.cli.track"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "example-flat-hunt" in out.stdout and "turns match the gold labels" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 12


def test_main_command_json_output_and_bad_input(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"dialogue_id": "x", "utterances": []}\n')
    out = subprocess.run([sys.executable, "-m", "merc.cli.track", "--dialogue", str(bad)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "d.jsonl" in out.stderr
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"dialogue_id": "g", "utterances": [{"speaker": "A", "text": "Hi!"},
                                                                     {"speaker": "B", "text": "Oh no."}]}) + "\n")
    out = subprocess.run([sys.executable, "-m", "merc.cli.track", "--dialogue", str(good), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    turns = [json.loads(line) for line in out.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [0, 1] and all(t["label"] in MELD7.labels for t in turns)


@pytest.mark.parametrize("command", ["merc-live", "merc-replay", "merc-track", "merc-synth", "merc-train", "merc-eval",
                                     "merc-export"])
def test_every_command_explains_itself(command):
    out = subprocess.run([installed(command), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and len(out.stdout) > 400


# ---------------------------------------------------------------- serving engines of merc-live

SERVE_BUNDLE = """
import contextlib, io, json, sys
from merc.cli.track import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["--bundle", sys.argv[1], "--json", "--device", "cpu"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"code": code, "turns": [json.loads(line) for line in out.getvalue().splitlines()], "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def default_bundle():
    """The bundled default model's bundle, as merc-live serves it (exported into the cache once)."""
    from merc.export.build.onnx_export import ensure_bundle

    return ensure_bundle(default_model_dir())


def _example_turns():
    from merc.models.data.examples import example_dialogue

    dialogue = json.loads(example_dialogue().read_text().splitlines()[0])
    return [(u["speaker"], u["text"]) for u in dialogue["utterances"]]


def test_main_command_serves_a_bundle_without_torch(default_bundle, tracker):
    proc = subprocess.run([sys.executable, "-c", SERVE_BUNDLE, str(default_bundle)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    served = json.loads(proc.stdout.splitlines()[-1])
    assert served["code"] == 0 and served["heavy"] == []
    turns = _example_turns()
    assert [(t["speaker"], t["text"]) for t in served["turns"]] == turns
    tracker.reset()
    for (speaker, text), got in zip(turns, served["turns"]):
        expected = tracker.track(speaker, text)
        assert max(abs(got["probs"][k] - v) for k, v in expected.probs.items()) <= 1e-4
        assert got["label"] == expected.label


def test_engines_agree_and_bad_engine_options_are_refused(default_bundle):
    runs = {}
    for engine in ("onnx", "torch"):
        out = subprocess.run([sys.executable, "-m", "merc.cli.track", "--engine", engine, "--json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs[engine] = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(runs["onnx"]) == len(runs["torch"]) == 12
    for a, b in zip(runs["onnx"], runs["torch"]):
        assert a["label"] == b["label"] and max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) <= 1e-4
    for bad in (["--bundle", str(default_bundle), "--engine", "torch"],
                ["--bundle", str(default_bundle), "--model", str(default_model_dir())]):
        out = subprocess.run([sys.executable, "-m", "merc.cli.track", *bad], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and "--bundle" in out.stderr
    out = subprocess.run([sys.executable, "-m", "merc.cli.track", "--bundle", str(default_bundle) + "-missing"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "bundle directory not found" in out.stderr


def test_first_use_export_is_logged_with_the_cache_location(tmp_path):
    env = {**os.environ, "MERC_CACHE": str(tmp_path / "cache")}
    first = subprocess.run([sys.executable, "-m", "merc.cli.track", "--model", str(default_model_dir())],
                           capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr
    assert "turns match the gold labels" in first.stdout
    bundles = list((tmp_path / "cache" / "bundles").iterdir())
    assert len(bundles) == 1 and bundles[0].name.startswith("default-")
    assert "INFO" in first.stderr and "first use" in first.stderr and f"bundle cached at {bundles[0]}" in first.stderr
    again = subprocess.run([sys.executable, "-m", "merc.cli.track"], capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0, again.stderr
    assert "first use" not in again.stderr and _same_table(again.stdout, first.stdout)


def _same_table(a: str, b: str) -> bool:
    """Equal tables apart from the per-turn milliseconds (the last column)."""
    strip = lambda text: [line.rsplit(None, 1)[0] if line[:3].strip().isdigit() else line  # noqa: E731
                          for line in text.splitlines()]
    return strip(a) == strip(b)


def test_main_command_serves_a_cached_bundle_without_torch():
    """Once the default model's bundle is in the cache, merc-live imports neither torch nor transformers."""
    subprocess.run([sys.executable, "-m", "merc.cli.track"], capture_output=True, text=True, timeout=600, check=True)
    code = ("import sys; from merc.cli.track import main; rc = main([]); "
            "assert rc == 0; assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------- revising earlier turns' speakers

NEXT = "So what do we do now?"


@pytest.fixture(scope="module")
def bundle_tracker(default_bundle):
    from merc.export.serve.runtime import BundleTracker

    return BundleTracker.load(default_bundle, device="cpu")


@pytest.fixture(params=["torch", "onnx"])
def either_tracker(request, tracker, bundle_tracker):
    return tracker if request.param == "torch" else bundle_tracker


def _max_delta(a, b) -> float:
    return max(abs(a.probs[k] - b.probs[k]) for k in a.probs)


def test_revising_speakers_equals_tracking_them_so_from_the_start(either_tracker):
    """Turns first attributed wrongly (a new speaker, an unknown one, the other speaker), then
    revised: every turn's final emotion and the next turn's equal tracking with the right speakers
    from scratch. The default encoder uses no speaker markers, so its vectors do not depend on them."""
    tracker = either_tracker
    turns = _example_turns()
    right = [speaker for speaker, _ in turns]
    wrong = {3: "Zed", 5: None, 8: right[9]}  # a new label, unknown, and the other speaker
    assert all(right[i] != s for i, s in wrong.items())
    tracker.reset()
    first = [tracker.track(wrong.get(i, s), text) for i, (s, text) in enumerate(turns)]
    revised = tracker.revise({i: right[i] for i in wrong})
    after = tracker.track(right[0], NEXT)
    tracker.reset()
    reference = [tracker.track(s, text) for s, text in turns]
    reference_after = tracker.track(right[0], NEXT)

    assert max(_max_delta(a, b) for a, b in zip(first, reference)) > 0.05  # the wrong speakers did matter
    indices = [r.index for r in revised]
    assert indices == sorted(indices) and set(wrong) <= set(indices) <= set(range(3, len(turns)))
    final = {r.index: r for r in first} | {r.index: r for r in revised}
    for i, expected in enumerate(reference):
        got = final[i]
        assert (got.index, got.speaker, got.text, got.label) == (i, expected.speaker, expected.text, expected.label)
        assert _max_delta(got, expected) <= 1e-5, i
    for r in revised:  # each reported turn really changed
        old = first[r.index]
        assert r.speaker != old.speaker or r.label != old.label or _max_delta(r, old) >= 1e-4
    assert after.index == len(turns) and after.label == reference_after.label
    assert _max_delta(after, reference_after) <= 1e-5


def test_a_revised_label_maps_to_the_same_speaker_wherever_it_appears(either_tracker):
    """Relabelling every turn of one speaker with a new label (and then back) changes nothing: the
    graph sees the same speaker either way; revising nothing or the same speaker changes nothing."""
    tracker = either_tracker
    turns = _example_turns()[:8]
    tracker.reset()
    first = [tracker.track(s, text) for s, text in turns]
    assert tracker.revise({}) == [] and tracker.revise({2: turns[2][0]}) == []
    renamed = tracker.revise({i: "S7" for i, (s, _) in enumerate(turns) if s == turns[1][0]})
    assert [r.index for r in renamed] == [i for i, (s, _) in enumerate(turns) if s == turns[1][0]]
    for r in renamed:
        assert r.speaker == "S7" and r.label == first[r.index].label and _max_delta(r, first[r.index]) <= 1e-6
    back = tracker.revise({r.index: turns[r.index][0] for r in renamed})
    assert [r.speaker for r in back] == [turns[r.index][0] for r in renamed]
    after = tracker.track(turns[0][0], NEXT)
    tracker.reset()
    for s, text in turns:
        tracker.track(s, text)
    assert _max_delta(after, tracker.track(turns[0][0], NEXT)) <= 1e-6


def test_only_the_last_turns_can_be_revised_and_memory_stays_bounded(tracker, bundle_tracker):
    """With a buffer of 4 turns, a correction of an older turn is ignored; one inside it still gives
    exactly what tracking with that speaker would have."""
    from merc.export.serve.runtime import BundleTracker
    from merc.models.dag.tracker import DialogueTracker

    turns = _example_turns()
    small = [DialogueTracker(tracker.model, tracker.encoder, revisable_turns=4),
             BundleTracker(bundle_tracker.manifest, bundle_tracker.encoder, bundle_tracker.dag, revisable_turns=4)]
    for revisable in small:
        revisable.reset()
        first = [revisable.track(s, text) for s, text in turns]
        assert len(revisable._history) == 4 and list(revisable._history.indices) == list(range(8, 12))
        assert revisable.revise({0: "Zed", 7: "Zed", 12: "Zed", -1: "Zed"}) == []  # older, future: ignored
        revised = revisable.revise({9: turns[8][0]})
        assert revised and revised[0].index == 9 and revised[0].speaker == turns[8][0]
        revisable.reset()
        reference = [revisable.track(turns[8][0] if i == 9 else s, text) for i, (s, text) in enumerate(turns)]
        final = {r.index: r for r in first} | {r.index: r for r in revised}
        assert max(_max_delta(final[i], reference[i]) for i in range(len(turns))) <= 1e-5
        revisable.reset()
        assert len(revisable._history) == 0 and revisable.revise({0: "A"}) == []
    with pytest.raises(ValueError):
        DialogueTracker(tracker.model, tracker.encoder, revisable_turns=0)


def test_a_revised_speaker_marks_later_encoder_contexts_as_if_it_had_been_known():
    """With speaker markers, the turns after a revision see the corrected speakers in their context
    (the revised turns' own vectors are not re-encoded: the documented approximation)."""
    from merc.models.data.turns import ConversationSoFar

    def conversation(speakers):
        so_far = ConversationSoFar(3, speaker_markers=True)
        for i, speaker in enumerate(speakers):
            so_far.result(speaker, f"turn {i}", ["a", "b"], [0.4, 0.6], ("text",), {})
        return so_far

    revised = conversation(["A", "B", "A", "A", "B"])
    for index, speaker in {3: "B", 0: "B", 4: None}.items():
        revised.revise_speaker(index, speaker)
    fresh = conversation(["A", "B", "A", "B", None])  # turn 0 is out of the context window
    assert revised.encoder_input("now", "B") == fresh.encoder_input("now", "B") == \
        ("now", "turn 4 | same: turn 3 | other: turn 2")
    assert revised.recent_speakers == ["A", "B", None]
