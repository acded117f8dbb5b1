"""Speaker attribution: the clustering rules on hand-made embeddings, then the voice embedder and
attributor together on real EmoDB speakers and on synthetic espeak-ng voices."""
from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from scipy.optimize import linear_sum_assignment
from scipy.signal import resample_poly

from merc.stream.turns.speakers import EMBEDDING_DIM, SpeakerAttributor, SpeakerEmbedder


def unit(*values: float) -> np.ndarray:
    v = np.zeros(8)
    v[:len(values)] = values
    return v / np.linalg.norm(v)


def at_angle(degrees: float) -> np.ndarray:
    """A unit vector in the plane of the first two axes, `degrees` away from the first axis."""
    return unit(np.cos(np.radians(degrees)), np.sin(np.radians(degrees)))


def mapped_accuracy(truth: list[str], predicted: list[str | None]) -> float:
    """Share of turns whose label matches the truth under the best one-to-one label mapping;
    unknown (None) turns and turns in clusters left unmatched count as wrong."""
    true_labels = sorted(set(truth))
    found = sorted({p for p in predicted if p is not None})
    counts = np.zeros((len(true_labels), max(1, len(found))))
    for t, p in zip(truth, predicted):
        if p is not None:
            counts[true_labels.index(t), found.index(p)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(truth))


# --- clustering rules, no audio -----------------------------------------------------------------

def test_labels_follow_order_of_appearance_and_repeat_for_the_same_voice():
    attributor = SpeakerAttributor(threshold=0.8)
    a, b, c = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    assert [attributor.assign(v) for v in (b, b, a, c, a, b)] == ["S1", "S1", "S2", "S3", "S2", "S1"]
    assert attributor.speakers == 3


def test_no_embedding_is_unknown_and_changes_nothing():
    attributor = SpeakerAttributor()
    assert attributor.assign(None) is None
    assert attributor.speakers == 0
    assert attributor.assign(unit(1, 0)) == "S1"
    assert attributor.assign(None) is None
    assert attributor.speakers == 1


def test_max_speakers_never_creates_more_clusters_and_assigns_to_the_nearest():
    attributor = SpeakerAttributor(max_speakers=2, threshold=0.9)
    assert attributor.assign(at_angle(0)) == "S1"
    assert attributor.assign(at_angle(90)) == "S2"
    assert attributor.assign(at_angle(30)) == "S1"  # below threshold for both: nearest wins
    assert attributor.assign(at_angle(60)) == "S2"
    assert attributor.assign(unit(0.3, 0, 1)) == "S1"  # far from both, still placed
    assert attributor.speakers == 2
    unlimited = SpeakerAttributor(threshold=0.9)
    assert [unlimited.assign(at_angle(d)) for d in (0, 90, 30)] == ["S1", "S2", "S3"]


def test_a_turn_equally_close_to_two_speakers_is_unknown_and_does_not_move_them():
    attributor = SpeakerAttributor(threshold=0.6)
    assert attributor.assign(at_angle(0)) == "S1"
    assert attributor.assign(at_angle(60)) == "S2"
    assert attributor.assign(at_angle(30)) is None  # cos 30 = 0.87 to both: ambiguous
    assert attributor.centroids[0] @ at_angle(0) == pytest.approx(1.0)
    assert attributor.centroids[1] @ at_angle(60) == pytest.approx(1.0)
    assert attributor.assign(at_angle(25)) == "S1"  # 5 degrees closer is not ambiguous


def test_centroid_is_the_normalised_mean_and_lets_a_drifting_voice_stay_one_speaker():
    attributor = SpeakerAttributor(threshold=0.9)
    members = [at_angle(0)] + [at_angle(25)] * 3  # cos 25 = 0.906: joins S1 each time
    assert [attributor.assign(v) for v in members] == ["S1"] * 4
    mean = np.sum(members, axis=0)
    np.testing.assert_allclose(attributor.centroids[0], mean / np.linalg.norm(mean), atol=1e-9)
    # 40 degrees from the first turn (cos 0.77) but within reach of the running centroid
    assert attributor.assign(at_angle(40)) == "S1"
    fresh = SpeakerAttributor(threshold=0.9)
    assert [fresh.assign(v) for v in (at_angle(0), at_angle(40))] == ["S1", "S2"]


def test_reset_starts_a_new_conversation():
    attributor = SpeakerAttributor()
    attributor.assign(unit(1, 0))
    attributor.assign(unit(0, 1))
    attributor.reset()
    assert attributor.speakers == 0
    assert attributor.assign(unit(0, 1)) == "S1"


