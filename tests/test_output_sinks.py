"""Output that cannot stall the pipeline, and state that cannot grow without end.

Printing and the events file run behind bounded queues, each drained by a thread of its own
(stream/session/sinks.py): publishing never waits for a consumer, a stalled one is reported and
skipped, and the end of a run flushes with a bounded wait. A whole session keeps bounded state:
the pipeline's failed-turn details, the speaker clusters and the face votes.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from merc.stream.capture.audio import AudioChunk
from merc.stream.session.build import format_event, printer_sink, turn_printer
from merc.stream.session.options import SpeakerOptions
from merc.stream.session.pipeline import ERRORS_KEPT, Pipeline
from merc.stream.session.sinks import QueuedSink, events_file_sink
from merc.stream.turns.segmenter import SpeechSegment
from merc.stream.turns.speakers import DEFAULT_MAX_CLUSTERS, EMBEDDING_DIM, FACE_TRACKS_KEPT, SpeakerAttributor
from merc.stream.wire.events import EventBus, turn_event

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def a_turn(i: int) -> dict:
    return turn_event(turn=i, speaker="S1" if i % 2 else None, t_start=float(i), t_end=i + 0.5,
                      text=f"turn {i}: ça va? 🙂", label="joy", confidence=0.9, probs={"joy": 0.9, "neutral": 0.1},
                      modalities=["text"], available=["audio", "text"],
                      timings_ms={"segmentation": 500.0, "asr": 10.0, "total": 700.0}, speech_end=1.0)


class Blocked:
    """A consumer stuck until `release` (stdout nobody reads, a disk that hangs)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.got: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.entered.set()
        self.release.wait()
        self.got.append(event)


# ---- the queued sink -------------------------------------------------------------------------------

def test_a_blocked_consumer_never_blocks_publishing_and_its_drops_are_counted_and_reported():
    bus = EventBus("stall", history=100)
    consumer, reports = Blocked(), []
    sink = QueuedSink(consumer, name="stdout", capacity=100, report=reports.append)
    bus.subscribe(sink)
    bus.publish(a_turn(0))
    assert consumer.entered.wait(5)  # the consumer holds event 1 and blocks from now on
    started = time.perf_counter()
    for i in range(1, 10_000):
        bus.publish(a_turn(i))
    assert time.perf_counter() - started < 1.0
    assert sink.dropped == 10_000 - 1 - 100 and sink.pending == 101
    assert wait_for(lambda: len(reports) == 1)  # reported once, from a thread of its own
    assert reports[0].startswith("stdout is not being read: ") and "skipped" in reports[0]

    consumer.release.set()
    assert sink.close(timeout=5)
    assert [e["seq"] for e in consumer.got] == list(range(1, 102))  # in order, the first 101
    assert sink.delivered == 101
    assert reports[1:] == ["stdout is not being read: 9899 events skipped"]


def test_close_waits_a_bounded_time_and_a_stuck_consumer_gets_nothing_more():
    consumer, reports = Blocked(), []
    sink = events_file_sink(consumer, "events.jsonl", capacity=50, report=reports.append)
    for i in range(10):
        sink(a_turn(i))
    assert consumer.entered.wait(5)
    started = time.perf_counter()
    assert sink.close(timeout=0.2) is False
    assert time.perf_counter() - started < 1.0
    assert sink.dropped == 10  # the nine queued and the one being written
    sink(a_turn(99))  # after close: dropped, never queued
    assert sink.dropped == 11
    consumer.release.set()
    time.sleep(0.1)
    assert len(consumer.got) == 1 and sink.pending == 0
    assert reports == ["events.jsonl is not being written (a stalled disk?): 10 events dropped"]


def test_a_healthy_consumer_gets_everything_in_order_and_flush_waits_for_it():
    got, reports = [], []

    def slow(event: dict) -> None:
        time.sleep(0.0005)
        got.append(event["seq"])

    bus = EventBus("ok")
    sink = events_file_sink(slow, "f", report=reports.append)
    bus.subscribe(sink)
    for i in range(500):
        bus.publish(a_turn(i))
    assert sink.flush(timeout=10) and got == list(range(1, 501))
    bus.publish(a_turn(500))
    assert sink.close() and got == list(range(1, 502))
    assert sink.dropped == 0 and reports == []


