"""Training configuration: one dataclass, read from a TOML file and overridden on the command line.

Every field carries its help text, so `merc-train --help` (merc.cli.train) documents every option from here.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from merc.models.errors import MercError
from merc.models.features.text_encoder import MINILM_ID


class ConfigError(MercError, ValueError):
    """A training config file cannot be read or names unknown keys; the message names the file."""

    code = "config_invalid"


def _opt(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (written to the run directory as config.json)."""

    corpus: str = _opt("meld", "corpus: meld, iemocap (the ERC JSONL), iemocap-release (official layout) "
                               "or jsonl (your own dialogues)",
                       ("meld", "iemocap", "iemocap-release", "jsonl"))
    data_dir: str | None = _opt(None, "corpus location (default: $MERC_DATA, else ../shared/data); for jsonl, the file")
    label_set: str | None = _opt(None, "label set for jsonl corpora: meld-7 or iemocap-6 (others use their own)")
    encoder: str = _opt(MINILM_ID,
                        "text encoder: hub id, local model dir, or a fine-tuned encoder dir (a run's encoder/)")
    finetune: bool = _opt(False, "fine-tune the text encoder on the training split first (stored in RUN/encoder)")
    ft_context_turns: int = _opt(2, "fine-tuning: previous turns the encoder sees as context (causal)")
    ft_speaker_markers: bool = _opt(False, "fine-tuning: mark each context turn 'same: ' or 'other: ' by its speaker's "
                                           "relation to the turn's speaker")
    ft_train_layers: int = _opt(2, "fine-tuning: number of top transformer layers trained")
    ft_lora_rank: int = _opt(0, "fine-tuning: 0 trains those layers' weights; above 0, LoRA factors of this rank "
                                "on their linear maps instead (a small delta; use a higher --ft-lr, e.g. 5e-4)")
    ft_epochs: int = _opt(3, "fine-tuning: epochs (best validation epoch kept)")
    ft_lr: float = _opt(1e-4, "fine-tuning: peak learning rate (linear warm-up and decay)")
    ft_batch_size: int = _opt(32, "fine-tuning: turns per batch")
    ft_max_length: int = _opt(128, "fine-tuning and encoding: at most this many tokens per turn with its context "
                                   "(the oldest context is cut first)")
    asr_augment: bool = _opt(False, "train on ASR-style text too: each training turn (and the context turns the "
                                    "encoder reads) drawn as gold, Whisper-style or lowercase-no-punctuation text, "
                                    "with word noise; both fine-tuning and the DAG (merc.models.data.asr_text)")
    asr_p_whisper: float = _opt(0.5, "ASR augmentation: probability a training turn is Whisper-style text")
    asr_p_lower: float = _opt(0.25, "ASR augmentation: probability a training turn is lowercase without punctuation")
    asr_word_noise: float = _opt(0.03, "ASR augmentation: per-word rate of Whisper-like word errors on ASR-style turns")
    asr_seed: int | None = _opt(None, "ASR augmentation: seed of the DAG's training-text draw (default: --seed); DAG "
                                      "seeds trained on one encoder can share one draw and its cached embeddings")
    asr_select: str = _opt("mean", "with ASR augmentation, the validation text that selects epochs: mean (of gold "
                                   "and Whisper-style weighted F1), whisper, or gold",
                           ("mean", "whisper", "gold"))
    hidden: int = _opt(300, "DAG hidden size")
    layers: int = _opt(2, "DAG layers")
    omega: int = _opt(1, "DAG window: walk back to the omega-th earlier turn of the same speaker")
    max_predecessors: int = _opt(16, "DAG window cap: at most this many predecessors per turn")
    dropout: float = _opt(0.3, "dropout in the DAG")
    epochs: int = _opt(30, "maximum DAG training epochs")
    batch_size: int = _opt(16, "dialogues per batch")
    lr: float = _opt(5e-4, "AdamW learning rate")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    grad_clip: float = _opt(5.0, "gradient norm clip")
    patience: int = _opt(8, "stop after this many epochs without a better validation weighted F1")
    curriculum_buckets: int = _opt(0, "MultiDAG+CL curriculum: number of difficulty buckets, "
                                      "added one per epoch (0 = off)")
    drop_text: float = _opt(0.0, "modality dropout: probability a turn's text is hidden in training")
    drop_audio: float = _opt(0.0, "modality dropout: probability a turn's audio is hidden in training")
    drop_face: float = _opt(0.0, "modality dropout: probability a turn's face is hidden in training")
    seed: int = _opt(0, "random seed")
    device: str = _opt("auto", "torch device: auto (cuda when present), cpu, cuda", ("auto", "cpu", "cuda"))
    cache_dir: str | None = _opt(None, "embedding cache directory (default: $MERC_CACHE or ~/.cache/merc)")

    def to_dict(self) -> dict:
        return asdict(self)


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """The config file's values (unknown keys are an error), then the non-None overrides."""
    values = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from err
        known = {f.name for f in fields(TrainConfig)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"{path}: unknown config keys: {', '.join(sorted(unknown))}")
    config = TrainConfig(**values)
    return replace(config, **{k: v for k, v in overrides.items() if v is not None and hasattr(config, k)})

