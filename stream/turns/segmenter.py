"""Turn segmentation: audio chunks in, one `SpeechSegment` per spoken turn out.

A turn starts when the VAD's speech probability reaches `threshold` and ends after `min_silence`
seconds below `neg_threshold` (hysteresis, so a dip inside a word does not end it). Turns longer
than `max_turn` are split (a monologue still gets emotions as it goes), and bursts shorter than
`min_turn` are dropped (clicks, coughs).

People answer each other after gaps of about 200 ms, far shorter than any silence wait that does
not also cut turns at breaths. So a turn also ends where the *voice* changes: when speech resumes
after a pause of at least `change_pause`, the speech before the pause (up to `change_context`
seconds) and the first `change_probe` seconds after it go to `voice_change`, and if it says the
voices differ the turn ends at the pause and the new speech opens the next turn. Without a
`voice_change` function the segmenter uses silence alone.

With an `end_of_turn` judge (stream/turns/end_of_turn.py), silence is not the only way a turn
ends: after `eot_silence` of it the judge transcribes the turn so far and a turn that reads as a
finished utterance ends there; one that does not waits for `min_silence`, now the hard cap. The
decode is kept with the turn (`SpeechSegment.judgement`) when no speech followed, so the turn is
not transcribed twice.

The segmenter is plain logic over a probability function (and the optional voice comparison and
judge): it holds no thread and no device, so it is fed by live capture and by replay alike.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from merc.stream.capture.audio import SAMPLE_RATE, AudioChunk
from merc.stream.capture.vad import FRAME
from merc.stream.turns.end_of_turn import Judgement
from merc.stream.turns.partials import TurnInProgress

VoiceChange = Callable[[np.ndarray, np.ndarray], "float | None"]
"""(speech before a pause, speech after it) -> how similar the two voices are (cosine; None:
cannot tell)."""
EndOfTurn = Callable[[np.ndarray], Judgement]
"""The turn's audio so far (up to its last speech, plus the pad) -> is it a finished utterance?"""


