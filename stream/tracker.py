"""Tracking one conversation turn by turn: the text encoder, then one incremental DAG step.

The tracker keeps only what the next turn needs (the DAG state of the last window of turns and
the last few transcripts for the encoder's context), so a turn costs the same at turn 10 and
at turn 1000.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from merc.models.checkpoint import TrainedModel, load_model
from merc.models.dag import MODALITIES, UNKNOWN_SPEAKER, DAGState
from merc.models.paths import default_model_dir
from merc.models.text_encoder import TextEncoder
from merc.models.turns import TurnResult, turn_inputs


class DialogueTracker:
    """Emotion of each new turn given the conversation so far (causal, incremental)."""

    def __init__(self, model: TrainedModel, encoder: TextEncoder) -> None:
        self.model = model
        self.encoder = encoder
        self.reset()

    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str | None = None) -> "DialogueTracker":
        model = load_model(model_dir or default_model_dir())
        encoder = TextEncoder.load(model.encoder_ref, device=device or "cpu")
        model.dag.to(encoder.device)
        return cls(model, encoder)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.label_set.labels

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new dialogue."""
        self._state: DAGState = self.model.dag.initial_state()
        self._speakers: dict[str, int] = {}
        self._recent_texts: list[str] = []
        self._turns = 0

    def _speaker_id(self, speaker: str | None) -> int:
        if speaker is None:
            return UNKNOWN_SPEAKER
        return self._speakers.setdefault(speaker, len(self._speakers))

    @torch.inference_mode()
    def track(self, speaker: str | None, text: str) -> TurnResult:
        """Add a turn (speaker may be None when unknown) and return its emotion."""
        started = time.perf_counter()
        context_turns = self.encoder.spec.context_turns
        texts = self._recent_texts[-context_turns:] + [text] if context_turns else [text]
        item = turn_inputs(texts, context_turns)[-1]
        has_text = bool(text.strip())
        vector = self.encoder(self.encoder.tokenize([item]))[0] if has_text else None
        encoded = time.perf_counter()
        features = {"text": vector} if vector is not None else {}
        mask = torch.tensor([has_text, False, False], device=self.encoder.device)
        probs, self._state = self.model.dag.step(self._state, features, mask, self._speaker_id(speaker))
        done = time.perf_counter()
        if context_turns:
            self._recent_texts = (self._recent_texts + [text])[-context_turns:]
        values = probs.cpu().tolist()
        best = max(range(len(values)), key=values.__getitem__)
        result = TurnResult(
            index=self._turns, speaker=speaker, text=text, label=self.labels[best], confidence=values[best],
            probs=dict(zip(self.labels, values)), modalities=tuple(m for m, on in zip(MODALITIES, mask.tolist()) if on),
            timings_ms={"text_encoder": 1000 * (encoded - started), "graph": 1000 * (done - encoded)})
        self._turns += 1
        return result
