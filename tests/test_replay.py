"""The live pipeline end to end on recorded (synthetic) conversations: replay, events, scores, faults.

Fixtures: tests/fixtures/recordings/* (espeak-ng voices reading dialogues we wrote, with
gold.jsonl), and the bundled example recording that merc-replay plays by default.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import command, write_face_video

from merc.clients.client import follow
from merc.stream.capture.audio import WavFileSource
from merc.stream.capture.video import VideoFileSource
from merc.stream.recordings.recording import (
    example_recording,
    open_recording,
    read_gold,
    read_jsonl,
)
from merc.stream.recordings.replay import replay_recording
from merc.stream.recordings.scoring import score_replay
from merc.stream.session.options import AsrOptions, SessionOptions, SpeakerOptions, TrackerOptions
from merc.stream.wire.events import EventBus, schema
from merc.stream.wire.server import EventServer

FIXTURES = Path(__file__).parent / "fixtures" / "recordings"
RECORDINGS = sorted(p.parent for p in FIXTURES.glob("*/manifest.json"))
KITCHEN = FIXTURES / "kitchen-2spk"  # two speakers, no overlap: every gold turn is one segment


@pytest.fixture(scope="module")
def session_options() -> SessionOptions:
    return SessionOptions(tracker=TrackerOptions(device="cpu"), asr=AsrOptions(device="cpu"),
                          speakers=SpeakerOptions(device="cpu"))


@pytest.fixture(scope="module")
def processor(session_options):
    """The live per-turn components (ASR, speakers, the default model's bundle), loaded once."""
    from merc.cli.common import open_session

    return open_session(session_options, EventBus("test")).processor


def replay(directory: Path, processor, speed=None) -> list[dict]:
    bus = EventBus("test")
    replay_recording(open_recording(directory), processor, bus, speed)
    return bus.events()


def test_fixtures_are_small_and_complete():
    assert len(RECORDINGS) >= 2
    for directory in RECORDINGS + [example_recording()]:
        assert sum(f.stat().st_size for f in directory.iterdir()) < 1_000_000
        assert open_recording(directory).problems == ()
        assert len(read_gold(open_recording(directory))) >= 4


@pytest.mark.parametrize("directory", RECORDINGS + [example_recording()], ids=lambda p: p.name)
def test_replay_end_to_end(directory, processor):
    """Turn count, speakers, transcripts within WER 25 % (30 % with an overlap: the overlapping
    words are now cut between the two speakers' turns, where they used to be one merged turn), every
    event valid against the schema."""
    events = replay(directory, processor)
    validator = jsonschema.Draft202012Validator(schema())
    for event in events:
        validator.validate(event)
    gold = read_gold(open_recording(directory))
    scores = score_replay(gold, events)
    overlaps = sum(b["t_start"] < a["t_end"] for a, b in zip(gold, gold[1:]))  # overlapping turns may merge
    assert gold_turns_found(scores, overlaps), scores
    assert scores.speaker_accuracy >= 0.8, scores
    assert scores.wer <= (0.3 if overlaps else 0.25), scores
    turns = [e for e in events if e["type"] == "turn"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(t["modalities"] == ["text"] and "audio" in t["available"] for t in turns)
    assert all(t["timings_ms"]["asr"] > 0 for t in turns)


def gold_turns_found(scores, overlaps: int) -> bool:
    return scores.gold_turns - overlaps <= scores.predicted_turns <= scores.gold_turns and scores.extra_turns == 0


def test_replay_command_and_eval_command(tmp_path):
    """merc-replay writes the events; merc-eval --replay scores them (as a user runs them)."""
    rec = tmp_path / "rec"
    shutil.copytree(RECORDINGS[0], rec)
    out = subprocess.run([sys.executable, "-m", "merc.cli.replay", str(rec), "--speed", "max"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (rec / "replay.events.jsonl").is_file() and "x real time" in out.stderr
    rows = [line for line in out.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) >= 3
    scored = subprocess.run([command("merc-eval"), "--replay", str(rec), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    # measured on bus-stop-3spk: WER 0.268 and speakers 1.0 (the learned end of turn splits Eli's
    # "Right on time? That never happens!" in two, and tiny.en then writes "That's never happened")
    assert result["wer"] <= 0.3 and result["speaker_accuracy"] >= 0.8


def test_truncated_recording_keeps_the_turns_before_the_cut(tmp_path):
    rec = tmp_path / "rec"
    shutil.copytree(RECORDINGS[0], rec)
    wav = rec / "audio.wav"
    full = WavFileSource(wav).duration
    os.truncate(wav, 44 + int(wav.stat().st_size * 0.6) // 2 * 2)
    out = subprocess.run([sys.executable, "-m", "merc.cli.replay", str(rec)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 1 and "audio.wav: truncated" in out.stderr
    events = read_jsonl(rec / "replay.events.jsonl")
    assert events[0]["type"] == "error" and "truncated" in events[0]["message"]
    turns = [e for e in events if e["type"] == "turn"]
    gold_before = [g for g in read_gold(open_recording(rec)) if g["t_end"] < 0.6 * full - 0.7]
    assert len(turns) >= len(gold_before) >= 1


@pytest.mark.parametrize("bad, message", [
    (["--bundle", "no-such-bundle"], "no-such-bundle"),
    (["--asr-model", "no-such-whisper-dir/"], "no-such-whisper-dir"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_a_missing_model_is_a_clear_error_at_start(bad, message):
    out = subprocess.run([sys.executable, "-m", "merc.cli.replay", *bad], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_bad_recording_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "merc.cli.replay", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "manifest.json" in out.stderr and "Traceback" not in out.stderr


def test_no_microphone_is_a_clear_message():
    out = subprocess.run([sys.executable, "-m", "merc.cli.live", "--mic", "987", "--camera", "none"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "microphone" in out.stderr and "merc-replay" in out.stderr
    assert "Traceback" not in out.stderr


class UnpluggedMidStream(WavFileSource):
    """A microphone that stops delivering after `seconds`: the same source interface, cut short."""

    def __init__(self, path, seconds: float) -> None:
        super().__init__(path, speed=None)
        self.seconds = seconds

    def __iter__(self):
        for chunk in super().__iter__():
            if chunk.t >= self.seconds:
                self.stop()
                return
            yield chunk


def test_a_source_that_disappears_mid_stream_ends_the_session_cleanly(processor):
    from merc.stream.capture.vad import SileroVAD
    from merc.stream.session.pipeline import Pipeline
    from merc.stream.turns.segmenter import TurnSegmenter

    directory = RECORDINGS[0]
    gold = read_gold(open_recording(directory))
    cut = (gold[1]["t_start"] + gold[1]["t_end"]) / 2  # in the middle of the second turn
    processor.tracker.reset()
    processor.attributor.reset()
    bus = EventBus("unplug")
    pipeline = Pipeline(UnpluggedMidStream(open_recording(directory).audio, cut), TurnSegmenter(SileroVAD()),
                        processor, bus)
    pipeline.run()
    turns = [e for e in bus.events() if e["type"] == "turn"]
    assert len(turns) == 2 and turns[1]["t_end"] <= cut + 0.05  # the turn in progress is closed, not lost


def test_a_websocket_client_receives_the_turns_and_disconnects_cleanly(processor, session_options):
    from merc.stream.session.build import hello_body

    bus = EventBus("ws")
    server = EventServer(bus, hello_body(processor.tracker, session_options), port=0)
    server.start()
    received: list[dict] = []
    connected = threading.Event()

    async def client():
        async for event in follow(server.url, reconnect=False):
            received.append(event)
            if event["type"] == "hello":
                connected.set()
            if event["type"] == "turn" and event["turn"] == 2:
                return  # leaves the connection: a clean close

    thread = threading.Thread(target=lambda: asyncio.run(client()))
    thread.start()
    assert connected.wait(10)
    replay_recording(open_recording(RECORDINGS[0]), processor, bus, speed=None)
    thread.join(30)
    server.stop()
    assert not thread.is_alive()
    assert received[0]["type"] == "hello" and received[0]["labels"] == list(processor.tracker.labels)
    assert [e["turn"] for e in received if e["type"] == "turn"] == [0, 1, 2]
    assert server.connections == 0


class CameraUnpluggedAt(VideoFileSource):
    """A camera (a face video played at real time) whose reads fail from `seconds` after its first
    read on, as an unplugged camera's do: the same source interface as the live camera."""

    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__(path, speed=1.0)
        self.seconds = seconds
        self.first_read: float | None = None

    def read_image(self):
        now = time.monotonic()
        self.first_read = self.first_read or now
        if now - self.first_read > self.seconds:
            time.sleep(0.01)
            return None
        return super().read_image()


def test_a_camera_unplugged_mid_session_only_marks_the_face_missing(processor, data_dir, tmp_path):
    """Live-speed replay with a camera that dies at 8 s: every turn still arrives; turns before the
    unplug saw a face, turns after it did not; the loss is reported as status."""
    import dataclasses

    import numpy as np

    from merc.models.features.face_features import (
        FaceAnalyzer,
        face_features,
        face_model_path,
    )
    from merc.stream.capture.video import FaceTracker

    video = write_face_video(data_dir, tmp_path / "camera.avi", seconds=25)

    statuses: list[dict] = []
    camera = CameraUnpluggedAt(video, seconds=8.0)
    tracker = FaceTracker(camera, FaceAnalyzer.load(face_model_path(), mode="video"), on_status=statuses.append)
    camera.start()
    tracker.start()
    try:
        with_face = dataclasses.replace(processor, face_tracker=tracker, face_features=face_features)
        events = replay(KITCHEN, with_face, speed=1.0)
    finally:
        tracker.stop()
        camera.stop()
    turns = [e for e in events if e["type"] == "turn"]
    assert len(turns) == len(read_gold(open_recording(KITCHEN)))
    before = [t for t in turns if t["t_end"] < 7.5]
    after = [t for t in turns if t["t_start"] > 9.5]
    assert before and after
    assert all("face" in t["available"] for t in before), (statuses, tracker.frames_analyzed, tracker.faces_found,
                                                            [(o.t) for o in tracker.observations_between(0, 30)][:5])
    assert all("face" not in t["available"] for t in after), after
    assert all(t["modalities"] == ["text"] for t in turns)  # the default model reads text only
    assert any(s.get("camera") is False for s in statuses)
    assert np.isfinite(face_features(tracker.observations_between(0, 7))).all()


def test_a_live_session_records_and_serves(tmp_path, processor):
    """merc-live's session on a recording standing in for the microphone: --record writes a recording
    that replays, events carry the session's status, and the server is up while it runs."""
    from merc.cli.live import build_parser, run_session

    args = build_parser().parse_args(["--record", str(tmp_path / "rec"), "--port", "0", "--camera", "none"])
    source = WavFileSource(KITCHEN / "audio.wav", speed=None)
    assert run_session(args, source) == 0
    rec = open_recording(tmp_path / "rec")
    assert rec.problems == () and rec.manifest["source"] == "merc-live"
    assert rec.manifest["options"]["asr"]["model"] == "tiny.en" and "token" not in rec.manifest["options"]["server"]
    assert abs(WavFileSource(rec.audio).duration - source.duration) < 0.05
    events = read_jsonl(rec.directory / "events.jsonl")
    assert events[0]["type"] == "status" and events[0]["devices"]["microphone"] is True
    turns = [e for e in events if e["type"] == "turn"]
    assert len(turns) == len(read_gold(open_recording(KITCHEN)))
    assert np.array_equal(_pcm(rec.audio), _pcm(KITCHEN / "audio.wav"))  # what was heard, sample for sample
    replayed = replay(rec.directory, processor)
    assert [t["text"] for t in replayed if t["type"] == "turn"] == [t["text"] for t in turns]


def _pcm(path: Path):
    import soundfile as sf

    return sf.read(str(path), dtype="int16")[0]



def test_replay_serve_serves_the_overlay_and_the_events_until_interrupted():
    """merc-replay --serve as a user runs it: the printed overlay URL answers with the page, a client
    gets every turn (resuming from seq 0 after the replay), and Ctrl-C ends it cleanly."""
    import re
    import signal
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "merc.cli.replay", str(KITCHEN), "--serve", "--port", "0",
                             "--speed", "max", "--out", os.devnull], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            # Ctrl-C as a terminal delivers it, however pytest was started: a shell's
                            # background job (`pytest &`) passes SIGINT on as ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        while not any("still serving" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "merc-replay ended early:\n" + "".join(lines)
            lines.append(line)
        url = re.search(r"overlay on (http://\S+);", "".join(lines)).group(1)
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "<html" in page.lower() and "overlay.js" in page

        async def turns():
            got = []
            async for event in follow(url.replace("http://", "ws://"), reconnect=False):
                if event["type"] == "turn":
                    got.append(event["turn"])
                    if len(got) == len(read_gold(open_recording(KITCHEN))):
                        return got

        assert asyncio.run(asyncio.wait_for(turns(), 30)) == list(range(5))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:  # show where it hangs: faulthandler dumps every thread on SIGABRT
            proc.send_signal(signal.SIGABRT)
            pytest.fail("merc-replay --serve did not exit 30 s after SIGINT; its threads:\n"
                        + proc.stderr.read()[-8000:])
        assert code == 0
