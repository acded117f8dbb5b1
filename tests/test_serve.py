"""merc-serve: many sessions in one process, each with its own state, on shared models.

The server is the installed `merc-serve`, started once for the module with real models; clients
stream the fixture recordings as media frames (merc.clients.media_client) and are scored against
the recordings' gold like merc-replay.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import command
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from merc.clients.media_client import read_wav, stream_wav
from merc.stream.recordings.recording import open_recording, read_gold
from merc.stream.recordings.scoring import score_replay
from merc.stream.serve.batching import MicroBatcher
from merc.stream.serve.media import (
    AUDIO,
    HEADER,
    MAGIC,
    MediaFrameError,
    PushAudioSource,
    audio_frame,
    parse_frame,
)

FIXTURES = Path(__file__).parent / "fixtures" / "recordings"
KITCHEN = FIXTURES / "kitchen-2spk"
BUS_STOP = FIXTURES / "bus-stop-3spk"
TOKENS = ("room-a-token", "room-b-token")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`merc-serve` on a free port, two tokens (one per room), at most two sessions."""
    tokens = tmp_path_factory.mktemp("serve") / "tokens.txt"
    tokens.write_text("# one per room\n" + "\n".join(TOKENS) + "\n")
    process = subprocess.Popen([command("merc-serve"), "--port", "0", "--tokens-file", str(tokens),
                                "--max-sessions", "2", "--max-queued-seconds", "120"],
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()
    http = {}

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"media clients connect to (ws://\S+?)/session;", line)
            if found:
                http["ws"] = found.group(1)
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(180):
        process.kill()
        pytest.fail("merc-serve did not start:\n" + "".join(lines))
    try:
        yield {"ws": http["ws"], "http": http["ws"].replace("ws://", "http://"), "log": lines}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def session_url(server, token: str = TOKENS[0]) -> str:
    return f"{server['ws']}/session?token={token}"


def turns(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "turn"]


def run(coroutine, timeout: float = 300):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coroutine

    return asyncio.run(bounded())


def test_concurrent_sessions_each_get_their_own_conversation(server):
    """Two rooms at once: each session's events carry its own id, its turns are its recording's
    (scored against its own gold), numbered from 0 with its own speakers."""
    async def both():
        return await asyncio.gather(stream_wav(session_url(server, TOKENS[0]), KITCHEN / "audio.wav", None),
                                    stream_wav(session_url(server, TOKENS[1]), BUS_STOP / "audio.wav", None))

    kitchen, bus_stop = run(both())
    assert kitchen[0]["type"] == "hello" and bus_stop[0]["type"] == "hello"
    assert kitchen[0]["session"] != bus_stop[0]["session"]
    for events in (kitchen, bus_stop):
        assert {e["session"] for e in events} == {events[0]["session"]}
        assert [t["turn"] for t in turns(events)] == list(range(len(turns(events))))
        assert events[-1]["type"] == "status" and events[-1]["message"].startswith("session ended")
    for directory, events in ((KITCHEN, kitchen), (BUS_STOP, bus_stop)):
        gold = read_gold(open_recording(directory))
        scores = score_replay(gold, [e for e in events if e["type"] != "status"])
        assert abs(scores.predicted_turns - scores.gold_turns) <= 1, scores
        assert scores.wer < 0.3, scores
    other = score_replay(read_gold(open_recording(BUS_STOP)), turns(kitchen))
    assert other.wer > 0.7  # the kitchen session heard the kitchen, not the bus stop
    kitchen_speakers = {t["speaker"] for t in turns(kitchen)} - {None}
    assert kitchen_speakers <= {"S1", "S2"}


def test_a_session_starts_from_nothing_whatever_came_before(server):
    """The same recording in two sessions one after the other gives the same turns: no speakers,
    graph window or Whisper prompt carried over from the first."""
    first = run(stream_wav(session_url(server), KITCHEN / "audio.wav", None))
    second = run(stream_wav(session_url(server), KITCHEN / "audio.wav", None))

    def key(events):
        return [(t["turn"], t["speaker"], t["text"], t["label"], round(t["t_start"], 2)) for t in turns(events)]

    assert key(first) == key(second)
    assert first[0]["session"] != second[0]["session"]


def test_a_watcher_sees_that_session_only(server):
    """?session=ID follows a running session (another screen): its hello, then the same turns."""
    watched: list[dict] = []

    async def scenario():
        watcher: asyncio.Task | None = None

        async def watch(session_id: str) -> None:
            async with connect(f"{server['ws']}/?session={session_id}&token={TOKENS[1]}") as socket:
                async for message in socket:
                    event = json.loads(message)
                    watched.append(event)
                    if event["type"] == "status" and event["message"].startswith("session ended"):
                        return

        def on_event(event: dict) -> None:
            nonlocal watcher
            if event["type"] == "hello":
                watcher = asyncio.ensure_future(watch(event["session"]))

        events = await stream_wav(session_url(server), KITCHEN / "audio.wav", 2.0, on_event=on_event)
        assert watcher is not None
        await asyncio.wait_for(watcher, 30)
        return events

    events = run(scenario())
    assert watched[0]["type"] == "hello" and watched[0]["session"] == events[0]["session"]
    seen = {t["turn"]: t["text"] for t in turns(watched)}
    assert seen and all(t["text"] == seen[t["turn"]] for t in turns(events) if t["turn"] in seen)

    missing = run(_first_message(f"{server['ws']}/?session=s-nothere&token={TOKENS[0]}"))
    assert missing["type"] == "error" and missing["code"] == "no_session"


