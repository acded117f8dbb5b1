"""Export a trained model directory to a serving bundle (ONNX graphs + manifest) and validate it.

`export_bundle(run, out)`:

1. loads the run (`merc.models.dag.checkpoint.load_model`) and its text encoder;
2. exports the DAG step (`dag_step.DAGStep`, which includes the text/audio/face projections of
   `MultiDAG.node_input`) and the text encoder with its pooling, ONNX opset >= 17, and copies the
   encoder's tokenizer as tokenizer.json;
3. derives the text encoder variants: int8 (onnxruntime dynamic quantisation) and fp16;
4. checks every graph with `onnx.checker`, then runs real dialogues turn by turn through the
   PyTorch `DialogueTracker` and through `BundleTracker` (ONNX Runtime, CPU) and compares:
   token ids (must be identical), probabilities (fp32: max |delta| <= 1e-4 or the export fails),
   plus a DAG-only pass with all modality subsets and unknown speakers;
5. writes manifest.json (labels, encoder spec, dims, window, opset, sha256 of every file, and
   the validation numbers), and moves the finished bundle into place.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.export.build.dag_step import INPUT_NAMES, OUTPUT_NAMES, DAGStep
from merc.export.serve.bundle import (
    DAG_FILE,
    ENCODER_FILES,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    bundle_path,
    cached_bundle,
    sha256_file,
)
from merc.models.dag.checkpoint import TrainedModel, load_model
from merc.models.dag.graph import MODALITIES
from merc.models.dag.tracker import DialogueTracker
from merc.models.data.corpora import corpus_label_set, load_corpus, resolve_data_dir
from merc.models.errors import MercError
from merc.models.features.text_encoder import TextEncoder

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4
VARIANTS = ("int8", "fp16")


class ExportError(MercError, RuntimeError):
    """The export or its validation failed; the message says which file and check."""

    code = "export_failed"


class PooledEncoder(torch.nn.Module):
    """`TextEncoder.forward` with the three token tensors as positional inputs."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.model = encoder.model
        self.pooling = encoder.spec.pooling

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        keep = (attention_mask.bool() & (token_type_ids == 0)).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _onnx_export(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names,
                 dynamic_axes: dict | None, opset: int) -> None:
    # The TorchScript exporter: it needs no onnxscript, and these graphs trace exactly (the DAG
    # step has no data-dependent Python control flow; the encoder is traced with padding).
    # torch.onnx.export traces in eval mode and afterwards calls module.train(<the top module's
    # mode>), which would switch every submodule, including the shared, trained MultiDAG, back to
    # training mode (dropout on) for the parity check and whoever uses the model next; restore
    # each submodule's own mode instead.
    modes = [(m, m.training) for m in module.modules()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    finally:
        for m, training in modes:
            m.training = training


def export_dag_step(model: TrainedModel, path: Path, opset: int = DEFAULT_OPSET) -> None:
    step = DAGStep(model.dag.cpu().eval())
    with torch.inference_mode():
        _onnx_export(step, step.example_inputs(), path, INPUT_NAMES, OUTPUT_NAMES, None, opset)


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Plain MatMul/Softmax attention while exporting (every opset has it), the model's own after."""
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


def export_text_encoder(encoder: TextEncoder, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """The encoder and pooling, with dynamic batch and sequence axes."""
    with eager_attention(encoder.model), torch.inference_mode():
        example = encoder.tokenize([("An example turn, long enough to pad the other one.", "a previous turn"),
                                    ("Short.", "context")])
        args = tuple(example[name].cpu() for name in ENCODER_INPUTS)
        axes = {name: {0: "batch", 1: "sequence"} for name in ENCODER_INPUTS}
        axes[ENCODER_OUTPUT] = {0: "batch"}
        _onnx_export(PooledEncoder(encoder).cpu().eval(), args, path, ENCODER_INPUTS, (ENCODER_OUTPUT,), axes, opset)


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights: mean cosine to fp32 embeddings 0.99 on MELD turns (0.94 per tensor).
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs per tensor on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def save_tokenizer(encoder: TextEncoder, path: Path) -> None:
    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the tokenizer of encoder {encoder.spec.base!r} is not a fast (tokenizers) tokenizer; "
                          "serving needs its tokenizer.json")
    backend.save(str(path))


def check_graphs(paths: list[Path]) -> None:
    import onnx

    for path in paths:
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as err:  # onnx raises ValidationError or InferenceError
            raise ExportError(f"{path}: fails onnx.checker: {err}") from err


def write_manifest(out: Path, model: TrainedModel, encoder: TextEncoder, opset: int, variants: list[str],
                   validation: dict | None) -> dict:
    config = model.dag.config
    encoder_files = {p: ENCODER_FILES[p] for p in ["fp32", *variants]}
    experts = bundled_experts(model)
    names = [DAG_FILE, TOKENIZER_FILE, *encoder_files.values(), *(e["file"] for e in experts.values())]
    source = {k: model.meta[k] for k in ("corpus", "modalities") if k in model.meta}
    if experts:
        source["experts"] = experts
        if "audio" in experts:
            source["audio_features"] = experts["audio"]["features"]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "opset": opset,
        "label_set": model.label_set.name,
        "labels": list(model.label_set.labels),
        "source": source,
        "encoder": {
            "id": encoder.id, "spec": asdict(encoder.spec), "dim": encoder.dim,
            "pooling": encoder.spec.pooling, "context_turns": encoder.spec.context_turns,
            "speaker_markers": encoder.spec.speaker_markers,
            "max_length": encoder.spec.max_length, "tokenizer": TOKENIZER_FILE,
            "inputs": list(ENCODER_INPUTS), "output": ENCODER_OUTPUT, "files": encoder_files,
        },
        "dag": {
            "file": DAG_FILE, "dims": dict(config.dims), "hidden": config.hidden, "layers": config.layers,
            "omega": config.omega, "max_predecessors": config.max_predecessors, "n_classes": config.n_classes,
            "modalities": list(MODALITIES), "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
            "covers": ("MultiDAG.node_input (the text, audio and face projections, absence embeddings and "
                       "fusion), every DAG layer and the classifier: audio and face features go straight "
                       "into this graph"),
        },
        "files": {name: sha256_file(out / name) for name in names},
        "validation": validation,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def bundled_experts(model: TrainedModel) -> dict[str, dict]:
    """The expert graphs a multimodal run serves with (model.json "experts"), as the bundle names them."""
    return {m: {**spec, "file": Path(spec["file"]).name} for m, spec in model.meta.get("experts", {}).items()}


def copy_experts(run_dir: Path, model: TrainedModel, out: Path) -> None:
    """Copy the run's expert graphs into the bundle; a missing one fails the export, naming it."""
    for spec in model.meta.get("experts", {}).values():
        src = Path(run_dir) / spec["file"]
        if not src.is_file():
            raise ExportError(f"{src}: expert graph listed in {Path(run_dir) / 'model.json'} is missing")
        shutil.copyfile(src, out / src.name)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run PyTorch with `threads` intra-op threads inside the block (None: leave as is)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _parity_dialogues(corpus: str, data_dir: str | Path | None, split: str, n: int):
    dialogues = load_corpus(corpus, resolve_data_dir(data_dir), split)
    if n <= 0:
        return dialogues
    # The longest ones: they run past the window (max_predecessors) and have many speakers.
    return sorted(dialogues, key=lambda d: (-len(d.utterances), d.id))[:n]


def _weighted_f1(gold: list[str], predicted: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, predicted, average="weighted", zero_division=0))


