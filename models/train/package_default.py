"""Turn a training run into the bundled default model (`models/default/`): the DAG stored in
fp16 and the fine-tuned encoder layers, so the directory stays under 10 MB.

    python -m merc.cli.package_default runs/meld/seed0 [--out models/default]
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from merc.models.dag.checkpoint import MODEL_FILE, load_model, save_model


def package(run_dir: Path, out_dir: Path) -> int:
    """Copy `run_dir`'s model into `out_dir` in compact form; returns the size in bytes."""
    model = load_model(run_dir)
    info = json.loads((run_dir / MODEL_FILE).read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    meta = {k: v for k, v in info.items() if k not in ("dag", "label_set", "labels", "encoder")}
    meta["packaged_from"] = run_dir.name if run_dir.name != "." else str(run_dir)
    encoder_ref = info["encoder"]
    if (run_dir / encoder_ref).is_dir():
        shutil.copytree(run_dir / encoder_ref, out_dir / encoder_ref,
                        ignore=shutil.ignore_patterns("*.json.tmp"))
    save_model(out_dir, model.dag, model.label_set, encoder_ref, meta, half=True)
    return sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