def test_consistent_face_track_pulls_a_moderately_similar_voice_into_its_speaker():
    def run(tracks: list[int | None]) -> list[str | None]:
        attributor = SpeakerAttributor(threshold=0.9, face_bonus=0.1)
        turns = [at_angle(0), at_angle(5), at_angle(-5), at_angle(90), at_angle(33)]
        return [attributor.assign(v, t) for v, t in zip(turns, tracks)]

    # cos 33 = 0.84 to S1: a new speaker on voice alone, S1 when the face track of S1's turns
    # is on screen (face track 7 went with S1 on three voice-confident turns)
    assert run([None] * 5) == ["S1", "S1", "S1", "S2", "S3"]
    assert run([7, 7, 7, 8, 7]) == ["S1", "S1", "S1", "S2", "S1"]
    # a track seen with both speakers is no cue
    assert run([7, 7, 7, 7, 7])[-1] == "S3"


def test_face_track_never_overrides_a_confident_voice():
    attributor = SpeakerAttributor(threshold=0.8, face_bonus=0.5)
    for v in (at_angle(0), at_angle(3), at_angle(-3)):
        assert attributor.assign(v, face_track=1) == "S1"
    assert attributor.assign(at_angle(50), face_track=2) == "S2"
    # cos 15 = 0.97 to S2, cos 35 = 0.82 to S1: S1's face on screen does not outvote the voice
    assert attributor.assign(at_angle(35), face_track=1) == "S2"


def test_invalid_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="max_speakers"):
        SpeakerAttributor(max_speakers=0)
    with pytest.raises(ValueError, match="threshold"):
        SpeakerAttributor(threshold=1.5)
    attributor = SpeakerAttributor()
    with pytest.raises(ValueError, match="non-zero"):
        attributor.assign(np.zeros(8))
    attributor.assign(unit(1, 0))
    with pytest.raises(ValueError, match="dims"):
        attributor.assign(np.ones(3))


# --- real audio ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    return SpeakerEmbedder()


def emodb_turns(data_dir, speakers: list[str], emotions: str, per_speaker: int) -> list[tuple[str, np.ndarray]]:
    """(speaker, 16 kHz audio) of each speaker's first utterances with the given emotion letters."""
    wav_dir = data_dir / "emodb" / "wav"
    if not wav_dir.is_dir():
        pytest.skip(f"EmoDB not found under {wav_dir}")
    turns = []
    for speaker in speakers:
        files = sorted(p for p in wav_dir.glob(f"{speaker}*.wav") if p.name[5] in emotions)[:per_speaker]
        assert len(files) == per_speaker, f"EmoDB speaker {speaker} has too few utterances"
        turns += [(speaker, sf.read(p, dtype="float32")[0]) for p in files]
    return turns


def shuffled_accuracy(turns: list[tuple[str, np.ndarray]], embedder: SpeakerEmbedder,
                      max_speakers: int | None, seeds: int = 5) -> tuple[float, list[int]]:
    """Mean mapped accuracy over several turn orders, and the speaker counts found."""
    embeddings = [embedder.embed(audio) for _, audio in turns]
    assert all(e is not None and e.shape == (EMBEDDING_DIM,) for e in embeddings)
    accuracies, counts = [], []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(turns))
        attributor = SpeakerAttributor(max_speakers=max_speakers)
        predicted = [attributor.assign(embeddings[i]) for i in order]
        accuracies.append(mapped_accuracy([turns[i][0] for i in order], predicted))
        counts.append(attributor.speakers)
    return float(np.mean(accuracies)), counts


def test_four_emodb_speakers_are_told_apart(data_dir, embedder):
    # the two men and two women with the most neutral recordings, five neutral turns each
    turns = emodb_turns(data_dir, ["03", "15", "08", "09"], "N", per_speaker=5)
    accuracy, counts = shuffled_accuracy(turns, embedder, max_speakers=None)
    assert accuracy >= 0.85 and counts == [4] * 5, (accuracy, counts)
    hinted, counts = shuffled_accuracy(turns, embedder, max_speakers=4)
    assert hinted >= 0.85 and counts == [4] * 5, (hinted, counts)


def test_two_emodb_speakers_across_emotions_with_a_speaker_count_hint(data_dir, embedder):
    # acted anger/joy/sadness moves the voice embedding far; the --speakers hint keeps two clusters
    turns = emodb_turns(data_dir, ["03", "08"], "NWFT", per_speaker=6)
    accuracy, counts = shuffled_accuracy(turns, embedder, max_speakers=2)
    assert accuracy >= 0.75 and counts == [2] * 5, (accuracy, counts)


ESPEAK_VOICES = {  # variant and pitch per synthetic speaker
    "A": ["-v", "en-us+m3", "-p", "45"],
    "B": ["-v", "en-gb+f4", "-p", "95"],
    "C": ["-v", "en-gb-scotland+f2", "-p", "85"],
    "D": ["-v", "en-us+m7", "-p", "10"],
}
SENTENCES = [
    "I really did not expect to see you here today.", "Could you pass me the report from last week?",
    "That is the best news I have heard all year!", "We should leave before the traffic gets worse.",
    "Honestly, I am not sure this plan is going to work.", "The meeting has been moved to Thursday afternoon.",
    "My brother lives in a small town near the coast.", "Please remember to lock the door when you go out.",
    "Nobody told me the train would be this late.", "Let us try the new restaurant on the corner.",
    "I have been waiting for this moment for months.", "Can you believe how cold it was this morning?",
    "She finally finished the painting she started in May.", "We need three more chairs for the guests.",
    "The children were laughing all the way home.", "I think the printer is out of paper again.",
]


