"""ONNX export and serving: a small model trained on real MELD dialogues is exported, the bundle
matches PyTorch on real test dialogues, serving runs without torch, and broken bundles fail
clearly at load time."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from merc.cli.export import main as export_main
from merc.cli.train import train_main
from merc.export.build.dag_step import DAGStep
from merc.export.build.onnx_export import ExportError, ensure_bundle, export_bundle
from merc.export.serve.bundle import (
    DAG_FILE,
    ENCODER_FILES,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    BundleError,
    model_key,
    sha256_file,
)
from merc.export.serve.runtime import BundleTracker
from merc.models.dag.checkpoint import load_model
from merc.models.dag.graph import MODALITIES, UNKNOWN_SPEAKER, predecessors
from merc.models.dag.tracker import DialogueTracker
from merc.models.data.corpora import load_corpus
from merc.models.data.examples import example_dialogue
from merc.models.features.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tests stay fast on a loaded 2-core machine (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory, one_thread):
    """A tiny DAG (hidden 64, omega 2, window 4) trained on a few real MELD dialogues, over the
    packaged MiniLM weights with a context spec (2 previous turns as a second segment, marked by
    speaker), so the export covers pair tokenisation, speaker markers, segment-0 pooling and window
    wrap-around (the bundled default model covers an encoder without markers)."""
    tmp = tmp_path_factory.mktemp("export-run")
    lines = []
    for split, n in (("train", 3), ("valid", 1)):
        for d in load_corpus("meld", data_dir, split)[:n]:
            lines.append(json.dumps({"dialogue_id": d.id, "split": split, "utterances": [
                {"speaker": u.speaker, "text": u.text, "emotion": u.label} for u in d.utterances[:12]]}))
    corpus = tmp / "small.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    encoder = TextEncoder.load("minilm", device="cpu").with_spec(context_turns=2, speaker_markers=True)
    top = [name for name, _ in encoder.model.named_parameters() if ".layer.5." in name]
    encoder.save_finetuned(tmp / "encoder-c2", trained=top)
    run = tmp / "run"
    code = train_main(["--corpus", "jsonl", "--data-dir", str(corpus), "--label-set", "meld-7",
                       "--encoder", str(tmp / "encoder-c2"), "--epochs", "2", "--lr", "0.003", "--dropout", "0",
                       "--hidden", "64", "--omega", "2", "--max-predecessors", "4", "--cache-dir", str(tmp / "cache"),
                       "--out", str(run), "--quiet"])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def bundle(run_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "small"
    export_bundle(run_dir, out, variants=["int8"], corpus="meld", data_dir=data_dir, n_dialogues=2, threads=1)
    return out


def test_bundle_is_complete_and_checksummed(bundle, run_dir):
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    model = load_model(run_dir)
    assert manifest["opset"] >= 17
    assert manifest["labels"] == list(model.label_set.labels)
    assert manifest["dag"]["dims"] == model.dag.config.dims
    assert (manifest["dag"]["omega"], manifest["dag"]["max_predecessors"], manifest["dag"]["hidden"]) == (2, 4, 64)
    assert manifest["encoder"]["context_turns"] == 2 and manifest["encoder"]["speaker_markers"] is True
    assert "audio" in manifest["dag"]["covers"] and "face" in manifest["dag"]["covers"]
    assert set(manifest["files"]) == {DAG_FILE, TOKENIZER_FILE, ENCODER_FILES["fp32"], ENCODER_FILES["int8"]}
    for name, digest in manifest["files"].items():
        assert sha256_file(bundle / name) == digest, name


def test_parity_with_pytorch_on_real_dialogues(bundle):
    parity = json.loads((bundle / MANIFEST_FILE).read_text())["validation"]["parity"]
    assert parity["passed"] and parity["token_ids_identical"]
    assert parity["turns"] > 2 * 4  # whole dialogues, well past the window of 4
    assert parity["fp32"]["max_abs_dprob"] <= 1e-4
    assert parity["dag_all_modalities"]["max_abs_dprob"] <= 1e-4
    assert parity["int8"]["max_abs_dembedding"] > 0  # reported, and really a different graph


def test_onnx_step_matches_step_with_unknown_speakers_and_every_modality(bundle, run_dir):
    """Independently of the export's own check: random speaker sequences (many unknown) and masks."""
    model = load_model(run_dir)
    dag = model.dag
    tracker = BundleTracker.load(bundle, device="cpu", threads=1)
    g = torch.Generator().manual_seed(1)
    rng = random.Random(1)
    state = dag.initial_state()
    worst = 0.0
    with torch.inference_mode():
        for _turn in range(30):
            mask = [rng.random() < 0.6 for _ in MODALITIES]
            features = {m: torch.randn(dag.config.dims[m], generator=g) for m, on in zip(MODALITIES, mask) if on}
            speaker = rng.choice([0, 1, 2, UNKNOWN_SPEAKER])
            probs, state = dag.step(state, features, torch.tensor(mask), speaker)
            onnx_probs = tracker.dag.step({m: x.numpy() for m, x in features.items()}, speaker)
            worst = max(worst, float(np.abs(onnx_probs - probs.numpy()).max()))
    assert worst <= 1e-4


