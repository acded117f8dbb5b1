"""The experts' evidence pools for the paired set (see `merc.models.features.paired` for the rules): built by
running the exported experts (the face CNN on ONNX Runtime), so this lives with the export, not the models."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from merc.models.data.emodb import EmoDBError, load_emodb
from merc.models.experts.audio_expert import (
    clip_features,
    fit_audio_expert,
    out_of_fold,
)
from merc.models.features.paired import (
    EMODB_TEST_SPEAKERS,
    EvidencePool,
    split_speakers,
)

log = logging.getLogger(__name__)


def audio_pools(data_dir: str | Path | None, kind: str, cache: Path | None,
                test_speakers: tuple[str, ...] = EMODB_TEST_SPEAKERS) -> dict[str, EvidencePool]:
    """{"train", "test"} pools of EmoDB audio evidence, speakers disjoint.

    Train-pool clips carry leave-one-speaker-out probabilities among the training speakers; test
    clips carry the probabilities of an expert fit on all training speakers (C chosen on them).
    """
    clips = load_emodb(data_dir)
    x = clip_features(clips, kind, cache)
    y = np.array([c.label for c in clips])
    speakers = np.array([c.speaker for c in clips])
    ids = np.array([c.name for c in clips])
    test = split_speakers(speakers, test_speakers)
    if not test.any() or test.all():
        raise EmoDBError(f"EmoDB test speakers {test_speakers} leave an empty train or test pool")
    expert = fit_audio_expert(x[~test], y[~test], speakers[~test], kind)
    train_probs = out_of_fold(x[~test], y[~test], speakers[~test], expert.c, kind)
    test_probs = expert.predict_proba(x[test])
    log.info("audio evidence: %d train clips (%d speakers), %d test clips (%d speakers); test accuracy %.3f",
             (~test).sum(), len(set(speakers[~test])), test.sum(), len(set(speakers[test])),
             float((test_probs.argmax(1) == y[test]).mean()))
    return {"train": EvidencePool("audio", "train", train_probs, y[~test], ids[~test], speakers[~test]),
            "test": EvidencePool("audio", "test", test_probs, y[test], ids[test], speakers[test])}


def face_pools(face_expert: Path, data_dir: str | Path | None, cache: Path | None) -> dict[str, EvidencePool]:
    """{"train", "test"} pools of FER-2013 face evidence from the face CNN `face_expert` (its
    face_cnn.onnx, or a folder holding it, as `merc-experts face` writes it).

    Train-pool images are the CNN's validation slice (cut from FER's train split with the fraction
    and seed recorded in the graph, so the CNN never fit them); test images are FER's test split.
    """
    from merc.export.serve.expert_runtime import ExpertError, FaceEmotionExpert
    from merc.models.data.fer import load_fer_split, validation_split
    from merc.models.paths import sha256_file

    path = Path(face_expert)
    path = path / "face_cnn.onnx" if path.is_dir() else path
    expert = FaceEmotionExpert(path)
    held = expert.meta.get("validation")
    if not held:
        raise ExpertError(f"{path}: does not record the validation slice its CNN held out (metadata 'validation')")
    _, valid = validation_split(load_fer_split("train", data_dir, cache), held["fraction"], held["seed"])
    test = load_fer_split("test", data_dir, cache)
    weights = sha256_file(path)[:16]
    pools = {}
    for split, data in (("train", valid), ("test", test)):
        cached = cache / f"face-evidence-{split}-{weights}-{len(data)}.npy" if cache else None
        if cached and cached.exists():
            probs = np.load(cached)
        else:
            probs = np.concatenate([expert(data.images[i:i + 1024]) for i in range(0, len(data), 1024)])
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, probs)
        ids = np.array([f"fer/{split}:{n}" for n in data.names])
        pools[split] = EvidencePool("face", split, probs, data.labels, ids)
        log.info("face evidence %s: %d images, CNN accuracy %.3f", split, len(data),
                 float((probs.argmax(1) == data.labels).mean()))
    return pools
