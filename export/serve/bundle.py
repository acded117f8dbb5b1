"""The serving bundle: ONNX graphs, the tokenizer and `manifest.json`, checked before use.

    manifest.json              what the bundle holds (format below) and the sha256 of every file
    dag_step.onnx              one MultiDAG step; includes the text/audio/face projections
    text_encoder.onnx          the text encoder with its pooling (fp32)
    text_encoder.int8.onnx     the same, weights quantised to int8 (optional)
    text_encoder.fp16.onnx     the same in fp16 (optional; for GPUs)
    tokenizer.json             the encoder's tokenizer, for the `tokenizers` library

Nothing here imports torch, transformers or merc.models: serving reads bundles through this
module and `runtime`, and `manifest.json` carries every setting serving needs.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from merc.models.data.json_input import BadJSON, read_json_file
from merc.models.data.turns import turn_inputs
from merc.models.errors import MercError
from merc.models.paths import cache_dir, contained_file, sha256_file

if TYPE_CHECKING:  # numpy is imported where it is used, to keep importing this module light
    import numpy as np

log = logging.getLogger(__name__)

FORMAT = "merc-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DAG_FILE = "dag_step.onnx"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_FILES = {"fp32": "text_encoder.onnx", "fp16": "text_encoder.fp16.onnx", "int8": "text_encoder.int8.onnx"}
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODER_OUTPUT = "embedding"


class BundleError(MercError, RuntimeError):
    """A bundle is missing, incomplete, corrupt or inconsistent; the message names the file."""

    code = "bundle_invalid"
    hint = "export it again with merc-export"


@dataclass(frozen=True)
class Manifest:
    """The parts of `manifest.json` serving relies on (the file holds more: provenance, parity)."""

    path: Path
    labels: tuple[str, ...]
    label_set: str
    dims: dict[str, int]
    hidden: int
    layers: int
    omega: int
    max_predecessors: int
    encoder: dict
    files: dict[str, str]
    raw: dict

    @property
    def bundle_dir(self) -> Path:
        return self.path.parent

    def file(self, name: str) -> Path:
        """A file the manifest names, which must stay inside the bundle directory."""
        path = contained_file(self.bundle_dir, name, links=True)
        if path is None:
            raise BundleError(f"{self.path}: file name {_clip(name)} is not a file inside the bundle directory")
        return path

    @property
    def experts(self) -> dict[str, dict]:
        """The expert graphs that turn audio and face into this model's inputs ({} for text models)."""
        return dict(self.raw.get("source", {}).get("experts", {}))

    @property
    def trained_modalities(self) -> tuple[str, ...]:
        """The modalities the model learned from (its corpus had them); serving feeds only these.
        Bundles that do not say are text models."""
        return tuple(self.raw.get("source", {}).get("modalities", ["text"]))

    def encoder_file(self, precision: str) -> Path:
        variants = self.encoder["files"]
        if precision not in variants:
            raise BundleError(f"{self.path}: no {precision} text encoder in this bundle "
                              f"(it has: {', '.join(sorted(variants))}); re-export with --variants {precision}")
        return self.file(variants[precision])


def read_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and check `manifest.json`: format, required fields, every listed file present and,
    when `verify`, matching its sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory not found (create one with merc-export RUN -o BUNDLE)")
    if not path.exists():
        raise BundleError(f"{path}: not found; is {bundle_dir} a bundle written by merc-export?")
    try:
        raw = read_json_file(path)
    except BadJSON as err:
        raise BundleError(f"{path}: not valid JSON: {err.reason}") from None
    except OSError as err:
        raise BundleError(f"{path}: cannot read: {err.strerror or err}") from err
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if raw.get("format_version") != FORMAT_VERSION or isinstance(raw.get("format_version"), bool):
        raise BundleError(f"{path}: format version {_clip(raw.get('format_version'))}, this merc reads "
                          f"{FORMAT_VERSION}; re-export the bundle with this version's merc-export")
    try:
        dag, encoder, files = _object(raw, "dag"), _object(raw, "encoder"), _object(raw, "files")
        dims = _object(dag, "dims")
        labels = raw["labels"]
        if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
            raise TypeError("'labels' (a list of names)")
        if len(set(labels)) != len(labels):
            raise TypeError("'labels' (names must be distinct)")
        if not isinstance(raw["label_set"], str):
            raise TypeError("'label_set' (a name)")
        manifest = Manifest(
            path=path, labels=tuple(labels), label_set=raw["label_set"],
            dims={m: _count(dims, m) for m in ("text", "audio", "face")}, hidden=_count(dag, "hidden", 1),
            layers=_count(dag, "layers", 1), omega=_count(dag, "omega"),
            max_predecessors=_count(dag, "max_predecessors"), encoder=encoder, files=files, raw=raw)
        _count(encoder, "context_turns"), _count(encoder, "max_length", 1), _count(encoder, "dim", 1)
        variants = _object(encoder, "files")
        if not isinstance(encoder.get("tokenizer", TOKENIZER_FILE), str):
            raise TypeError("'tokenizer' (a file name)")
        for table, what in ((files, "files"), (variants, "encoder files")):
            if not all(isinstance(value, str) for value in table.values()):
                raise TypeError(f"'{what}' (strings)")
        source = raw.get("source", {})
        if not isinstance(source, dict) or not isinstance(source.get("experts", {}), dict):
            raise TypeError("'source' (an object with an 'experts' object)")
        if not isinstance(source.get("audio_features", ""), str):
            raise TypeError("'source.audio_features' (a name)")
        modalities = source.get("modalities", ["text"])
        if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
            raise TypeError("'source.modalities' (a list of names)")
        experts = source.get("experts", {})
        if not all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in experts.values()):
            raise TypeError("'source.experts' (each an object naming its 'file')")
    except (KeyError, TypeError) as err:
        raise BundleError(f"{path}: malformed manifest: missing or bad field {err}") from err
    if len(manifest.labels) < 2:
        raise BundleError(f"{path}: needs at least 2 labels, has {len(manifest.labels)}")
    if manifest.encoder["dim"] != manifest.dims["text"]:
        raise BundleError(f"{path}: text encoder dim {manifest.encoder['dim']} but the DAG reads text of dim "
                          f"{manifest.dims['text']}")
    for name in [*manifest.files, *variants.values(), *(e["file"] for e in experts.values())]:
        manifest.file(name)  # every name stays inside the bundle directory
    needed = [DAG_FILE, manifest.encoder.get("tokenizer", TOKENIZER_FILE), *manifest.encoder["files"].values()]
    for name in needed:
        if name not in manifest.files:
            raise BundleError(f"{path}: {name} has no checksum in the manifest")
    for name, digest in manifest.files.items():
        file = manifest.file(name)
        if not file.is_file():
            raise BundleError(f"{file}: listed in {path} but missing")
        if verify and sha256_file(file) != digest:
            raise BundleError(f"{file}: sha256 does not match {path} (corrupt, truncated or replaced); "
                              "re-export the bundle")
    return manifest