@dataclass(frozen=True)
class SegmenterOptions:
    """When a turn starts and ends (seconds are of audio, not of compute)."""

    threshold: float = 0.5
    """Speech probability that starts a turn."""
    neg_threshold: float = 0.35
    """Below this a frame counts as silence inside a turn."""
    min_silence: float = 0.6
    """Silence that ends a turn whatever was said (with the learned end of turn: the hard cap for
    a turn that does not read as finished). Shorter waits cut turns at breaths; longer ones add
    latency."""
    end_of_turn: str = "learned"
    """learned: after `eot_silence`, a turn whose transcript reads as a finished utterance ends
    (stream/turns/end_of_turn.py); silence: `min_silence` alone ends turns."""
    eot_silence: float = 0.25
    """Silence after which the end-of-turn judge is asked (once per pause)."""
    eot_threshold: float = 0.4
    """P(complete) at or above which the judged turn ends (chosen on validation conversations:
    bench/end_of_turn.py)."""
    eot_predecode_at: float = 0.5
    """With the judge: this far into the probe after a pause (a fraction of `change_probe`), the
    voices are compared once, and if they already differ the speech before the pause is decoded
    then, so a turn a new voice ends has its transcript when the change is confirmed (0: never)."""
    eot_early_cut: bool = False
    """With the judge: at that point of the probe, a turn whose transcript reads as finished ends
    at the pause at once, the voices differing (False: the full probe always decides). Off by
    default: on validation conversations it lowered boundary F1 (0.677 -> 0.662) and cut more
    turns early (30.5 -> 34.4 %; bench/end_of_turn.py)."""
    partial_every: float = 1.0
    """While a turn runs, every this many seconds of it the segmenter hands on the turn so far
    (a `TurnInProgress`, for a `turn.partial` event); 0: never. Only a segmenter built with
    `partials=True` does (the session's)."""
    min_turn: float = 0.25
    """Speech shorter than this is dropped as a click or a cough."""
    max_turn: float = 15.0
    """A turn longer than this is split, so long monologues still get results."""
    pad: float = 0.1
    """Audio kept before the first and after the last speech frame (soft onsets and endings)."""
    change_pause: float = 0.064
    """A dip at least this long inside a turn is where a new voice may take over."""
    change_dip: float = 0.8
    """Frames below this speech probability make such a dip. Stricter than `neg_threshold`: between
    two speakers 130 ms apart the VAD often falls below 0.35 for a single frame, below 0.8 for three."""
    change_probe: float = 0.75
    """Seconds of speech after such a pause compared with the speech before it."""
    change_context: float = 3.0
    """At most this much of the turn's speech before the pause is compared."""
    change_min_speech: float = 0.3
    """Less speech than this on either side of a pause cannot be compared (no decision)."""
    change_threshold: float = 0.70
    """Voice similarity (cosine) below which the voices differ (stream/turns/speaker_change.py).
    The three change thresholds' defaults are Resemblyzer's; a session takes those of its voice
    encoder (`VoiceProfile.segmenter_options`, stream/turns/voice_profiles.py)."""
    change_threshold_short: float = 0.55
    """The same when the speech before the pause is shorter than `change_probe` (a short
    embedding is a noisy one: "Well, ..." must not read as a new voice)."""
    change_hop: float = 0.5
    """While speech goes on without a dip, every this many seconds the last `change_probe` seconds are
    compared with the speech before them: the overlap case, where the next speaker starts before
    the last one stops (0: never)."""
    change_threshold_window: float = 0.5
    """The similarity below which such a comparison ends the turn; stricter than at a pause, where a
    change is far more likely."""
    split_on_voice: bool = True
    """Whether a change of voice ends a turn at all (False: silence alone, as before)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (every field is seconds or a probability)."""
        return asdict(self)

    @staticmethod
    def partials_at(speed: float | None) -> float:
        """The default `partial_every` for audio fed at `speed` x real time (None or infinite: as
        fast as it can be processed): provisional results only where someone could watch them."""
        return SegmenterOptions.partial_every if speed is not None and math.isfinite(speed) else 0.0


@dataclass(frozen=True)
class SpeechSegment:
    """One turn's audio, with the times latency is measured from."""

    t_start: float
    """Session time (s) of the first sample kept (speech onset minus the pad)."""
    t_end: float
    """Session time (s) of the last sample kept (end of speech plus the pad)."""
    audio: np.ndarray
    speech_end_clock: float
    """time.monotonic() when the turn's last speech frame arrived: the end of speech."""
    decided_clock: float
    """time.monotonic() when the segmenter decided the turn was over (after the silence wait)."""
    split: bool = False
    """True when the turn was cut at `max_turn` rather than ended by silence."""
    new_voice: bool = False
    """True when the turn began where the voice changed from the previous turn's (no silence)."""
    judgement: Judgement | None = None
    """The end-of-turn judge's verdict on exactly this audio (its transcript is the turn's), or None
    when the judge did not see this audio (no judge, a split, the stream's end, a pause too short)."""
    decoded_early: bool = False
    """The judgement was decoded at a pause while the voice after it was probed (its decode time
    overlapped the segmentation wait instead of following the silence)."""

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class _Pause:
    """A pause inside the turn in progress: a candidate for a change of voice."""

    last_speech: int
    """Frame index of the last speech frame before the pause."""
    resumed: int
    """Frame index of the first speech frame after it."""
    speech_end_clock: float
    """When that last speech frame arrived (the previous turn's end of speech, if it is one)."""
    speech_after: int = 0
    """Speech frames since the pause."""
    window: bool = False
    """True for a window inside continuous speech rather than a real pause."""


