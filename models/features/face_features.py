"""The face modality: MediaPipe blendshapes and head pose per image, and one 55-d vector per turn.

Training (FER-2013 stills) and the live pipeline (camera frames) both go through `FaceAnalyzer`
and `face_features`, so a model sees the same features in both. Torch-free; MediaPipe is
imported only when a `FaceAnalyzer` is loaded.

Head pose convention (radians, from MediaPipe's facial transformation matrix, whose metric
space is right-handed with x to image right, y up, and the face looking along +z toward the
camera): the rotation R is decomposed as R = Ry(yaw) @ Rx(pitch) @ Rz(roll), i.e. intrinsic
yaw, then pitch, then roll.

* yaw > 0: the nose turns toward image right (the subject turns to their left);
* pitch > 0: the nose turns down;
* roll > 0: the head rotates counter-clockwise in the image (top of the head toward image left).

Mirroring an image negates yaw and roll; rotating it counter-clockwise by a raises roll by a.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from merc.models.errors import MercError
from merc.models.paths import cache_dir, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "BLENDSHAPE_NAMES", "FACE_DIM", "FACE_FEATURE_NAMES", "FACE_MODEL_SHA256", "FACE_MODEL_URL",
    "STILL_MARGIN", "FaceAnalyzer", "FaceModelError", "FaceObservation", "download_face_model",
    "face_crop", "face_features", "face_model_path", "head_pose", "prepare",
]

FACE_MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/"
                  "face_landmarker/float16/1/face_landmarker.task")
FACE_MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
FACE_MODEL_NAME = "face_landmarker.task"

# MediaPipe's order (ARKit names plus "_neutral"); checked against the model's own names on use.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
POSE_NAMES: tuple[str, ...] = ("headYaw", "headPitch", "headRoll")
FACE_FEATURE_NAMES: tuple[str, ...] = BLENDSHAPE_NAMES + POSE_NAMES
FACE_DIM = len(FACE_FEATURE_NAMES)  # 55: the face dim the model bundles declare

DEFAULT_MIN_SIDE = 192  # upscale target for small stills (FER-2013 is 48x48); bench/face_detection.py
STILL_MARGIN = 0.5  # grey border around tight face crops before detection; bench/face_detection.py
# The face CNN's input framing, measured on FER-2013 (bench/face_expert.py, "crop_framing"): a FER image is a square
# of CROP_SCALE x the larger side of MediaPipe's landmark box, centred CROP_SHIFT x that side above
# the box centre (y down).
CROP_SCALE = 1.09
CROP_SHIFT = -0.05
CROP_SIZE = 48


class FaceModelError(MercError, RuntimeError):
    """The face landmarker model file is missing, corrupt or cannot be fetched; names the path."""

    code = "face_model_missing"
    hint = "give --face-model or set $MERC_FACE_MODEL"


def _repo_shared_model() -> Path:
    """The dev/test copy: ../shared/models next to the repository root (this file is
    models/features/face_features.py)."""
    return Path(__file__).resolve().parents[3] / "shared" / "models" / FACE_MODEL_NAME


def face_model_path(explicit: str | Path | None = None, *, url: str = FACE_MODEL_URL,
                    sha256: str = FACE_MODEL_SHA256) -> Path:
    """Where the MediaPipe face landmarker model is, fetching it into the cache on first use.

    Order: `explicit`; ``$MERC_FACE_MODEL``; ``cache_dir()/weights/face_landmarker.task`` if its
    checksum matches; ``../shared/models/face_landmarker.task`` beside the repository (dev copy)
    if its checksum matches; else a download of `url` into the cache. An explicit or $MERC_FACE_MODEL
    file is not checksummed, so a user may run another landmarker variant on purpose.

    Raises:
        FaceModelError: an explicit file is missing, or the download fails or has the wrong checksum.
    """
    if explicit is not None or os.environ.get("MERC_FACE_MODEL"):
        path, origin = (Path(explicit), "given explicitly") if explicit is not None else \
            (Path(os.environ["MERC_FACE_MODEL"]), "from $MERC_FACE_MODEL")
        path = path.expanduser()
        if not path.is_file():
            raise FaceModelError(f"{path}: face landmarker model not found ({origin})")
        return path
    cached = cache_dir() / "weights" / FACE_MODEL_NAME
    if cached.is_file():
        if sha256_file(cached) == sha256:
            return cached
        logger.warning("%s: checksum mismatch, fetching the face landmarker model again", cached)
    shared = _repo_shared_model()
    if shared.is_file():
        if sha256_file(shared) == sha256:
            return shared
        logger.warning("%s: checksum mismatch, not using this copy", shared)
    return download_face_model(cached, url=url, sha256=sha256)


def download_face_model(dest: Path, *, url: str = FACE_MODEL_URL, sha256: str = FACE_MODEL_SHA256,
                        timeout_s: float = 60.0) -> Path:
    """Fetch `url` to `dest`, verifying its sha256 before an atomic rename (no half-written model).

    Raises:
        FaceModelError: the fetch fails or the file's checksum is not `sha256`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        logger.info("downloading the face landmarker model from %s to %s", url, dest)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            while block := response.read(1 << 20):
                out.write(block)
        got = sha256_file(tmp)
        if got != sha256:
            raise FaceModelError(f"{dest}: downloaded face landmarker model from {url} has sha256 {got}, "
                                 f"expected {sha256}; not installed")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FaceModelError(f"{dest}: could not download the face landmarker model from {url} ({exc}); "
                             "set MERC_FACE_MODEL to a local face_landmarker.task") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


