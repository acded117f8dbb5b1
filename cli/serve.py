"""`merc-serve`: one process, many conversations. Each client that sends audio (the overlay's join
mode in a browser, a Python client, the benchmark) gets a session of its own on models loaded
once, with Whisper's and the text encoder's calls batched across sessions."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from merc.cli.common import (
    HelpFormatter,
    add_model_arguments,
    add_pipeline_arguments,
    add_server_arguments,
    check_server_arguments,
    end_of_turn_export,
    export_to_cache,
    parse_arguments,
    run_command,
    session_options,
    warm_up_audio,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merc-serve",
        description=("Serve many conversations from one process. Every WebSocket client that connects to /session "
                     "and sends audio frames is a session of its own (its turns, speakers, graph window and event "
                     "sequence), on models loaded once; Whisper and the text encoder batch the turns of all "
                     "sessions. Open http://HOST:PORT/?join=1 in a browser to join with its microphone (and "
                     "camera), or http://HOST:PORT/?session=ID to watch a session. GET /healthz and /metrics "
                     "(Prometheus) report on the server."),
        epilog=("Example: merc-serve --port 8765 --max-sessions 4, then open http://127.0.0.1:8765/?join=1. On "
                "another host: merc-serve --host 0.0.0.0 --tokens-file tokens.txt (one token per client or room). "
                "The binary frame format is in README 'Browser capture and merc-serve'. Stop with Ctrl-C. Exit "
                "status: 0 stopped, 2 bad option or model."),
        formatter_class=HelpFormatter)
    group = parser.add_argument_group("sessions")
    group.add_argument("--max-sessions", type=_positive_int, default=8, metavar="N",
                       help="at most N sessions at once; more are refused with HTTP 503 (default: 8)")
    group.add_argument("--max-queued-seconds", type=_positive_float, default=10.0, metavar="S",
                       help="audio a session may have received but not yet processed; beyond it the oldest is "
                            "dropped and the client told (default: 10)")
    group.add_argument("--batch-window-ms", type=_non_negative_float, default=20.0, metavar="MS",
                       help="how long a batch of Whisper or text-encoder calls waits for other sessions' calls "
                            "after its first (default: 20; 0 = never wait; bench/serve.py measures the choice)")
    group.add_argument("--max-batch", type=_positive_int, default=8, metavar="N",
                       help="at most N calls per batch (default: 8)")
    group.add_argument("--tokens-file", type=Path, default=None, metavar="FILE",
                       help="one token per line (blank lines and # comments skipped); each admits its holder, so "
                            "every client or room can have its own. Adds to --token")
    group.add_argument("--face-model", type=Path, default=None,
                       help="MediaPipe face landmarker for clients that send camera frames (default: "
                            "$MERC_FACE_MODEL, else the checksummed copy in the cache or ../shared/models, else "
                            "fetched by checksum)")
    add_server_arguments(parser)
    add_pipeline_arguments(parser)
    add_model_arguments(parser, torch_engine=False)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def read_tokens(path: Path) -> list[str]:
    """The tokens of a tokens file (one per line); an unreadable file is an error naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"merc-serve: error: {path}: cannot read the tokens file: {err}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise SystemExit(f"merc-serve: error: {path}: no tokens in the file")
    return tokens


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    args.tokens = ([args.token] if args.token else []) + (read_tokens(args.tokens_file) if args.tokens_file else [])
    if not args.tokens and os.environ.get("MERC_TOKEN"):
        args.tokens = [os.environ["MERC_TOKEN"]]
    args.token = args.tokens[0] if args.tokens else None
    check_server_arguments(parser, args, serving=True)
    return run_command("merc-serve", serve, args)


def serve(args: argparse.Namespace) -> int:
    from merc.stream.serve.metrics import ServeMetrics
    from merc.stream.serve.server import SESSION_PATH, SessionServer
    from merc.stream.serve.sessions import BatchOptions, SharedModels
    from merc.stream.wire.overlay_http import overlay_url

    options = session_options(args, serving=True)
    metrics = ServeMetrics()
    exported = end_of_turn_export(args.end_of_turn_model) if options.segmenter.end_of_turn == "learned" else None
    models = SharedModels.load(options, BatchOptions(args.batch_window_ms, args.max_batch),
                               export_bundle=export_to_cache, warm_up_audio=warm_up_audio(), end_of_turn=exported,
                               observe=metrics.batch_observer)
    server = SessionServer(models, host=args.host, port=args.port, tokens=args.tokens,
                           allow_origins=args.allow_origin, max_sessions=args.max_sessions,
                           max_connections=args.max_connections, max_queued_seconds=args.max_queued_seconds,
                           metrics=metrics, face_model=args.face_model)
    url = server.start()
    page = overlay_url(server, args.token)
    join = page + ("&" if "?" in page else "?") + "join=1"
    print(f"merc-serve: join from a browser at {join}; media clients connect to {url}{SESSION_PATH.lstrip('/')}; "
          f"health at {page.split('?')[0]}healthz, metrics at {page.split('?')[0]}metrics", file=sys.stderr,
          flush=True)
    try:
        while True:  # timed sleeps: Ctrl-C reaches this thread
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("merc-serve: stopping", file=sys.stderr)
    finally:
        server.stop()
        models.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