def test_predecessor_mask_is_the_walk_back():
    """DAGStep's tensor form of the walk-back equals `predecessors()` for every kept count and omega."""
    from merc.models.dag.graph import DAGConfig, MultiDAG

    rng = random.Random(0)
    for omega in (1, 2, 3):
        step = DAGStep(MultiDAG(DAGConfig(n_classes=3, hidden=8, omega=omega, max_predecessors=6)))
        for _ in range(200):
            kept = rng.randint(0, 6)
            previous = [rng.choice([0, 1, 2, UNKNOWN_SPEAKER]) for _ in range(kept)]
            speaker = rng.choice([0, 1, UNKNOWN_SPEAKER])
            window = torch.tensor(previous + [rng.choice([0, 1]) for _ in range(6 - kept)])  # junk past `kept`
            valid, same = step.predecessor_masks(torch.tensor(speaker), window, torch.tensor(kept))
            expected = predecessors(previous, speaker, omega, 6)
            assert [j + 1 for j in range(6) if valid[j]] == expected
            assert [bool(same[b - 1]) for b in expected] == [speaker != UNKNOWN_SPEAKER and previous[b - 1] == speaker
                                                             for b in expected]


SERVE = """
import json, sys
from merc.export.serve.runtime import BundleTracker
tracker = BundleTracker.load(sys.argv[1], device="cpu", threads=1)
turns = json.loads(sys.argv[2])
out = [tracker.track(s, t).probs for s, t in turns]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
               or (m.startswith("merc.models") and m not in ("merc.models", "merc.models.paths", "merc.models.errors",
                                                             "merc.models.data", "merc.models.data.turns",
                                                             "merc.models.data.json_input")))
print(json.dumps({"probs": out, "heavy": heavy, "labels": list(tracker.labels)}))
"""