def validate_bundle(out: Path, model: TrainedModel, encoder: TextEncoder, variants: list[str], corpus: str,
                    data_dir: str | Path | None, split: str = "test", n_dialogues: int = 4,
                    tolerance: float = FP32_TOLERANCE, threads: int | None = None) -> dict:
    """Parity of the bundle (every encoder variant) against PyTorch on real dialogues."""
    from merc.export.serve.runtime import BundleTracker, DAGStepSession

    dialogues = _parity_dialogues(corpus, data_dir, split, n_dialogues)
    reference = DialogueTracker(model, encoder)
    trackers = {p: BundleTracker.load(out, device="cpu", precision=p, threads=threads, verify=False)
                for p in ["fp32", *variants]}
    tokenizer = trackers["fp32"].encoder.tokenizer
    try:
        labels_match = tuple(corpus_label_set(corpus).labels) == model.label_set.labels
    except ValueError:
        labels_match = False
    gold: list[str] = []
    predicted: dict[str, list[str]] = {p: [] for p in ["torch", *trackers]}
    delta_prob = {p: 0.0 for p in trackers}
    delta_embedding = {p: 0.0 for p in trackers}
    agree = {p: 0 for p in trackers}
    tokens_identical = True
    turns = 0
    ct = encoder.spec.context_turns
    with torch.inference_mode():
        for dialogue in dialogues:
            reference.reset()
            for t in trackers.values():
                t.reset()
            texts = [u.text for u in dialogue.utterances]
            speakers = [u.speaker for u in dialogue.utterances]
            items = encoder.spec.dialogue_inputs(dialogue.utterances)
            for i, u in enumerate(dialogue.utterances):
                item = tokenizer.turn_input(texts[max(0, i - ct):i] if ct else [], u.text, speakers[:i + 1])
                if item != items[i]:
                    raise ExportError(f"serving builds the encoder input of {dialogue.id} turn {i} differently")
                if u.text.strip():
                    hf = encoder.tokenize([item])
                    ours = tokenizer.encode([item])
                    same = all(np.array_equal(hf[k].cpu().numpy(), ours[k]) for k in ENCODER_INPUTS if k in hf)
                    tokens_identical &= same
                    vector = encoder(hf)[0].cpu().numpy()
                    for p, t in trackers.items():
                        ort_vector = t.encoder([item])[0]
                        delta_embedding[p] = max(delta_embedding[p], float(np.abs(ort_vector - vector).max()))
                r = reference.track(u.speaker, u.text)
                ref_probs = np.array(list(r.probs.values()))
                predicted["torch"].append(r.label)
                for p, t in trackers.items():
                    o = t.track(u.speaker, u.text)
                    delta = float(np.abs(np.array(list(o.probs.values())) - ref_probs).max())
                    delta_prob[p] = max(delta_prob[p], delta)
                    agree[p] += o.label == r.label
                    predicted[p].append(o.label)
                gold.append(u.label)
                turns += 1
    dag_delta, dag_turns = _dag_parity(model, dialogues, encoder, DAGStepSession(trackers["fp32"].manifest, "cpu"))
    report = {
        "corpus": corpus, "split": split, "dialogues": [d.id for d in dialogues], "turns": turns,
        "tolerance_fp32": tolerance, "token_ids_identical": bool(tokens_identical),
        "dag_all_modalities": {"turns": dag_turns, "max_abs_dprob": dag_delta,
                               "note": "torch MultiDAG.step vs dag_step.onnx on the same features; audio/face "
                                       "vectors seeded random, all 8 modality masks, every 5th speaker unknown"},
    }
    for p in trackers:
        entry = {"max_abs_dprob": delta_prob[p], "max_abs_dembedding": delta_embedding[p],
                 "argmax_agreement": agree[p] / max(turns, 1)}
        if labels_match and all(g is not None for g in gold):
            entry["weighted_f1"] = _weighted_f1(gold, predicted[p])
            entry["weighted_f1_torch"] = _weighted_f1(gold, predicted["torch"])
            entry["weighted_f1_cost"] = entry["weighted_f1_torch"] - entry["weighted_f1"]
        report[p] = entry
    report["passed"] = bool(tokens_identical and delta_prob["fp32"] <= tolerance and dag_delta <= tolerance)
    return report


