"""Scoring replays against gold: pairing by time, speaker mapping, WER, emotion F1, and the final
state of turns corrected by turn.update."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from merc.stream.recordings.recording import RecordingError
from merc.stream.recordings.scoring import apply_updates, normalise_text, pair_turns, read_events, score_replay
from merc.stream.wire.events import turn_event, turn_update_event

KITCHEN = Path(__file__).parent / "fixtures" / "recordings" / "kitchen-2spk"

GOLD = [
    {"speaker": "Ann", "text": "Hello there, Bob!", "emotion": "joy", "t_start": 0.5, "t_end": 2.0},
    {"speaker": "Bob", "text": "Oh. It's you.", "emotion": "neutral", "t_start": 3.0, "t_end": 4.0},
    {"speaker": "Ann", "text": "Why so glum?", "emotion": "sadness", "t_start": 5.0, "t_end": 6.5},
]


def turn(t0, t1, speaker, text, label):
    return {"type": "turn", "t_start": t0, "t_end": t1, "speaker": speaker, "text": text, "label": label}


def test_perfect_replay_scores_perfectly_whatever_the_cluster_names():
    events = [{"type": "hello"}, turn(0.4, 2.1, "S2", "hello there bob", "joy"),
              turn(2.9, 4.1, "S1", "oh it's you", "neutral"), turn(4.9, 6.6, "S2", "why so glum", "sadness")]
    s = score_replay(GOLD, events)
    assert (s.paired_turns, s.missed_turns, s.extra_turns) == (3, 0, 0)
    assert s.speaker_accuracy == 1.0 and s.speaker_mapping == {"S1": "Bob", "S2": "Ann"}
    assert s.wer == 0.0 and s.emotion_weighted_f1 == 1.0


def test_misses_unknown_speakers_and_wrong_words_count_against():
    events = [turn(0.4, 2.1, "S1", "hello their bob", "joy"), turn(4.9, 6.6, None, "why so glum", "anger"),
              turn(8.0, 9.0, "S1", "extra words", "neutral")]
    s = score_replay(GOLD, events)
    assert (s.paired_turns, s.missed_turns, s.extra_turns) == (2, 1, 1)
    assert abs(s.speaker_accuracy - 1 / 3) < 1e-9  # only Ann's first turn: unknown and missed are wrong
    assert 0.3 < s.wer < 0.8
    assert s.emotion_turns == 2 and s.emotion_accuracy == 0.5


def test_pairing_gives_each_prediction_to_one_gold_turn():
    gold = [{"t_start": 0, "t_end": 1}, {"t_start": 1.2, "t_end": 2}]
    assert pair_turns(gold, [{"t_start": 0, "t_end": 2}]) == [(0, 0)]
    assert normalise_text("It’s  FINE, really!") == "it's fine really"


# ---- turn.update: scored on the final state -------------------------------------------------------

LABELS = ("neutral", "joy", "sadness", "anger")


def live_turn(number, t0, t1, speaker, text, label):
    """A `turn` event as the session publishes it (the wire's own constructor)."""
    return {"type": "turn", **turn_event(turn=number, speaker=speaker, t_start=t0, t_end=t1, text=text, label=label,
                                         confidence=0.9, probs={k: 0.9 if k == label else 0.1 / 3 for k in LABELS},
                                         modalities=["text"], available=["text", "audio"],
                                         timings_ms=dict.fromkeys(("segmentation", "asr", "features", "speaker",
                                                                   "graph", "total"), 1.0), speech_end=0.0)}


def update(number, speaker, label):
    return turn_update_event(turn=number, speaker=speaker, label=label, confidence=0.7,
                             probs={k: 0.7 if k == label else 0.1 for k in LABELS})


# Bob's turn was first put down to Ann's cluster (S2) and read as joy; the attributor then gives it a
# speaker of its own, and with the graph's speaker edges changed the last turn reads as sadness.
BEFORE = [{"type": "hello"}, live_turn(0, 0.4, 2.1, "S2", "hello there bob", "joy"),
          live_turn(1, 2.9, 4.1, "S2", "oh it's you", "joy"), live_turn(2, 4.9, 6.6, "S2", "why so glum", "anger")]
CORRECTIONS = [update(1, "S1", "neutral"), update(2, "S2", "sadness")]


def test_updates_change_the_speaker_accuracy_and_the_emotion_f1_as_corrected():
    before = score_replay(GOLD, BEFORE)
    assert before.speaker_mapping == {"S2": "Ann"} and abs(before.speaker_accuracy - 2 / 3) < 1e-9
    assert abs(before.emotion_accuracy - 1 / 3) < 1e-9 and before.emotion_weighted_f1 < 0.5
    assert before.updated_turns == 0
    after = score_replay(GOLD, BEFORE + CORRECTIONS)
    assert after.speaker_accuracy == 1.0 and after.speaker_mapping == {"S1": "Bob", "S2": "Ann"}
    assert after.emotion_accuracy == 1.0 and after.emotion_weighted_f1 == 1.0
    assert after.updated_turns == 2 and after.predicted_turns == 3 and after.wer == before.wer


def test_an_update_names_the_latest_turn_with_its_number_and_never_creates_one():
    events = BEFORE + [update(7, "S9", "anger"), {"type": "status"}]
    folded = apply_updates(events)
    assert folded == [e for e in events if e.get("type") != "turn.update"]  # unknown turn: dropped, nothing else
    assert all(e is f for e, f in zip([e for e in events if e.get("type") != "turn.update"], folded))
    # after a reset the numbers start again: an update corrects the newest turn 0, not the old one
    reset = BEFORE + [live_turn(0, 8.0, 9.0, "S1", "again", "neutral"), update(0, "S2", "anger"),
                      update(0, "S3", "joy")]
    turns = [e for e in apply_updates(reset) if e["type"] == "turn"]
    assert [(t["turn"], t["speaker"], t["label"], t.get("updates")) for t in turns] == \
        [(0, "S2", "joy", None), (1, "S2", "joy", None), (2, "S2", "anger", None), (0, "S3", "joy", 2)]
    assert turns[3]["text"] == "again" and turns[3]["t_start"] == 8.0 and turns[3]["confidence"] == 0.7
    assert reset[4]["speaker"] == "S1"  # the events given are not changed


def test_read_events_folds_updates_and_names_a_bad_one(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in BEFORE + CORRECTIONS))
    events = read_events(path)
    assert [e["type"] for e in events] == ["hello", "turn", "turn", "turn"]
    assert [(e["speaker"], e["label"]) for e in events[1:]] == [("S2", "joy"), ("S1", "neutral"), ("S2", "sadness")]
    assert [e.get("updates") for e in events[1:]] == [None, 1, 1]
    for bad, problem in (({"turn": "1"}, "turn must be a turn number"), ({"label": None}, "label must be a string"),
                         ({"speaker": 3}, "speaker must be a string or null"), ({"probs": [1]}, "probs must be")):
        path.write_text("".join(json.dumps(e) + "\n" for e in BEFORE + [{**CORRECTIONS[0], **bad}]))
        with pytest.raises(RecordingError, match=rf"{path}:5: turn.update {problem}"):
            read_events(path)
    path.write_text("".join(json.dumps(e) + "\n" for e in BEFORE + [{"type": "turn.update", "turn": 1}]))
    with pytest.raises(RecordingError, match="missing speaker, label"):
        read_events(path)


def test_merc_eval_replay_scores_the_corrected_turns(tmp_path, capsys):
    from merc.cli.train import eval_main

    gold = [json.loads(line) for line in (KITCHEN / "gold.jsonl").read_text().splitlines()]
    events = []
    for g in gold:  # Ben's turns (1 and 3) first given to Anna's cluster S1 and read as joy
        speaker, label = ("S1", g["emotion"]) if g["speaker"] == "Anna" else ("S1", "joy")
        events.append(live_turn(g["turn"], g["t_start"], g["t_end"], speaker, g["text"], label))
    scores = {}
    for name, extra in (("before", []), ("after", [update(1, "S2", "sadness"), update(3, "S2", "neutral")])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events + extra))
        assert eval_main(["--replay", str(KITCHEN), "--events", str(path), "--json"]) == 0
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["before"]["speaker_accuracy"] == 0.6 and scores["before"]["emotion_accuracy"] == 0.6
    assert scores["after"]["speaker_accuracy"] == 1.0 and scores["after"]["emotion_weighted_f1"] == 1.0
    assert scores["after"]["updated_turns"] == 2 and scores["after"]["wer"] == scores["before"]["wer"] == 0.0