def test_a_failing_consumer_is_reported_once_and_the_others_go_on():
    bus, reports, seen = EventBus("fail"), [], []

    def broken(event: dict) -> None:
        if event["seq"] % 2:
            raise BrokenPipeError(32, "Broken pipe")
        seen.append(event["seq"])

    sink = QueuedSink(broken, name="stdout", capacity=10, report=reports.append)
    bus.subscribe(sink)
    for i in range(6):
        bus.publish(a_turn(i))
    assert sink.close()
    assert seen == [2, 4, 6] and sink.failed == 3 and sink.delivered == 3
    assert len(reports) == 2 and "BrokenPipeError" in reports[0]
    assert reports[1] == "stdout: 3 events could not be written"


def test_the_bus_survives_a_subscriber_that_raises(caplog):
    bus, got = EventBus("raise"), []

    def bad(event: dict) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(bad)
    bus.subscribe(got.append)
    with caplog.at_level(logging.ERROR, logger="merc.stream.wire.events"):
        for i in range(3):
            bus.publish(a_turn(i))
    assert [e["seq"] for e in got] == [1, 2, 3]
    assert len(caplog.records) == 1 and "subscriber bug" in caplog.text  # logged once, not per event


# ---- the printer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("as_json", [False, True])
def test_the_printer_sink_prints_what_turn_printer_prints(tmp_path, as_json):
    events = [a_turn(i) for i in range(3)] + [{"type": "status", "message": "camera lost", "seq": 4},
                                              {"type": "pong", "seq": 5}]
    expected = io.StringIO()
    show = turn_printer(expected, as_json=as_json)
    for event in events:
        show(event)
    with open(tmp_path / "out.txt", "w", encoding="utf-8") as out:  # a real descriptor: written through it
        sink = printer_sink(out, as_json=as_json)
        for event in events:
            sink(event)
        assert sink.close()
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == expected.getvalue()
    buffered = io.StringIO()  # no descriptor: written with write and flush
    sink = printer_sink(buffered, as_json=as_json)
    for event in events:
        sink(event)
    assert sink.close() and buffered.getvalue() == expected.getvalue()
    assert format_event({"type": "pong"}) is None


def test_the_printer_sink_on_a_pipe_nobody_reads_skips_and_reports():
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
        reports = []
        with os.fdopen(write_end, "w", encoding="utf-8", closefd=False) as out:
            sink = printer_sink(out, as_json=True, capacity=20, report=reports.append)
            started = time.perf_counter()
            for i in range(2000):
                sink(a_turn(i))
            assert time.perf_counter() - started < 1.0
            assert sink.close(timeout=0.5) is False
        assert wait_for(lambda: len(reports) == 2)
        skipped = int(re.search(r"(\d+) events skipped", reports[-1]).group(1))
        assert reports[0].startswith(f"file descriptor {write_end} is not being read: ")
        assert 2000 - 40 < skipped < 2000
    finally:
        os.close(read_end)  # the stuck writer's write fails now (EPIPE) and its thread ends
        os.close(write_end)


# ---- merc-replay with a stdout nobody reads -------------------------------------------------------

