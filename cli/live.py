"""`merc-live`: track the emotions of a live conversation from the microphone (and a camera).

Capture threads fill bounded buffers; the pipeline segments speech into turns, transcribes each,
attributes a speaker, computes the features the model reads and takes one step of the dialogue
graph; every result is pushed to WebSocket clients and printed. `--record DIR` keeps the session
(audio, events) so it can be replayed with merc-replay and scored with merc-eval --replay.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from merc.cli.common import (
    HelpFormatter,
    add_model_arguments,
    add_pipeline_arguments,
    add_server_arguments,
    check_server_arguments,
    is_input_error,
    load_tracker,
    open_session,
    parse_arguments,
    run_command,
    session_options,
)
from merc.stream.session.build import printer_sink

if TYPE_CHECKING:
    from merc.stream.capture.audio import AudioSource


def parse_camera(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera is an index (0, 1, ...) or none, not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merc-live",
        description=("Track emotions in a live conversation: speech from the microphone is cut into turns (Silero "
                     "VAD), transcribed (Whisper), attributed to a speaker (voice clustering) and given an emotion "
                     "given the conversation so far (the incremental dialogue graph). Results are printed and "
                     "pushed over WebSocket (see --port). Without a microphone, replay a recording instead: "
                     "merc-replay."),
        epilog=("Events are JSON objects (hello, turn, status, error) with a version \"v\" and a sequence number "
                "\"seq\"; their schema is stream/wire/events.schema.json. Stop with Ctrl-C. Exit status: 0 "
                "stopped, 2 no microphone, bad model or option, 70 internal error (the traceback goes to a log)."),
        formatter_class=HelpFormatter)
    parser.add_argument("--camera", type=parse_camera, default=None, metavar="N|none",
                        help="webcam index for the face modality (default: none, audio only); an unplugged camera "
                             "or a face out of view only marks the face missing")
    parser.add_argument("--face-model", type=Path, default=None,
                        help="MediaPipe face_landmarker.task (default: $MERC_FACE_MODEL, the cache, "
                             "../shared/models, else the official file, downloaded and checksummed)")
    parser.add_argument("--mic", default=None,
                        help="input device index or name substring (default: the system's default input)")
    parser.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="record the session into DIR (audio.wav, manifest.json, events.jsonl), written as it "
                             "goes: a killed process loses at most the turn in progress")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines instead of a table")
    add_server_arguments(parser)
    add_pipeline_arguments(parser)
    add_model_arguments(parser, torch_engine=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    check_server_arguments(parser, args, serving=not args.list_devices)
    if args.list_devices:
        return run_command("merc-live", _list_devices, args)
    return run_command("merc-live", live, args)


def _list_devices(args: argparse.Namespace) -> int:
    from merc.stream.capture.audio import AudioSourceError

    try:
        import sounddevice as sd
    except OSError as err:
        raise AudioSourceError(f"{err} (install PortAudio: apt install libportaudio2)") from err
    print(sd.query_devices())
    return 0


def _mic_device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def live(args: argparse.Namespace) -> int:
    """The microphone session: fails at once, clearly, when there is no microphone."""
    from merc.stream.capture.audio import MicSource

    return run_session(args, MicSource(_mic_device(args.mic)))


def run_session(args: argparse.Namespace, source: AudioSource) -> int:
    """A live session on any audio source (the microphone, or a recording standing in for one in
    tests): camera and face tracking, the pipeline, the server, the recorder, until the source ends,
    --duration passes, Ctrl-C or SIGTERM."""
    from merc.stream.recordings.recording import EVENTS_FILE, RecordingWriter
    from merc.stream.session.sinks import QueuedSink, events_file_sink
    from merc.stream.wire.events import EventBus
    from merc.stream.wire.overlay_http import overlay_url
    from merc.stream.wire.overlay_http import process_request as overlay_request

    options = session_options(args)
    bus = EventBus(session=f"live-{uuid.uuid4().hex[:8]}")
    devices = {"microphone": True, "camera": None if args.camera is None else False, "face": None}

    def status(change: dict) -> None:
        message = change.pop("message", None)
        devices.update({k: v for k, v in change.items() if k in devices})
        bus.publish({"type": "status", "devices": dict(devices), "message": message or "devices changed"})

    source.on_status = status
    tracker = load_tracker(options.tracker)
    face_tracker = camera = None
    if args.camera is not None:
        camera, face_tracker = _start_camera(args.camera, status, source, args.face_model)
    session = open_session(options, bus, tracker=tracker, face_tracker=face_tracker,
                           end_of_turn_model=args.end_of_turn_model)
    recorder = None
    # The recording's events file and stdout are written behind bounded queues, each by a thread
    # of its own (stream/session/sinks.py): a stalled reader or disk never stalls the pipeline
    # (nor, through it, the microphone); at the end each gets a few seconds to finish.
    sinks: list[QueuedSink] = []
    if options.recording is not None and options.recording.directory is not None:
        hello = session.hello()
        recorder = RecordingWriter(options.recording.directory, {
            "source": "merc-live", "camera": args.camera, "model": hello["model"], "options": hello["options"]})
        sinks.append(events_file_sink(recorder.write_event, recorder.directory / EVENTS_FILE))
        bus.subscribe(sinks[-1])
    server = session.serve(process_request=overlay_request)
    try:
        url = server.start()
    except Exception:
        _close_sinks(bus, sinks)
        if recorder is not None:
            recorder.close()
        raise
    print(f"merc-live: listening on {source.name}; overlay on {overlay_url(server, args.token)}; events on {url}; "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    sinks.append(printer_sink(as_json=args.json))
    bus.subscribe(sinks[-1])
    pipeline = session.pipeline(source, on_audio=recorder.write_audio if recorder else None)
    timer = threading.Timer(args.duration, pipeline.stop) if args.duration else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: pipeline.stop())
    status({"message": "session started"})
    try:
        pipeline.run()
    except KeyboardInterrupt:
        pipeline.stop()
    finally:
        if timer is not None:
            timer.cancel()
        if face_tracker is not None:
            face_tracker.stop()
        if camera is not None:
            camera.stop()
        server.stop()
        _close_sinks(bus, sinks)
        if recorder is not None:
            recorder.close()
            print(f"merc-live: recorded into {args.record}", file=sys.stderr)
    overruns = getattr(source, "overruns", 0)  # the microphone's count of dropped blocks
    if overruns:
        print(f"merc-live: the pipeline fell behind: {overruns} audio blocks dropped", file=sys.stderr)
    return 0


def _close_sinks(bus, sinks: list) -> None:
    """Unsubscribe each sink and let it finish what it has queued (a few seconds at most each)."""
    for sink in sinks:
        bus.unsubscribe(sink)
        sink.close()


def _start_camera(index: int, status, audio, face_model: Path | None):
    """Camera capture and face tracking threads on the audio's clock (session time 0 = the first
    microphone sample), so a turn's frames are those heard with it. A camera that cannot open is
    reported and the session goes on without the face modality. Only the face tracker reports
    status (camera lost, face in or out of view), so a change is published once."""
    import time

    from merc.models.features.face_features import FaceAnalyzer
    from merc.stream.capture.video import CameraSource, FaceTracker

    def session_time() -> float:  # 0 = the first audio sample (frames before it count as 0)
        return time.monotonic() - audio.started if getattr(audio, "started", None) else 0.0

    camera = CameraSource(index, clock=session_time)
    try:
        camera.start()
    except Exception as err:
        if not is_input_error(err):
            raise
        status({"camera": False, "message": f"camera {index}: {err}; going on without the face modality"})
        return None, None
    tracker = FaceTracker(camera, FaceAnalyzer.load(face_model, mode="video"), on_status=status)
    tracker.start()
    return camera, tracker


if __name__ == "__main__":
    sys.exit(main())
