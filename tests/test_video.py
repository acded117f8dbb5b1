"""Video capture and face tracking on a real video written from FER-2013 faces, real MediaPipe."""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from merc.models.features.face_features import STILL_MARGIN, FaceAnalyzer, prepare
from merc.stream.capture.video import (
    CameraSource,
    FaceTracker,
    VideoFileSource,
    VideoFrame,
    VideoSourceError,
)

FPS = 20.0
FACE, BLANK = "face", "blank"
# 40 frames of faces (2 s), 20 blank frames (1 s), 20 frames of faces (1 s) at 20 fps.
LAYOUT = [FACE] * 40 + [BLANK] * 20 + [FACE] * 20


@pytest.fixture(scope="module")
def video_path(data_dir: Path, tmp_path_factory) -> Path:
    """An MJPG .avi of FER-2013 happy faces (each held for 4 frames) with a blank stretch."""
    faces_dir = data_dir / "fer2013" / "test" / "happy"
    files = sorted(faces_dir.glob("*.jpg"))[:20]
    if len(files) < 20:
        pytest.skip(f"FER-2013 happy test images not found in {faces_dir}")
    faces = [prepare(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), margin=STILL_MARGIN) for f in files]
    path = tmp_path_factory.mktemp("video") / "faces.avi"
    size = faces[0].shape[1], faces[0].shape[0]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG"
    blank = np.full_like(faces[0], 128)
    for i, kind in enumerate(LAYOUT):
        writer.write(faces[(i // 4) % len(faces)] if kind == FACE else blank)
    writer.release()
    return path


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class UnpluggableFileSource(VideoFileSource):
    """A file replay whose reads fail while `plugged` is clear, as an unplugged camera's do."""

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0

    def open_device(self) -> None:
        self.opens += 1
        super().open_device()

    def read_image(self) -> np.ndarray | None:
        if not self.plugged.is_set():
            time.sleep(0.005)
            return None
        return super().read_image()


def test_missing_camera_fails_at_start_naming_the_index():
    source = CameraSource(97)
    with pytest.raises(VideoSourceError, match="camera 97"):
        source.start()
    assert not source.available


def test_missing_video_file_is_named(tmp_path):
    with pytest.raises(VideoSourceError, match=r"absent\.avi"):
        VideoFileSource(tmp_path / "absent.avi").start()


def test_file_source_fast_replay_keeps_only_newest_frames(video_path):
    statuses: list[dict] = []
    began = time.monotonic()
    source = VideoFileSource(video_path, speed=None, buffer_frames=5, on_status=statuses.append,
                             clock=lambda: 1000.0 + time.monotonic() - began)
    with source:
        assert wait_until(lambda: source.finished)
    frames = source.frames_since(-1.0)
    assert len(frames) == 5
    assert [f.t for f in frames] == pytest.approx([(len(LAYOUT) - 5 + i) / FPS for i in range(5)])
    assert source.latest() is frames[-1] and isinstance(frames[-1], VideoFrame)
    assert frames[-1].image.shape[2] == 3 and frames[-1].image.dtype == np.uint8
    assert source.frames_since(frames[-2].t) == [frames[-1]]
    assert [(s["camera"], s["finished"]) for s in statuses] == [(True, False), (False, True)]
    assert "end of stream" in statuses[-1]["message"] and str(video_path) in statuses[-1]["message"]
    assert all(1000.0 <= s["t"] < 1010.0 for s in statuses)  # status times on the given clock
    assert not source.available


def test_source_that_opens_but_never_delivers_is_reported(video_path):
    statuses: list[dict] = []
    source = UnpluggableFileSource(video_path, on_status=statuses.append, retry_initial_s=0.05)
    source.plugged.clear()
    with source:
        assert wait_until(lambda: len(statuses) >= 1)
        time.sleep(0.2)  # reopening keeps failing: no further callbacks
    assert len(statuses) == 1 and statuses[0]["camera"] is False and not source.available
    assert "stopped delivering" in statuses[0]["message"]


def test_file_source_paces_at_the_requested_speed(video_path):
    started = time.monotonic()
    with VideoFileSource(video_path, speed=4.0) as source:  # 4 s of video in ~1 s
        assert wait_until(lambda: source.finished)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3.0, elapsed
    with pytest.raises(ValueError, match="speed"):
        VideoFileSource(video_path, speed=0)


def test_unplugged_source_reports_and_recovers_without_killing_the_tracker(model_path, video_path):
    source_status: list[dict] = []
    tracker_status: list[dict] = []
    source = UnpluggableFileSource(video_path, speed=1.0, on_status=source_status.append,
                                   lost_after_failures=2, retry_initial_s=0.05, retry_max_s=0.2)
    with FaceAnalyzer.load(model_path, mode="video") as analyzer, source:
        tracker = FaceTracker(source, analyzer, fps=10, on_status=tracker_status.append)
        with tracker:
            assert wait_until(lambda: tracker.camera_available and tracker.face_in_view)
            source.plugged.clear()
            assert wait_until(lambda: not source.available)
            assert wait_until(lambda: not tracker.camera_available)
            assert not tracker.face_in_view
            time.sleep(0.3)  # a few reopen attempts with backoff while unplugged
            assert source.opens >= 2
            analysed = tracker.frames_analyzed
            source.plugged.set()
            assert wait_until(lambda: source.available and tracker.camera_available)
            assert wait_until(lambda: tracker.frames_analyzed > analysed)
        assert tracker.errors == 0
    lost = [s for s in source_status if not s["camera"] and not s["finished"]]
    assert len(lost) == 1 and "stopped delivering" in lost[0]["message"]
    assert [s["camera"] for s in source_status[:3]] == [True, False, True]
    seen = [(s["camera"], s["face"]) for s in tracker_status]
    assert seen[0] == (True, True) and (False, False) in seen, seen  # lost with the camera...
    assert (True, True) in seen[seen.index((False, False)):], seen  # ...and back after the replug


def test_tracker_timeline_is_bounded_and_follows_the_face(model_path, video_path):
    statuses: list[dict] = []
    source = VideoFileSource(video_path, speed=1.0)
    with FaceAnalyzer.load(model_path, mode="video") as analyzer, source:
        tracker = FaceTracker(source, analyzer, fps=10, keep_s=2.0, on_status=statuses.append)
        assert tracker.max_observations == 20
        with tracker:
            assert wait_until(lambda: source.finished, timeout_s=15)
            time.sleep(0.2)
    everything = tracker.observations_between(-math.inf, math.inf)
    assert tracker.frames_analyzed > tracker.faces_found  # blank frames give no observation
    assert tracker.faces_found > tracker.max_observations, tracker.status
    assert len(everything) == tracker.max_observations
    times = [o.t for o in everything]
    assert times == sorted(times) and times[-1] > 3.5  # the oldest were dropped, the newest kept
    blank_start, blank_end = LAYOUT.index(BLANK) / FPS, (LAYOUT.index(BLANK) + 20) / FPS
    assert times[0] < blank_start  # the timeline spans the blank stretch, which has no faces
    assert tracker.observations_between(blank_start + 0.05, blank_end - 0.05) == []
    middle = tracker.observations_between(times[3], times[6])
    assert middle == everything[3:7]
    faces_seen = [s["face"] for s in statuses if s["camera"]]
    assert faces_seen[:3] == [True, False, True], statuses  # face, lost in the blank stretch, back
    assert not tracker.camera_available  # the file ended
    assert tracker.errors == 0