async def _first_message(url: str) -> dict:
    async with connect(url) as socket:
        return json.loads(await socket.recv())


def test_tokens_and_the_session_limit(server):
    """Each token admits its holder, none or a wrong one is 401; a third session is 503 until one
    of the two open ones ends."""
    for url in (f"{server['ws']}/session", f"{server['ws']}/session?token=wrong"):
        with pytest.raises(InvalidStatus) as refused:
            run(_first_message(url))
        assert refused.value.response.status_code == 401

    async def scenario():
        async with connect(session_url(server, TOKENS[0])) as a, connect(session_url(server, TOKENS[1])) as b:
            for socket in (a, b):
                assert json.loads(await socket.recv())["type"] == "hello"
            with pytest.raises(InvalidStatus) as busy:
                await _first_message(session_url(server))
            assert busy.value.response.status_code == 503
            assert busy.value.response.headers["Retry-After"]
            health = json.loads(await asyncio.to_thread(_get, server["http"] + "/healthz"))
            assert health == {"status": "ok", "sessions": 2, "max_sessions": 2}
        deadline = time.monotonic() + 20
        while json.loads(await asyncio.to_thread(_get, server["http"] + "/healthz"))["sessions"] > 0:
            assert time.monotonic() < deadline, "closed sessions were not released"
            await asyncio.sleep(0.2)
        return await _first_message(session_url(server))

    assert run(scenario())["type"] == "hello"


def test_bad_frames_are_reported_and_the_session_goes_on(server):
    """Garbage, a future version and odd-length audio each get a bad_media error (at most one a
    second); the connection stays, a ping is answered and the audio after them is transcribed."""
    speech = read_wav(KITCHEN / "audio.wav")[: 16000 * 6]

    async def scenario():
        async with connect(session_url(server)) as socket:
            assert json.loads(await socket.recv())["type"] == "hello"
            errors = []
            for bad in (b"not a frame at all", HEADER.pack(MAGIC, 9, AUDIO, 0, 0.0) + b"\0\0",
                        HEADER.pack(MAGIC, 1, AUDIO, 0, 0.0) + b"\0\0\0"):
                await socket.send(bad)
                errors.append(json.loads(await socket.recv()))
                await asyncio.sleep(1.05)  # errors are throttled to one a second
            await socket.send(json.dumps({"type": "ping"}))
            assert json.loads(await socket.recv())["type"] == "pong"
            for seq, start in enumerate(range(0, len(speech), 512)):  # then speech, on the same connection
                await socket.send(audio_frame(speech[start:start + 512], seq, start / 16000))
            await socket.send(audio_frame(np.zeros(0, np.float32), seq + 1, len(speech) / 16000))
            events = []
            async for message in socket:
                events.append(json.loads(message))
                if events[-1]["type"] == "status":
                    return errors, events
        raise AssertionError("the session did not end")

    errors, events = run(scenario())
    assert [e["code"] for e in errors] == ["bad_media"] * 3
    assert "MF" in errors[0]["message"] and "version 9" in errors[1]["message"] and "even" in errors[2]["message"]
    assert "finish the last" in " ".join(t["text"].lower() for t in turns(events))


def test_metrics_in_prometheus_format(server):
    from prometheus_client.parser import text_string_to_metric_families

    run(stream_wav(session_url(server), KITCHEN / "audio.wav", None))
    families = {f.name: f for f in text_string_to_metric_families(_get(server["http"] + "/metrics"))}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("merc_turns_total", ())] >= 4
    assert samples[("merc_sessions_started_total", ())] >= 1
    assert samples[("merc_turn_stage_seconds_count", (("stage", "total"),))] >= 4
    assert samples[("merc_batch_size_count", (("model", "asr"),))] >= 1
    assert samples[("merc_batch_size_count", (("model", "text_encoder"),))] >= 1
    assert ("merc_batch_queue_depth", (("model", "asr"),)) in samples
    assert samples[("merc_sessions", ())] == 0


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{url}: HTTP {err.code}") from err


# -- the pieces, without a server ------------------------------------------------------------------

