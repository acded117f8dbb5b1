"""The session: options (JSON, echoed without token or paths), the hello, client control (reset,
pause, resume) on a pipeline of stand-in stages, and the session's imports (layering)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from merc.models.data.turns import TurnResult
from merc.stream.capture.audio import AudioChunk
from merc.stream.session.options import (
    AsrOptions,
    RecordingOptions,
    ServerOptions,
    SessionOptions,
    SpeakerOptions,
    TrackerOptions,
)
from merc.stream.session.pipeline import Pipeline, TurnProcessor
from merc.stream.session.session import Session
from merc.stream.turns.segmenter import SegmenterOptions, SpeechSegment
from merc.stream.wire.events import EventBus

SECRET = "s3cret-token"


class FakeTracker:
    labels = ("neutral", "joy")
    modalities = ("text",)

    def __init__(self, bundle_dir: Path | None = None) -> None:
        self.turns = 0
        self.resets = 0
        if bundle_dir is not None:
            self.manifest = SimpleNamespace(label_set="test-2", bundle_dir=bundle_dir)

    def track(self, speaker, text, extra=None):
        self.turns += 1
        return TurnResult(self.turns - 1, speaker, text, "joy", 0.9, {"neutral": 0.1, "joy": 0.9}, ("text",),
                          {"text_encoder": 1.0, "graph": 1.0})

    def reset(self) -> None:
        self.turns = 0
        self.resets += 1

    def revise(self, speakers):
        self.revised = dict(speakers)
        return [TurnResult(turn, speaker, "", "neutral", 0.8, {"neutral": 0.8, "joy": 0.2}, ("text",), {})
                for turn, speaker in sorted(speakers.items())]


class FakeTranscriber:
    name = "fake"

    def __init__(self) -> None:
        self.prompts: list[str | None] = []

    def transcribe(self, audio, prompt=None):
        self.prompts.append(prompt)
        return SimpleNamespace(text="hello there")


class FakeAssigner:
    def __init__(self) -> None:
        self.resets = 0

    def assign(self, embedding, face_track=None, seconds=None):
        return "S1"

    def revise(self):
        return {}

    def reset(self) -> None:
        self.resets += 1


class FakeEmbedder:
    def embed(self, audio):
        return np.ones(4, dtype=np.float32)


class ChunkSource:
    """`count` chunks, then the end; `before_each(i)` runs before chunk i is yielded."""

    name = "chunks"

    def __init__(self, count: int, before_each=lambda i: None) -> None:
        self.count, self.before_each = count, before_each
        self.started = None
        self.on_status = lambda status: None

    def start(self) -> None:
        self.started = 0.0

    def stop(self) -> None:
        pass

    def __iter__(self):
        for i in range(self.count):
            self.before_each(i)
            yield AudioChunk(float(i), np.zeros(512, dtype=np.float32), 0.0)


class EveryChunkATurn:
    """A segmenter that makes each chunk one turn."""

    def feed(self, chunk):
        yield SpeechSegment(chunk.t, chunk.t + 0.5, chunk.samples, 0.0, 0.0)

    def flush(self):
        return iter(())


def fake_session(options: SessionOptions | None = None, bundle_dir: Path | None = None) -> Session:
    processor = TurnProcessor(tracker=FakeTracker(bundle_dir), transcriber=FakeTranscriber(), embedder=FakeEmbedder(),
                              attributor=FakeAssigner())
    return Session(processor, EventBus("test"), options or SessionOptions())


def run(session: Session, chunks: int, before_each=lambda i: None) -> Pipeline:
    pipeline = Pipeline(ChunkSource(chunks, before_each), EveryChunkATurn(), session.processor, session.bus,
                        paused=session.paused)
    pipeline.run()
    return pipeline


def full_options(tmp_path: Path) -> SessionOptions:
    return SessionOptions(
        tracker=TrackerOptions(model_dir=tmp_path / "runs" / "meld-run", bundle=tmp_path / "bundles" / "b1",
                               precision="int8", threads=2, device="cpu"),
        asr=AsrOptions(model=str(tmp_path / "whisper-small-ct2"), device="cpu", window="turn"),
        speakers=SpeakerOptions(max_speakers=3, device="cpu"),
        segmenter=SegmenterOptions(min_silence=0.4),
        server=ServerOptions(host="0.0.0.0", port=9000, token=SECRET, allow_origins=("https://a.example",)),
        recording=RecordingOptions(directory=tmp_path / "rec"))


def test_options_are_frozen_json_and_never_carry_the_token_or_a_path(tmp_path):
    options = full_options(tmp_path)
    data = options.to_dict()
    text = json.dumps(data)
    assert SECRET not in text and SECRET not in repr(options) and str(tmp_path) not in text
    assert "token" not in data["server"]
    assert data["tracker"] == {"model_dir": "meld-run", "bundle": "b1", "engine": "onnx", "precision": "int8",
                               "threads": 2, "device": "cpu"}
    assert data["asr"] == {"backend": "faster-whisper", "model": "whisper-small-ct2", "device": "cpu",
                           "window": "turn", **{k: v for k, v in AsrOptions().to_dict().items()
                                                if k not in ("backend", "model", "device", "window")}}
    assert json.loads(json.dumps(data["asr"])) == data["asr"]  # the ASR guards' options are JSON too
    assert data["speakers"] == {"max_speakers": 3, "max_clusters": 32, "device": "cpu", "embedder": "resemblyzer",
                                "torch_threads": 1}
    assert data["segmenter"]["min_silence"] == 0.4
    assert data["server"] == {"host": "0.0.0.0", "port": 9000, "allow_origins": ["https://a.example"],
                              "max_connections": 256}
    assert data["recording"] == {"directory": "rec"}
    assert SessionOptions().to_dict()["server"] is None and SessionOptions().to_dict()["asr"]["model"] == "tiny.en"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.asr.model = "base"  # type: ignore[misc]


def test_the_hello_echoes_the_options_and_names_the_bundle_without_its_path(tmp_path):
    import jsonschema

    from merc.stream.wire.events import schema
    from merc.stream.wire.messages import Hello, stamp

    session = fake_session(full_options(tmp_path), bundle_dir=tmp_path / "bundles" / "default-abc")
    hello = session.hello()
    assert hello["model"] == {"label_set": "test-2", "asr": "faster-whisper:whisper-small-ct2", "bundle": "default-abc"}
    assert hello["labels"] == ["neutral", "joy"] and hello["modalities"] == ["text"]
    assert hello["options"] == session.options.to_dict()
    assert SECRET not in json.dumps(hello) and str(tmp_path) not in json.dumps(hello)
    event = stamp(Hello.of(hello, last_seq=0), seq=0, session="s", sent=0.0, direct=True)
    jsonschema.Draft202012Validator(schema()).validate(event)
    assert event["options"] == hello["options"]


def test_pause_drops_turns_but_reads_all_audio_and_resume_brings_them_back():
    session = fake_session()
    heard = []

    def control(i: int) -> None:
        if i == 2:
            assert session.control("pause") is None
        if i == 5:
            assert session.control("resume") is None

    pipeline = Pipeline(ChunkSource(8, control), EveryChunkATurn(), session.processor, session.bus,
                        on_audio=heard.append, paused=session.paused)
    pipeline.run()
    turns = [e for e in session.bus.events() if e["type"] == "turn"]
    assert len(heard) == 8  # capture never waits: every chunk is read while paused
    assert [t["t_start"] for t in turns] == [0.0, 1.0, 5.0, 6.0, 7.0]
    assert pipeline.turns == 5 and pipeline.skipped == 3


def test_reset_forgets_the_conversation_before_the_next_turn():
    session = fake_session()
    tracker, assigner = session.processor.tracker, session.processor.attributor
    run(session, 3, lambda i: session.control("reset") if i == 2 else None)
    turns = [e for e in session.bus.events() if e["type"] == "turn"]
    assert [t["turn"] for t in turns] == [0, 1, 0]  # the third turn starts a new dialogue
    assert tracker.resets == 1 and assigner.resets == 1


def test_an_unknown_control_action_is_refused_with_a_code():
    session = fake_session()
    assert session.control("explode") == "bad_action"
    assert not session.paused.is_set()


def test_the_session_serves_with_its_control_handler_and_options():
    options = SessionOptions(server=ServerOptions(port=0, token=SECRET))
    session = fake_session(options)
    server = session.serve()
    assert server.on_control == session.control and server.token == SECRET and server.port == 0
    assert SECRET not in json.dumps(server.hello)


def test_the_session_package_imports_neither_recordings_nor_export_build_nor_training():
    code = ("import sys, merc.stream.session.build, merc.stream.session.session, merc.stream.session.seams; "
            "bad = [m for m in sys.modules if m.startswith(('merc.stream.recordings', 'merc.export.build', "
            "'merc.models.train', 'merc.cli'))]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    package = Path(__import__("merc.stream.session", fromlist=["x"]).__path__[0])
    for source in package.glob("*.py"):
        assert "argparse" not in source.read_text(encoding="utf-8"), source


def test_revised_speakers_become_turn_updates_after_the_turn_that_revised_them():
    # the real attributor on hand-placed voices: turn 0 founds S1, turn 1 joins it, and once S2 has
    # been heard turn 0 is clearly closer to S2 than to the rest of S1
    from merc.stream.turns.speakers import SpeakerAttributor

    def unit(degrees: float) -> np.ndarray:
        return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees)), 0, 0], dtype=np.float32)

    voices = iter([unit(30), unit(0), unit(50), unit(50), unit(0)])

    class Voices:
        def embed(self, audio):
            return next(voices)

    class TwoSecondTurns(EveryChunkATurn):
        def feed(self, chunk):
            yield SpeechSegment(chunk.t, chunk.t + 2.0, np.zeros(32000, dtype=np.float32), 0.0, 0.0)

    tracker = FakeTracker()
    processor = TurnProcessor(tracker=tracker, transcriber=FakeTranscriber(), embedder=Voices(),
                              attributor=SpeakerAttributor(threshold=0.85))
    session = Session(processor, EventBus("test"))
    Pipeline(ChunkSource(5), TwoSecondTurns(), processor, session.bus).run()
    kinds = [(e["type"], e["turn"], e["speaker"]) for e in session.bus.events() if e["type"] in ("turn", "turn.update")]
    assert kinds[0] == ("turn", 0, "S1")
    updates = [k for k in kinds if k[0] == "turn.update"]
    assert updates == [("turn.update", 0, "S2")]
    assert tracker.revised == {0: "S2"}
    # each update follows the turn whose arrival settled it, and names an earlier turn
    for i, kind in enumerate(kinds):
        if kind[0] == "turn.update":
            assert any(k[0] == "turn" and k[1] >= kind[1] for k in kinds[:i])


def test_whisper_is_prompted_with_the_last_words_when_asked():
    transcriber = FakeTranscriber()
    processor = TurnProcessor(tracker=FakeTracker(), transcriber=transcriber, embedder=FakeEmbedder(),
                              attributor=FakeAssigner(), prompt_words=3)
    run(Session(processor, EventBus("test")), 3)
    assert transcriber.prompts[0] is None and transcriber.prompts[1:] == ["hello there", "there hello there"]
