"""Synthetic recordings: generated from our own fixture dialogues and from MELD, checked on the audio itself."""
from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace
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
    VOICE_POOL,
    Engines,
    EngineVoice,
    Espeak,
    SynthConfig,
    SynthError,
    assign_engine_voices,
    assign_voices,
    clean_text,
    conversational_layout,
    emodb_dialogues,
    filter_by_speakers,
    generate_recordings,
    parse_speaker_range,
    select_dialogues,
    speaker_count,
    speaker_gains,
    synthesize_dialogue,
    synthesize_emodb_dialogue,
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


# ---------------------------------------------------------------- realistic conversations (issue 16)

CONVERSATIONS = Path(__file__).resolve().parent / "fixtures" / "conversations"
CONVERSATIONAL = SynthConfig(turn_taking="conversational", overlap_prob=0.15, overlap_s=(0.1, 1.0))


def _needs(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} (Debian package {program}) not installed: apt-get install flite festival "
                    "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts")


def test_conversational_gaps_and_overlaps_follow_real_conversation() -> None:
    """On 600 turns: gap median ~0.2 s with most gaps under 0.5 s, 10-20 % of speaker changes overlapping
    by 0.1-1 s, one speaker's consecutive utterances apart by short pauses."""
    rng = np.random.default_rng(0)
    sizes = [int(rng.uniform(1.2, 3.5) * SAMPLE_RATE) for _ in range(600)]
    speakers = ["A"]
    for _ in range(599):  # mostly alternating, sometimes the same speaker again
        speakers.append(speakers[-1] if rng.random() < 0.2 else ("B" if speakers[-1] == "A" else "A"))
    starts, ends, overlaps = conversational_layout(sizes, speakers, CONVERSATIONAL, np.random.default_rng(1))
    change = [(s - e) / SAMPLE_RATE for s, e, a, b in zip(starts[1:], ends[:-1], speakers[:-1], speakers[1:])
              if a != b]
    same = [(s - e) / SAMPLE_RATE for s, e, a, b in zip(starts[1:], ends[:-1], speakers[:-1], speakers[1:])
            if a == b]
    gaps = [g for g in change if g > 0]
    overlapped = [-g for g in change if g < 0]
    assert 0.17 <= float(np.median(gaps)) <= 0.23
    assert np.mean(np.array(gaps) <= 0.5) >= 0.85 and max(gaps) <= 1.5 + 1e-6
    assert 0.10 <= len(overlapped) / len(change) <= 0.20 and overlaps == len(overlapped)
    assert min(overlapped) >= 0.1 - 1e-4 and max(overlapped) <= 1.0 + 1e-4
    assert all(0.15 - 1e-4 <= p <= 1.2 + 1e-4 for p in same) and 0.33 <= float(np.median(same)) <= 0.47
    assert all(a < b for a, b in itertools.pairwise(starts)), "turns keep their order"
    for i in range(2, len(starts)):  # an overlap reaches back one turn only
        assert starts[i] >= ends[i - 2]


def test_a_conversational_recording_records_its_offsets(espeak: Espeak) -> None:
    d = Dialogue("talk", tuple(Utterance("AB"[i % 2], f"This is sentence number {i} of our talk.", "neutral")
                               for i in range(16)))
    rec = synthesize_dialogue(d, replace(CONVERSATIONAL, noise_snr_db=20.0), espeak)
    offsets = rec.synth["floor_transfer_offsets_s"]
    assert offsets == [round(b.t_start - a.t_end, 5) for a, b in itertools.pairwise(rec.turns)]
    assert rec.synth["speaker_changes"] == 15 and rec.synth["turn_taking"] == "conversational"
    assert sum(o < 0 for o in offsets) == rec.synth["overlaps"]
    assert 0.05 <= float(np.median([o for o in offsets if o > 0])) <= 0.45
    assert rec.synth["language"] == "en" and rec.synth["text_scored"] is True


