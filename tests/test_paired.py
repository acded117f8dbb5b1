"""The paired multimodal set (real IEMOCAP turns with real EmoDB and FER-2013 evidence), a small
multimodal training run, and its bundle serving the experts."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_face_video

from merc.cli.train import train_main
from merc.export.build.evidence import audio_pools, face_pools
from merc.export.build.onnx_export import export_bundle
from merc.export.serve.bundle import read_manifest
from merc.export.serve.expert_runtime import AudioEmotionExpert, FaceEmotionExpert
from merc.export.serve.runtime import BundleTracker
from merc.models.data.corpora import load_corpus
from merc.models.data.emodb import load_emodb
from merc.models.data.label_map import label_mapping
from merc.models.data.labels import EMODB4, FER7, IEMOCAP6
from merc.models.features.paired import EMODB_TEST_SPEAKERS, apply_missing, only, pair
from merc.models.paths import default_experts_dir
from merc.models.train.paired_train import (
    corpus_text,
    mappings_for,
    score_paired,
    train_paired,
)

RECORDING = Path(__file__).parent / "fixtures" / "recordings" / "kitchen-2spk"


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pools(data_dir, tmp_path_factory):
    """Evidence from the bundled experts on the real EmoDB and FER-2013 files."""
    cache = tmp_path_factory.mktemp("pool-cache")
    return {"audio": audio_pools(data_dir, "whisper_unpadded", cache),
            "face": face_pools(default_experts_dir() / "face_cnn.onnx", data_dir, cache)}


@pytest.fixture(scope="module")
def text_run(data_dir, tmp_path_factory, one_thread):
    """A small text-only IEMOCAP run over the packaged MiniLM (real dialogues, 16 turns each)."""
    tmp = tmp_path_factory.mktemp("paired-text-run")
    lines = []
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        for d in load_corpus("iemocap", data_dir, split)[:n]:
            lines.append(json.dumps({"dialogue_id": d.id, "split": split, "utterances": [
                {"speaker": u.speaker, "text": u.text, "emotion": u.label} for u in d.utterances[:16]]}))
    corpus = tmp / "small.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    run = tmp / "run"
    assert train_main(["--corpus", "jsonl", "--data-dir", str(corpus), "--label-set", "iemocap-6",
                       "--encoder", "minilm",
                       "--epochs", "1", "--hidden", "32", "--cache-dir", str(tmp / "cache"), "--out", str(run),
                       "--quiet"]) == 0
    return run


def test_pools_keep_speakers_and_images_disjoint(pools):
    audio, face = pools["audio"], pools["face"]
    assert set(audio["test"].groups) == set(EMODB_TEST_SPEAKERS)
    assert not set(audio["train"].groups) & set(audio["test"].groups)
    assert not set(audio["train"].ids) & set(audio["test"].ids)
    assert all(i.startswith("fer/train:") for i in face["train"].ids)
    assert all(i.startswith("fer/test:") for i in face["test"].ids)
    assert len(face["test"].ids) == 7178 and len(face["train"].ids) == 2872  # the CNN's held-out slice
    for pool in (*audio.values(), *face.values()):
        np.testing.assert_allclose(pool.features.sum(axis=1), 1, atol=1e-4)  # expert probabilities
    # Every EmoDB clip is in exactly one pool.
    assert len(audio["train"].ids) + len(audio["test"].ids) == len(load_emodb())


def test_pairing_follows_labels_draws_without_replacement_and_never_mixes_splits(data_dir, pools):
    dialogues = load_corpus("iemocap", data_dir, "test")
    from merc.models.dag.graph import MODALITIES
    from merc.models.features.dialogue import DialogueFeatures

    def packed(d):  # labels and speakers are what pairing reads; text is not involved
        return DialogueFeatures(d.id, {}, np.zeros((len(d.utterances), len(MODALITIES)), bool),
                                np.array(d.speaker_indices()),
                                np.array([IEMOCAP6.index(u.label) for u in d.utterances]))

    test = [packed(d) for d in dialogues]
    test_pools = {m: p["test"] for m, p in pools.items()}
    paired = pair(test, test_pools, mappings_for(IEMOCAP6), seed=0)
    audio_class = dict(zip(test_pools["audio"].ids, test_pools["audio"].classes))
    face_class = dict(zip(test_pools["face"].ids, test_pools["face"].classes))
    to_audio, to_face = label_mapping(EMODB4, IEMOCAP6), label_mapping(FER7, IEMOCAP6)
    used = Counter()
    for d in paired:
        assert d.mask[:, 1:].all()  # every IEMOCAP label has both kinds of evidence
        for label, a, f in zip(d.labels, d.evidence["audio"], d.evidence["face"]):
            assert audio_class[a] == to_audio[label] and face_class[f] == to_face[label]
            assert not a.startswith("fer/train") and f.startswith("fer/test:")
            used[a] += 1
    # Without replacement: within a class, use counts differ by at most one (full cycles first).
    for cls in range(len(EMODB4)):
        counts = [used[i] for i, c in audio_class.items() if c == cls]
        if sum(counts):
            assert max(counts) - min(counts) <= 1
    # Same seed, same pairing; another seed, another one.
    again = pair(test, test_pools, mappings_for(IEMOCAP6), seed=0)
    assert again[0].evidence == paired[0].evidence
    assert pair(test, test_pools, mappings_for(IEMOCAP6), seed=1)[0].evidence != paired[0].evidence
    missing = apply_missing(paired, {"audio": 0.7, "face": 0.3}, seed=0)
    present = np.concatenate([d.mask for d in missing]).mean(axis=0)
    assert present[0] == 0 and abs(present[1] - 0.3) < 0.03 and abs(present[2] - 0.7) < 0.03
    assert all(not d.mask[:, 1:].any() for d in only(missing, ("text",)))
    with pytest.raises(ValueError):
        apply_missing(paired, {"audio": 1.5}, seed=0)


def test_multimodal_training_lowers_the_loss_and_its_bundle_serves_the_experts(text_run, pools, tmp_path, data_dir):
    clips = load_emodb(data_dir)
    experts = default_experts_dir()
    run = tmp_path / "paired"
    metrics = train_paired(text_run, pools, run, seed=0, epochs=4, progress=False, experts={
        "audio": {"onnx": experts / "audio_expert.onnx", "features": "whisper_unpadded", "labels": list(EMODB4.labels)},
        "face": {"onnx": experts / "face_cnn.onnx", "labels": list(FER7.labels)}})
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0], losses
    model = json.loads((run / "model.json").read_text())
    assert model["modalities"] == ["text", "audio", "face"] and model["dag"]["dims"]["audio"] == 4
    assert model["dag"]["dims"]["face"] == 7 and (run / "experts" / "face_cnn.onnx").is_file()

    _, _, text = corpus_text(text_run, ("test",))
    test_pools = {m: p["test"] for m, p in pools.items()}
    full = score_paired(run, text["test"], test_pools, {}, seed=0)
    assert full["present_fraction"] == {"text": 1.0, "audio": 1.0, "face": 1.0}
    scored = score_paired(run, text["test"], test_pools, {"audio": 1.0, "face": 1.0}, seed=0)
    assert scored["present_fraction"]["face"] == 0

    bundle = tmp_path / "bundle"
    export_bundle(run, bundle, variants=[], corpus="jsonl", data_dir=json.loads(
        (text_run / "config.json").read_text())["data_dir"], n_dialogues=1, threads=1)
    manifest = read_manifest(bundle)
    assert manifest.trained_modalities == ("text", "audio", "face")
    assert manifest.experts["audio"]["file"] == "audio_expert.onnx" and manifest.raw["source"]["audio_features"] == \
        "whisper_unpadded"
    assert "face_cnn.onnx" in manifest.files and "audio_expert.onnx" in manifest.files
    face = FaceEmotionExpert(manifest.file(manifest.experts["face"]["file"]))
    tracker = BundleTracker.load(bundle)
    from merc.models.data.emodb import read_clip
    from merc.models.features.audio_features import AcousticFeaturizer

    voice = AudioEmotionExpert(manifest.file("audio_expert.onnx"), AcousticFeaturizer("whisper_unpadded"))
    angry = next(c for c in clips if c.label == EMODB4.index("anger"))
    result = tracker.track("A", "I told you twice already!", {"audio": voice(read_clip(angry)),
                                                              "face": face(np.full((1, 48, 48), 90, np.uint8))[0]})
    assert result.modalities == ("text", "audio", "face")
    assert abs(sum(result.probs.values()) - 1) < 1e-4
    assert tracker.track("B", "Okay.", {}).modalities == ("text",)

    # The live pipeline with this bundle: the audio expert runs on each turn's audio, the face CNN
    # on the face tracker's crops of a camera (a video of FER-2013 faces), from the bundle's graphs.
    replayed = replay_with_camera(bundle, data_dir, tmp_path)
    turns = [e for e in replayed if e["type"] == "turn"]
    assert turns and all(t["modalities"][:2] == ["text", "audio"] for t in turns), turns
    assert any("face" in t["modalities"] for t in turns), [t["modalities"] for t in turns]


def replay_with_camera(bundle, data_dir, tmp_path) -> list[dict]:
    """Events of a fixture recording replayed at real time through `merc-live`'s per-turn processor
    on `bundle`, with a camera (a video of FER-2013 test faces) feeding a face tracker."""
    from merc.cli.common import open_session
    from merc.models.features.face_features import FaceAnalyzer, face_model_path
    from merc.stream.capture.video import FaceTracker, VideoFileSource
    from merc.stream.recordings.recording import open_recording
    from merc.stream.recordings.replay import replay_recording
    from merc.stream.session.options import AsrOptions, SessionOptions, SpeakerOptions, TrackerOptions
    from merc.stream.wire.events import EventBus

    video = write_face_video(data_dir, tmp_path / "camera.avi", seconds=40)
    options = SessionOptions(tracker=TrackerOptions(bundle=bundle, device="cpu"), asr=AsrOptions(device="cpu"),
                             speakers=SpeakerOptions(device="cpu"))
    camera = VideoFileSource(video, speed=1.0)
    face_tracker = FaceTracker(camera, FaceAnalyzer.load(face_model_path(), mode="video"))
    processor = open_session(options, EventBus("test"), face_tracker=face_tracker).processor
    camera.start()
    face_tracker.start()
    try:
        bus = EventBus("test")
        replay_recording(open_recording(RECORDING), processor, bus, 1.0)
    finally:
        face_tracker.stop()
        camera.stop()
    return bus.events()
