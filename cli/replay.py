"""`merc-replay`: feed a recording through the live pipeline and write the events it produces.

The recording's audio.wav becomes the audio source (paced at real time, faster, or as fast as the
pipeline runs); everything after that is the live pipeline: segmentation, speech recognition,
speakers, features, the tracker, the event bus and (with --serve) the WebSocket server. With no
directory, a bundled example recording is replayed: the embedded default on a machine without a
microphone.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from pathlib import Path

from merc.cli.common import (
    HelpFormatter,
    add_model_arguments,
    add_pipeline_arguments,
    add_server_arguments,
    check_server_arguments,
    open_session,
    parse_arguments,
    run_command,
    session_options,
)
from merc.stream.recordings.recording import REPLAY_EVENTS, example_recording
from merc.stream.session.build import printer_sink
from merc.stream.session.sinks import events_file_sink, write_all


def parse_speed(value: str) -> float:
    """A speed factor; "max" is infinity (as fast as the pipeline runs)."""
    if value == "max":
        return math.inf
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed is a number (1 = real time) or max, not {value!r}") from None
    if speed <= 0:
        raise argparse.ArgumentTypeError("speed must be positive")
    return speed


def default_out(recording: Path) -> Path:
    """Next to the recording when it is writable; for the bundled example (or a read-only
    recording), in merc's cache, so a first try leaves nothing in the working directory."""
    if recording.resolve() == example_recording().resolve() or not _writable(recording):
        from merc.models.paths import cache_dir

        return cache_dir() / "replays" / f"{recording.name}.{REPLAY_EVENTS}"
    return recording / REPLAY_EVENTS


def _writable(directory: Path) -> bool:
    import os

    return os.access(directory, os.W_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merc-replay",
        description=("Replay a recording (merc-live --record DIR, or merc-synth) through the live pipeline: turn "
                     "segmentation (Silero VAD), speech recognition (Whisper), speaker attribution, the emotion "
                     "tracker. Prints each turn as it lands and writes every event to a JSONL file. With no "
                     "directory, replays a bundled example recording."),
        epilog=("Columns: e2e ms = end of speech to result, including the silence wait that ends a turn; proc = "
                "the same without the silence wait. Score a replay against the recording's gold.jsonl with "
                "merc-eval --replay DIR. Exit status: 0 done, 1 done but the recording was damaged (the turns "
                "before the damage are kept), 2 bad recording, model or option."),
        formatter_class=HelpFormatter)
    parser.add_argument("recording", type=Path, nargs="?", default=None,
                        help="recording directory (default: the bundled example)")
    parser.add_argument("--speed", type=parse_speed, default=None, metavar="X|max",
                        help="1 = real time (for latency), 2 = twice as fast, max = as fast as the pipeline runs "
                             "(default: max; with --serve, 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"events file to write (default: DIR/{REPLAY_EVENTS}; for the bundled example or a "
                             f"read-only DIR, $MERC_CACHE/replays/NAME.{REPLAY_EVENTS})")
    parser.add_argument("--serve", action="store_true",
                        help="also serve the events and the overlay page while replaying (at real time unless "
                             "--speed says otherwise), and keep serving afterwards until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines instead of a table")
    add_server_arguments(parser, " (with --serve)")
    add_pipeline_arguments(parser)
    add_model_arguments(parser, torch_engine=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.speed is None:  # real time when served (someone watches), else as fast as possible
        args.speed = 1.0 if args.serve else math.inf
    check_server_arguments(parser, args, serving=args.serve)
    return run_command("merc-replay", replay, args)


def _speed(args: argparse.Namespace) -> float | None:
    """The source's pace: None = as fast as possible."""
    return None if math.isinf(args.speed) else args.speed


def replay(args: argparse.Namespace) -> int:
    from merc.stream.recordings.recording import open_recording
    from merc.stream.recordings.replay import replay_session
    from merc.stream.wire.events import EventBus

    # Every input and output is checked before any model loads (that takes seconds): the recording
    # (manifest, WAV header) and the events file it will write.
    recording = open_recording(args.recording or example_recording())
    out = args.out or default_out(recording.directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The file and stdout are written behind bounded queues, each by a thread of its own
    # (stream/session/sinks.py): a stdout nobody reads (merc-replay --json | sleep 600) only skips
    # printed events, a stalled disk cannot stall the replay either, and at the end each gets a
    # few seconds to finish, so the events file of a normal run is complete.
    with open(out, "wb", buffering=0) as events:  # unbuffered: one write per event, no lock held
        bus = EventBus(session=f"replay-{recording.name}-{uuid.uuid4().hex[:8]}")
        session = open_session(session_options(args, serving=args.serve), bus,
                               end_of_turn_model=args.end_of_turn_model)
        server = None
        if args.serve:
            from merc.stream.wire.overlay_http import overlay_url, process_request

            server = session.serve(process_request=process_request)
            url = server.start()
            print(f"merc-replay: overlay on {overlay_url(server, args.token)}; events on {url}", file=sys.stderr,
                  flush=True)

        def write(event: dict) -> None:
            write_all(events.fileno(), (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))

        writer = events_file_sink(write, out)
        printer = printer_sink(as_json=args.json)
        bus.subscribe(writer)
        bus.subscribe(printer)
        result = None
        try:
            result = replay_session(recording, session, _speed(args))
            if server is not None:
                writer.flush()
                print("merc-replay: replay done; still serving, Ctrl-C stops", file=sys.stderr, flush=True)
                while True:  # timed sleeps, not one endless wait: when the kernel hands Ctrl-C to
                    time.sleep(0.5)  # another thread, this thread must wake to raise KeyboardInterrupt
        except KeyboardInterrupt:
            if result is None:  # interrupted mid-replay: status 130
                raise
        finally:
            if server is not None:
                server.stop()
            for sink in (writer, printer):
                bus.unsubscribe(sink)
                sink.close()
    print(f"{result.turns} turns from {result.audio_seconds:.1f} s of audio in {result.wall_seconds:.1f} s "
          f"({result.speed:.1f}x real time); events in {out}", file=sys.stderr)
    for problem in result.problems:
        print(f"merc-replay: error: {recording.directory}: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
