"""Corpus text in the form live ASR writes it, for training and for evaluation.

Live users only ever feed the text model Whisper transcripts: sentence case, periods, commas and
question marks, almost never "!", no "..." runs, no typographic quotes. Corpus text is script
text, and a model trained on it alone leans on "!" (on MELD test the old default fell from 61.42 to
49.93 weighted F1 when "!" became "."). This module holds

* the deterministic transforms: `whisper_style` (the form Whisper tiny.en writes), and the two
  evaluation styles of `EVAL_STYLES`, `no_exclaim` ("!" -> ".") and `lower_nopunct`;
* seeded training augmentation (`AsrAugment`, `augment_dialogues`): each training turn gets a
  style drawn from gold / whisper / lower-no-punctuation, and ASR-style turns get light word noise
  like Whisper's errors (a short word dropped, a word repeated, a homophone swapped in).

Every draw comes from a generator seeded by (seed, epoch, dialogue id), so a given seed and epoch
always give the same text whatever order dialogues are processed in.
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from merc.models.data.corpora import Dialogue

# Training styles (what a turn may look like) and evaluation styles (what merc-eval can score on).
TRAIN_STYLES = ("gold", "whisper", "lower_nopunct")
EVAL_STYLES = ("gold", "no_exclaim", "lower_nopunct", "whisper")

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
                         "\u2013": "-", "\u2014": "-", "\u00a0": " "})
_ELLIPSIS = re.compile(r"\s*(?:\u2026|\.{2,})[\s.\u2026]*")
_SPACE = re.compile(r"\s+")
_MARKS = ".,?!\"'"
# Everything but letters, digits, apostrophes inside words and spaces goes in `lower_nopunct`.
_NOT_WORD = re.compile(r"[^\w\s']|_")
_LONE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")

# Small confusion sets in the spirit of tiny.en's substitutions (sound-alikes and spoken forms).
HOMOPHONES: dict[str, tuple[str, ...]] = {
    "to": ("too", "two"), "too": ("to",), "two": ("to", "too"), "there": ("their", "they're"),
    "their": ("there",), "they're": ("there",), "your": ("you're",), "you're": ("your",),
    "its": ("it's",), "it's": ("its",), "then": ("than",), "than": ("then",), "know": ("no",),
    "no": ("know",), "right": ("write",), "here": ("hear",), "hear": ("here",), "for": ("four",),
    "one": ("won",), "were": ("we're",), "we're": ("were",), "okay": ("ok",), "ok": ("okay",),
    "yeah": ("yes", "yep"), "yes": ("yeah",), "gonna": ("going to",), "wanna": ("want to",),
    "y'know": ("you know",), "and": ("an",), "a": ("the",), "the": ("a",), "oh": ("o",),
    "hey": ("hi",), "whoa": ("woah",), "uh": ("a",), "um": ("",), "i'm": ("im",),
    "cause": ("because",), "would": ("wood",), "our": ("are",), "are": ("our",),
}
_NUMBERS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
            "eight": "8", "nine": "9", "ten": "10", "twenty": "20", "fifty": "50", "hundred": "100"}


def normalise_quotes(text: str) -> str:
    """Typographic quotes and dashes as ASCII: Whisper's tokenizer output never has curly quotes."""
    return text.translate(_QUOTES)


def no_exclaim(text: str) -> str:
    """Every "!" as "." and nothing else: the evaluation transform behind the issue's 49.93 figure."""
    return text.replace("!", ".")


def lower_nopunct(text: str) -> str:
    """Lowercase, no punctuation (apostrophes inside words kept): the barest form an ASR may give."""
    text = _NOT_WORD.sub(" ", normalise_quotes(text).lower())
    return _SPACE.sub(" ", _LONE_APOSTROPHE.sub(" ", text)).strip()


