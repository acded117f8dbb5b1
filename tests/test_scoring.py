"""Scoring replays against gold: pairing by time, speaker mapping, WER, emotion F1."""
from __future__ import annotations

from merc.stream.recordings.scoring import normalise_text, pair_turns, score_replay

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
