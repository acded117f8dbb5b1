"""Tracking one conversation turn by turn: the text encoder, then one incremental DAG step.

The tracker keeps only what the next turn needs (the DAG state of the last window of turns and
the last few transcripts for the encoder's context), plus the last REVISABLE_TURNS turns' vectors
and states so that their speakers can be corrected (`revise`), so a turn costs the same at turn
10 and at turn 1000.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.models.dag.checkpoint import TrainedModel, load_model
from merc.models.dag.graph import MODALITIES, DAGState
from merc.models.data.turns import REVISABLE_TURNS, ConversationSoFar, RevisableTurns, TurnResult
from merc.models.features.text_encoder import TextEncoder
from merc.models.paths import default_model_dir


class DialogueTracker:
    """Emotion of each new turn given the conversation so far (causal, incremental)."""

    def __init__(self, model: TrainedModel, encoder: TextEncoder, revisable_turns: int = REVISABLE_TURNS) -> None:
        self.model = model
        self.encoder = encoder
        self._history: RevisableTurns[DAGState] = RevisableTurns(revisable_turns)
        self.reset()

    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str | None = None) -> DialogueTracker:
        model = load_model(model_dir or default_model_dir())
        encoder = TextEncoder.load(model.encoder_ref, device=device or "cpu")
        model.dag.to(encoder.device)
        return cls(model, encoder)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.label_set.labels

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this tracker reads: text only (audio and face are always missing)."""
        return ("text",)

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new dialogue."""
        self._state: DAGState = self.model.dag.initial_state()
        self._so_far = ConversationSoFar(self.encoder.spec.context_turns, self.encoder.spec.speaker_markers)
        self._history.clear()

    @torch.inference_mode()
    def track(self, speaker: str | None, text: str, extra: dict[str, np.ndarray] | None = None) -> TurnResult:
        """Add a turn (speaker may be None when unknown) and return its emotion. `extra` (audio and
        face vectors) is accepted for the serving tracker's interface and ignored: this one reads text."""
        started = time.perf_counter()
        features = self._features(speaker, text)
        encoded = time.perf_counter()
        before = self._state
        probs, self._state = self._step(before, features, self._so_far.speaker_id(speaker))
        done = time.perf_counter()
        result = self._so_far.result(speaker, text, self.labels, probs, tuple(m for m in MODALITIES if m in features),
                                     {"text_encoder": 1000 * (encoded - started), "graph": 1000 * (done - encoded)})
        self._history.keep(result, features, before)
        return result

    @torch.inference_mode()
    def preview(self, speaker: str | None, text: str, extra: dict[str, np.ndarray] | None = None) -> TurnResult:
        """The emotion the next turn would get if it ended now, committing nothing (`_step` is pure)."""
        started = time.perf_counter()
        features = self._features(speaker, text)
        encoded = time.perf_counter()
        probs, _ = self._step(self._state, features, self._so_far.peek_speaker_id(speaker))
        done = time.perf_counter()
        return self._so_far.preview(speaker, text, self.labels, probs, tuple(m for m in MODALITIES if m in features),
                                    {"text_encoder": 1000 * (encoded - started), "graph": 1000 * (done - encoded)})

    @torch.inference_mode()
    def revise(self, speakers: Mapping[int, str | None]) -> list[TurnResult]:
        """Correct the speakers of earlier turns (turn index, as `track` returned it -> speaker) and
        recompute the graph from the earliest corrected one; returns the turns whose speaker, label
        or probabilities changed. Only the last REVISABLE_TURNS turns can be revised (older indices
        are ignored) and the text vectors are not re-encoded: see `RevisableTurns`."""
        revised, state = self._history.revise(speakers, self._so_far, self.labels, self._step)
        if state is not None:
            self._state = state
        return revised

    def _features(self, speaker: str | None, text: str) -> dict[str, Any]:
        """The turn's text vector in context (none for a turn without words)."""
        if not text.strip():
            return {}
        return {"text": self.encoder(self.encoder.tokenize([self._so_far.encoder_input(text, speaker)]))[0]}

    def _step(self, state: DAGState, features: dict[str, Any], speaker: int) -> tuple[list[float], DAGState]:
        """One DAG step from `state`, without touching the tracker's own."""
        mask = torch.tensor([m in features for m in MODALITIES], device=self.encoder.device)
        probs, after = self.model.dag.step(state, features, mask, speaker)
        return probs.cpu().tolist(), after