def whisper_style(text: str) -> str:
    """The form Whisper tiny.en writes a sentence in: ASCII quotes, no double quotes, ellipses and
    "!" as ".", "?!" as "?", no repeated marks, sentence case at the start."""
    text = normalise_quotes(text).replace('"', "")
    text = re.sub(r"[?!]*\?[?!]*", "?", text)  # "?!", "!?", "??" -> "?"
    text = text.replace("!", ".")
    text = _ELLIPSIS.sub(". ", text)
    text = re.sub(r"\s*-{2,}\s*", ", ", text)  # spoken dashes read as a pause
    text = re.sub(r"([.,?])(?:\s*[.,])+", r"\1", text)  # ". ." / ",." runs left over
    text = re.sub(r"\s+([.,?])", r"\1", text)
    text = _SPACE.sub(" ", text).strip().lstrip(".,")
    text = re.sub(r"([.?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text.strip())
    return text[:1].upper() + text[1:]


def apply_style(text: str, style: str) -> str:
    """`text` in one of `EVAL_STYLES` (or `TRAIN_STYLES`); "gold" returns it unchanged."""
    if style == "gold":
        return text
    if style == "no_exclaim":
        return no_exclaim(text)
    if style == "lower_nopunct":
        return lower_nopunct(text)
    if style == "whisper":
        return whisper_style(text)
    raise ValueError(f"unknown text style {style!r}; expected one of {', '.join(EVAL_STYLES)}")


def styled_dialogues(dialogues: Sequence[Dialogue], style: str) -> list[Dialogue]:
    """Every turn of `dialogues` in `style` (labels, speakers and times unchanged): what merc-eval
    scores with --text-style, and the ASR-style validation view used for model selection."""
    if style == "gold":
        return list(dialogues)
    return [replace(d, utterances=tuple(replace(u, text=_non_empty(apply_style(u.text, style), u.text))
                                        for u in d.utterances)) for d in dialogues]


def _non_empty(text: str, original: str) -> str:
    # A turn of punctuation only ("...", "?!") keeps a mark, so it stays a text turn like in the corpus.
    return text if text.strip() else ("." if original.strip() else original)


@dataclass(frozen=True)
class AsrAugment:
    """Training-text augmentation: per turn, whisper style with `p_whisper`, lowercase without
    punctuation with `p_lower`, else the gold text; ASR-style turns get word noise at `word_noise`
    per word and, with `p_digits`, number words as digits (Whisper writes both)."""

    p_whisper: float = 0.5
    p_lower: float = 0.25
    word_noise: float = 0.03
    p_digits: float = 0.3

    def __post_init__(self) -> None:
        for name in ("p_whisper", "p_lower", "word_noise", "p_digits"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"asr augmentation: {name} must be in [0, 1], not {getattr(self, name)}")
        if self.p_whisper + self.p_lower > 1.0:
            raise ValueError(f"asr augmentation: p_whisper + p_lower must be at most 1, "
                             f"not {self.p_whisper + self.p_lower}")


def dialogue_rng(seed: int, epoch: int, dialogue_id: str) -> random.Random:
    """A generator that depends only on (seed, epoch, dialogue id): stable across processes and orders."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{dialogue_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def word_noise(text: str, rate: float, rng: random.Random) -> str:
    """Whisper-like word errors at `rate` per word: drop a short word, repeat a word, or swap in a
    sound-alike (`HOMOPHONES`). Punctuation attached to a word stays with it."""
    if rate <= 0.0:
        return text
    out: list[str] = []
    for token in text.split(" "):
        if not token or rng.random() >= rate:
            out.append(token)
            continue
        core = token.strip(_MARKS)
        lead, tail = token[:len(token) - len(token.lstrip(_MARKS))], token[len(token.rstrip(_MARKS)):]
        op = rng.random()
        swaps = HOMOPHONES.get(core.lower())
        if op < 0.35 and swaps:
            new = rng.choice(swaps)
            if core[:1].isupper():
                new = new[:1].upper() + new[1:]
            out.append(lead + new + tail if new else tail.strip())
        elif op < 0.7 and len(core) <= 3 and len(text.split()) > 2:
            if tail.strip() and out:  # keep the sentence mark on the previous word
                out[-1] = out[-1] + tail
        else:
            out.extend([lead + core, core + tail] if core else [token, token])
    return _SPACE.sub(" ", " ".join(out)).strip() or text


def _digits(text: str, rng: random.Random) -> str:
    return re.sub(r"\b(" + "|".join(_NUMBERS) + r")\b",
                  lambda m: _NUMBERS[m.group(1)] if rng.random() < 0.5 else m.group(1), text)


def augment_text(text: str, cfg: AsrAugment, rng: random.Random) -> tuple[str, str]:
    """(style drawn, text in it) for one training turn; the draw consumes `rng` deterministically."""
    draw = rng.random()
    if draw < cfg.p_whisper:
        style = "whisper"
    elif draw < cfg.p_whisper + cfg.p_lower:
        style = "lower_nopunct"
    else:
        return "gold", text
    new = whisper_style(text)
    if rng.random() < cfg.p_digits:
        new = _digits(new, rng)
    new = word_noise(new, cfg.word_noise, rng)
    if style == "lower_nopunct":
        new = lower_nopunct(new)
    return style, _non_empty(new, text)


def augment_dialogues(dialogues: Sequence[Dialogue], cfg: AsrAugment, seed: int, epoch: int = 0) -> list[Dialogue]:
    """Training dialogues with each turn's text augmented (see `AsrAugment`). The encoder's context
    turns are built from these same texts, so context reads like ASR too."""
    out = []
    for d in dialogues:
        rng = dialogue_rng(seed, epoch, d.id)
        turns = tuple(replace(u, text=augment_text(u.text, cfg, rng)[1]) for u in d.utterances)
        out.append(replace(d, utterances=turns))
    return out