def _dag_parity(model: TrainedModel, dialogues, encoder: TextEncoder, session) -> tuple[float, int]:
    """All dialogues as one long stream (well past the window) with every modality subset."""
    dag = model.dag
    dims = dag.config.dims
    g = torch.Generator().manual_seed(0)
    state = dag.initial_state()
    session.reset()
    worst, turns = 0.0, 0
    with torch.inference_mode():
        for dialogue in dialogues:
            speakers = dialogue.speaker_indices()
            vectors = encoder.encode(encoder.spec.dialogue_inputs(dialogue.utterances))
            for i, vector in enumerate(vectors):
                subset = (turns + 1) % 8  # cycles through all 8 masks, starting with text only
                mask = [bool(subset & 1), bool(subset & 2), bool(subset & 4)]
                features = {"text": torch.from_numpy(vector), "audio": torch.randn(dims["audio"], generator=g),
                            "face": torch.randn(dims["face"], generator=g)}
                features = ({m: x for m, x, on in zip(MODALITIES, features.values(), mask, strict=True) if on}
                            if any(mask) else {})
                speaker = -1 if turns % 5 == 4 else speakers[i]
                probs, state = dag.step(state, features, torch.tensor(mask), speaker)
                ort_probs = session.step({m: x.numpy() for m, x in features.items()}, speaker)
                worst = max(worst, float(np.abs(ort_probs - probs.numpy()).max()))
                turns += 1
    return worst, turns