def test_serving_needs_neither_torch_nor_transformers(bundle, run_dir):
    dialogue = json.loads(example_dialogue().read_text().splitlines()[0])
    turns_ = [(u["speaker"], u["text"]) for u in dialogue["utterances"]]
    turns_[3] = (None, turns_[3][1])  # an unknown speaker
    turns_[5] = (turns_[5][0], "   ")  # no text: the turn is tracked without any modality
    proc = subprocess.run([sys.executable, "-c", SERVE, str(bundle), json.dumps(turns_)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    served = json.loads(proc.stdout.splitlines()[-1])
    assert served["heavy"] == []
    model = load_model(run_dir)
    reference = DialogueTracker(model, TextEncoder.load(model.encoder_ref, device="cpu"))
    assert served["labels"] == list(reference.labels)
    for (speaker, text), probs in zip(turns_, served["probs"]):
        expected = reference.track(speaker, text).probs
        assert max(abs(probs[k] - expected[k]) for k in expected) <= 1e-4


# ---------------------------------------------------------------- load-time validation


def _clone(bundle: Path, tmp_path: Path) -> Path:
    """A bundle of symlinks to `bundle` (cheap); `_own` makes one file a private copy to damage."""
    out = tmp_path / "clone"
    out.mkdir()
    for f in bundle.iterdir():
        (out / f.name).symlink_to(f)
    return out


def _own(clone: Path, name: str) -> Path:
    path = clone / name
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    return path


def _edit_manifest(clone: Path, change) -> None:
    path = _own(clone, MANIFEST_FILE)
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _load_error(clone: Path) -> str:
    with pytest.raises(BundleError) as err:
        BundleTracker.load(clone, device="cpu", threads=1)
    return str(err.value)


def test_missing_files_are_named(bundle, tmp_path):
    assert "manifest.json" in _load_error(tmp_path)
    clone = _clone(bundle, tmp_path)
    (clone / DAG_FILE).unlink()
    message = _load_error(clone)
    assert DAG_FILE in message and "missing" in message


def test_truncated_onnx_is_a_checksum_error_then_a_load_error(bundle, tmp_path):
    clone = _clone(bundle, tmp_path)
    path = _own(clone, ENCODER_FILES["fp32"])
    path.write_bytes(path.read_bytes()[:100_000])
    message = _load_error(clone)
    assert str(path) in message and "sha256" in message
    # Even with a checksum that matches (or verify=False) the truncated graph is refused by name.
    _edit_manifest(clone, lambda m: m["files"].update({ENCODER_FILES["fp32"]: sha256_file(path)}))
    message = _load_error(clone)
    assert str(path) in message and "not a loadable ONNX model" in message


def test_bad_checksum_is_named(bundle, tmp_path):
    clone = _clone(bundle, tmp_path)
    path = _own(clone, TOKENIZER_FILE)
    path.write_text(path.read_text().replace("[UNK]", "[UNX]", 1))
    message = _load_error(clone)
    assert str(path) in message and "sha256" in message


@pytest.mark.parametrize("change, words", [
    (lambda m: m["labels"].pop(), ["7 class probabilities", "6 labels"]),
    (lambda m: m["dag"]["dims"].update(audio=80), ["audio input", "80"]),
    (lambda m: m["dag"].update(hidden=32), ["window_states", "(2, 4, 32)"]),
    (lambda m: m["dag"]["dims"].update(text=128), ["text encoder dim 384", "dim 128"]),
    (lambda m: (m["dag"]["dims"].update(text=128), m["encoder"].update(dim=128)), ["outputs vectors of dim 384"]),
    (lambda m: m.update(format_version=99), ["format version 99"]),
    (lambda m: m.pop("labels"), ["malformed manifest", "labels"]),
])
def test_manifest_mismatches_are_clear(bundle, tmp_path, change, words):
    clone = _clone(bundle, tmp_path)
    _edit_manifest(clone, change)
    message = _load_error(clone)
    for word in words:
        assert word in message, (word, message)


def test_export_refuses_an_old_opset_and_an_occupied_target(run_dir, bundle):
    with pytest.raises(ExportError, match="opset 16"):
        export_bundle(run_dir, bundle.parent / "other", opset=16)
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_bundle(run_dir, bundle)


def test_cached_bundle_is_exported_once_and_rebuilt_when_damaged(run_dir, tmp_path):
    """First use exports into the cache (parity on the shipped example dialogue); later uses reuse
    it; a damaged cached file makes the next use export again."""
    first = ensure_bundle(run_dir, cache=tmp_path, variants=[], threads=1)
    assert first.parent == tmp_path and first.name.endswith(model_key(run_dir))
    parity = json.loads((first / MANIFEST_FILE).read_text())["validation"]["parity"]
    assert parity["passed"] and parity["corpus"] == "jsonl" and parity["turns"] > 0
    stamp = (first / DAG_FILE).stat().st_mtime_ns
    assert ensure_bundle(run_dir, cache=tmp_path, variants=[]) == first
    assert (first / DAG_FILE).stat().st_mtime_ns == stamp
    (first / DAG_FILE).write_bytes(b"damaged")
    assert ensure_bundle(run_dir, cache=tmp_path, variants=[], threads=1) == first
    assert BundleTracker.load(first, device="cpu").track("A", "Hello!").label in BundleTracker.load(first).labels


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        export_main(["--help"])
    assert done.value.code == 0
    assert "dag_step.onnx" in capsys.readouterr().out
    assert export_main([str(tmp_path / "no-run"), "-o", str(tmp_path / "b")]) == 2
    assert "model.json" in capsys.readouterr().err


def test_export_leaves_the_model_in_eval_mode(tmp_path):
    """torch.onnx.export restores the wrapper's mode on every submodule; a model with dropout must
    come back in eval mode, or the parity check (and later use) runs with dropout on."""
    from merc.export.build.onnx_export import export_dag_step
    from merc.models.dag.checkpoint import TrainedModel
    from merc.models.dag.graph import DAGConfig, MultiDAG
    from merc.models.data.labels import LabelSet

    dag = MultiDAG(DAGConfig(n_classes=3, hidden=8, dropout=0.5)).eval()
    export_dag_step(TrainedModel(dag, LabelSet("abc", ("a", "b", "c")), "minilm", {}), tmp_path / DAG_FILE)
    assert not any(m.training for m in dag.modules())


# ---------------------------------------------------------------- merc-eval --bundle

EVAL_BUNDLE = """
import json, sys
from merc.cli.train import eval_main
code = eval_main(["--bundle", sys.argv[1], "--corpus", "jsonl", "--data-dir", sys.argv[2], "--split", "test",
                  "--out", sys.argv[3], "--device", "cpu", "--threads", "1", "--quiet", "--json"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_eval_bundle_scores_like_the_torch_evaluation_without_torch(bundle, run_dir, data_dir, tmp_path):
    from merc.models.train.evaluate import evaluate_run

    lines = [json.dumps({"dialogue_id": d.id, "split": "test", "utterances": [
        {"speaker": u.speaker, "text": u.text, "emotion": u.label} for u in d.utterances]})
        for d in load_corpus("meld", data_dir, "test")[:4]]
    dialogues = tmp_path / "test.jsonl"
    dialogues.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-c", EVAL_BUNDLE, str(bundle), str(dialogues), str(tmp_path / "ort")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout.splitlines()[-1])
    assert status == {"code": 0, "heavy": []}
    served = json.loads((tmp_path / "ort" / "metrics.json").read_text())
    assert (tmp_path / "ort" / "report.txt").exists() and (tmp_path / "ort" / "confusion.png").exists()
    expected = evaluate_run(run_dir, "test", "jsonl", str(dialogues), tmp_path / "torch", "cpu", progress=False)
    assert served["engine"] == "onnxruntime" and served["dialogues"] == 4
    assert served["n"] == expected["n"] == sum(len(json.loads(line)["utterances"]) for line in lines)
    for key in ("accuracy", "weighted_f1", "macro_f1", "confusion_matrix", "labels", "per_class_f1"):
        assert served[key] == expected[key], key
    assert abs(served["loss"] - expected["loss"]) <= 1e-3


def test_eval_bundle_errors(bundle, tmp_path, capsys):
    from merc.cli.train import eval_main

    with pytest.raises(SystemExit):
        eval_main([])  # neither a run nor --bundle
    with pytest.raises(SystemExit):
        eval_main(["some-run", "--bundle", str(bundle)])
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"dialogue_id": "x", "split": "test", "utterances": [
        {"speaker": "A", "text": "Hi", "emotion": "hap"}]}) + "\n")
    assert eval_main(["--bundle", str(bundle), "--corpus", "jsonl", "--data-dir", str(bad), "--out",
                      str(tmp_path / "o"), "--quiet"]) == 2
    assert "'hap'" in capsys.readouterr().err
    assert eval_main(["--bundle", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "bundle directory not found" in capsys.readouterr().err
