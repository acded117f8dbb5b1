"""The face modality on real FER-2013 stills with the real MediaPipe face landmarker."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from merc.models.features.face_features import (
    BLENDSHAPE_NAMES,
    FACE_DIM,
    FACE_MODEL_SHA256,
    STILL_MARGIN,
    FaceAnalyzer,
    FaceModelError,
    FaceObservation,
    download_face_model,
    face_features,
    face_model_path,
    prepare,
)
from merc.models.paths import sha256_file

SMILE = [BLENDSHAPE_NAMES.index("mouthSmileLeft"), BLENDSHAPE_NAMES.index("mouthSmileRight")]


@pytest.fixture(scope="module")
def fer_test(data_dir: Path) -> Path:
    path = data_dir / "fer2013" / "test"
    if not path.is_dir():
        pytest.skip(f"FER-2013 not found at {path}")
    return path


@pytest.fixture(scope="module")
def analyzer(model_path: Path):
    with FaceAnalyzer.load(model_path, mode="image") as analyzer:
        yield analyzer


def fer_images(fer_test: Path, emotion: str, n: int) -> list[np.ndarray]:
    files = sorted((fer_test / emotion).glob("*.jpg"))[:n]
    assert len(files) == n, f"expected {n} images in {fer_test / emotion}"
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def observe_all(analyzer: FaceAnalyzer, images: list[np.ndarray]) -> list[FaceObservation]:
    found = [analyzer.observe(prepare(image, margin=STILL_MARGIN), 0.0) for image in images]
    return [o for o in found if o is not None]


def test_observations_on_real_faces_are_valid(analyzer, fer_test):
    images = fer_images(fer_test, "happy", 20) + fer_images(fer_test, "surprise", 10)
    observations = observe_all(analyzer, images)
    assert len(observations) >= 27  # ~98% detection with the margin (bench/face_detection.py)
    for o in observations:
        assert o.blendshapes.shape == (52,) and o.blendshapes.dtype == np.float32
        assert o.pose.shape == (3,) and o.pose.dtype == np.float32
        assert np.all((o.blendshapes >= 0) & (o.blendshapes <= 1))
        assert np.all(np.isfinite(o.pose)) and np.all(np.abs(o.pose) < math.pi / 2)
    assert len(BLENDSHAPE_NAMES) == 52 and FACE_DIM == 55


def test_happy_faces_smile_more_than_neutral_and_sad(analyzer, fer_test):
    def smile(emotion: str) -> float:
        observations = observe_all(analyzer, fer_images(fer_test, emotion, 30))
        assert len(observations) >= 25, emotion
        return float(np.mean([o.blendshapes[SMILE].mean() for o in observations]))

    happy, neutral, sad = smile("happy"), smile("neutral"), smile("sad")
    assert happy > 0.3, happy
    assert happy > 4 * max(neutral, sad), (happy, neutral, sad)


def test_blank_images_have_no_face(analyzer):
    assert analyzer.observe(np.full((192, 192, 3), 128, np.uint8), 0.0) is None
    assert analyzer.observe(np.zeros((480, 640, 3), np.uint8), 0.0) is None


def test_margin_finds_faces_the_raw_crop_misses(analyzer, fer_test):
    images = fer_images(fer_test, "sad", 40)
    raw = sum(analyzer.observe(prepare(image, margin=0.0), 0.0) is not None for image in images)
    padded = len(observe_all(analyzer, images))
    assert padded > raw and padded >= 34, (raw, padded)


def test_head_pose_convention_rotation_and_mirror(analyzer, fer_test):
    rolls, yaws = [], []
    for gray in fer_images(fer_test, "neutral", 8):
        image = prepare(gray, margin=0.5)
        h, w = image.shape[:2]
        rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h),
                                 borderValue=(128, 128, 128))  # +20 degrees = counter-clockwise
        upright, turned, mirrored = (analyzer.observe(x, 0.0) for x in (image, rotated, image[:, ::-1].copy()))
        if upright is None or turned is None or mirrored is None:
            continue
        rolls.append(math.degrees(turned.pose[2] - upright.pose[2]))
        yaws.append((math.degrees(upright.pose[0]), math.degrees(mirrored.pose[0]),
                     math.degrees(upright.pose[2]), math.degrees(mirrored.pose[2])))
    assert len(rolls) >= 6
    assert abs(float(np.median(rolls)) - 20) < 5, rolls
    for yaw, yaw_m, roll, roll_m in yaws:  # mirroring negates yaw and roll
        assert abs(yaw + yaw_m) < 6 and abs(roll + roll_m) < 6, yaws


def test_face_features_is_the_mean_of_a_turn(analyzer, fer_test):
    first, second = observe_all(analyzer, fer_images(fer_test, "happy", 2))
    vector = face_features([first, second])
    assert vector.shape == (FACE_DIM,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector[:52], (first.blendshapes + second.blendshapes) / 2, rtol=1e-6)
    np.testing.assert_allclose(vector[52:], (first.pose + second.pose) / 2, rtol=1e-6)
    np.testing.assert_allclose(face_features([first]), np.concatenate([first.blendshapes, first.pose]))
    assert face_features([]) is None


def test_video_mode_accepts_repeated_and_earlier_timestamps(model_path, fer_test):
    image = prepare(fer_images(fer_test, "happy", 1)[0], margin=STILL_MARGIN)
    with FaceAnalyzer.load(model_path, mode="video") as video:
        times = [0.5, 0.5, 0.5004, 0.2, 1.0]
        observations = [video.observe(image, t) for t in times]
    assert all(o is not None for o in observations)
    assert [o.t for o in observations] == times
    with pytest.raises(RuntimeError, match="after close"):
        video.observe(image, 2.0)


def test_prepare_shapes_and_errors():
    gray = np.full((48, 48), 90, np.uint8)
    assert prepare(gray).shape == (192, 192, 3)
    padded = prepare(gray, min_side=48, margin=0.25)
    assert padded.shape == (72, 72, 3) and padded[0, 0, 0] == 128 and padded[36, 36, 0] == 90
    frame = np.zeros((480, 640, 3), np.uint8)
    assert prepare(frame) is frame
    with pytest.raises(ValueError, match="uint8"):
        prepare(gray.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        prepare(np.zeros((48, 48, 4), np.uint8))


def test_observe_rejects_grayscale(analyzer):
    with pytest.raises(ValueError, match="prepare"):
        analyzer.observe(np.zeros((192, 192), np.uint8), 0.0)


def test_model_path_explicit_and_env(model_path, tmp_path, monkeypatch):
    monkeypatch.delenv("MERC_FACE_MODEL", raising=False)
    assert face_model_path(model_path) == model_path
    missing = tmp_path / "nope.task"
    with pytest.raises(FaceModelError, match=str(missing)):
        face_model_path(missing)
    monkeypatch.setenv("MERC_FACE_MODEL", str(missing))
    with pytest.raises(FaceModelError, match=r"nope\.task.*MERC_FACE_MODEL"):
        face_model_path()
    monkeypatch.setenv("MERC_FACE_MODEL", str(model_path))
    assert face_model_path() == model_path


def test_model_path_prefers_verified_cache_then_shared_copy(model_path, tmp_path, monkeypatch):
    monkeypatch.delenv("MERC_FACE_MODEL", raising=False)
    monkeypatch.setenv("MERC_CACHE", str(tmp_path))
    assert face_model_path().resolve() == model_path.resolve()  # empty cache: the shared dev copy
    cached = tmp_path / "weights" / "face_landmarker.task"
    cached.parent.mkdir()
    cached.write_bytes(b"truncated")
    assert face_model_path().resolve() == model_path.resolve()  # corrupt cache entry is not used
    cached.write_bytes(model_path.read_bytes())
    assert face_model_path() == cached


def test_download_verifies_checksum_and_renames_atomically(model_path, tmp_path):
    dest = tmp_path / "weights" / "face_landmarker.task"
    assert download_face_model(dest, url=model_path.resolve().as_uri()) == dest
    assert sha256_file(dest) == FACE_MODEL_SHA256
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_download_with_wrong_checksum_installs_nothing(tmp_path):
    corrupt = tmp_path / "corrupt.task"
    corrupt.write_bytes(b"\0" * 4096)
    dest = tmp_path / "weights" / "face_landmarker.task"
    with pytest.raises(FaceModelError, match=r"face_landmarker\.task.*sha256"):
        download_face_model(dest, url=corrupt.as_uri())
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(FaceModelError, match="could not download"):
        download_face_model(dest, url=(tmp_path / "absent.task").as_uri())
    assert list(dest.parent.iterdir()) == []


def test_loading_a_corrupt_model_names_the_file(tmp_path):
    bad = tmp_path / "bad.task"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(FaceModelError, match=r"bad\.task"):
        FaceAnalyzer.load(bad)
