"""Exporting the end-of-turn classifier (frozen MiniLM + its head) to ONNX, once, into the cache.

The export is checked against PyTorch on transcripts of both kinds before it is kept, and keyed by
the head's checksums (export/serve/end_of_turn.py), so a retrained head gets a new export.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from merc.export.build.onnx_export import DEFAULT_OPSET, ExportError, _onnx_export, eager_attention, save_tokenizer
from merc.export.serve.end_of_turn import (
    GRAPH_FILE,
    INPUTS,
    MANIFEST_FILE,
    OUTPUT,
    TOKENIZER_FILE,
    CompletenessModel,
    cached_export,
    export_dir,
)
from merc.models.features.end_of_turn import MAX_TOKENS, CompletenessNet, encoder_ref, load_head
from merc.models.features.text_encoder import TextEncoder
from merc.models.paths import end_of_turn_dir, sha256_file

log = logging.getLogger(__name__)

PARITY_TEXTS = ("I'll see you tomorrow.", "So what I think is", "yeah", "and then we", "Are you sure?",
                "well i was going to tell you that")
PARITY_TOLERANCE = 1e-4


def ensure_end_of_turn(head_dir: Path | None = None, cache: Path | None = None) -> Path:
    """The ONNX export of a classifier (default: the bundled one), made on first use."""
    head_dir = Path(head_dir or end_of_turn_dir())
    cached = cached_export(head_dir, cache)
    if cached is not None:
        return cached
    target = export_dir(head_dir, cache)
    log.info("first use of the end-of-turn classifier %s: exporting it to ONNX in %s", head_dir, target)
    head, spec = load_head(head_dir)
    encoder = TextEncoder.load(encoder_ref(head_dir, spec), device="cpu")
    net = CompletenessNet(encoder.model, head).eval()
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with eager_attention(encoder.model), torch.inference_mode():
        batch = encoder.tokenizer(list(PARITY_TEXTS[:2]), padding=True, return_tensors="pt")
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {OUTPUT: {0: "batch"}}
        _onnx_export(net, (batch["input_ids"], batch["attention_mask"]), tmp / GRAPH_FILE, INPUTS, (OUTPUT,), axes,
                     DEFAULT_OPSET)
    save_tokenizer(encoder, tmp / TOKENIZER_FILE)
    manifest = {"format": "merc-end-of-turn", "encoder": spec["encoder"], "max_tokens": MAX_TOKENS,
                "files": {name: sha256_file(tmp / name) for name in (GRAPH_FILE, TOKENIZER_FILE)}}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    _check_parity(net, encoder, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def torch_completeness(net: CompletenessNet, encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """P(complete) from PyTorch, tokenised as serving does (normalised, end kept)."""
    from merc.models.data.utterance_ends import completeness_text

    encoder.tokenizer.truncation_side = "left"
    out = []
    with torch.inference_mode():
        for text in texts:
            batch = encoder.tokenizer([completeness_text(text)], truncation=True, max_length=MAX_TOKENS,
                                      return_tensors="pt")
            out.append(float(net(batch["input_ids"], batch["attention_mask"])[0]))
    return np.asarray(out)


def _check_parity(net: CompletenessNet, encoder: TextEncoder, directory: Path) -> None:
    served = CompletenessModel(directory)
    got = np.asarray([served(t) for t in PARITY_TEXTS], dtype=np.float64)
    expected = torch_completeness(net, encoder, list(PARITY_TEXTS))
    worst = float(np.max(np.abs(got - expected)))
    if worst > PARITY_TOLERANCE:
        raise ExportError(f"{directory / GRAPH_FILE}: ONNX and PyTorch differ by {worst:.2e} (> {PARITY_TOLERANCE})")
    log.info("end-of-turn export checked against PyTorch (max difference %.1e)", worst)
