"""The learned end of turn: after a short silence, is what was said so far a finished utterance?

People answer within about 200 ms, so a fixed 0.6-s silence wait is most of the latency of every
turn, and still cuts turns at a thinking pause. Here the segmenter asks, once per pause, after
`SegmenterOptions.eot_silence` (0.25 s) of silence: the turn so far is transcribed (the
decode the turn needs anyway, started now instead of after the full wait) and the end-of-turn
classifier (export/serve/end_of_turn.py) says how likely the transcript is a complete utterance.
Likely enough ("I'll see you tomorrow"): the turn ends now. Otherwise ("So what I think is"): the
segmenter waits up to `min_silence`, the hard cap, and the transcript is kept for the turn if
no more speech comes.

The judgement depends only on the audio (and the conversation's earlier transcripts, Whisper's
prompt), never on compute time, so a replay at any speed gives the same turns.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from merc.stream.turns.transcribe import Transcriber, Transcript

Completeness = Callable[[str], "float | None"]
"""A transcript -> P(it is a complete utterance), None for no words (CompletenessModel)."""


@dataclass(frozen=True)
class Judgement:
    """What the judge said of the turn so far, and what it cost."""

    complete: float | None
    """P(complete) of the transcript; None when it has no words (then silence alone decides)."""
    transcript: Transcript
    """The decode of exactly the audio judged: the turn's transcript when the turn ends there."""
    asr_ms: float
    classify_ms: float


@dataclass
class TranscriptJudge:
    """The segmenter's end-of-turn callback: transcribe the turn so far, ask the classifier.

    `prompt` gives Whisper's prompt for the turn in progress (the processor's earlier transcripts,
    `TurnProcessor.prompt`): the same prompt the turn would get from the processor, so the words
    do not depend on who decoded them."""

    transcriber: Transcriber
    completeness: Completeness
    prompt: Callable[[], str | None] = lambda: None
    clock: Callable[[], float] = time.perf_counter

    def __call__(self, audio: np.ndarray) -> Judgement:
        started = self.clock()
        transcript = self.transcriber.transcribe(audio, prompt=self.prompt())
        decoded = self.clock()
        complete = self.completeness(transcript.text) if transcript.text.strip() else None
        return Judgement(complete, transcript, 1000 * (decoded - started), 1000 * (self.clock() - decoded))