def test_replay_with_a_stdout_nobody_reads_finishes_and_writes_every_event(tmp_path):
    """`merc-replay --json | sleep 600`: here the pipe is shrunk to 4 KiB and filled before the
    replay starts, so its very first printed event would block."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    out = tmp_path / "events.jsonl"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "merc.cli.replay", "--json", "--out", str(out)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        write_end = -1
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("merc-replay stalled on a stdout nobody reads")
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
    assert proc.returncode == 0, stderr
    turns = int(re.search(r"^(\d+) turns from", stderr, re.M).group(1))
    events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # every event is in the file: the turns, and the corrections of earlier turns' speakers
    assert turns >= 3 and sum(e["type"] == "turn" for e in events) == turns
    assert all(e["type"] in ("turn", "turn.update") for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "stdout is not being read" in stderr and f"{len(events)} events skipped" in stderr


# ---- bounded session state -------------------------------------------------------------------------

class Chunks:
    name = "chunks"

    def __init__(self, count: int) -> None:
        self.count = count
        self.on_status = lambda status: None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def __iter__(self):
        for i in range(self.count):
            yield AudioChunk(float(i), np.zeros(16, dtype=np.float32), 0.0)


class EveryChunkATurn:
    def feed(self, chunk):
        yield SpeechSegment(chunk.t, chunk.t + 0.5, chunk.samples, 0.0, 0.0)

    def flush(self):
        return iter(())


class Failing:
    def process(self, segment):
        raise ValueError(f"hostile turn {segment.t_start:.0f} " + "x" * 200)


def test_thousands_of_failing_turns_keep_bounded_details_and_an_exact_count(caplog):
    bus = EventBus("errors", history=50)
    caplog.set_level(logging.CRITICAL, logger="merc.stream.session.pipeline")  # 10,000 tracebacks otherwise

    def run(turns: int) -> Pipeline:
        pipeline = Pipeline(Chunks(turns), EveryChunkATurn(), Failing(), bus)
        pipeline.run()
        return pipeline

    run(1000)  # warm up (imports, caches)
    tracemalloc.start()
    try:
        pipeline = Pipeline(Chunks(10_000), EveryChunkATurn(), Failing(), bus)
        pipeline.run()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert pipeline.error_count == 10_000 and pipeline.turns == 0
    assert len(pipeline.errors) == ERRORS_KEPT
    assert "hostile turn 9999" in pipeline.errors[-1] and "hostile turn 9900" in pipeline.errors[0]
    assert held < 1_000_000  # ~100 kept messages and 50 kept events, not 10,000 of each
    assert bus.last_seq == 11_000 and len(bus.events()) == 50


def test_random_voices_never_make_more_speakers_than_the_cap_and_the_state_stays_bounded():
    rng = np.random.default_rng(0)
    attributor = SpeakerAttributor()
    first = [rng.normal(size=EMBEDDING_DIM) for _ in range(DEFAULT_MAX_CLUSTERS)]
    labels = [attributor.assign(v, face_track=i) for i, v in enumerate(first)]
    assert labels == [f"S{i + 1}" for i in range(DEFAULT_MAX_CLUSTERS)]
    centroids = attributor.centroids

    def state_size() -> int:
        return sum(c.total.nbytes + c.centroid.nbytes for c in attributor._clusters) + sum(
            len(v) for v in attributor._face_votes.values()) + len(attributor._face_votes)

    for i in range(1000):
        label = attributor.assign(rng.normal(size=EMBEDDING_DIM), face_track=1000 + i)
        assert label is None  # a new voice at the cap is unknown, never forced onto a speaker
    assert attributor.speakers == DEFAULT_MAX_CLUSTERS
    np.testing.assert_array_equal(attributor.centroids, centroids)  # unknown turns change nothing
    size = state_size()
    for i in range(1000):  # a returning voice keeps its label; face votes stay bounded
        k = i % DEFAULT_MAX_CLUSTERS
        assert attributor.assign(first[k] + 0.05 * rng.normal(size=EMBEDDING_DIM), face_track=5000 + i) == f"S{k + 1}"
    assert attributor.speakers == DEFAULT_MAX_CLUSTERS
    assert len(attributor._face_votes) <= FACE_TRACKS_KEPT and state_size() <= size + FACE_TRACKS_KEPT * 2


def test_the_cap_is_configurable_and_the_speakers_hint_still_governs():
    assert SpeakerOptions().max_clusters == DEFAULT_MAX_CLUSTERS
    rng = np.random.default_rng(1)
    capped = SpeakerAttributor(max_clusters=3)
    assert [capped.assign(rng.normal(size=16)) for _ in range(5)] == ["S1", "S2", "S3", None, None]
    hinted = SpeakerAttributor(max_speakers=40, max_clusters=3)  # --speakers 40: 40 it is
    assert len({hinted.assign(rng.normal(size=64)) for _ in range(40)}) == 40
    hinted.assign(rng.normal(size=64))  # full with the hint: the nearest (or unknown), as before
    assert hinted.speakers == 40
    with pytest.raises(ValueError, match="max_clusters"):
        SpeakerAttributor(max_clusters=0)

