"""The experts' evidence pools for the paired set (see `merc.models.paired` for the rules)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .audio_expert import clip_features, fit_audio_expert, out_of_fold
from .emodb import load_emodb
from .paired import EMODB_TEST_SPEAKERS, EvidencePool, split_speakers

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
        raise ValueError(f"EmoDB test speakers {test_speakers} leave an empty train or test pool")
    expert = fit_audio_expert(x[~test], y[~test], speakers[~test], kind)
    train_probs = out_of_fold(x[~test], y[~test], speakers[~test], expert.c, kind)
    test_probs = expert.predict_proba(x[test])
    log.info("audio evidence: %d train clips (%d speakers), %d test clips (%d speakers); test accuracy %.3f",
             (~test).sum(), len(set(speakers[~test])), test.sum(), len(set(speakers[test])),
             float((test_probs.argmax(1) == y[test]).mean()))
    return {"train": EvidencePool("audio", "train", train_probs, y[~test], ids[~test], speakers[~test]),
            "test": EvidencePool("audio", "test", test_probs, y[test], ids[test], speakers[test])}


def face_pools(model_dir: Path, data_dir: str | Path | None, cache: Path | None) -> dict[str, EvidencePool]:
    """{"train", "test"} pools of FER-2013 face evidence from the face CNN in `model_dir`.

    Train-pool images are the CNN's validation slice (cut from FER's train split with the fraction
    and seed the CNN was trained with, so the CNN never fit them); test images are FER's test split.
    """
    from .face_cnn import CONFIG_FILE, WEIGHTS_FILE, load_face_cnn, predict_proba
    from .fer import load_fer_split, validation_split

    from .paths import sha256_file

    meta = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    held = meta.get("validation")
    if not held:
        raise ValueError(f"{Path(model_dir) / CONFIG_FILE}: does not record the validation slice it held out")
    model = load_face_cnn(model_dir)
    _, valid = validation_split(load_fer_split("train", data_dir, cache), held["fraction"], held["seed"])
    test = load_fer_split("test", data_dir, cache)
    weights = sha256_file(Path(model_dir) / WEIGHTS_FILE)[:16]
    pools = {}
    for split, data in (("train", valid), ("test", test)):
        cached = cache / f"face-evidence-{split}-{weights}-{len(data)}.npy" if cache else None
        if cached and cached.exists():
            probs = np.load(cached)
        else:
            probs = predict_proba(model, data.images)
            if cached:
                np.save(cached, probs)
        pools[split] = EvidencePool("face", split, probs, data.labels, np.array([f"fer/{split}:{n}" for n in data.names]))
        log.info("face evidence %s: %d images, CNN accuracy %.3f", split, len(data),
                 float((probs.argmax(1) == data.labels).mean()))
    return pools
