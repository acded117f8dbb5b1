"""Provisional results while a turn is spoken: the segmenter's turns in progress, the local
agreement of their decodes, previews that commit nothing, `turn.partial` events through the real
pipeline, and scoring that ignores them."""
from __future__ import annotations

import json
import subprocess
import time

import jsonschema
import numpy as np
import pytest
from speech import say, silence

from merc.stream.capture.audio import AudioChunk
from merc.stream.capture.vad import SileroVAD
from merc.stream.recordings.scoring import partial_label_changes, score_replay
from merc.stream.turns.partials import LocalAgreement, TurnInProgress
from merc.stream.turns.segmenter import SegmenterOptions, TurnSegmenter
from merc.stream.turns.speakers import SpeakerAttributor
from merc.stream.wire.events import schema


def test_words_two_decodes_agree_on_are_committed_and_stay():
    agree = LocalAgreement()
    assert agree.update(0.5, "So what") == ("So what", "")
    assert agree.update(0.5, "So what I think") == ("So what I think", "So what")
    assert agree.update(0.5, "so, what I think is") == ("So what I think is", "So what I think")
    # a decode that reads committed words differently changes only what follows them
    assert agree.update(0.5, "Sew what I thing is we") == ("So what I think is we", "So what I think")
    assert agree.update(0.5, "So what I think is we should")[1] == "So what I think is we"
    assert agree.update(0.5, "So what I think is we should go")[1] == "So what I think is we should"
    assert agree.update(7.0, "Fine.") == ("Fine.", "")  # a new turn starts from nothing


def run_segmenter(audio: np.ndarray, partials: bool, options: SegmenterOptions | None = None) -> list:
    seg = TurnSegmenter(SileroVAD(), options, partials=partials)
    out = []
    for i in range(0, len(audio), 1600):
        out += list(seg.feed(AudioChunk(i / 16000, audio[i:i + 1600], time.monotonic())))
    return out + list(seg.flush())


def test_a_running_turn_is_handed_on_every_second_of_it():
    speech = say("Well I have been thinking about what you said yesterday and I am still not sure that moving "
                 "to another city is the right thing for either of us", "en-us+m3", speed=140)
    audio = np.concatenate([silence(0.5), speech, silence(1.0), say("Okay then.", "en-gb+f3"), silence(1.0)])
    items = run_segmenter(audio, partials=True)
    partial = [i for i in items if isinstance(i, TurnInProgress)]
    turns = [i for i in items if not isinstance(i, TurnInProgress)]
    plain = run_segmenter(audio, partials=False)
    assert len(turns) == 2 and [(t.t_start, t.t_end) for t in turns] == [(t.t_start, t.t_end) for t in plain]
    first = [p for p in partial if p.t_start == pytest.approx(turns[0].t_start)]
    seconds = len(speech) / 16000
    assert len(first) >= int(seconds) - 1  # about one per second of the turn
    lengths = [len(p.audio) / 16000 for p in first]
    assert lengths[0] == pytest.approx(1.0, abs=0.1) and all(0.9 < b - a < 1.2 for a, b in zip(lengths, lengths[1:]))
    assert all(p.t_end <= turns[0].t_end + 1e-6 for p in first)
    # each partial comes before its turn is final, and nothing partial without `partials`
    position = {id(item): k for k, item in enumerate(items)}
    assert position[id(first[-1])] < position[id(turns[0])]
    assert not any(isinstance(i, TurnInProgress) for i in plain)
    assert not any(isinstance(i, TurnInProgress) for i in run_segmenter(audio, True, SegmenterOptions(partial_every=0)))


def test_peeking_at_a_speaker_changes_nothing():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    attributor = SpeakerAttributor(threshold=0.8, short_threshold=0.7)
    assert attributor.assign(a, seconds=2.0) == "S1"
    assert attributor.peek(a + 0.01 * rng.normal(size=64), seconds=2.0) == "S1"
    assert attributor.peek(b, seconds=2.0) == "S2"  # would open a speaker: its label, none opened
    assert attributor.peek(b, seconds=0.5) is None  # a short turn never opens one
    assert attributor.speakers == 1 and attributor.revise() == {}
    assert attributor.assign(b, seconds=2.0) == "S2"  # the next real turn is numbered as before


