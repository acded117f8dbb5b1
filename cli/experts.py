"""`merc-experts`: train and evaluate the unimodal emotion experts (face: FER-2013, audio: EmoDB)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from merc.cli.exits import guarded


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _face(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from merc.models.data.fer import load_fer_split, validation_split
    from merc.models.data.labels import FER7
    from merc.models.experts.face_cnn import (
        FaceCNNConfig,
        predict_proba,
        save_face_cnn,
        train_face_cnn,
    )
    from merc.models.paths import cache_dir
    from merc.models.train.reports import plot_confusion, scores, write_json

    started = time.time()
    cache = cache_dir() / "fer"
    train_all = load_fer_split("train", args.data, cache)
    test = load_fer_split("test", args.data, cache)
    train, valid = validation_split(train_all, args.valid_fraction, args.seed)
    logging.info("FER-2013: %d train, %d validation (cut from train), %d test images",
                 len(train), len(valid), len(test))
    config = FaceCNNConfig(epochs=args.epochs, seed=args.seed, threads=args.threads, lr=args.lr,
                           batch_size=args.batch_size)
    model, history = train_face_cnn(config, train, valid, progress=not args.quiet)
    with torch.no_grad():
        probs = predict_proba(model, test.images)
    pred = probs.argmax(1)
    private = np.array([n.split("/")[1].startswith("PrivateTest") for n in test.names])
    result = scores(test.labels, pred, FER7)
    metrics = {
        "corpus": "fer2013", "config": config.to_dict(), "history": history,
        "valid_accuracy": max(h["valid_accuracy"] for h in history),
        "best_epoch": max(history, key=lambda h: h["valid_accuracy"])["epoch"],
        "test": result,
        "test_public_accuracy": float((pred[~private] == test.labels[~private]).mean()),
        "test_private_accuracy": float((pred[private] == test.labels[private]).mean()),
        "test_accuracy_no_flip": float((predict_proba(model, test.images, flip_average=False).argmax(1)
                                        == test.labels).mean()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "total_seconds": time.time() - started,
    }
    held = {"validation": {"fraction": args.valid_fraction, "seed": args.seed}, "test_accuracy": result["accuracy"]}
    save_face_cnn(model, args.out, held)
    from merc.export.build.expert_export import export_face_cnn

    export_face_cnn(model, args.out / "face_cnn.onnx", test.images[:8].astype("float32"), held)
    write_json(args.out / "metrics.json", metrics)
    plot_confusion(result, args.out / "test_confusion.png", "FER-2013 test: face CNN")
    print(f"face CNN: test accuracy {100 * result['accuracy']:.2f} "
          f"(public {100 * metrics['test_public_accuracy']:.2f}, "
          f"private {100 * metrics['test_private_accuracy']:.2f}), weighted F1 {100 * result['weighted_f1']:.2f}; "
          f"written to {args.out}")
    return 0


def _audio(args: argparse.Namespace) -> int:
    import numpy as np

    from merc.models.data.emodb import load_emodb
    from merc.models.data.labels import EMODB4
    from merc.models.experts.audio_expert import (
        clip_features,
        fit_audio_expert,
        loso_evaluate,
    )
    from merc.models.paths import cache_dir
    from merc.models.train.reports import plot_confusion, scores, write_json

    started = time.time()
    clips = load_emodb(args.data)
    x = clip_features(clips, args.features, cache_dir() / "emodb", progress=not args.quiet)
    y = np.array([c.label for c in clips])
    speakers = np.array([c.speaker for c in clips])
    logging.info("EmoDB: %d clips, %d speakers, %s features (%d-d)", len(clips), len(set(speakers)), args.features,
                 x.shape[1])
    result = loso_evaluate(x, y, speakers, args.features)
    pred = result.pop("probs").argmax(1)
    loso = scores(y, pred, EMODB4)
    expert = fit_audio_expert(x, y, speakers, args.features)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {"corpus": "emodb-4", "features": args.features, "protocol": "leave-one-speaker-out, nested C",
               "loso_unweighted_accuracy": result["ua"], "loso_weighted_accuracy": result["wa"],
               "per_speaker_ua": result["per_speaker_ua"], "chosen_c_per_fold": result["chosen_c"],
               "loso": loso, "final_c": expert.c, "clips": len(clips), "total_seconds": time.time() - started}
    expert.save(args.out, {"trained_on": "all EmoDB speakers", "loso_unweighted_accuracy": result["ua"]})
    write_json(args.out / "metrics.json", metrics)
    plot_confusion(loso, args.out / "loso_confusion.png", f"EmoDB leave-one-speaker-out: {args.features}")
    if not args.no_onnx:
        from merc.export.build.expert_export import export_audio_expert

        export_audio_expert(expert, args.out / "audio_expert.onnx")
    print(f"audio expert ({args.features}): leave-one-speaker-out UA {100 * result['ua']:.2f}, "
          f"WA {100 * result['wa']:.2f}; written to {args.out}")
    return 0


def _expert_file(path: Path, name: str) -> Path:
    return path / name if path.is_dir() else path


def _paired(args: argparse.Namespace) -> int:
    from merc.export.build.evidence import audio_pools, face_pools
    from merc.export.serve.expert_runtime import open_expert
    from merc.models.paths import cache_dir
    from merc.models.train.paired_train import train_paired

    audio_onnx = _expert_file(args.audio_expert, "audio_expert.onnx")
    face_onnx = _expert_file(args.face_expert, "face_cnn.onnx")
    _, audio_meta = open_expert(audio_onnx, "features")
    _, face_meta = open_expert(face_onnx, "pixels")
    cache = cache_dir()
    pools = {"audio": audio_pools(args.data, audio_meta["features"], cache / "emodb"),
             "face": face_pools(face_onnx, args.data, cache / "fer")}
    metrics = train_paired(args.text_run, pools, args.out, seed=args.seed, drop=args.drop, epochs=args.epochs,
                           progress=not args.quiet,
                           experts={"audio": {"onnx": audio_onnx, "features": audio_meta["features"],
                                              "labels": audio_meta["labels"]},
                                    "face": {"onnx": face_onnx, "input": "48x48 grey face crop (face_crop)",
                                             "labels": face_meta["labels"]}})
    print(f"paired multimodal DAG: best epoch {metrics['best_epoch']}, valid weighted F1 "
          f"{100 * metrics['valid_weighted_f1']:.2f}; written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """merc-experts (exit statuses: merc.cli.exits)."""
    return guarded("merc-experts", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    from merc.models.paths import default_experts_dir

    parser = argparse.ArgumentParser(
        prog="merc-experts",
        description=("Train the unimodal emotion experts whose outputs feed the dialogue graph's audio and face "
                     "inputs. 'face' trains a small CNN on FER-2013 48x48 crops (epoch chosen on a validation "
                     "slice of the train split; the official test split is scored once at the end); 'audio' fits a "
                     "logistic regression on Whisper encoder features of EmoDB, evaluated leave-one-speaker-out."),
        epilog="Example: merc-experts face --out runs/face-cnn")
    sub = parser.add_subparsers(dest="command", required=True)
    face = sub.add_parser("face", help="train the face CNN on FER-2013",
                          description="Train the face CNN on FER-2013 and score the official test split.")
    face.add_argument("--data", help="data folder holding fer2013/ (default: $MERC_DATA or ../shared/data)")
    face.add_argument("--out", type=Path, required=True, help="output folder: weights, metrics.json, confusion PNG")
    face.add_argument("--epochs", type=int, default=40, help="training epochs (one-cycle schedule over all of them)")
    face.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate")
    face.add_argument("--batch-size", type=int, default=128, help="images per step")
    face.add_argument("--valid-fraction", type=float, default=0.1, help="share of train held out for selection")
    face.add_argument("--seed", type=int, default=0, help="random seed")
    face.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    audio = sub.add_parser("audio", help="train the audio expert on EmoDB",
                           description=("Evaluate the audio expert leave-one-speaker-out on EmoDB (4 emotions; "
                                        "C chosen per fold on the training speakers only), then fit it on every "
                                        "speaker and export it to ONNX."))
    audio.add_argument("--data", help="data folder holding emodb/wav (default: $MERC_DATA or ../shared/data)")
    audio.add_argument("--out", type=Path, required=True, help="output folder: audio_expert.json/.onnx, metrics.json")
    audio.add_argument("--features", default="whisper_unpadded", choices=("whisper_unpadded", "whisper", "egemaps"),
                       help="run-time acoustic features (merc.models.features.audio_features)")
    audio.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    paired = sub.add_parser("paired", help="train the multimodal DAG on the paired set",
                            description=("Train a text+audio+face DAG on the synthetic paired set "
                                         "(merc.models.features.paired): the turns of TEXT_RUN's corpus with EmoDB "
                                         "audio and FER-2013 face evidence for their mapped labels. The experts given "
                                         "are bundled for serving."))
    paired.add_argument("--text-run", type=Path, required=True, help="a text-only merc-train run (corpus, encoder)")
    paired.add_argument("--audio-expert", type=Path, default=default_experts_dir(),
                        help="audio_expert.onnx or a folder holding it, as 'merc-experts audio' writes (default: the "
                             "bundled expert)")
    paired.add_argument("--face-expert", type=Path, default=default_experts_dir(),
                        help="face_cnn.onnx or a folder holding it, as 'merc-experts face' writes (default: the "
                             "bundled expert)")
    paired.add_argument("--out", type=Path, required=True, help="run directory to create")
    paired.add_argument("--data", help="data folder holding emodb/ and fer2013/")
    paired.add_argument("--seed", type=int, default=0, help="random seed (pairing and training)")
    paired.add_argument("--drop", type=float, default=0.5, help="modality dropout of audio and face in training")
    paired.add_argument("--epochs", type=int, help="override the text run's epochs")
    for p in (face, audio, paired):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    return {"face": _face, "audio": _audio, "paired": _paired}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
