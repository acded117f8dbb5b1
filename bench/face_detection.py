"""Face detection rate on FER-2013 after `prepare`, per upscale size, and the cost of `observe`.

Prints one JSON object:

- grid: for each `prepare` setting (--sizes min_side x --margins grey border; 48 with margin 0
  = the raw still), on the same --n test images drawn evenly from the 7 emotion folders
  (seeded): detection rate overall and per emotion, and wall/CPU ms per `observe` call
  (p50, p90) in image mode;
- best: the setting with the highest detection rate (ties: smallest input);
- default: the row for merc's defaults (DEFAULT_MIN_SIDE, STILL_MARGIN);
- live_frame: ms per `observe` in video mode on a 640x480 frame with a FER face in it, the shape
  of a webcam frame in the live pipeline.

    nice -n 19 env OMP_NUM_THREADS=1 python bench/face_detection.py [--data ../shared/data] [--n 500]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from merc.models.data.corpora import resolve_data_dir
from merc.models.features.face_features import (
    DEFAULT_MIN_SIDE,
    STILL_MARGIN,
    FaceAnalyzer,
    face_model_path,
    prepare,
)

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def sample_images(fer_test: Path, n: int, seed: int) -> list[tuple[str, Path]]:
    """`n` test images, as evenly as the folders allow across emotions (disgust has only 111)."""
    rng = random.Random(seed)
    pools = {e: sorted((fer_test / e).glob("*.jpg")) for e in EMOTIONS}
    missing = [e for e, files in pools.items() if not files]
    if missing:
        raise SystemExit(f"{fer_test}: no images for {missing}")
    for files in pools.values():
        rng.shuffle(files)
    picked: list[tuple[str, Path]] = []
    while len(picked) < n and any(pools.values()):
        for e in EMOTIONS:
            if pools[e] and len(picked) < n:
                picked.append((e, pools[e].pop()))
    return picked


def _stats(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50_ms": round(statistics.median(values), 2), "p90_ms": round(values[int(0.9 * (len(values) - 1))], 2)}


def run_detection(analyzer: FaceAnalyzer, images: list[tuple[str, np.ndarray]], min_side: int,
                  margin: float) -> dict:
    """Detection rate (overall, per emotion) and observe cost with `prepare(image, min_side, margin)`."""
    hits: dict[str, list[bool]] = {e: [] for e in EMOTIONS}
    wall, cpu = [], []
    for emotion, gray in images:
        image = prepare(gray, min_side, margin)
        c0, t0 = time.process_time(), time.perf_counter()
        found = analyzer.observe(image, 0.0) is not None
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
        hits[emotion].append(found)
    total = [h for v in hits.values() for h in v]
    return {"min_side": min_side, "margin": margin, "input_px": list(prepare(images[0][1], min_side, margin).shape[:2]),
            "detection_rate": round(sum(total) / len(total), 4),
            "per_emotion": {e: round(sum(v) / len(v), 3) for e, v in hits.items() if v},
            "wall": _stats(wall), "cpu": _stats(cpu)}


def live_frame_cost(model: Path, face: np.ndarray, frames: int) -> dict:
    """observe() in video mode on a 640x480 BGR frame holding a 192 px face, as from a webcam."""
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[144:336, 224:416] = prepare(face, 192)  # a 192x192 face crop in a webcam-sized frame
    wall, found = [], 0
    with FaceAnalyzer.load(model, mode="video") as analyzer:
        for i in range(frames):
            t0 = time.perf_counter()
            found += analyzer.observe(canvas, i / 10.0) is not None
            wall.append(1000 * (time.perf_counter() - t0))
    return {"frame_px": [480, 640], "frames": frames, "detected": found, "wall": _stats(wall[5:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding fer2013/ (default $MERC_DATA, else ../shared/data)")
    parser.add_argument("--model", help="face_landmarker.task (default: merc's usual resolution)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="48,96,192,384", help="prepare min_side values")
    parser.add_argument("--margins", default="0,0.1,0.25,0.5", help="prepare margin values")
    args = parser.parse_args()

    fer_test = resolve_data_dir(args.data) / "fer2013" / "test"
    model = face_model_path(args.model)
    picked = sample_images(fer_test, args.n, args.seed)
    images = []
    for emotion, path in picked:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise SystemExit(f"{path}: not a readable image")
        images.append((emotion, gray))
    settings = [(int(s), float(m)) for s in args.sizes.split(",") for m in args.margins.split(",")]
    if (DEFAULT_MIN_SIDE, STILL_MARGIN) not in settings:
        settings.append((DEFAULT_MIN_SIDE, STILL_MARGIN))
    with FaceAnalyzer.load(model, mode="image") as analyzer:
        grid = [run_detection(analyzer, images, size, margin) for size, margin in settings]
    best = max(grid, key=lambda row: (row["detection_rate"], -row["input_px"][0]))
    default = next(row for row in grid if (row["min_side"], row["margin"]) == (DEFAULT_MIN_SIDE, STILL_MARGIN))
    print(json.dumps({
        "images": len(images), "seed": args.seed, "source": "fer2013/test",
        "best": {k: best[k] for k in ("min_side", "margin", "detection_rate")},
        "default": {k: default[k] for k in ("min_side", "margin", "detection_rate")},
        "grid": grid, "live_frame": live_frame_cost(model, images[0][1], 60),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }, indent=1))


if __name__ == "__main__":
    main()
