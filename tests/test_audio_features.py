"""The utterance-level acoustic vector: shape and names, what it says about real emotional speech,
resampling, clear errors, no NaN; and the pooled Whisper encoder alternative."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from merc.models.features.audio_features import (
    ACOUSTIC_DIM,
    WHISPER_FRAME_SAMPLES,
    AcousticFeaturizer,
    packaged_whisper_model,
    pool_encoder_states,
)


@pytest.fixture(scope="module")
def featurizer() -> AcousticFeaturizer:
    return AcousticFeaturizer()


def emodb(data_dir: Path) -> Path:
    wav_dir = data_dir / "emodb" / "wav"
    if not wav_dir.is_dir():
        pytest.skip(f"EmoDB not found under {wav_dir}")
    return wav_dir


def read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return audio


def test_vector_is_88_named_egemaps_functionals(featurizer, data_dir):
    features = featurizer(read(emodb(data_dir) / "03a01Wa.wav"))
    assert features.shape == (ACOUSTIC_DIM,) == (featurizer.dim,) and features.dtype == np.float32
    assert np.isfinite(features).all() and np.count_nonzero(features) > 80
    assert len(featurizer.names) == ACOUSTIC_DIM and "loudness_sma3_amean" in featurizer.names


def test_anger_is_pitched_higher_than_sadness_for_every_emodb_speaker(featurizer, data_dir):
    wav_dir = emodb(data_dir)
    pitch = featurizer.names.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    speakers = sorted({p.name[:2] for p in wav_dir.glob("*.wav")})
    assert len(speakers) == 10
    for speaker in speakers:
        means = {}
        for emotion in "WT":  # Wut (anger), Trauer (sadness)
            files = sorted(wav_dir.glob(f"{speaker}???{emotion}?.wav"))[:2]
            assert files, f"no {emotion} recordings of speaker {speaker}"
            means[emotion] = np.mean([featurizer(read(p))[pitch] for p in files])
        assert means["W"] > means["T"] + 2.0, (speaker, means)  # semitones


def test_other_sample_rates_are_resampled_not_misread(featurizer, data_dir):
    audio = read(emodb(data_dir) / "08a01Na.wav")
    reference = featurizer(audio)
    for rate, up, down in ((48000, 3, 1), (44100, 441, 160), (22050, 441, 320)):
        resampled = featurizer(resample_poly(audio, up, down).astype(np.float32), sample_rate=rate)
        relative = np.abs(resampled - reference) / (np.abs(reference) + 1e-3)
        assert np.median(relative) < 0.05, rate
    # misreading 48 kHz audio as 16 kHz would put the voice down an octave and a half
    misread = featurizer(resample_poly(audio, 3, 1).astype(np.float32), sample_rate=16000)
    assert np.median(np.abs(misread - reference) / (np.abs(reference) + 1e-3)) > 0.1


def test_ravdess_clip_at_22k(featurizer, data_dir):
    clip = data_dir / "ravdess_sample" / "03-01-05-01-01-01-01.wav"
    if not clip.is_file():
        pytest.skip(f"{clip} not found")
    audio, rate = sf.read(clip, dtype="float32")
    assert rate == 22050
    features = featurizer(audio, sample_rate=rate)
    assert features.shape == (ACOUSTIC_DIM,) and np.isfinite(features).all()


def test_integer_pcm_equals_float(featurizer, data_dir):
    audio = read(emodb(data_dir) / "03a01Wa.wav")
    pcm = np.round(audio * 32767).astype(np.int16)
    # scaled, not read as amplitudes 32767 times too loud; 16-bit rounding moves formants a little
    np.testing.assert_allclose(featurizer(pcm), featurizer(audio), rtol=0.05, atol=1e-3)


def test_silence_and_the_shortest_turns_give_numbers_not_nan(featurizer, data_dir):
    assert np.isfinite(featurizer(np.zeros(16000, dtype=np.float32))).all()
    audio = read(emodb(data_dir) / "03a01Wa.wav")
    assert np.isfinite(featurizer(audio[:1700])).all()  # just over the 0.1 s minimum


def test_bad_input_is_rejected_clearly(featurizer):
    with pytest.raises(ValueError, match="empty"):
        featurizer(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="too short"):
        featurizer(np.ones(800, dtype=np.float32) * 0.1)  # 0.05 s
    with pytest.raises(ValueError, match="too short"):
        featurizer(np.ones(1000, dtype=np.float32) * 0.1, sample_rate=16000 * 2)
    with pytest.raises(ValueError, match="mono"):
        featurizer(np.zeros((16000, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="sample_rate"):
        featurizer(np.zeros(16000, dtype=np.float32), sample_rate=0)
    with pytest.raises(ValueError, match="kind"):
        AcousticFeaturizer(kind="mfcc")


# --- pooled Whisper encoder states -------------------------------------------------------------

def test_pooling_counts_only_the_frames_of_real_audio():
    states = np.full((1, 1500, 4), 100.0, dtype=np.float32)  # 30 s of frames, padding = 100
    states[0, :50] = 1.0  # 1 s of real audio = 50 frames of 20 ms
    np.testing.assert_allclose(pool_encoder_states(states, 16000), np.ones(4))
    # a partial last frame still counts
    partial = pool_encoder_states(states, 49 * WHISPER_FRAME_SAMPLES + 1)
    np.testing.assert_allclose(partial, np.ones(4))
    assert pool_encoder_states(states[0], 60 * 16000).mean() == pytest.approx((50 + 1450 * 100) / 1500)
    with pytest.raises(ValueError, match="frames, dim"):
        pool_encoder_states(np.zeros((2, 10, 4)), 16000)
    with pytest.raises(ValueError, match="n_samples"):
        pool_encoder_states(states, 0)


def test_whisper_kinds_on_real_speech(data_dir):
    wav_dir = emodb(data_dir)
    model = packaged_whisper_model()
    padded = AcousticFeaturizer("whisper", whisper_model=model)
    unpadded = AcousticFeaturizer("whisper_unpadded", whisper_model=model)
    anger, sadness = read(wav_dir / "03a01Wa.wav"), read(wav_dir / "03a02Ta.wav")
    a, s = padded(anger), padded(sadness)
    assert a.shape == (padded.dim,) == (384,) and a.dtype == np.float32 and np.isfinite(a).all()
    assert unpadded.names == padded.names and len(padded.names) == 384

    def cosine(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    # the two ways of encoding agree more on one utterance than two utterances agree
    assert cosine(a, unpadded(anger)) > cosine(a, s)
    # a turn longer than Whisper's 30-s window is encoded piece by piece, not cut off at 30 s
    first_30s = np.concatenate([anger] * 16)[:30 * 16000]
    pieces = [first_30s, sadness]
    expected = np.average([unpadded(p) for p in pieces], axis=0, weights=[p.size for p in pieces])
    np.testing.assert_allclose(unpadded(np.concatenate(pieces)), expected, rtol=1e-4, atol=1e-4)
