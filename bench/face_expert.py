"""Which face expert, by measurement on FER-2013, and how the live crops frame faces.

1. Run-time face features: MediaPipe blendshapes + head pose (55 values, `face_features`) of
   images prepared as stills (`prepare(margin=STILL_MARGIN)`), a StandardScaler + logistic
   regression fit on --n-train train images (C chosen on a stratified validation slice of them),
   scored on the whole official test split; images without a detected face count as wrong (the
   expert has no answer for them); the detection rate is reported.
2. The face CNN (`merc-experts face`, --cnn): its test accuracy on the original 48x48 images and
   on the live path's crops (`FaceObservation.crop`: MediaPipe landmarks -> FER-style square) of
   the same test images, where a face is detected.
3. Crop framing: where the original image lies relative to MediaPipe's landmark box (scale and
   vertical shift, medians), which fixes `CROP_SCALE` and `CROP_SHIFT`.

    nice python bench/face_expert.py --cnn runs/face-cnn [--n-train 6000] [--out FILE]

Prints one JSON object and writes it to bench/results/<date>-face-expert.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np

from merc.export.serve.expert_runtime import FaceEmotionExpert
from merc.models.data.fer import load_fer_split
from merc.models.features.face_features import (
    STILL_MARGIN,
    FaceAnalyzer,
    face_features,
    face_model_path,
    prepare,
)
from merc.models.paths import cache_dir


def observe_all(analyzer: FaceAnalyzer, images: np.ndarray) -> tuple[np.ndarray, list, list]:
    """Per image: detected?, the 55 run-time features (or None) and the live crop (or None)."""
    found, feats, crops = [], [], []
    for gray in images:
        image = prepare(gray, margin=STILL_MARGIN)
        obs = analyzer.observe(image, 0.0)
        found.append(obs is not None)
        feats.append(face_features([obs]) if obs is not None else None)
        crops.append(obs.crop if obs is not None else None)
    return np.array(found), feats, crops


def crop_framing(analyzer: FaceAnalyzer, images: np.ndarray) -> dict:
    """Scale (original side / larger landmark-box side) and vertical shift (original centre minus
    box centre, in box sides) of FER images inside their prepared, margined versions."""
    import cv2
    import mediapipe as mp

    scales, shifts_y, shifts_x = [], [], []
    for gray in images:
        image = prepare(gray, margin=STILL_MARGIN)
        h, w = image.shape[:2]
        rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        result = analyzer._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        if not result.face_landmarks:
            continue
        pts = np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0]])
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        extent = max(x1 - x0, y1 - y0)
        side = h * 48 / (48 + 2 * round(STILL_MARGIN * 48))
        scales.append(side / extent)
        shifts_y.append((h / 2 - (y0 + y1) / 2) / extent)
        shifts_x.append((w / 2 - (x0 + x1) / 2) / extent)
    q = lambda v: [round(float(x), 4) for x in np.percentile(v, [25, 50, 75])]  # noqa: E731
    return {"images": len(scales), "scale_p25_p50_p75": q(scales), "shift_y_p25_p50_p75": q(shifts_y),
            "shift_x_p25_p50_p75": q(shifts_x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cnn", type=Path, required=True, help="face CNN folder (merc-experts face)")
    parser.add_argument("--data", help="folder holding fer2013/")
    parser.add_argument("--n-train", type=int, default=6000, help="train images for the blendshape classifier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{dt.date.today()}-face-expert.json"))
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    started = time.time()
    cache = cache_dir() / "fer"
    train = load_fer_split("train", args.data, cache)
    test = load_fer_split("test", args.data, cache)
    rng = np.random.default_rng(args.seed)
    sample = train.subset(np.sort(rng.choice(len(train), size=min(args.n_train, len(train)), replace=False)))
    with FaceAnalyzer.load(face_model_path(None), mode="image") as analyzer:
        tr_found, tr_feats, _ = observe_all(analyzer, sample.images)
        te_found, te_feats, te_crops = observe_all(analyzer, test.images)
        framing = crop_framing(analyzer, test.images[::20])
    x = np.stack([f for f in tr_feats if f is not None])
    y = sample.labels[tr_found]
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.15, stratify=y, random_state=args.seed)
    scaler = StandardScaler().fit(x_fit)
    best_c = max((0.01, 0.1, 1.0, 10.0), key=lambda c: LogisticRegression(C=c, max_iter=3000).fit(
        scaler.transform(x_fit), y_fit).score(scaler.transform(x_val), y_val))
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=best_c, max_iter=3000).fit(scaler.transform(x), y)
    pred = np.full(len(test), -1)
    pred[te_found] = clf.predict(scaler.transform(np.stack([f for f in te_feats if f is not None])))
    blend_acc = float((pred == test.labels).mean())
    blend_acc_detected = float((pred[te_found] == test.labels[te_found]).mean())

    onnx = args.cnn / "face_cnn.onnx"
    if not onnx.exists():
        from merc.export.build.expert_export import export_face_cnn
        from merc.models.experts.face_cnn import load_face_cnn

        export_face_cnn(load_face_cnn(args.cnn), onnx)
    expert = FaceEmotionExpert(onnx)
    cnn_pred = expert(test.images).argmax(1)
    crops = np.stack([c for c in te_crops if c is not None])
    crop_pred = expert(crops).argmax(1)
    labels_detected = test.labels[te_found]
    t0 = time.perf_counter()
    for _ in range(20):
        expert(crops[:10])
    cnn_ms = (time.perf_counter() - t0) / 20 * 1000

    result = {
        "benchmark": "face-expert", "date": str(dt.date.today()), "test_images": len(test),
        "blendshapes_logreg": {"train_images": len(sample), "train_detected": float(tr_found.mean()), "C": best_c,
                               "test_detection_rate": float(te_found.mean()),
                               "test_accuracy_all_images": round(blend_acc, 4),
                               "test_accuracy_detected_only": round(blend_acc_detected, 4)},
        "cnn": {"model": str(args.cnn),
                "test_accuracy_original_images": round(float((cnn_pred == test.labels).mean()), 4),
                "test_accuracy_on_detected_originals": round(float((cnn_pred[te_found] == labels_detected).mean()), 4),
                "test_accuracy_on_live_crops": round(float((crop_pred == labels_detected).mean()), 4),
                "ms_per_10_crops_onnx_1_thread": round(cnn_ms, 2)},
        "crop_framing": framing,
        "seconds": round(time.time() - started, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