@dataclass(frozen=True, eq=False)  # arrays inside: equality is identity
class FaceObservation:
    """One face seen at time `t` (seconds on the session clock, or 0 for a still image)."""

    t: float
    blendshapes: np.ndarray  # (52,) float32 in [0, 1], order BLENDSHAPE_NAMES
    pose: np.ndarray  # (3,) float32 radians: yaw, pitch, roll (module docstring)
    crop: np.ndarray | None = None  # (48, 48) uint8 grey face crop framed like FER-2013 (face_crop)


def face_crop(image_bgr: np.ndarray, landmarks_xy: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """A square grey crop of the face, framed as FER-2013 frames its faces, resized to `size`.

    `landmarks_xy` (N, 2) are the face's landmark positions in pixels. Parts of the square outside
    the image repeat the border pixels; downscaling averages (INTER_AREA), so a large face in a
    high-resolution frame does not alias.
    """
    import cv2

    landmarks_xy = np.asarray(landmarks_xy, dtype=np.float64)
    if landmarks_xy.ndim != 2 or landmarks_xy.shape[1] != 2 or len(landmarks_xy) == 0:
        raise ValueError(f"expected landmark positions (N, 2), got shape {landmarks_xy.shape}")
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
    (x0, y0), (x1, y1) = landmarks_xy.min(axis=0), landmarks_xy.max(axis=0)
    extent = max(x1 - x0, y1 - y0, 1.0)
    side = max(round(CROP_SCALE * extent), 2)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + CROP_SHIFT * extent
    left, top = round(cx - side / 2), round(cy - side / 2)
    h, w = gray.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    square = gray[top + pad:top + pad + side, left + pad:left + pad + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def prepare(image: np.ndarray, min_side: int = DEFAULT_MIN_SIDE, margin: float = 0.0) -> np.ndarray:
    """A BGR uint8 image MediaPipe can use: grayscale becomes 3 channels, small images are upscaled.

    FER-2013 stills are tight 48x48 grayscale face crops. The face detector finds a face in about
    84% of them as they are and 96% with a plain mid-grey border (`margin`, a fraction of the
    image's longer side added on every side; `STILL_MARGIN` for face crops): it expects faces with
    some context around them. Upscaling (bicubic, shorter side to `min_side`) does not change
    detection (MediaPipe resamples to its own input size) and costs nothing measurable;
    bench/face_detection.py has the numbers. Camera frames pass through unchanged by default.
    """
    import cv2

    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a grayscale or 3-channel BGR image, got shape {image.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    pad = round(margin * max(image.shape[:2]))
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    short = min(image.shape[:2])
    if short < min_side:
        scale = min_side / short
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    return image


def head_pose(matrix: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in radians from a 4x4 facial transformation matrix; R = Ry Rx Rz."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    yaw = math.atan2(r[0, 2], r[2, 2])
    pitch = math.atan2(-r[1, 2], math.hypot(r[1, 0], r[1, 1]))
    roll = math.atan2(r[1, 0], r[1, 1])
    return np.array([yaw, pitch, roll], dtype=np.float32)


class FaceAnalyzer:
    """MediaPipe FaceLandmarker (one face, blendshapes and transformation matrix) as observations.

    Not thread-safe: one analyzer per thread. In video mode MediaPipe tracks the face between
    frames and needs strictly increasing millisecond timestamps; image mode treats every call
    independently (use it for unrelated stills such as FER-2013).
    """

    def __init__(self, landmarker: Any, mode: Literal["video", "image"], model_path: Path) -> None:
        self._landmarker = landmarker
        self.mode = mode
        self.model_path = model_path
        self._last_ms = -1

    @classmethod
    def load(cls, model_path: str | Path | None = None, mode: Literal["video", "image"] = "video",
             min_detection_confidence: float = 0.5) -> FaceAnalyzer:
        """Create the landmarker from `face_model_path(model_path)`.

        Raises:
            FaceModelError: the model cannot be found or MediaPipe cannot load it.
        """
        if mode not in ("video", "image"):
            raise ValueError(f"mode must be 'video' or 'image', got {mode!r}")
        path = face_model_path(model_path)
        try:
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:
            raise FaceModelError(f"{path}: mediapipe is not installed (pip install 'mediapipe>=0.10.14')") from exc
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE,
            num_faces=1, min_face_detection_confidence=min_detection_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        try:
            landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise FaceModelError(f"{path}: MediaPipe could not load this face landmarker model ({exc})") from exc
        return cls(landmarker, mode, path)

    def observe(self, image_bgr: np.ndarray, t: float) -> FaceObservation | None:
        """Blendshapes and head pose of the face in a BGR uint8 image, or None when no face is found.

        In video mode a timestamp that does not advance by at least 1 ms (a repeated or earlier
        `t`) is sent to MediaPipe as the previous one plus 1 ms; the observation keeps `t`.
        Grayscale or small images should go through `prepare` first.
        """
        if self._landmarker is None:
            raise RuntimeError(f"{self.model_path}: FaceAnalyzer used after close()")
        if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected a BGR uint8 image of shape (H, W, 3), got {image_bgr.dtype} "
                             f"{image_bgr.shape}; use prepare() for grayscale images")
        import cv2
        import mediapipe as mp

        rgb = np.ascontiguousarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        if self.mode == "video":
            ms = max(round(t * 1000.0), self._last_ms + 1)
            self._last_ms = ms
            result = self._landmarker.detect_for_video(frame, ms)
        else:
            result = self._landmarker.detect(frame)
        if not result.face_blendshapes or not result.facial_transformation_matrixes:
            return None
        categories = result.face_blendshapes[0]
        if len(categories) != len(BLENDSHAPE_NAMES) or any(
                c.category_name != name for c, name in zip(categories, BLENDSHAPE_NAMES, strict=True)):
            raise FaceModelError(f"{self.model_path}: unexpected blendshape outputs "
                                 f"{[c.category_name for c in categories][:5]}...; expected MediaPipe's 52")
        scores = np.clip(np.array([c.score for c in categories], dtype=np.float32), 0.0, 1.0)
        h, w = image_bgr.shape[:2]
        points = np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0]]) if result.face_landmarks else None
        return FaceObservation(t=float(t), blendshapes=scores,
                               pose=head_pose(np.asarray(result.facial_transformation_matrixes[0])),
                               crop=face_crop(image_bgr, points) if points is not None else None)

    def close(self) -> None:
        """Release MediaPipe's graph; further `observe` calls raise."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def face_features(observations: Sequence[FaceObservation]) -> np.ndarray | None:
    """The turn's face vector (FACE_DIM float32): the mean of its observations, None if there are none.

    The mean is independent of turn length, frame rate and dropped frames, and one observation
    (a FER-2013 still) maps to itself, so still-image training and live turns share one feature
    distribution. Averaging angles is safe here: head pose stays well inside (-pi/2, pi/2).
    """
    if not observations:
        return None
    rows = np.stack([np.concatenate([o.blendshapes, o.pose]).astype(np.float32) for o in observations])
    if rows.shape[1] != FACE_DIM:
        raise ValueError(f"face observations have {rows.shape[1]} values, expected {FACE_DIM}")
    return rows.mean(axis=0).astype(np.float32)