def espeak(voice: list[str], text: str) -> np.ndarray:
    """espeak-ng speech at 16 kHz (it synthesises at 22.05 kHz)."""
    wav = subprocess.run(["espeak-ng", "--stdout", *voice, text], capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 22050
    return resample_poly(audio, 320, 441).astype(np.float32)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synthetic_voices_separate(embedder):
    # each voice says its own four sentences, as in a conversation
    turns = [(name, espeak(voice, SENTENCES[4 * i + j]))
             for i, (name, voice) in enumerate(ESPEAK_VOICES.items()) for j in range(4)]
    accuracy, counts = shuffled_accuracy(turns, embedder, max_speakers=None)
    assert accuracy >= 0.9 and counts == [4] * 5, (accuracy, counts)


def test_short_turns_are_embedded_and_silence_is_not(data_dir, embedder):
    (_, audio), (_, other) = emodb_turns(data_dir, ["03", "08"], "N", per_speaker=1)
    start = int(np.argmax(np.abs(audio) > 0.1 * np.abs(audio).max()))  # where speech begins
    short = embedder.embed(audio[start:start + 6400])  # 0.4 s of speech
    assert short is not None and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    # still the speaker's voice: nearer their full turn than another speaker's
    assert float(short @ embedder.embed(audio)) > float(short @ embedder.embed(other)) + 0.05
    assert embedder.embed(audio[start:start + 1600]) is None  # 0.1 s: too short to say
    assert embedder.embed(np.zeros(32000, dtype=np.float32)) is None
    hum = 0.05 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000)
    hiss = 0.01 * np.random.default_rng(0).standard_normal(32000)
    assert embedder.embed(hum) is None and embedder.embed(hiss) is None  # no voice in 2 s
    with pytest.raises(ValueError, match="mono"):
        embedder.embed(np.stack([audio, audio], axis=1))


def test_sample_rate_does_not_change_the_voice(data_dir, embedder):
    (_, audio), = emodb_turns(data_dir, ["08"], "N", per_speaker=1)
    at_16k = embedder.embed(audio)
    at_44k = embedder.embed(resample_poly(audio, 441, 160).astype(np.float32), sample_rate=44100)
    assert float(at_16k @ at_44k) > 0.98


# --- short turns, revision of earlier turns -----------------------------------------------------


def test_a_short_turn_never_opens_a_speaker_but_joins_a_close_one():
    attributor = SpeakerAttributor()
    assert attributor.assign(at_angle(0), seconds=0.5) is None  # nobody yet: unknown, not S1
    assert attributor.assign(at_angle(0), seconds=2.0) == "S1"
    assert attributor.assign(at_angle(45), seconds=0.6) == "S1"  # cos 45 = 0.71: below 0.78, above 0.6
    assert attributor.assign(at_angle(90), seconds=0.6) is None  # far from everyone: unknown
    assert attributor.speakers == 1
    assert attributor.assign(at_angle(90), seconds=2.0) == "S2"  # a long turn does open one


def test_revise_moves_an_early_turn_to_the_speaker_it_turned_out_to_be_closer_to():
    attributor = SpeakerAttributor(threshold=0.85)
    assert [attributor.assign(at_angle(d), seconds=2.0) for d in (30, 0)] == ["S1", "S1"]
    assert attributor.revise() == {}
    assert attributor.assign(at_angle(50), seconds=2.0) == "S2"
    assert attributor.revise() == {0: "S2"}  # 30 is 20 degrees from S2, 30 from the rest of S1
    assert attributor.revise() == {}  # settled: nothing moves twice
    assert attributor.assign(at_angle(0), seconds=2.0) == "S1"


def test_revise_never_moves_a_speakers_only_turn_to_a_voice_it_would_not_have_joined():
    attributor = SpeakerAttributor()
    labels = [attributor.assign(at_angle(d), seconds=2.0) for d in (0, 60, 0, 60)]
    assert labels == ["S1", "S2", "S1", "S2"]
    assert attributor.revise() == {}


def test_revise_folds_two_labels_of_one_voice_into_the_first_and_places_unknown_turns():
    attributor = SpeakerAttributor(threshold=0.9, margin=0.0)
    assert attributor.assign(at_angle(0), seconds=2.0) == "S1"
    assert attributor.assign(at_angle(30), seconds=2.0) == "S2"  # cos 30 = 0.87 < 0.9
    # the first speaker's later turns drift toward the second label until the two centroids meet
    for degrees in (15, 15, 15, 15):
        attributor.assign(at_angle(degrees), seconds=2.0)
    changed = attributor.revise()
    assert set(changed.values()) == {"S1"} and 1 in changed
    assert attributor.speakers == 1
    assert attributor.assign(at_angle(14), seconds=2.0) == "S1"
