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


# --- a change of voice ends a turn without a long silence ------------------------------------------


@pytest.fixture(scope="module")
def voice_change():
    from merc.stream.turns.speaker_change import VoiceChangeDetector
    from merc.stream.turns.speakers import SpeakerEmbedder

    return VoiceChangeDetector(SpeakerEmbedder().embed)


def segment_voices(audio: np.ndarray, detector, options: SegmenterOptions | None = None):
    seg = TurnSegmenter(SileroVAD(), options, voice_change=detector)
    out = []
    for i in range(0, len(audio), 1600):
        out += list(seg.feed(AudioChunk(i / 16000, audio[i:i + 1600], time.monotonic())))
    return out + list(seg.flush())


def test_a_new_voice_after_a_short_gap_starts_a_new_turn(voice_change):
    a = say("Did you remember to buy the tickets for tonight?", "en-us+m3", pitch=40, speed=150)
    b = say("Of course I did, they are on the kitchen table.", "en-us+f2", pitch=65, speed=140)
    gap = 0.2  # far below min_silence: silence alone makes one turn of the two
    audio = np.concatenate([silence(0.5), a, silence(gap), b, silence(1.0)])
    assert len(segment_voices(audio, None)) == 1
    turns = segment_voices(audio, voice_change)
    assert len(turns) == 2, [(t.t_start, t.t_end) for t in turns]
    boundary = 0.5 + len(a) / 16000 + gap / 2
    assert abs(turns[0].t_end - boundary) < 0.2 and abs(turns[1].t_start - boundary) < 0.2
    assert not turns[0].new_voice and turns[1].new_voice
    # the first turn's end of speech is before the second voice began; its decision came after
    assert turns[0].speech_end_clock <= turns[1].speech_end_clock
    # no audio is lost or shared at the cut
    assert abs(turns[1].t_start - turns[0].t_end) < 1e-6


def test_the_same_voice_after_a_short_pause_stays_one_turn(voice_change):
    voice = dict(voice="en-us+f2", pitch=65, speed=140)
    audio = np.concatenate([silence(0.5), say("Well, I thought about it all night long.", **voice), silence(0.25),
                            say("And honestly, I still do not know what to do.", **voice), silence(1.0)])
    assert len(segment_voices(audio, voice_change)) == 1


def test_voice_change_can_be_switched_off(voice_change):
    a = say("Are you coming with us to the beach?", "en-us+m3", pitch=40, speed=150)
    b = say("No, I have to work all weekend.", "en-us+f2", pitch=65, speed=140)
    audio = np.concatenate([silence(0.5), a, silence(0.2), b, silence(1.0)])
    assert len(segment_voices(audio, voice_change, SegmenterOptions(split_on_voice=True))) == 2
    # split_on_voice is read by the session (no detector is built when off); here: no detector
    assert len(segment_voices(audio, None, SegmenterOptions(split_on_voice=False))) == 1