def test_a_preview_commits_nothing(tracker):
    tracker.reset()
    tracker.track("A", "I got the job!")
    preview = tracker.preview("B", "wait, you got the")
    assert preview.index == 1 and set(preview.probs) == set(tracker.labels)
    after = tracker.track("B", "That's amazing, congratulations.")
    tracker.reset()
    tracker.track("A", "I got the job!")
    alone = tracker.track("B", "That's amazing, congratulations.")
    assert after.index == alone.index == 1
    assert max(abs(after.probs[k] - alone.probs[k]) for k in alone.probs) < 1e-6


@pytest.fixture(scope="module", params=["onnx", "torch"])
def tracker(request):
    from merc.models.paths import default_model_dir

    if request.param == "torch":
        from merc.models.dag.tracker import DialogueTracker

        return DialogueTracker.load(default_model_dir(), device="cpu")
    from merc.export.build.onnx_export import ensure_bundle
    from merc.export.serve.runtime import BundleTracker

    return BundleTracker.load(ensure_bundle(default_model_dir()), device="cpu")


def replay_events(tmp_path, name: str, *args: str) -> list[dict]:
    from conftest import command

    out = tmp_path / f"{name}.jsonl"
    subprocess.run([command("merc-replay"), "--speed", "max", "--out", str(out), *args], check=True,
                   capture_output=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_replayed_partials_precede_their_turns_and_change_no_final_turn(tmp_path):
    with_partials = replay_events(tmp_path, "partials", "--partials", "1")
    without = replay_events(tmp_path, "none")
    assert not any(e["type"] == "turn.partial" for e in without)  # --speed max: none unless asked
    validator = jsonschema.Draft202012Validator(schema())
    partials = [e for e in with_partials if e["type"] == "turn.partial"]
    assert len(partials) >= 6
    for event in partials:
        validator.validate(event)
        assert event["text"].startswith(event["stable"]) or not event["stable"]
    finals = [e for e in with_partials if e["type"] == "turn"]
    for event in partials:  # each names the turn that follows it, and ends no later than it
        final = next(e for e in with_partials if e["type"] == "turn" and e["seq"] > event["seq"])
        assert event["turn"] == final["turn"] and event["t_end"] <= final["t_end"] + 1e-3
    first_partial = {e["turn"]: e for e in reversed(partials)}
    for turn, event in first_partial.items():  # the first partial of a turn: a second of audio in
        final = next(e for e in finals if e["turn"] == turn)
        assert event["t_end"] - final["t_start"] < 1.5

    def final_turns(events):
        return [(e["turn"], e["speaker"], e["text"], e["label"]) for e in events if e["type"] in ("turn",)]

    assert final_turns(with_partials) == final_turns(without)
    counted, changed = partial_label_changes(with_partials)
    assert counted == len({e["turn"] for e in partials}) and 0 <= changed <= counted


def test_scoring_ignores_partials_and_counts_their_label_changes():
    gold = [{"t_start": 0.0, "t_end": 2.0, "speaker": "A", "text": "hello there", "emotion": "joy"},
            {"t_start": 2.5, "t_end": 4.0, "speaker": "B", "text": "go away", "emotion": "anger"}]

    def turn(n, t0, t1, speaker, text, label):
        return {"type": "turn", "turn": n, "t_start": t0, "t_end": t1, "speaker": speaker, "text": text,
                "label": label}

    def partial(n, t0, t1, text, label):
        return {"type": "turn.partial", "turn": n, "t_start": t0, "t_end": t1, "speaker": None, "text": text,
                "stable": "", "label": label}

    events = [partial(0, 0.0, 1.0, "hello", "neutral"), partial(0, 0.0, 2.0, "hello there", "joy"),
              turn(0, 0.0, 2.0, "S1", "hello there", "joy"), partial(1, 2.5, 3.5, "go", "neutral"),
              turn(1, 2.5, 4.0, "S2", "go away", "anger")]
    scores = score_replay(gold, events)
    plain = score_replay(gold, [e for e in events if e["type"] == "turn"])
    assert scores.predicted_turns == plain.predicted_turns == 2 and scores.wer == plain.wer == 0.0
    assert scores.emotion_weighted_f1 == plain.emotion_weighted_f1 == 1.0
    assert (scores.partial_turns, scores.partial_label_changes) == (2, 1)
    assert (plain.partial_turns, plain.partial_label_changes) == (0, 0)
