"""A small real training run end to end: merc-train writes a complete run, loss falls, and
merc-eval scores it causally on the test split."""
from __future__ import annotations

import json

import pytest

from merc.cli.train import eval_main, train_main


@pytest.fixture(scope="module")
def small_corpus(data_dir, tmp_path_factory):
    """A few real IEMOCAP dialogues of each split, as a user JSONL corpus."""
    out = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    wanted = {"train": 4, "valid": 2, "test": 2}
    lines = []
    for line in (data_dir / "iemocap" / "iemocap_dialogues.jsonl").read_text().splitlines():
        d = json.loads(line)
        if wanted.get(d["split"], 0) > 0:
            wanted[d["split"]] -= 1
            d["utterances"] = d["utterances"][:30]
            lines.append(json.dumps(d))
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def run_dir(small_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "smoke"
    cache = tmp_path_factory.mktemp("cache")
    code = train_main(["--corpus", "jsonl", "--data-dir", str(small_corpus), "--label-set", "iemocap-6",
                       "--epochs", "6", "--lr", "0.002", "--dropout", "0", "--hidden", "64",
                       "--curriculum-buckets", "2", "--cache-dir", str(cache), "--out", str(run), "--quiet"])
    assert code == 0
    return run


def test_run_directory_is_complete(run_dir):
    for name in ("config.json", "model.json", "model.safetensors", "metrics.json", "valid_report.txt",
                 "valid_confusion.png", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["valid"]) >= {"accuracy", "weighted_f1", "macro_f1", "per_class_f1", "confusion_matrix"}


def test_training_loss_falls(run_dir):
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Curriculum: the first epoch trains on the easier half only.
    assert history[0]["train_dialogues"] < history[-1]["train_dialogues"]


def test_eval_scores_the_test_split(run_dir, capsys):
    assert eval_main([str(run_dir), "--split", "test", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "weighted F1" in out and "causal" in out
    result = json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    assert result["split"] == "test" and result["n"] > 0
    assert (run_dir / "eval-test" / "confusion.png").exists()


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert eval_main([str(tmp_path / "nope")]) == 2
    assert "model.json" in capsys.readouterr().err


def test_train_with_an_unknown_config_key_fails_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    assert train_main(["--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "epochz" in capsys.readouterr().err
