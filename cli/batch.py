"""`merc-batch`: replay many recordings on Ray, each exactly as `merc-replay --speed max` would,
into one output folder with a per-turn table; resumable, and a failing recording never stops the rest.

The driver (this process) finds the recordings, exports the models into the cache once if they
are not there yet (the bundle's ONNX export, the end-of-turn classifier, CAM++), then hands the
replays to Ray actors that only load those exports (merc.stream.batch).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from merc.cli.common import (
    HelpFormatter,
    add_model_arguments,
    add_pipeline_arguments,
    end_of_turn_export,
    export_to_cache,
    parse_arguments,
    run_command,
    session_options,
    warm_up_audio,
)
from merc.stream.batch.cluster import MAX_TEMP_DIR_CHARS, RayConfig
from merc.stream.batch.table import FORMATS
from merc.stream.session.options import SessionOptions, SpeakerOptions

log = logging.getLogger("merc.cli.batch")

DESCRIPTION = """\
Replay many recordings through the live pipeline, each exactly as merc-replay --speed max would,
on Ray: one worker (a Ray actor) per CPU share, each loading the models once, one task per
recording. Writes each recording's events (and its scores against gold.jsonl), a table of every
turn of every recording, and the failures. A second run into the same --out resumes."""

EPILOG = """\
examples:
  merc-batch archive/ --out results/               every recording directly inside archive/
  merc-batch archive/ --recursive --workers 4 --out results/ --format csv
  merc-batch list.txt --out results/               list.txt: one recording directory per line
  merc-batch archive/ --address ray://head:10001 --workers 32 --out /shared/results/

A recording is a directory with audio.wav and manifest.json (merc-live --record, merc-synth), and
optionally gold.jsonl. Outputs: OUT/NAME/events.jsonl per recording (what merc-replay writes),
OUT/NAME/scores.json with gold (what merc-eval --replay prints), OUT/turns.parquet (one row per
turn: recording, turn, speaker, t_start, t_end, text, label, confidence, prob_LABEL...),
OUT/scores.parquet, OUT/failures.jsonl, OUT/summary.json. NAME is the recording's folder name,
followed by -HASH when two recordings share it.

Run it again with the same OUT to resume: recordings already done are skipped. Exit status: 0 all
recordings done, 1 some failed or were damaged (OUT/failures.jsonl lists them; the others are
done), 2 bad arguments or input (nothing done), 130 interrupted (Ctrl-C, SIGTERM)."""


class _Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (HelpFormatter), description and examples kept as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def default_workers() -> int:
    """Half the cores, at least one: each worker is a whole pipeline (Whisper, the voice encoder and
    the text model), and the driver and the machine's other work keep the rest."""
    return max(1, (os.cpu_count() or 1) // 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merc-batch", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_Formatter)
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="a recording directory; a folder of recording directories; or a text file listing "
                             "recording directories, one per line (# comments; relative to the file's folder)")
    parser.add_argument("-o", "--out", type=Path, required=True,
                        help="output folder (created; an earlier run's outputs there are kept and skipped)")
    parser.add_argument("--recursive", action="store_true",
                        help="search folders at any depth for recordings (default: only their direct subfolders)")
    parser.add_argument("--format", choices=FORMATS, default="parquet", dest="table_format",
                        help="format of the turns and scores tables")
    work = parser.add_argument_group("workers and Ray")
    work.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                      help="Ray actors replaying in parallel, each with its own copy of the models (about 1 GB of "
                           "memory each); default: half this machine's cores, at least 1 (1 on 2 cores, leaving one "
                           "for the rest of the machine; 2 workers there replayed 1.8x as many recordings an hour); "
                           "with --address: the cluster's CPUs divided by --cpus-per-worker")
    work.add_argument("--cpus-per-worker", type=_positive_int, default=1, metavar="N",
                      help="CPUs each worker reserves from Ray, and the CPU threads its models may use (ONNX "
                           "Runtime, CTranslate2 and PyTorch are capped at N)")
    work.add_argument("--address", default=None,
                      help="join this Ray cluster (ray://HEAD:10001, HEAD:6379, or auto) instead of starting a "
                           "local Ray; every node needs merc-live installed and must see the recordings and "
                           "merc's cache (shared $MERC_CACHE, or --bundle on a shared path) at the same paths")
    work.add_argument("--ray-temp-dir", type=Path, default=None, metavar="DIR",
                      help=f"local Ray's session files and logs (default Ray's: /tmp/ray); at most "
                           f"{MAX_TEMP_DIR_CHARS} characters once absolute (Ray's sockets live under it)")
    work.add_argument("--object-store-mb", type=_positive_int, default=RayConfig.object_store_mb, metavar="MB",
                      help="local Ray's object store (shared memory; at least 80): replies are events, small")
    work.add_argument("--worker-logs", action="store_true",
                      help="show the workers' own log lines (model loading, warnings) on stderr")
    work.add_argument("--no-progress", action="store_true", help="no progress bar (the log still says what happens)")
    add_pipeline_arguments(parser)
    add_model_arguments(parser, torch_engine=False)
    return parser


