"""Recordings: written incrementally, readable after a kill, damage reported with the rest kept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from merc.stream.capture.audio import WavFileSource
from merc.stream.recordings.recording import (
    RecordingError,
    RecordingWriter,
    open_recording,
    read_jsonl,
)


def test_writer_round_trip(tmp_path):
    writer = RecordingWriter(tmp_path / "rec", {"source": "test"})
    tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    for i in range(0, 16000, 512):
        writer.write_audio(tone[i:i + 512])
    writer.write_event({"type": "turn", "seq": 1})
    writer.close()
    rec = open_recording(tmp_path / "rec")
    assert rec.problems == () and rec.manifest["complete"] is True and rec.manifest["duration_s"] == 1.0
    source = WavFileSource(rec.audio, speed=None)
    source.start()
    audio = np.concatenate([c.samples for c in source])
    assert len(audio) == 16000 and np.abs(audio - tone).max() < 1e-3
    assert read_jsonl(rec.directory / "events.jsonl") == [{"type": "turn", "seq": 1}]
    with pytest.raises(RecordingError, match="already exists"):
        RecordingWriter(tmp_path / "rec")


def test_a_killed_recorder_leaves_a_readable_recording(tmp_path):
    """SIGKILL mid-session: the audio and events written so far survive (the header is kept current)."""
    script = textwrap.dedent(f"""
        import time, numpy as np
        from merc.stream.recordings.recording import RecordingWriter
        w = RecordingWriter({str(tmp_path / 'rec')!r})
        for i in range(10_000):
            w.write_audio(np.full(512, 0.1, np.float32))
            if i % 50 == 0:
                w.write_event({{"type": "turn", "seq": i // 50 + 1}})
            if i == 200:
                print("ready", flush=True)
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rec = open_recording(tmp_path / "rec")
    assert any("not closed" in p for p in rec.problems)
    source = WavFileSource(rec.audio, speed=None)
    assert source.truncated is None and source.duration > 200 * 512 / 16000
    events = read_jsonl(rec.directory / "events.jsonl")
    assert len(events) >= 5 and [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_truncated_audio_is_reported_and_what_is_there_replays(tmp_path):
    writer = RecordingWriter(tmp_path / "rec")
    writer.write_audio(np.full(32000, 0.2, np.float32))
    writer.close()
    wav = tmp_path / "rec" / "audio.wav"
    os.truncate(wav, wav.stat().st_size - 16000)  # cut 0.5 s (8000 samples) off the end
    rec = open_recording(tmp_path / "rec")
    assert len(rec.problems) == 1 and "truncated" in rec.problems[0] and "audio.wav" in rec.problems[0]
    source = WavFileSource(rec.audio, speed=None)
    source.start()
    assert sum(len(c.samples) for c in source) == 24000


def test_bad_recordings_name_the_file(tmp_path):
    with pytest.raises(RecordingError, match="not found"):
        open_recording(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    with pytest.raises(RecordingError, match="manifest.json: not found"):
        open_recording(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").write_text("{broken")
    with pytest.raises(RecordingError, match="not valid JSON"):
        open_recording(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").write_text(json.dumps({"format": "merc-recording", "format_version": 1}))
    with pytest.raises(RecordingError, match="audio.wav: audio file"):
        open_recording(tmp_path / "r")
    (tmp_path / "r" / "audio.wav").write_bytes(b"junk")
    with pytest.raises(RecordingError, match="not a WAV"):
        open_recording(tmp_path / "r")


def test_jsonl_reading_skips_a_torn_last_line_but_not_a_bad_middle_one(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "turn"}\n{"type": "tu')
    assert read_jsonl(path) == [{"type": "turn"}]
    path.write_text('{"type": "turn"}\nnope\n{"type": "turn"}\n')
    with pytest.raises(RecordingError, match=r"events.jsonl:2: not valid JSON"):
        read_jsonl(path)
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"speaker": "A", "text": "hi", "t_start": 0.0}\n')
    with pytest.raises(RecordingError, match=r"gold.jsonl:1: missing t_end"):
        read_jsonl(gold, ("speaker", "text", "t_start", "t_end"))
