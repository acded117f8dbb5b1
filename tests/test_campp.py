"""CAM++ voice embeddings (merc.stream.turns.campp): the packaged weights and their checksum, Kaldi
features, and real speakers told apart (EmoDB actors, espeak-ng voices)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from speech import say

from merc.stream.turns.campp import (
    EMBEDDING_DIM,
    PACKAGE,
    WEIGHTS_SHA256,
    CamPlusEmbedder,
    SpeakerModelError,
    fbank,
    packaged_weights,
)


@pytest.fixture(scope="module")
def embedder() -> CamPlusEmbedder:
    return CamPlusEmbedder()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy machine torch's thread pool makes each embedding 10-25x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_weights_come_from_the_installed_package(embedder):
    path = packaged_weights()
    assert embedder.path == path and PACKAGE in path.parts and path.name == "campplus_cn_en_common.pt"
    vector = embedder.embed(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    assert vector is not None and vector.dtype == np.float32 and vector.shape == (EMBEDDING_DIM,)
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5


def test_a_corrupted_copy_of_the_weights_is_refused_by_name(tmp_path):
    copy = tmp_path / "campplus_cn_en_common.pt"
    shutil.copyfile(packaged_weights(), copy)
    with open(copy, "r+b") as f:  # one byte of the weights changed
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SpeakerModelError, match=WEIGHTS_SHA256) as caught:
        CamPlusEmbedder(weights=copy)
    assert str(copy) in str(caught.value) and PACKAGE in str(caught.value)
    assert caught.value.code == "speaker_model_unavailable"
    with pytest.raises(SpeakerModelError, match="missing") as caught:
        CamPlusEmbedder(weights=tmp_path / "absent.pt")
    assert str(tmp_path / "absent.pt") in str(caught.value)


def kaldi_fbank(x: np.ndarray) -> np.ndarray:
    """Kaldi's (and torchaudio.compliance.kaldi's) fbank as 3D-Speaker trained CAM++ on, written out:
    25 ms Povey windows every 10 ms, DC removed, pre-emphasis 0.97, 512-point power spectrum,
    80 triangular mel bins from 20 Hz to Nyquist, log; then the utterance mean subtracted."""
    length, shift, nfft, bins = 400, 160, 512, 80
    frames = np.stack([x[i:i + length] for i in range(0, len(x) - length + 1, shift)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * 0.03, frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames * window, nfft))[:, :nfft // 2] ** 2

    def mel(f):
        return 1127 * np.log(1 + f / 700)

    low, step = mel(20), (mel(8000) - mel(20)) / (bins + 1)
    fft_mel = mel(np.arange(nfft // 2) * 16000 / nfft)
    left, centre, right = (low + (np.arange(bins)[:, None] + k) * step for k in range(3))
    weights = np.clip(np.minimum((fft_mel - left) / (centre - left), (right - fft_mel) / (right - centre)), 0, None)
    energies = np.log(np.maximum(power @ weights.T, np.finfo(np.float32).eps))
    return energies - energies.mean(axis=0, keepdims=True)


def test_features_are_kaldi_fbank():
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(1).standard_normal(16000))
    ours, reference = fbank(x.astype(np.float32)), kaldi_fbank(x.astype(np.float32))
    assert ours.shape == reference.shape == (98, 80)
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_too_short_silent_or_broken_audio_has_no_embedding(embedder):
    speech = np.random.default_rng(2).normal(0, 0.1, 16000).astype(np.float32)
    assert embedder.embed(speech[:4799]) is None  # under 0.3 s
    assert embedder.embed(speech[:4800]) is not None
    assert embedder.embed(np.zeros(16000, dtype=np.float32)) is None
    broken = speech.copy()
    broken[100] = np.nan
    assert embedder.embed(broken) is None
    assert embedder.embed(np.zeros(0, dtype=np.float32)) is None


def test_emodb_actors_own_clips_are_closer_than_anyone_elses(embedder, data_dir):
    wav_dir = data_dir / "emodb" / "wav"
    if not wav_dir.is_dir():
        pytest.skip(f"EmoDB not found under {wav_dir}")
    speakers, vectors = [], []
    for speaker in ("03", "10", "08", "09"):  # two men, two women; two neutral sentences each
        for path in sorted(p for p in wav_dir.glob(f"{speaker}*.wav") if p.name[5] == "N")[:2]:
            audio, rate = sf.read(path, dtype="float32")
            vectors.append(embedder.embed(audio, rate))
            speakers.append(speaker)
    similarity = np.stack(vectors) @ np.stack(vectors).T
    same = np.equal.outer(speakers, speakers)
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    # measured: same speaker 0.68-0.79, different 0.33-0.57
    assert similarity[same & upper].min() > similarity[~same & upper].max() + 0.05, np.round(similarity, 2)


def test_espeak_voices_are_told_apart_and_resampling_keeps_the_voice(embedder):
    a1 = say("I really did not expect to see you here today.", "en-us+m3", 40)
    a2 = say("We should leave before the traffic gets worse.", "en-us+m3", 40)
    b1 = say("I really did not expect to see you here today.", "en-gb+f4", 80)
    va1, va2, vb1 = (embedder.embed(x) for x in (a1, a2, b1))
    assert float(va1 @ va2) > float(va1 @ vb1) + 0.1 and float(va1 @ va2) > float(va2 @ vb1) + 0.1
    from scipy.signal import resample_poly

    at_48k = resample_poly(a1, 3, 1).astype(np.float32)
    assert float(embedder.embed(at_48k, 48000) @ va1) > 0.95


def test_onnx_runtime_and_pytorch_give_the_same_voice(embedder, data_dir, tmp_path, monkeypatch):
    """The default CPU engine is the network exported to ONNX (once, into the cache); it must be
    the network PyTorch runs."""
    assert embedder.engine == "onnx"
    on_torch = CamPlusEmbedder(engine="torch")
    for name in ("03a01Nc.wav", "08a01Na.wav"):
        audio = sf.read(data_dir / "emodb" / "wav" / name, dtype="float32")[0]
        for clip in (audio[:12000], audio):  # 0.75 s and the whole sentence
            a, b = embedder.embed(clip), on_torch.embed(clip)
            assert float(a @ b) > 0.9999
    # a fresh cache gets the export; a damaged export is refused by name, not used
    monkeypatch.setenv("MERC_CACHE", str(tmp_path))
    CamPlusEmbedder()
    (exported,) = (tmp_path / "campp").glob("*.onnx")
    exported.write_bytes(b"not an onnx model")
    with pytest.raises(SpeakerModelError, match=exported.name):
        CamPlusEmbedder()
    with pytest.raises(ValueError, match="engine"):
        CamPlusEmbedder(engine="tensorrt")
