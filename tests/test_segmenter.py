"""Turn segmentation on real (synthetic) speech through the real Silero VAD."""
from __future__ import annotations

import time

import numpy as np
import pytest
from speech import say, silence

from merc.stream.capture.audio import AudioChunk
from merc.stream.capture.vad import FRAME, SileroVAD, VADError, silero_model_path
from merc.stream.turns.segmenter import SegmenterOptions, TurnSegmenter


def segment(audio: np.ndarray, options: SegmenterOptions | None = None, chunk: int = 1600):
    seg = TurnSegmenter(SileroVAD(), options)
    out = []
    for i in range(0, len(audio), chunk):
        out += list(seg.feed(AudioChunk(i / 16000, audio[i:i + chunk], time.monotonic())))
    return out + list(seg.flush())


def test_vad_scores_speech_high_and_silence_low():
    vad = SileroVAD()
    speech = say("The weather was lovely all weekend long.")
    probs = [vad(speech[i:i + FRAME]) for i in range(0, len(speech) - FRAME, FRAME)]
    vad.reset()
    quiet = [vad(np.zeros(FRAME, np.float32)) for _ in range(20)]
    assert np.mean(probs) > 0.6 and max(quiet) < 0.1
    with pytest.raises(ValueError, match="512"):
        vad(np.zeros(100, np.float32))


def test_two_utterances_with_a_pause_make_two_turns_at_the_right_times():
    a, b = say("Hello there, how are you doing today?"), say("I am fine, thanks for asking.", "en-gb+f3")
    audio = np.concatenate([silence(0.5), a, silence(1.0), b, silence(1.0)])
    turns = segment(audio)
    assert len(turns) == 2
    a_end, b_start = 0.5 + len(a) / 16000, 1.5 + len(a) / 16000
    assert abs(turns[0].t_start - 0.5) < 0.2 and abs(turns[0].t_end - a_end) < 0.3
    assert abs(turns[1].t_start - b_start) < 0.2
    assert all(not t.split for t in turns)
    assert all(t.decided_clock >= t.speech_end_clock for t in turns)


def test_a_short_pause_does_not_end_the_turn_and_silence_makes_none():
    audio = np.concatenate([silence(0.3), say("Well, I suppose"), silence(0.3), say("that could work."), silence(1)])
    assert len(segment(audio)) == 1
    assert segment(silence(3.0)) == []


def test_long_turns_are_split_and_clicks_dropped():
    long = np.concatenate([say("This is a rather long sentence that keeps going on and on without a pause at "
                               "all because it wants to test the limit")])
    turns = segment(np.concatenate([long, silence(1.0)]), SegmenterOptions(max_turn=2.0))
    assert len(turns) >= 2 and turns[0].split and turns[0].duration <= 2.05
    click = np.zeros(16000, np.float32)
    click[8000:8400] = np.random.default_rng(0).uniform(-0.9, 0.9, 400)
    assert segment(click, SegmenterOptions(min_turn=0.25)) == []


def test_the_turn_in_progress_is_closed_at_end_of_stream():
    turns = segment(np.concatenate([silence(0.3), say("No pause at the end")]))
    assert len(turns) == 1


def test_vad_model_errors_name_the_file(tmp_path):
    assert silero_model_path().is_file()
    with pytest.raises(VADError, match="not found"):
        SileroVAD(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(VADError, match="bad.onnx"):
        SileroVAD(bad)