def _object(table: dict, key: str) -> dict:
    value = table[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key!r} (an object)")
    return value


def _count(table: dict, key: str, least: int = 0) -> int:
    """An integer field of at least `least`; TypeError naming it otherwise."""
    value = table[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise TypeError(f"{key!r} (an integer of at least {least})")
    return value


def _clip(value: object, width: int = 60) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[:width - 3] + "..."


class TurnTokenizer:
    """Token ids for a turn exactly as `TextEncoder.tokenize` makes them, with `tokenizers` only.

    With context turns, every turn is a pair (text, context), even when the context is empty,
    truncated `longest_first` to `max_length`; without, one segment.
    """

    def __init__(self, path: Path, max_length: int, context_turns: int, speaker_markers: bool = False) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise BundleError("serving needs the `tokenizers` package: pip install tokenizers") from err
        try:
            self._single = Tokenizer.from_file(str(path))
            self._pair = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"{path}: cannot load tokenizer: {err}") from err
        self.context_turns = context_turns
        self.speaker_markers = speaker_markers
        self.max_length = max_length
        self._single.no_padding()
        self._pair.no_padding()
        self._single.enable_truncation(max_length)
        self._pair.enable_truncation(max_length, strategy="longest_first")
        pad = self._single.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad

    def turn_input(self, history: list[str], text: str, speakers: list[str | None] | None = None) -> tuple[str, str]:
        """(text, context) of a new turn given the earlier texts (oldest first); with speaker
        markers, `speakers` holds the earlier turns' speakers and then this turn's."""
        texts = history[-self.context_turns:] + [text] if self.context_turns else [text]
        marks = speakers[-len(texts):] if self.speaker_markers and speakers is not None else None
        return turn_inputs(texts, self.context_turns, marks)[-1]

    def encode(self, inputs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        """Padded int64 input_ids, attention_mask, token_type_ids (batch, longest)."""
        import numpy as np

        if self.context_turns:
            encodings = [self._pair.encode(text, context) for text, context in inputs]
        else:
            encodings = [self._single.encode(text) for text, _ in inputs]
        longest = max(len(e.ids) for e in encodings)
        batch = {name: np.zeros((len(encodings), longest), dtype=np.int64) for name in ENCODER_INPUTS}
        batch["input_ids"][:] = self.pad_id
        for row, e in enumerate(encodings):
            n = len(e.ids)
            batch["input_ids"][row, :n] = e.ids
            batch["attention_mask"][row, :n] = e.attention_mask
            batch["token_type_ids"][row, :n] = e.type_ids
        return batch


def model_key(model_dir: str | Path) -> str:
    """A key for the bundle of `model_dir`: sha256 over its model files and the bundle format.

    Covers model.json, model.safetensors, experts/* (a multimodal run's expert graphs) and encoder/*
    (the fine-tuned encoder's spec and delta, whose spec pins the base weights' id); a base encoder
    given by hub id or the packaged MiniLM is identified by that id in model.json (the packaged
    MiniLM is sha256-checked on extraction).
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256(f"{FORMAT}:{FORMAT_VERSION}".encode())
    files = [model_dir / "model.json", model_dir / "model.safetensors"]
    for sub in ("encoder", "experts"):
        if (model_dir / sub).is_dir():
            files += sorted(p for p in (model_dir / sub).rglob("*") if p.is_file())
    for path in files:
        if path.exists():
            digest.update(path.relative_to(model_dir).as_posix().encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()[:16]


def bundle_cache_dir() -> Path:
    return cache_dir() / "bundles"


def bundle_path(model_dir: Path, cache: str | Path | None = None) -> Path:
    """Where the bundle of `model_dir` lives in the cache: CACHE/bundles/<name>-<model_key>."""
    root = Path(cache) if cache else bundle_cache_dir()
    return root / f"{Path(model_dir).resolve().name}-{model_key(model_dir)}"


def cached_bundle(model_dir: Path, cache: str | Path | None = None) -> Path | None:
    """The cached bundle of `model_dir` if it exists and every checksum verifies (no torch needed)."""
    target = bundle_path(model_dir, cache)
    if not target.exists():
        return None
    try:
        read_manifest(target, verify=True)
    except BundleError as err:
        log.warning("cached bundle unusable, exporting again: %s", err)
        return None
    log.debug("using the cached bundle %s", target)
    return target
