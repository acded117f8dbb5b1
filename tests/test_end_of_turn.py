"""The learned end of turn: the classifier (trained data, served export) and the segmenter that
asks it, on real speech through the real VAD, Whisper and the bundled classifier on ONNX Runtime."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from speech import say, silence

from merc.export.build.end_of_turn import ensure_end_of_turn
from merc.export.serve.end_of_turn import (
    GRAPH_FILE,
    CompletenessModel,
    EndOfTurnExportError,
    cached_export,
    verify_export,
)
from merc.models.data.corpora import load_corpus
from merc.models.data.utterance_ends import completeness_text, utterance_ends
from merc.models.features.end_of_turn import EndOfTurnError, load_head
from merc.models.paths import end_of_turn_dir
from merc.stream.capture.audio import AudioChunk
from merc.stream.capture.vad import SileroVAD
from merc.stream.turns.end_of_turn import TranscriptJudge
from merc.stream.turns.segmenter import SegmenterOptions, TurnSegmenter
from merc.stream.turns.transcribe import FasterWhisperTranscriber


@pytest.fixture(scope="module")
def completeness() -> CompletenessModel:
    return CompletenessModel(ensure_end_of_turn())


@pytest.fixture(scope="module")
def transcriber() -> FasterWhisperTranscriber:
    return FasterWhisperTranscriber.load()


# ---------------------------------------------------------------- data


def test_every_utterance_gives_itself_and_one_strict_prefix(data_dir):
    dialogues = load_corpus("meld", data_dir, "valid")[:40]
    examples = utterance_ends(dialogues, seed=3)
    whole = [e for e in examples if e.complete]
    cut = [e for e in examples if not e.complete]
    assert len(whole) == sum(1 for d in dialogues for u in d.utterances if completeness_text(u.text))
    by_dialogue = {d.id: {completeness_text(u.text) for u in d.utterances} for d in dialogues}
    for e in cut:  # a strict word prefix of an utterance of the same dialogue
        assert any(f.startswith(e.text + " ") for f in by_dialogue[e.dialogue]), e
    assert all(e.text == e.text.lower() and "?" not in e.text and "." not in e.text for e in examples)
    shuffled = list(dialogues)
    random.Random(0).shuffle(shuffled)
    assert sorted(map(repr, utterance_ends(shuffled, seed=3))) == sorted(map(repr, examples))
    assert utterance_ends(dialogues, seed=4) != examples


# ---------------------------------------------------------------- the classifier


def test_the_bundled_classifier_separates_finished_from_cut_off_test_utterances(completeness, data_dir):
    from sklearn.metrics import roc_auc_score

    examples = utterance_ends(load_corpus("meld", data_dir, "test"), seed=0)
    sample = random.Random(0).sample(examples, 400)
    scores = [completeness(e.text) for e in sample]
    assert roc_auc_score([e.complete for e in sample], scores) > 0.8
    assert completeness("I'll see you tomorrow at the station.") > 0.8
    assert completeness("so what I think is") < 0.5
    assert completeness("I was going to the") < 0.2
    assert completeness(" ?! ") is None


def test_the_export_is_verified_and_a_damaged_one_is_exported_again(tmp_path):
    first = ensure_end_of_turn(cache=tmp_path)
    manifest = verify_export(first)
    assert set(manifest["files"]) >= {GRAPH_FILE, "tokenizer.json"}
    (first / GRAPH_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(EndOfTurnExportError, match=GRAPH_FILE):
        verify_export(first)
    assert cached_export(end_of_turn_dir(), tmp_path) is None
    again = ensure_end_of_turn(cache=tmp_path)
    assert again == first and CompletenessModel(again)("see you tomorrow") is not None


def test_a_missing_or_broken_head_is_named(tmp_path):
    with pytest.raises(EndOfTurnError, match="end_of_turn.json"):
        load_head(tmp_path)
    (tmp_path / "end_of_turn.json").write_text(json.dumps({"dim": 768, "hidden": 128}))
    (tmp_path / "head.safetensors").write_bytes(b"junk")
    with pytest.raises(EndOfTurnError, match=str(tmp_path)):
        load_head(tmp_path)


def test_the_command_scores_transcripts_and_explains_itself():
    out = subprocess.run([sys.executable, "-m", "merc.cli.end_of_turn", "score", "--json", "see you on monday then",
                          "and then we"], capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["see you on monday then", "and then we"]
    assert rows[0]["complete"] > 0.5 > rows[1]["complete"]
    usage = subprocess.run([sys.executable, "-m", "merc.cli.end_of_turn", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert "finished utterance" in " ".join(usage.split()) and "train" in usage
    missing = subprocess.run([sys.executable, "-m", "merc.cli.end_of_turn", "score", "--model", "no/such/dir", "x"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no/such/dir" in missing.stderr


# ---------------------------------------------------------------- the segmenter asks it


class Counting:
    """Whisper, recording the length of every stretch of audio it is asked to decode."""

    def __init__(self, transcriber: FasterWhisperTranscriber) -> None:
        self.transcriber = transcriber
        self.name = transcriber.name
        self.calls: list[int] = []

    def transcribe(self, audio: np.ndarray, prompt: str | None = None):
        self.calls.append(len(audio))
        return self.transcriber.transcribe(audio, prompt)

    def draft(self):
        return self.transcriber.draft()


def segment(audio: np.ndarray, judge: TranscriptJudge | None, options: SegmenterOptions | None = None):
    seg = TurnSegmenter(SileroVAD(), options, end_of_turn=judge)
    out = []
    for i in range(0, len(audio), 1600):
        out += list(seg.feed(AudioChunk(i / 16000, audio[i:i + 1600], time.monotonic())))
    return out + list(seg.flush())


VOICE = dict(voice="en-us+f2", pitch=60, speed=150)


def test_a_finished_sentence_ends_the_turn_after_a_short_pause(transcriber, completeness):
    first = say("I will see you tomorrow at the station.", **VOICE)
    audio = np.concatenate([silence(0.4), first, silence(0.4), say("Do not be late.", **VOICE), silence(1.0)])
    assert len(segment(audio, None)) == 1  # 0.4 s is no end for the silence wait
    judge = TranscriptJudge(transcriber, completeness)
    turns = segment(audio, judge)
    assert len(turns) == 2, [(t.t_start, t.t_end) for t in turns]
    assert abs(turns[0].t_end - (0.4 + len(first) / 16000)) < 0.25
    # decided on the judge's decode, which is the turn's transcript
    assert turns[0].judgement is not None and turns[0].judgement.complete >= 0.5
    assert "station" in turns[0].judgement.transcript.text.lower()


def test_a_sentence_cut_off_by_a_pause_waits(transcriber, completeness):
    audio = np.concatenate([silence(0.4), say("And then we all went to the", **VOICE), silence(0.4),
                            say("station together.", **VOICE), silence(1.0)])
    turns = segment(audio, TranscriptJudge(transcriber, completeness))
    assert len(turns) == 1, [t.judgement.transcript.text for t in turns if t.judgement]
    # the last pause was judged (complete, ending the turn), and its decode is the whole turn's
    assert turns[0].judgement is not None and "together" in turns[0].judgement.transcript.text.lower()
    silence_only = segment(audio, TranscriptJudge(transcriber, completeness), SegmenterOptions(end_of_turn="silence"))
    assert len(silence_only) == 1 and silence_only[0].judgement is None


def test_the_judge_is_asked_once_per_pause_and_not_at_all_without_speech(transcriber, completeness):
    counting = Counting(transcriber)
    calls = counting.calls
    audio = np.concatenate([silence(0.3), say("The thing is", **VOICE), silence(0.5),
                            say("we cannot afford it.", **VOICE), silence(1.5)])
    turns = segment(audio, TranscriptJudge(counting, completeness), SegmenterOptions(eot_predecode_at=0))
    assert len(calls) == 2  # one per pause; the last one's decode is the turn's
    assert len(turns) == 1 and len(turns[0].audio) == calls[-1]
    calls.clear()
    assert segment(silence(2.0), TranscriptJudge(counting, completeness)) == [] and calls == []


def test_a_turn_a_new_voice_ends_was_decoded_while_the_voice_was_probed(transcriber, completeness):
    from merc.stream.turns.speaker_change import VoiceChangeDetector
    from merc.stream.turns.speakers import SpeakerEmbedder

    a = say("Did you remember to buy the tickets for tonight?", "en-us+m3", pitch=40, speed=150)
    b = say("Of course I did, they are on the kitchen table.", "en-us+f2", pitch=65, speed=140)
    audio = np.concatenate([silence(0.5), a, silence(0.2), b, silence(1.0)])  # a gap shorter than eot_silence
    counting = Counting(transcriber)
    calls = counting.calls
    seg = TurnSegmenter(SileroVAD(), None, voice_change=VoiceChangeDetector(SpeakerEmbedder().embed),
                        end_of_turn=TranscriptJudge(counting, completeness))
    turns = []
    for i in range(0, len(audio), 1600):
        turns += list(seg.feed(AudioChunk(i / 16000, audio[i:i + 1600], time.monotonic())))
    turns += list(seg.flush())
    assert len(turns) == 2 and turns[1].new_voice
    first = turns[0]
    assert first.decoded_early and first.judgement is not None and len(first.audio) == calls[0]
    assert "tickets" in first.judgement.transcript.text.lower()
    assert not turns[1].decoded_early and turns[1].judgement is not None  # ended by the silence judge
    off = TurnSegmenter(SileroVAD(), SegmenterOptions(eot_predecode_at=0),
                        voice_change=VoiceChangeDetector(SpeakerEmbedder().embed),
                        end_of_turn=TranscriptJudge(transcriber, completeness))
    plain = []
    for i in range(0, len(audio), 1600):
        plain += list(off.feed(AudioChunk(i / 16000, audio[i:i + 1600], time.monotonic())))
    plain += list(off.flush())
    assert [(t.t_start, t.t_end) for t in plain] == [(t.t_start, t.t_end) for t in turns]
    assert plain[0].judgement is None


def test_the_cap_still_ends_a_turn_that_never_sounds_finished(transcriber, completeness):
    audio = np.concatenate([silence(0.3), say("And then we went to the", **VOICE), silence(1.2)])
    turns = segment(audio, TranscriptJudge(transcriber, completeness), SegmenterOptions(min_silence=0.8))
    assert len(turns) == 1 and turns[0].judgement is not None and turns[0].judgement.complete < 0.5


def test_replayed_turns_name_the_end_of_turn_stage(tmp_path):
    from conftest import command

    events = tmp_path / "events.jsonl"
    subprocess.run([command("merc-replay"), "--speed", "max", "--out", str(events)], check=True,
                   capture_output=True)
    turns = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "turn"]
    # turns the judge ended (or saw before the silence cap) carry its cost; turns a new voice ended do not
    assert turns and any("end_of_turn" in t["timings_ms"] for t in turns)


def test_the_silence_wait_is_still_there(tmp_path):
    from conftest import command

    events = tmp_path / "events.jsonl"
    subprocess.run([command("merc-replay"), "--speed", "max", "--end-of-turn", "silence", "--out", str(events)],
                   check=True, capture_output=True)
    turns = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "turn"]
    assert turns and not any("end_of_turn" in t["timings_ms"] for t in turns)


def test_the_commands_document_the_options():
    from conftest import command

    usage = subprocess.run([command("merc-live"), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--end-of-turn", "--eot-silence", "--eot-threshold", "--end-of-turn-model"):
        assert flag in usage
    assert Path(end_of_turn_dir(), "end_of_turn.json").is_file()