class TurnSegmenter:
    """Streaming VAD segmentation of one audio stream (optionally split at changes of voice)."""

    def __init__(self, vad: Callable[[np.ndarray], float], options: SegmenterOptions | None = None,
                 clock: Callable[[], float] | None = None, voice_change: VoiceChange | None = None,
                 end_of_turn: EndOfTurn | None = None, partials: bool = False) -> None:
        import time

        self.vad = vad
        self.options = options or SegmenterOptions()
        self.voice_change = voice_change
        self.end_of_turn = end_of_turn if self.options.end_of_turn == "learned" else None
        self._partial_frames = (max(1, round(self.options.partial_every * SAMPLE_RATE / FRAME))
                                if partials and self.options.partial_every > 0 else 0)
        self._partial_due = self._partial_frames  # turn frames at which the next partial is handed on
        self._judged: tuple[tuple[int, int, int], Judgement, bool] | None = None
        """The last verdict, with the turn it was about (first frame, last speech frame, frames judged)
        and whether it was an early decode at a pause (`_predecode`)."""
        self._clock = clock or time.monotonic
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a whole VAD frame
        self._frames_seen = 0
        self._pad_frames = max(1, round(self.options.pad * SAMPLE_RATE / FRAME))
        self._preroll: deque[np.ndarray] = deque(maxlen=self._pad_frames)
        self._turn: list[np.ndarray] | None = None  # frames of the turn in progress
        self._turn_first = 0  # frame index of the turn's first kept frame
        self._turn_new_voice = False
        self._last_speech = 0  # frame index of the last speech frame
        self._last_speech_clock = 0.0
        self._silent_frames = 0
        self._pause: _Pause | None = None
        self._since_window = 0  # speech frames since the last window comparison
        self._dip_frames = 0  # consecutive frames below change_dip
        self._last_voiced = 0  # frame index of the last frame at or above change_dip
        self._last_voiced_clock = 0.0

    @property
    def frame_seconds(self) -> float:
        return FRAME / SAMPLE_RATE

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def _frames(self, seconds: float) -> int:
        return max(1, round(seconds / self.frame_seconds))

    def feed(self, chunk: AudioChunk) -> Iterator[SpeechSegment | TurnInProgress]:
        """Add a chunk; yield each turn this chunk completes (and, with `partials`, each running
        turn's audio so far every `partial_every` seconds of it)."""
        samples = np.concatenate([self._pending, chunk.samples.astype(np.float32, copy=False)])
        whole = len(samples) // FRAME * FRAME
        self._pending = samples[whole:]
        for i in range(0, whole, FRAME):
            yield from self._frame(samples[i:i + FRAME], chunk.arrived)

    def flush(self) -> Iterator[SpeechSegment]:
        """End of stream: close the turn in progress, if any."""
        if self._turn is not None:
            yield from self._end_turn()

    def _frame(self, frame: np.ndarray, arrived: float) -> Iterator[SpeechSegment | TurnInProgress]:
        o = self.options
        index = self._frames_seen
        self._frames_seen += 1
        p = self.vad(frame)
        if self._turn is None:
            if p >= o.threshold:
                self._turn = [*self._preroll, frame]
                self._turn_first = index - len(self._preroll)
                self._turn_new_voice = False
                self._partial_due = self._partial_frames
                self._mark_speech(index, arrived)
                self._dip_frames, self._last_voiced, self._last_voiced_clock = 0, index, arrived
                self._preroll.clear()
            else:
                self._preroll.append(frame)
            return
        self._turn.append(frame)
        voiced = p >= o.change_dip
        resumed = self.voice_change is not None and voiced and self._dip_frames >= self._frames(o.change_pause)
        if voiced:
            last_voiced, last_voiced_clock = self._last_voiced, self._last_voiced_clock
            self._dip_frames, self._last_voiced, self._last_voiced_clock = 0, index, arrived
        else:
            self._dip_frames += 1
        if p >= o.neg_threshold:
            if resumed:
                yield from self._decide(final=False)  # a pause still open when this one comes
                if self._turn is not None and last_voiced >= self._turn_first:
                    self._pause = _Pause(last_voiced, index, last_voiced_clock)
            self._mark_speech(index, arrived)
            if self._partial_frames and self._turn is not None and len(self._turn) >= self._partial_due:
                self._partial_due = len(self._turn) + self._partial_frames
                yield TurnInProgress(self._turn_first * self.frame_seconds, np.concatenate(self._turn))
            if self._pause is not None:
                self._pause.speech_after += 1
                if self._pause.speech_after >= self._frames(o.change_probe):
                    yield from self._decide(final=False)
                elif o.eot_predecode_at > 0 and self._pause.speech_after == self._frames(
                        o.eot_predecode_at * o.change_probe) and self._predecode(self._pause):
                    yield from self._decide(final=False)  # a finished utterance, then another voice
            elif self.voice_change is not None and o.change_hop > 0 and self._turn is not None:
                yield from self._window(index, arrived)
        else:
            self._silent_frames += 1
        silence = self._silent_frames * self.frame_seconds
        if self._turn is not None and self.end_of_turn is not None and o.eot_silence <= silence < o.min_silence \
                and self._last_speech >= self._turn_first and not self._judged_now():
            yield from self._decide(final=True)  # settle a change of voice first: the judge reads one voice
            if self._judge() >= o.eot_threshold:
                yield from self._end_turn()
                return
        if silence >= o.min_silence:
            yield from self._end_turn()
        elif self._turn is not None and len(self._turn) * self.frame_seconds >= o.max_turn:
            segment = self._close(split=True)
            if segment is not None:
                yield segment

    def _differs(self, pause: _Pause) -> bool:
        """Whether the voice after `pause` (as far as it has been heard) differs from the one before."""
        o = self.options
        assert self._turn is not None and self.voice_change is not None
        first = self._turn_first
        before = self._turn[max(0, pause.last_speech + 1 - self._frames(o.change_context) - first):
                            pause.last_speech + 1 - first]
        after = self._turn[pause.resumed - first:self._last_speech + 1 - first]
        if len(before) < self._frames(o.change_min_speech) or not after:
            return False
        similarity = self.voice_change(np.concatenate(before), np.concatenate(after))
        threshold = (o.change_threshold_window if pause.window else
                     o.change_threshold if len(before) >= self._frames(o.change_probe) else o.change_threshold_short)
        return similarity is not None and similarity < threshold

    def _cut(self, pause: _Pause) -> int:
        """Where a change of voice at `pause` would cut (a frame index): the old turn keeps up to
        `pad` after its last word, the new one up to `pad` before its first, and a short pause is
        shared between them."""
        return pause.last_speech + 1 + min(self._pad_frames, (pause.resumed - pause.last_speech - 1) // 2)

    def _predecode(self, pause: _Pause) -> bool:
        """Part-way through the probe after a pause, if the voice already seems to differ, decode the
        speech before the pause, so its transcript is ready when the change is settled. With
        `eot_early_cut`, a turn that reads as finished is cut now (True): a finished utterance and
        then another voice need no more of the probe. Otherwise the full probe decides (the live
        pipeline catches up on the decode meanwhile). One voice comparison decides whether to decode,
        so a pause the same voice goes on after costs an embedding, not a decode."""
        if self.end_of_turn is None or self._turn is None or pause.window or not self._differs(pause):
            return False
        key = (self._turn_first, pause.last_speech, self._cut(pause) - self._turn_first)
        if self._judged is None or self._judged[0] != key:
            self._judged = (key, self.end_of_turn(np.concatenate(self._turn[:key[2]])), True)
        complete = self._judged[1].complete
        return self.options.eot_early_cut and complete is not None and complete >= self.options.eot_threshold

    def _judged_now(self) -> bool:
        """Whether the judge has seen the turn as it stands (once per pause)."""
        return self._judged is not None and self._judged[0] == (self._turn_first, self._last_speech, self._kept())

    def _judge(self) -> float:
        """Ask the judge about the turn so far; P(complete), 0 when it cannot tell."""
        assert self.end_of_turn is not None and self._turn is not None
        judgement = self.end_of_turn(np.concatenate(self._turn[:self._kept()]))
        self._judged = ((self._turn_first, self._last_speech, self._kept()), judgement, False)
        return judgement.complete if judgement.complete is not None else 0.0

    def _kept(self) -> int:
        """Frames a turn ended by silence keeps: up to its last speech frame, plus the pad."""
        return min(len(self._turn or []), self._last_speech - self._turn_first + 1 + self._pad_frames)

    def _mark_speech(self, index: int, arrived: float) -> None:
        self._last_speech = index
        self._last_speech_clock = arrived
        self._silent_frames = 0

    def _window(self, index: int, arrived: float) -> Iterator[SpeechSegment]:
        """Every `change_hop` of speech, compare the last `change_probe` with what came before."""
        o = self.options
        self._since_window += 1
        probe = self._frames(o.change_probe)
        if self._since_window < self._frames(o.change_hop) or index + 1 - probe - self._turn_first < probe:
            return
        self._since_window = 0
        start = index + 1 - probe
        # a voice that differs over the whole probe began before it, while the last one still spoke:
        # the cut goes half a probe earlier (on the overlap fixtures: closer to the onset, fewer
        # words of the new speaker left in the old turn)
        cut = max(self._turn_first + probe // 2, start - probe // 2)
        self._pause = _Pause(cut - 1, cut, arrived - (index + 1 - cut) * self.frame_seconds,
                             speech_after=index + 1 - cut, window=True)
        yield from self._decide(final=False)

    def _end_turn(self) -> Iterator[SpeechSegment]:
        """Silence (or the end of the stream) ends the turn: first settle an open pause."""
        yield from self._decide(final=True)
        segment = self._close(split=False)
        if segment is not None:
            yield segment

    def _decide(self, final: bool) -> Iterator[SpeechSegment]:
        """Settle the open pause, if any: when the voice after it differs, the turn ends there."""
        pause, self._pause = self._pause, None
        if pause is None or self._turn is None or self.voice_change is None:
            return
        o = self.options
        if pause.speech_after < self._frames(o.change_min_speech):
            return
        if not self._differs(pause):
            return
        first = self._turn_first
        cut = self._cut(pause)
        rest = self._turn[cut - first:]
        self._turn = self._turn[:cut - first]
        last_speech, last_clock = self._last_speech, self._last_speech_clock
        self._last_speech, self._last_speech_clock = pause.last_speech, pause.speech_end_clock
        segment = self._close(split=False)
        self._turn, self._turn_first, self._turn_new_voice = rest, cut, True
        self._partial_due = max(len(rest), self._partial_frames)
        self._last_speech, self._last_speech_clock = last_speech, last_clock
        if segment is not None:
            yield segment

    def _close(self, split: bool) -> SpeechSegment | None:
        o = self.options
        frames = self._turn or []
        keep = len(frames) if split else self._kept()
        audio = np.concatenate(frames[:keep]) if keep > 0 else np.zeros(0, dtype=np.float32)
        judged = self._judged if not split and self._judged_now() else None
        self._judged = None
        speech = (self._last_speech - self._turn_first + 1) * self.frame_seconds
        t_start = self._turn_first * self.frame_seconds
        new_voice = self._turn_new_voice
        self._turn = None
        self._silent_frames = 0
        self._pause = None
        self._turn_new_voice = False
        self._since_window = 0
        if speech < o.min_turn and not split:
            return None
        if split:  # the next frames continue the same speech as a new turn
            self._turn = []
            self._turn_first = self._frames_seen
            self._partial_due = self._partial_frames
        return SpeechSegment(t_start=t_start, t_end=t_start + len(audio) / SAMPLE_RATE, audio=audio,
                             speech_end_clock=self._last_speech_clock, decided_clock=self._clock(), split=split,
                             new_voice=new_voice, judgement=judged[1] if judged else None,
                             decoded_early=judged[2] if judged else False)
