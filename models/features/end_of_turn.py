"""Does a transcript read as a finished utterance? The text cue of the learned end of turn.

The classifier is a small head on frozen all-MiniLM-L6-v2: it reads the mean of the token states
(what was said) and the state of the last word piece (how it stops: "...see you tomorrow" against
"...what I think is"), standardised with the training set's statistics, through one hidden layer.
Frozen, because the same packaged weights then serve the live text model's encoder family and the
head stays small enough to ship in the repository (models/end_of_turn/). Training:
models/train/end_of_turn.py; export to ONNX: merc.export.build.end_of_turn.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from merc.models.errors import MercError

HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
"""Where a classifier trained with its encoder keeps the encoder's LoRA factors (TextEncoder format)."""
SPEC_FILE = "end_of_turn.json"
MAX_TOKENS = 64
"""Word pieces read (a partial transcript is short; a long one is cut at the start, so its end stays)."""


class EndOfTurnError(MercError, RuntimeError):
    """The end-of-turn classifier could not be loaded; the message names the file."""

    code = "end_of_turn_missing"


def pooled_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T, D) token states -> (N, 2D): the mean over real tokens, then the last word piece's state
    (the one before [SEP])."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    last = (attention_mask.sum(1) - 2).clamp(min=0)
    return torch.cat([mean, hidden[torch.arange(hidden.shape[0]), last]], dim=1)


class CompletenessHead(torch.nn.Module):
    """Pooled states -> the logit that the utterance is complete."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, dim: int = 768, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.net = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                                       torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net((pooled - self.mean) / self.scale).squeeze(-1)


class CompletenessNet(torch.nn.Module):
    """Token ids -> P(complete): the frozen encoder, the pooling and the head in one graph (what
    the ONNX export traces)."""

    def __init__(self, encoder: torch.nn.Module, head: CompletenessHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        return torch.sigmoid(self.head(pooled_states(hidden, attention_mask)))


def save_head(head: CompletenessHead, directory: Path, spec: dict[str, Any]) -> None:
    """The head's weights and its spec (encoder, sizes, the training report) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(directory / HEAD_FILE))
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def encoder_ref(directory: Path, spec: dict[str, Any]) -> str:
    """The encoder a classifier reads: its own fine-tuned encoder directory, or a base id."""
    own = Path(directory) / str(spec["encoder"])
    return str(own) if spec["encoder"] == ENCODER_DIR and own.is_dir() else str(spec["encoder"])


def load_head(directory: Path) -> tuple[CompletenessHead, dict[str, Any]]:
    """The head saved in `directory` (eval mode) and its spec."""
    spec_path, weights = directory / SPEC_FILE, directory / HEAD_FILE
    for path in (spec_path, weights):
        if not path.is_file():
            raise EndOfTurnError(f"{path}: not found (merc-end-of-turn train writes it)")
    from safetensors import SafetensorError

    try:
        spec = json.loads(spec_path.read_text())
        head = CompletenessHead(dim=int(spec["dim"]), hidden=int(spec["hidden"]))
        head.load_state_dict(load_file(str(weights)))
    except (ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise EndOfTurnError(f"{directory}: not a valid end-of-turn classifier ({err})") from err
    return head.eval(), spec