def test_a_backchannel_is_spoken_inside_another_speakers_turn(espeak: Espeak) -> None:
    d = Dialogue("bc", (Utterance("Nora", "I finally fixed the old radio, it needed a new fuse and a good "
                                          "cleaning inside the case.", "joy"),
                        Utterance("Sam", "Nice work.", "joy"), Utterance("Nora", "It plays again.", "joy")))
    config = replace(CONVERSATIONAL, overlap_prob=0.0)
    without = synthesize_dialogue(d, config, espeak)
    rec = synthesize_dialogue(d, replace(config, backchannel_prob=1.0), espeak)
    assert [t.speaker for t in rec.turns] == ["Nora", "Sam", "Nora"], "back-channels are not gold turns"
    assert [(t.t_start, t.t_end) for t in rec.turns] == [(t.t_start, t.t_end) for t in without.turns]
    (bc,) = rec.synth["backchannels"]  # only the first turn is long enough
    host = rec.turns[bc["inside_turn"]]
    assert bc["inside_turn"] == 0 and bc["speaker"] == "Sam" and bc["text"] in ("mm-hm", "yeah", "right", "uh-huh")
    assert host.t_start < bc["t_start"] < bc["t_end"] < host.t_end
    diff = rec.audio - without.audio  # the back-channel alone, where it was said
    inside = np.zeros(diff.size, bool)
    inside[round(bc["t_start"] * SAMPLE_RATE): round(bc["t_end"] * SAMPLE_RATE)] = True
    assert np.abs(diff[~inside]).max() == 0
    assert rms(diff[inside]) > 0.01
    assert without.synth["backchannels"] == []


def test_speakers_differ_in_loudness(espeak: Espeak, fixture_dialogues: list[Dialogue]) -> None:
    kitchen = fixture_dialogues[0]

    def levels(rec) -> dict[str, float]:
        return {s: 20 * np.log10(rms(np.concatenate([span(rec.audio, t.t_start, t.t_end)
                                                     for t in rec.turns if t.speaker == s]))) for s in ("Anna", "Ben")}

    for seed in range(3):
        config = replace(CONVERSATIONAL, overlap_prob=0.0, seed=seed)
        plain = synthesize_dialogue(kitchen, config, espeak)
        rec = synthesize_dialogue(kitchen, replace(config, loudness_range_db=10.0), espeak)
        gains = rec.synth["gains_db"]
        assert set(gains) == {"Anna", "Ben"} and all(-10.0 <= g <= 0.0 for g in gains.values())
        assert "gains_db" not in plain.synth
        before, after = levels(plain), levels(rec)
        for speaker, gain in gains.items():
            assert after[speaker] - before[speaker] == pytest.approx(gain, abs=0.05)
    spreads = [np.ptp(list(speaker_gains(["A", "B"], seed, 10.0).values())) for seed in range(300)]
    assert max(spreads) > 9.0 and 2.5 < float(np.mean(spreads)) < 4.2  # |U1 - U2| averages 10/3
    assert all(-10 <= g <= 0 for seed in range(50) for g in speaker_gains("ABCD", seed, 10.0).values())