def test_frames_round_trip_and_bad_ones_say_why():
    samples = np.sin(np.linspace(0, 20, 512)).astype(np.float32) * 0.5
    frame = parse_frame(audio_frame(samples, seq=7, t=1.5))
    assert (frame.kind, frame.seq, frame.t) == (AUDIO, 7, 1.5)
    np.testing.assert_allclose(frame.samples(), samples, atol=1 / 32000)
    for data, reason in ((b"MF", "header"), (b"XX" + bytes(14), "MF"),
                         (HEADER.pack(MAGIC, 1, 3, 0, 0.0), "unknown media kind"),
                         (HEADER.pack(MAGIC, 1, 2, 0, 0.0) + b"GIF89a", "JPEG"),
                         (HEADER.pack(MAGIC, 1, 1, 0, float("nan")), "finite"),
                         (HEADER.pack(MAGIC, 1, 1, 0, 0.0) + bytes(2 * 16001), "at most")):
        with pytest.raises(MediaFrameError, match=reason):
            parse_frame(data)


def test_a_session_that_falls_behind_drops_its_oldest_audio():
    source = PushAudioSource("test", max_seconds=1.0)
    source.start()
    for seq in range(100):  # 3.2 s of audio, never read
        source.push(parse_frame(audio_frame(np.full(512, seq / 100, np.float32), seq, seq * 0.032)))
    source.push(parse_frame(audio_frame(np.zeros(512, np.float32), 105, 3.36)))  # 5 frames lost on the way
    source.stop()
    chunks = list(source)
    assert source.lost_frames == 5
    assert abs(source.dropped_seconds - (101 * 512 / 16000 - len(chunks) * 0.032)) < 1e-6
    assert len(chunks) * 512 <= 16000 and chunks[-1].t == pytest.approx(100 * 0.032)


def test_the_batcher_groups_what_arrives_together_and_isolates_failures():
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item")
        return [2 * i for i in items]

    batcher = MicroBatcher("test", double, window_s=0.2, max_batch=8, observe=lambda n, s: sizes.append(n))
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher.submit(i)
        except ValueError as err:
            results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3, -1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    batcher.close()
    assert results[1] == 2 and results[2] == 4 and results[3] == 6
    assert isinstance(results[-1], ValueError)
    assert sizes and sum(sizes) == 3  # the failed batch was retried one by one; three succeeded


def test_batched_decoding_matches_one_by_one():
    """Whisper over several turns in one call gives each the text it gets alone (no prompts)."""
    from merc.stream.turns.transcribe import FasterWhisperTranscriber

    whisper = FasterWhisperTranscriber.load(device="cpu")
    audio = read_wav(KITCHEN / "audio.wav")
    gold = read_gold(open_recording(KITCHEN))
    pieces = [audio[int(t["t_start"] * 16000):int(t["t_end"] * 16000)] for t in gold[:3]]
    together = whisper.transcribe_batch(pieces, [None] * len(pieces))
    assert [t.text for t in together] == [whisper.transcribe(p).text for p in pieces]


def test_camera_frames_give_turns_a_face(server, data_dir, model_path):
    """A client that also sends JPEG camera frames (5 per second, real faces from FER-2013) gets its
    own face tracker: turns heard with a face in view have the face modality available, and a
    status says the face is in view."""
    import cv2

    from merc.models.features.face_features import STILL_MARGIN, prepare
    from merc.stream.serve.media import VIDEO

    files = sorted((data_dir / "fer2013" / "test" / "happy").glob("*.jpg"))[:5]
    if len(files) < 5:
        pytest.skip("FER-2013 test images not found")
    jpegs = [cv2.imencode(".jpg", prepare(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), margin=STILL_MARGIN))[1].tobytes()
             for f in files]
    speech = read_wav(KITCHEN / "audio.wav")[: 16000 * 9]

    async def scenario():
        async with connect(session_url(server)) as socket:
            assert json.loads(await socket.recv())["type"] == "hello"
            started = time.monotonic()
            video = 0
            for seq, start in enumerate(range(0, len(speech), 512)):
                t = start / 16000
                await asyncio.sleep(max(0.0, started + t - time.monotonic()))  # real time, as a camera
                await socket.send(audio_frame(speech[start:start + 512], seq, t))
                if t >= video * 0.2:
                    await socket.send(HEADER.pack(MAGIC, 1, VIDEO, video, t) + jpegs[video % len(jpegs)])
                    video += 1
            await socket.send(audio_frame(np.zeros(0, np.float32), seq + 1, len(speech) / 16000))
            events = []
            async for message in socket:
                events.append(json.loads(message))
                if events[-1]["type"] == "status" and events[-1]["message"].startswith("session ended"):
                    return events
        raise AssertionError("the session did not end")

    events = run(scenario())
    assert any(e["type"] == "status" and e["devices"].get("face") is True for e in events)
    assert "merc_video_frames_total 4" in _get(server["http"] + "/metrics")  # 45 frames: at least 40
    with_face = [t for t in turns(events) if "face" in t["available"]]
    assert with_face and len(with_face) >= len(turns(events)) - 1