def export_bundle(run_dir: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, variants: list[str] | None = None,
                  corpus: str = "meld", data_dir: str | Path | None = None, split: str = "test",
                  n_dialogues: int = 4, validate: bool = True, force: bool = False,
                  threads: int | None = None) -> dict:
    """Write a validated bundle for the model directory `run_dir` to `out`; returns the manifest."""
    if opset < 17:
        raise ExportError(f"opset {opset}: merc bundles need opset 17 or later")
    variants = list(VARIANTS if variants is None else variants)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ExportError(f"unknown encoder variants {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: exists and is not empty (use --force to replace it)")
    model = load_model(run_dir)
    encoder = TextEncoder.load(model.encoder_ref, device="cpu")
    if encoder.dim != model.dag.config.dims["text"]:
        raise ExportError(f"{run_dir}: the DAG reads text vectors of dim {model.dag.config.dims['text']} but its "
                          f"encoder gives {encoder.dim}")
    if "token_type_ids" not in getattr(encoder.tokenizer, "model_input_names", ()):
        # TextEncoder pools segment 0 through token_type_ids; encoders without them (RoBERTa/MPNet
        # style) would need a different graph signature and pooling, not implemented yet.
        raise ExportError(f"encoder {encoder.spec.base!r} takes no token_type_ids; merc-export supports "
                          "BERT-style encoders (such as the default all-MiniLM-L6-v2) only")
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log.info("exporting the DAG step and the text encoder (opset %d)", opset)
    export_dag_step(model, work / DAG_FILE, opset)
    export_text_encoder(encoder, work / ENCODER_FILES["fp32"], opset)
    save_tokenizer(encoder, work / TOKENIZER_FILE)
    copy_experts(Path(run_dir), model, work)
    if "int8" in variants:
        quantize_int8(work / ENCODER_FILES["fp32"], work / ENCODER_FILES["int8"])
    if "fp16" in variants:
        convert_fp16(work / ENCODER_FILES["fp32"], work / ENCODER_FILES["fp16"])
    check_graphs([work / DAG_FILE, *(work / ENCODER_FILES[p] for p in ["fp32", *variants])])
    manifest = write_manifest(work, model, encoder, opset, variants, None)
    if validate:
        log.info("checking parity against PyTorch on %s %s dialogues", corpus, split)
        with _torch_threads(threads):
            report = validate_bundle(work, model, encoder, variants, corpus, data_dir, split, n_dialogues,
                                     threads=threads)
        manifest = write_manifest(work, model, encoder, opset, variants, {"onnx_checker": "passed", "parity": report})
        if not report["passed"]:
            failed = {k: report[k] for k in ("token_ids_identical", "fp32", "dag_all_modalities")}
            raise ExportError(f"{work}: parity check failed (bundle left there for inspection): {json.dumps(failed)}")
    else:
        manifest = write_manifest(work, model, encoder, opset, variants, {"onnx_checker": "passed", "parity": None})
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return manifest


# ---------------------------------------------------------------- bundles materialised on demand


def ensure_bundle(model_dir: str | Path, cache: str | Path | None = None, variants: list[str] | None = None,
                  parity_dialogues: str | Path | None = None, threads: int | None = None) -> Path:
    """The bundle of a model directory, exported into the cache the first time it is needed.

    Lives at CACHE/bundles/<model dir name>-<model_key>/ (CACHE: $MERC_CACHE or ~/.cache/merc), so a
    changed model gets a new bundle. A cached bundle is reused only if its manifest and every
    checksum verify. The first export checks parity on `parity_dialogues` (a JSONL dialogue file;
    default: the example dialogue shipped with merc-live), since corpora are not on users' machines.
    """
    model_dir = Path(model_dir)
    target = bundle_path(model_dir, cache)
    if cached_bundle(model_dir, cache) is not None:
        return target
    if parity_dialogues is None:
        from merc.models.data.examples import example_dialogue

        parity_dialogues = example_dialogue()
    log.info("first use of %s: exporting it to an ONNX bundle in %s (takes a minute; later runs reuse it)",
             model_dir, target)
    export_bundle(model_dir, target, variants=["int8"] if variants is None else variants, corpus="jsonl",
                  data_dir=parity_dialogues, n_dialogues=0, force=True, threads=threads)
    log.info("bundle cached at %s", target)
    return target