def test_babble_noise_is_voices_at_the_requested_snr(espeak: Espeak, fixture_dialogues: list[Dialogue]) -> None:
    bus = fixture_dialogues[1]
    config = replace(CONVERSATIONAL, overlap_prob=0.0)
    clean = synthesize_dialogue(bus, config, espeak)
    engines = Engines({"espeak": espeak})
    for snr in (20.0, 10.0):
        noisy = synthesize_dialogue(bus, replace(config, noise_snr_db=snr, noise_kind="babble"), engines)
        noise = noisy.audio.astype(np.float64) - clean.audio
        voiced = np.concatenate([span(clean.audio, t.t_start, t.t_end) for t in clean.turns])
        measured = 10 * np.log10(rms(voiced) ** 2 / rms(noise) ** 2)
        assert measured == pytest.approx(snr, abs=0.3)
        info = noisy.synth["noise"]
        assert info["kind"] == "babble" and len(info["talkers"]) == 6
        speakers = {(v["name"]) for v in noisy.synth["voices"].values()}
        assert not speakers & {t["name"] for t in info["talkers"]}, "babble is other voices"
    # speech-like: its power comes and goes far more than white noise's
    frames = noise[: noise.size // 1600 * 1600].reshape(-1, 1600)
    power = (frames ** 2).mean(axis=1)
    white = np.random.default_rng(0).standard_normal(frames.size).reshape(-1, 1600)
    assert power.std() / power.mean() > 3 * (white ** 2).mean(axis=1).std() / (white ** 2).mean(axis=1).mean()


def test_flite_and_festival_voices_produce_speech() -> None:
    _needs("flite")
    _needs("festival")
    engines = Engines.find(["flite", "festival"])
    versions = engines.versions()
    assert versions["flite"] and versions["festival"] and "unknown" not in versions.values()
    for name in ("flite", "festival"):
        voices = engines.pool(name)
        assert len(voices) >= 2, f"{name}: voices {voices}"
        for v in voices:
            clip = engines.speak_many(["The meeting moved to Thursday afternoon."],
                                      EngineVoice(name, v.name, stretch=1.0))[0]
            assert 1.0 < clip.size / SAMPLE_RATE < 5.0, (name, v.name)
            assert rms(clip) == pytest.approx(0.1, rel=0.2) or np.abs(clip).max() == pytest.approx(0.5, abs=0.01)


def test_engine_voices_mix_engines_and_never_share_a_person() -> None:
    _needs("flite")
    _needs("festival")
    engines = Engines.find(["espeak", "flite", "festival"])
    names = ("espeak", "flite", "festival")
    for seed in range(10):
        voices = assign_engine_voices(["A", "B", "C", "D"], seed, engines, names)
        assert voices == assign_engine_voices(["A", "B", "C", "D"], seed, engines, names)
        persons = [next(p.person for p in VOICE_POOL[v.engine] if p.name == v.name) for v in voices.values()]
        assert len(set(persons)) == 4
        assert len({v.engine for v in list(voices.values())[:3]}) == 3, "the first speakers take each engine"
    two = [tuple(v.engine for v in assign_engine_voices(["A", "B"], s, engines, names).values()) for s in range(10)]
    assert all(a != b for a, b in two)


def test_emodb_dialogues_have_human_speakers_and_gold_spans(data_dir: Path) -> None:
    from merc.stream.recordings.synth import _read_clip

    made = emodb_dialogues(data_dir, 3, (2, 2), turns=6, seed=0)
    assert made == emodb_dialogues(data_dir, 3, (2, 2), turns=6, seed=0)
    config = replace(CONVERSATIONAL, overlap_prob=0.0)
    for d in made:
        rec = synthesize_emodb_dialogue(d, config)
        assert len(rec.turns) == 6 and len({t.speaker for t in rec.turns}) == 2
        assert rec.synth["language"] == "de" and rec.synth["text_scored"] is False
        for turn, source in zip(rec.turns, d.turns):
            name = source.path.name
            assert turn.speaker == name[:2] and turn.text == ""
            assert turn.emotion == {"W": "anger", "F": "happiness", "T": "sadness", "N": "neutral"}[name[5]]
            clip = _read_clip(source.path, config.max_internal_pause_s)
            assert turn.t_end - turn.t_start == pytest.approx(clip.size / SAMPLE_RATE, abs=1e-4)
            heard = rec.audio[round(turn.t_start * SAMPLE_RATE): round(turn.t_start * SAMPLE_RATE) + clip.size]
            assert np.abs(heard - clip).max() < 1e-6, "the gold span holds exactly that recording"
        assert rec.synth["files"] == [t.path.name for t in d.turns]
    big = emodb_dialogues(data_dir, 4, (3, 4), turns=10, seed=1)
    assert all(3 <= len({t.speaker for t in d.turns}) <= 4 for d in big)


def test_speaker_count_filter_and_range(data_dir: Path) -> None:
    meld = load_corpus("meld", data_dir, "test")
    two = filter_by_speakers(meld, (2, 2), max_turns=10, min_turns=6)
    many = filter_by_speakers(meld, parse_speaker_range("3-4"), max_turns=10)
    assert two and many and not {d.id for d in two} & {d.id for d in many}
    for d in two:
        spoken = [u for u in d.utterances if clean_text(u.text)][:10]
        assert len({u.speaker for u in spoken}) == 2 and len(spoken) >= 6
    assert all(3 <= speaker_count(d, 10) <= 4 for d in many)
    assert parse_speaker_range("2") == (2, 2)
    for bad in ("0", "4-3", "two"):
        with pytest.raises(SynthError, match="speakers"):
            parse_speaker_range(bad)


def test_cli_realistic_options(tmp_path: Path, data_dir: Path) -> None:
    _needs("flite")
    assert main(["--corpus", "meld", "--data-dir", str(data_dir), "--speakers", "2", "--min-turns", "6",
                 "--count", "1", "--max-turns", "6", "--turn-taking", "conversational", "--backchannels", "0.5",
                 "--loudness-range", "10", "--engines", "espeak,flite", "--noise-kind", "babble",
                 "--noise-snr", "20", "--babble-talkers", "3", "--out", str(tmp_path)]) == 0
    (path,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    audio, gold, manifest = read_recording(path)
    synth = manifest["synth"]
    assert len(gold) == 6 and len({g["speaker"] for g in gold}) == 2
    assert set(synth["engines"]) == {"espeak", "flite"} and synth["speakers"] == [2, 2]
    assert synth["overlap_prob"] == 0.15 and synth["overlap_s"] == [0.1, 1.0]
    assert {v["engine"] for v in synth["voices"].values()} == {"espeak", "flite"}
    assert synth["noise"]["kind"] == "babble" and len(synth["noise"]["talkers"]) == 3
    assert len(synth["gains_db"]) == 2


def test_cli_emodb(tmp_path: Path, data_dir: Path) -> None:
    assert main(["--corpus", "emodb", "--data-dir", str(data_dir), "--count", "2", "--speakers", "3-4",
                 "--max-turns", "5", "--turn-taking", "conversational", "--out", str(tmp_path)]) == 0
    paths = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(paths) == 2
    for path in paths:
        _, gold, manifest = read_recording(path)
        assert len(gold) == 5 and all(g["text"] == "" for g in gold)
        assert manifest["synth"]["corpus"] == "emodb" and manifest["synth"]["text_scored"] is False


FIXTURE_COMMANDS = {  # tests/fixtures/conversations/README.md: the commands that made them
    "short_gaps": ["--pause", "0.1", "0.3", "--overlap-prob", "0", "--engines", "espeak,flite"],
    "overlap": ["--pause", "0.3", "0.5", "--overlap-prob", "1", "--overlap", "0.5", "0.5", "--engines", "espeak,flite"],
    "three_speakers": ["--turn-taking", "conversational", "--overlap-prob", "0", "--engines",
                       "espeak,flite,festival"],
    "backchannel": ["--turn-taking", "conversational", "--overlap-prob", "0", "--backchannels", "1", "--engines",
                    "espeak,flite"],
}


@pytest.mark.parametrize("name", sorted(FIXTURE_COMMANDS))
def test_conversation_fixtures_load_and_are_current(name: str, tmp_path: Path) -> None:
    from merc.stream.recordings.recording import open_recording, read_gold

    path = CONVERSATIONS / name
    assert sum(f.stat().st_size for f in path.iterdir()) < 1_000_000
    rec = open_recording(path)
    assert rec.problems == ()
    gold = read_gold(rec)
    audio, _, manifest = read_recording(path)
    assert manifest["duration_s"] <= 20.0
    synth = manifest["synth"]
    offsets = synth["floor_transfer_offsets_s"]
    if name == "short_gaps":
        assert len(gold) == 6 and len({g["speaker"] for g in gold}) == 2
        assert all(0.1 - 1e-3 <= o <= 0.3 + 1e-3 for o in offsets) and len(offsets) == 5
    elif name == "overlap":
        assert len({g["speaker"] for g in gold}) == 2 and synth["overlaps"] == 1
        assert [o for o in offsets if o < 0] == [pytest.approx(-0.5, abs=1e-3)]
    elif name == "three_speakers":
        assert len({g["speaker"] for g in gold}) == 3
        assert len({v["engine"] for v in synth["voices"].values()}) == 3
    else:
        (bc,) = synth["backchannels"]
        host = gold[bc["inside_turn"]]
        assert host["t_start"] < bc["t_start"] < bc["t_end"] < host["t_end"] and bc["speaker"] != host["speaker"]
    needed = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}
    for engine in synth["engines"]:
        _needs(needed[engine])
    engines = Engines.find(list(synth["engines"]))
    pools = {name: [v.name for v in engines.pool(name)] for name in synth["engines"]}
    if engines.versions() != synth["engines"] or pools != synth["voice_pools"]:
        pytest.skip(f"fixtures were made with {synth['engines']} (voices {synth['voice_pools']}), this machine has "
                    f"{engines.versions()} (voices {pools})")
    assert main(["--dialogues", str(CONVERSATIONS / "dialogues.jsonl"), "--dialogue-ids", name,
                 *FIXTURE_COMMANDS[name], "--out", str(tmp_path)]) == 0
    again, gold_again, manifest_again = read_recording(tmp_path / name)
    assert manifest_again["synth"]["voices"] == synth["voices"]
    assert [(g["t_start"], g["t_end"]) for g in gold_again] == [(g["t_start"], g["t_end"]) for g in gold], \
        "the generator changed: regenerate the fixtures (tests/fixtures/conversations/README.md)"
    assert np.abs(again - audio).max() < 2 / 32768
