"""What the stream commands (merc-live, merc-replay, merc-track) share: help formatting, the model
options and loading the tracker they name, and which errors are the user's input."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and False (those options' help says what happens without them)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_model_arguments(parser: argparse.ArgumentParser, torch_engine: bool = True) -> None:
    """--model / --bundle / --precision / --threads / --device (and --engine for merc-track)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, default=None,
                       help="model directory (a merc-train run; default: the bundled default model, text only, "
                            "MELD's 7 labels); its ONNX bundle is exported into the cache on first use")
    group.add_argument("--bundle", type=Path, default=None,
                       help="serve this bundle (written by merc-export) directly with ONNX Runtime, without "
                            "importing torch; replaces --model")
    if torch_engine:
        group.add_argument("--engine", choices=("onnx", "torch"), default="onnx",
                           help="onnx: the model's bundle on ONNX Runtime (as served); torch: the PyTorch "
                                "DialogueTracker on the model directory (for comparison and debugging)")
    group.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                       help="which text encoder of the bundle to run (cached bundles hold fp32 and int8; fp16 is "
                            "for GPUs and needs merc-export --variants fp16)")
    group.add_argument("--threads", type=int, default=None,
                       help="ONNX Runtime threads for the text encoder (default: one per core; the graph step "
                            "always runs on one)")
    group.add_argument("--device", default=None,
                       help="auto (the GPU when there is one), cpu or cuda (default auto); with --engine torch the "
                            "default is cpu")


def add_server_arguments(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--host / --port / --token / --allow-origin of the event server (and overlay); `when` qualifies
    the help ("with --serve")."""
    group = parser.add_argument_group("event server and overlay")
    group.add_argument("--host", default="127.0.0.1",
                       help=f"address the WebSocket server binds{when} (127.0.0.1: this machine only)")
    group.add_argument("--port", type=int, default=8765, help=f"WebSocket and overlay port{when} (0 = any free port)")
    group.add_argument("--token", default=None,
                       help="clients must give this token (ws://HOST:PORT/?token=T or 'Authorization: Bearer T'); "
                            "required with a --host other than loopback (default: $MERC_TOKEN)")
    group.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="also accept browser pages from ORIGIN (e.g. https://studio.example:8443; null for "
                            "file:// pages; * for any); repeatable. Default: the server's own origin and clients "
                            "that send none")


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, serving: bool) -> None:
    """Take the token from $MERC_TOKEN when not given, and refuse an exposed host without one,
    before any model loads."""
    from .access import exposure_problem

    args.token = args.token or os.environ.get("MERC_TOKEN")
    if serving and (problem := exposure_problem(args.host, args.token)):
        parser.error(problem)


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.bundle is not None and args.model is not None:
        parser.error("give --model or --bundle, not both")
    engine = getattr(args, "engine", "onnx")
    if args.bundle is not None and engine == "torch":
        parser.error("--bundle serves with ONNX Runtime; --engine torch needs a model directory (--model)")
    if engine == "torch" and (args.precision != "fp32" or args.threads):
        parser.error("--precision and --threads apply to the onnx engine only")


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, check the model options, and make merc's logs say what is happening (INFO)."""
    import logging

    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("merc").setLevel(logging.INFO)
    return args


def run_command(prog: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command: bad input (a file, a model, a device) is one line on stderr and status 2,
    Ctrl-C is status 130; anything else is a bug and keeps its traceback."""
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_input_error(err):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def load_tracker(args: argparse.Namespace):
    """The tracker `args` ask for: a bundle on ONNX Runtime (exported first if needed) or PyTorch."""
    if args.bundle is not None:  # no torch on this path
        from merc.export.runtime import BundleTracker

        return BundleTracker.load(args.bundle, device=args.device or "auto", precision=args.precision,
                                  threads=args.threads)
    from merc.models.paths import default_model_dir

    model_dir = args.model or default_model_dir()
    if getattr(args, "engine", "onnx") == "torch":
        from .tracker import DialogueTracker

        device = args.device or "cpu"
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return DialogueTracker.load(args.model, device=device)
    from merc.export.bundle import cached_bundle
    from merc.export.runtime import BundleTracker

    bundle = cached_bundle(model_dir)  # torch is imported only when the bundle must be exported
    if bundle is None:
        from merc.export.onnx_export import ensure_bundle

        bundle = ensure_bundle(model_dir, threads=args.threads)
    return BundleTracker.load(bundle, device=args.device or "auto", precision=args.precision, threads=args.threads)


def is_input_error(err: BaseException) -> bool:
    """Errors that mean bad input (a file, a model, a bundle, a device), reported in one line. Error
    types of heavy modules are looked up only if those modules were loaded, so serving a cached
    bundle never imports torch just to name them."""
    from merc.export.bundle import BundleError
    from merc.models.corpora import CorpusError

    kinds: list[type[BaseException]] = [BundleError, CorpusError, OSError]
    for module, name in (("merc.export.onnx_export", "ExportError"), ("merc.models.checkpoint", "ModelError"),
                         ("merc.models.text_encoder", "EncoderError"), ("merc.stream.recording", "RecordingError"),
                         ("merc.stream.audio", "AudioSourceError"), ("merc.stream.vad", "VADError"),
                         ("merc.stream.transcribe", "TranscriberError"), ("merc.stream.server", "ServerError"),
                         ("merc.models.face_features", "FaceModelError"), ("merc.stream.video", "VideoSourceError")):
        if module in sys.modules and hasattr(sys.modules[module], name):
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(err, tuple(kinds))