def check_batch_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check alone, before anything runs."""
    local_only = [flag for flag, given in (("--ray-temp-dir", args.ray_temp_dir is not None),
                                           ("--object-store-mb", args.object_store_mb != RayConfig.object_store_mb))
                  if given]
    if args.address is not None and local_only:
        parser.error(f"{', '.join(local_only)} apply to a local Ray, not with --address")
    if args.ray_temp_dir is not None:
        args.ray_temp_dir = args.ray_temp_dir.expanduser().absolute()
        if len(str(args.ray_temp_dir)) > MAX_TEMP_DIR_CHARS:
            parser.error(f"--ray-temp-dir {args.ray_temp_dir}: longer than {MAX_TEMP_DIR_CHARS} characters; Ray's "
                         "socket paths under it would not fit (use a shorter folder, e.g. under /tmp)")
    if args.object_store_mb < 80:
        parser.error("--object-store-mb: Ray needs at least 80 MB")
    if args.workers is None and args.address is None:
        args.workers = default_workers()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv, intermixed=True)
    check_batch_arguments(parser, args)
    args.speed = math.inf  # as merc-replay --speed max: no partials unless --partials asks
    signal.signal(signal.SIGTERM, _interrupt)
    return run_command("merc-batch", batch, args)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run as Ctrl-C does: Ray is stopped, finished recordings stay done."""
    raise KeyboardInterrupt


def prepare_models(options: SessionOptions, end_of_turn_model: Path | None) -> tuple[SessionOptions, Path | None]:
    """Export what the session serves into the cache, once, here (the workers only load exports):
    the model's ONNX bundle, the end-of-turn classifier and CAM++'s ONNX graph, each only when
    the cache lacks it. Returns the options serving the bundle directly, and the classifier's export."""
    from merc.export.serve.bundle import cached_bundle
    from merc.models.paths import default_model_dir

    tracker = options.tracker
    if tracker.bundle is None:
        model_dir = Path(tracker.model_dir or default_model_dir())
        bundle = cached_bundle(model_dir) or export_to_cache(model_dir, tracker.threads)
        options = replace(options, tracker=replace(tracker, bundle=bundle, model_dir=None))
    exported = end_of_turn_export(end_of_turn_model) if options.segmenter.end_of_turn == "learned" else None
    export_voice_encoder(options.speakers)
    return options, exported


def export_voice_encoder(options: SpeakerOptions) -> None:
    """CAM++ runs on ONNX Runtime on the CPU from an export it makes on first use: make it here,
    so that the workers do not each export it (nothing to do for Resemblyzer, or once cached)."""
    if options.embedder != "campp":
        return
    from merc.stream.turns.campp import CamPlusEmbedder, onnx_export_path

    if not onnx_export_path().is_file():
        log.info("exporting CAM++ to ONNX once for the workers")
        CamPlusEmbedder(device="cpu")


def batch(args: argparse.Namespace) -> int:
    from merc.stream.batch.archive import find_recordings
    from merc.stream.batch.run import BatchSettings, WorkerSpec, run_batch

    recordings = find_recordings(args.paths, recursive=args.recursive)  # bad paths: status 2, nothing done
    log.info("%d recordings found", len(recordings))
    options, exported = prepare_models(session_options(args, serving=False), args.end_of_turn_model)
    ray = RayConfig(address=args.address, cpus=(args.workers or 1) * args.cpus_per_worker,
                    temp_dir=args.ray_temp_dir, object_store_mb=args.object_store_mb, worker_logs=args.worker_logs)
    settings = BatchSettings(out=args.out, workers=args.workers, cpus_per_worker=args.cpus_per_worker, ray=ray,
                             table_format=args.table_format, progress=not args.no_progress)
    spec = WorkerSpec(options, exported, warm_up_audio())
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines above the progress bar, not through it
        summary = run_batch(recordings, spec, settings)
    print(f"merc-batch: {summary.line()}; outputs in {args.out}", file=sys.stderr)
    for table in summary.tables:
        print(f"merc-batch: table {table}", file=sys.stderr)
    if summary.exit_status:
        print(f"merc-batch: failed or damaged recordings are listed in {args.out / 'failures.jsonl'}",
              file=sys.stderr)
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main())
