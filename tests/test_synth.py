"""Synthetic recordings: generated from our own fixture dialogues and from MELD, checked on the audio itself."""
from __future__ import annotations

import itertools
import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from merc.cli.synth import main
from merc.models.data.corpora import (
    Dialogue,
    Utterance,
    load_corpus,
    load_dialogues_jsonl,
)
from merc.stream.recordings.synth import (
    FEMALE_VOICES,
    MALE_VOICES,
    SAMPLE_RATE,
    Espeak,
    SynthConfig,
    SynthError,
    assign_voices,
    clean_text,
    generate_recordings,
    select_dialogues,
    synthesize_dialogue,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "recordings"
DIALOGUES = FIXTURES / "dialogues.jsonl"
MANIFEST_KEYS = {"format", "format_version", "sample_rate", "channels", "audio", "video", "duration_s", "created",
                 "source", "synth"}
GOLD_KEYS = {"turn", "speaker", "text", "emotion", "t_start", "t_end"}

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) not installed")


def read_recording(path: Path) -> tuple[np.ndarray, list[dict], dict]:
    audio, rate = sf.read(path / "audio.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    gold = [json.loads(line) for line in (path / "gold.jsonl").read_text(encoding="utf-8").splitlines()]
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return audio, gold, manifest


def span(audio: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return audio[round(t0 * SAMPLE_RATE): round(t1 * SAMPLE_RATE)]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def median_f0(x: np.ndarray) -> float:
    """Median autocorrelation pitch (60-400 Hz) of the loud 40 ms frames."""
    frame, hop, lo, hi = 640, 160, SAMPLE_RATE // 400, SAMPLE_RATE // 60
    found = []
    for i in range(0, x.size - frame, hop):
        f = x[i:i + frame].astype(np.float64)
        if rms(f) < 0.03:
            continue
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[frame - 1:]
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.5 * ac[0]:
            found.append(SAMPLE_RATE / k)
    return float(np.median(found))


def check_recording(path: Path, dialogue: Dialogue) -> None:
    """The recording format, and gold that matches the dialogue and the audio."""
    audio, gold, manifest = read_recording(path)
    info = sf.info(str(path / "audio.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["format"] == "merc-recording" and manifest["format_version"] == 1
    assert manifest["sample_rate"] == 16000 and manifest["channels"] == 1
    assert manifest["audio"] == "audio.wav" and manifest["video"] is None
    assert manifest["source"] == "synth"
    assert manifest["duration_s"] == pytest.approx(info.frames / 16000, abs=1e-4)
    created = datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    synth = manifest["synth"]
    assert synth["dialogue_id"] == dialogue.id
    assert set(synth["voices"]) == set(dialogue.speakers)
    assert {"seed", "noise", "pause_s", "overlap_prob", "overlap_s", "edge_silence_s", "espeak_ng"} <= set(synth)

    spoken = [u for u in dialogue.utterances if clean_text(u.text)]
    assert [g["turn"] for g in gold] == list(range(len(spoken)))
    assert all(set(g) == GOLD_KEYS for g in gold)
    assert [(g["speaker"], g["text"], g["emotion"]) for g in gold] == [
        (u.speaker, clean_text(u.text), u.label) for u in spoken]
    starts, ends = [g["t_start"] for g in gold], [g["t_end"] for g in gold]
    assert starts[0] == pytest.approx(synth["edge_silence_s"], abs=1e-3)
    assert all(a < b for a, b in itertools.pairwise(starts)), "turns in spoken order"
    assert all(s < e for s, e in zip(starts, ends, strict=True))
    assert ends[-1] == pytest.approx(manifest["duration_s"] - synth["edge_silence_s"], abs=1e-3)
    assert sum(s < e for s, e in zip(starts[1:], ends[:-1], strict=True)) == synth["overlaps"]
    for g in gold:
        voiced = span(audio, g["t_start"], g["t_end"])
        assert rms(voiced) > 0.03, f"turn {g['turn']} has no speech energy"
        # tight: speech right at both edges of the span
        assert np.abs(voiced[:320]).max() > 0.002 and np.abs(voiced[-320:]).max() > 0.002


# ---------------------------------------------------------------- generated from the fixture dialogues


@pytest.fixture(scope="module")
def espeak() -> Espeak:
    return Espeak.find()


@pytest.fixture(scope="module")
def fixture_dialogues() -> list[Dialogue]:
    return load_dialogues_jsonl(DIALOGUES, None)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, espeak: Espeak,
              fixture_dialogues: list[Dialogue]) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    paths = generate_recordings(fixture_dialogues, out, SynthConfig(seed=0), espeak, {"corpus": "jsonl"})
    return {p.name: p for p in paths}


def test_generated_recordings_follow_the_format_and_the_dialogues(generated: dict[str, Path],
                                                                  fixture_dialogues: list[Dialogue]) -> None:
    assert sorted(generated) == sorted(d.id for d in fixture_dialogues)
    for d in fixture_dialogues:
        check_recording(generated[d.id], d)


def test_pauses_are_silent_and_natural(generated: dict[str, Path]) -> None:
    for path in generated.values():
        audio, gold, manifest = read_recording(path)
        lead, tail = manifest["synth"]["edge_silence_s"], manifest["duration_s"] - gold[-1]["t_end"]
        assert tail == pytest.approx(lead, abs=1e-3)
        assert np.abs(span(audio, 0, gold[0]["t_start"])).max() == 0
        assert np.abs(span(audio, gold[-1]["t_end"], manifest["duration_s"])).max() == 0
        for prev, cur in itertools.pairwise(gold):
            if cur["t_start"] > prev["t_end"]:
                assert 0.7 - 1e-3 <= cur["t_start"] - prev["t_end"] <= 1.6 + 1e-3
                assert np.abs(span(audio, prev["t_end"] + 0.001, cur["t_start"] - 0.001)).max() == 0
            else:  # an overlap: another speaker, 0.2-0.5 s, both voices heard in the overlap
                assert cur["speaker"] != prev["speaker"]
                assert 0.2 - 1e-3 <= prev["t_end"] - cur["t_start"] <= 0.5 + 1e-3


def test_overlaps_follow_the_probability(tmp_path: Path, espeak: Espeak, fixture_dialogues: list[Dialogue]) -> None:
    never = synthesize_dialogue(fixture_dialogues[1], SynthConfig(overlap_prob=0.0), espeak)
    always = synthesize_dialogue(fixture_dialogues[1], SynthConfig(overlap_prob=1.0), espeak)
    assert never.synth["overlaps"] == 0
    assert always.synth["overlaps"] >= 2  # every speaker change may overlap, unless a turn is too short
    for prev, cur in itertools.pairwise(always.turns):
        if cur.t_start < prev.t_end:
            both = span(always.audio, cur.t_start, prev.t_end)
            alone = span(always.audio, prev.t_start, cur.t_start)
            assert rms(both) > rms(alone) * 0.5  # voiced: the second voice starts over the first one's tail


def test_speakers_have_distinct_voices(generated: dict[str, Path]) -> None:
    for path in generated.values():
        audio, gold, manifest = read_recording(path)
        voices = manifest["synth"]["voices"]
        assert len({(v["name"], v["pitch"]) for v in voices.values()}) == len(voices)
        f0 = {s: median_f0(np.concatenate([span(audio, g["t_start"], g["t_end"]) for g in gold if g["speaker"] == s]))
              for s in voices}
        first, second = list(voices)[:2]  # one male and one female voice: an octave-ish apart
        assert max(f0[first], f0[second]) / min(f0[first], f0[second]) > 1.4, f0


def test_assign_voices_is_deterministic_and_distinct() -> None:
    speakers = [f"S{i}" for i in range(12)]
    voices = assign_voices(speakers, seed=3)
    assert voices == assign_voices(speakers, seed=3)
    assert list(voices) == speakers
    assert len({(v.name, v.pitch) for v in voices.values()}) == 12
    assert any(assign_voices(speakers[:2], seed=s) != assign_voices(speakers[:2], seed=3) for s in range(4))
    males, females = {v.name for v in MALE_VOICES}, {v.name for v in FEMALE_VOICES}
    for s in range(20):  # speakers alternate one male and one female voice
        names = [v.name for v in assign_voices(speakers[:4], seed=s).values()]
        assert {names[0], names[1]} & males and {names[0], names[1]} & females
        assert (names[0] in males) == (names[2] in males) and names[0] != names[2]


def test_same_seed_same_recording_other_seed_other(tmp_path: Path, espeak: Espeak, generated: dict[str, Path],
                                                   fixture_dialogues: list[Dialogue]) -> None:
    kitchen = fixture_dialogues[0]
    again = generate_recordings([kitchen], tmp_path / "again", SynthConfig(seed=0), espeak, {"corpus": "jsonl"})[0]
    assert (again / "audio.wav").read_bytes() == (generated[kitchen.id] / "audio.wav").read_bytes()
    assert (again / "gold.jsonl").read_text() == (generated[kitchen.id] / "gold.jsonl").read_text()
    other = synthesize_dialogue(kitchen, SynthConfig(seed=1), espeak)
    _, gold, manifest = read_recording(again)
    assert other.synth["voices"] != manifest["synth"]["voices"]
    assert [t.t_start for t in other.turns] != [g["t_start"] for g in gold]


def test_noise_is_added_at_the_requested_snr(espeak: Espeak, fixture_dialogues: list[Dialogue]) -> None:
    for kind in ("pink", "white"):
        rec = synthesize_dialogue(fixture_dialogues[0], SynthConfig(noise_snr_db=15.0, noise_kind=kind), espeak)
        assert rec.synth["noise"]["kind"] == kind and rec.synth["noise"]["snr_db"] == 15.0
        voiced = np.concatenate([span(rec.audio, t.t_start, t.t_end) for t in rec.turns])
        pauses = np.concatenate([span(rec.audio, a.t_end, b.t_start) for a, b in itertools.pairwise(rec.turns)])
        noise_power = rms(pauses) ** 2
        snr = 10 * np.log10((rms(voiced) ** 2 - noise_power) / noise_power)
        assert snr == pytest.approx(15.0, abs=1.5)


def test_text_is_cleaned_and_wordless_turns_are_skipped(espeak: Espeak) -> None:
    assert clean_text("You\x92re coming on to the entire room!  I\u2019m Chandler.") == \
        "You're coming on to the entire room! I'm Chandler."
    assert clean_text("Let's\u2014  I was just\u2014yeah, right\u2026") == "Let's, I was just, yeah, right..."
    assert clean_text("It\u00e2\u20ac\u2122s fine, \u201cCaf\u00e9\u201d [LAUGHTER] ok") == 'It\'s fine, "Cafe" ok'
    assert clean_text("[Monica flicks her back] Hey! <b>") == "Hey! b"
    assert clean_text("\u2026 ?!") == "" and clean_text("[BREATHING]") == ""
    d = Dialogue("d", (Utterance("A", "Hello there, how are you?", "joy"), Utterance("B", "\u2026", "neutral"),
                       Utterance("B", "Fine, thank you.", None), Utterance("A", "Good to hear.", "joy")))
    rec = synthesize_dialogue(d, SynthConfig(max_turns=2), espeak)
    assert [(t.turn, t.speaker, t.text, t.emotion) for t in rec.turns] == [
        (0, "A", "Hello there, how are you?", "joy"), (1, "B", "Fine, thank you.", None)]
    assert rec.synth["skipped_utterances"] == [1] and rec.synth["utterance_indices"] == [0, 2]
    with pytest.raises(SynthError, match="'empty'.*no turn has words"):
        synthesize_dialogue(Dialogue("empty", (Utterance("A", "...", None),)), SynthConfig(), espeak)


def test_errors_name_what_is_wrong(tmp_path: Path, fixture_dialogues: list[Dialogue]) -> None:
    with pytest.raises(SynthError, match=r"unknown dialogue id\(s\) 'nope' in dialogues.jsonl \(2 dialogues"):
        select_dialogues(fixture_dialogues, ["kitchen-2spk", "nope"], where="dialogues.jsonl")
    with pytest.raises(SynthError, match="Debian package espeak-ng"):
        Espeak.find("no-such-espeak-ng-program")
    with pytest.raises(SynthError, match="overlap_prob"):
        SynthConfig(overlap_prob=1.5)
    with pytest.raises(SynthError, match="pause_s"):
        SynthConfig(pause_s=(1.0, 0.5))


# ---------------------------------------------------------------- the CLI


def test_cli_writes_recordings_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        fixture_dialogues: list[Dialogue]) -> None:
    args = ["--dialogues", str(DIALOGUES), "--dialogue-ids", "bus-stop-3spk", "--max-turns", "3",
            "--noise-snr", "20", "--out", str(tmp_path), "--seed", "7"]
    assert main(args) == 0
    assert f"wrote {tmp_path / 'bus-stop-3spk'}: 3 turns" in capsys.readouterr().err
    _, gold, manifest = read_recording(tmp_path / "bus-stop-3spk")
    assert len(gold) == 3 and manifest["synth"]["seed"] == 7 and manifest["synth"]["max_turns"] == 3
    assert manifest["synth"]["noise"]["snr_db"] == 20 and manifest["synth"]["dialogues_file"] == "dialogues.jsonl"
    assert main(args) == 2
    assert "already there" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_unknown_dialogue_id_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dialogues", str(DIALOGUES), "--dialogue-ids", "kitchen-2spk,no-such-id", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown dialogue id(s) 'no-such-id'" in err and "dialogues.jsonl" in err
    assert not any(tmp_path.iterdir()), "nothing written when an id is wrong"


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--corpus", "--dialogues", "--data-dir", "--split", "--dialogue-ids", "--count", "--max-turns",
                   "--out", "--seed", "--pause", "--overlap-prob", "--overlap", "--edge-silence", "--noise-snr",
                   "--noise-kind", "--espeak", "--overwrite", "espeak-ng"):
        assert option in out


def test_cli_meld_test_dialogue(tmp_path: Path, data_dir: Path) -> None:
    assert main(["--corpus", "meld", "--data-dir", str(data_dir), "--split", "test", "--dialogue-ids", "test_1",
                 "--max-turns", "4", "--out", str(tmp_path)]) == 0
    meld = {d.id: d for d in load_corpus("meld", data_dir, "test")}["test_1"]
    first4 = Dialogue(meld.id, tuple(u for u in meld.utterances if clean_text(u.text))[:4], meld.split)
    check_recording(tmp_path / "test_1", first4)
    _, gold, manifest = read_recording(tmp_path / "test_1")
    assert (manifest["synth"]["corpus"], manifest["synth"]["split"]) == ("meld", "test")
    assert all(g["text"].isascii() for g in gold)


# ---------------------------------------------------------------- the committed fixtures


@pytest.mark.parametrize("name", ["kitchen-2spk", "bus-stop-3spk"])
def test_committed_fixtures_are_valid_and_current(name: str, tmp_path: Path, espeak: Espeak,
                                                  fixture_dialogues: list[Dialogue]) -> None:
    path = FIXTURES / name
    assert sum(f.stat().st_size for f in path.iterdir()) < 1_000_000
    dialogue = {d.id: d for d in fixture_dialogues}[name]
    check_recording(path, dialogue)
    audio, gold, manifest = read_recording(path)
    synth = manifest["synth"]
    if synth["espeak_ng"] != espeak.version:
        pytest.skip(f"fixtures were made with espeak-ng {synth['espeak_ng']}, this is {espeak.version}")
    config = SynthConfig(seed=synth["seed"], noise_snr_db=(synth["noise"] or {}).get("snr_db"),
                         noise_kind=(synth["noise"] or {}).get("kind", "pink"))
    rec = synthesize_dialogue(dialogue, config, espeak)
    assert rec.synth["voices"] == synth["voices"]
    assert [(t.t_start, t.t_end) for t in rec.turns] == [(g["t_start"], g["t_end"]) for g in gold], \
        "the generator changed: regenerate the fixtures (tests/fixtures/recordings/README.md)"
    assert np.abs(rec.audio - audio).max() < 2 / 32768
