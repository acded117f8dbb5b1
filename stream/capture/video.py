"""Video for the live pipeline: camera or file frames on the session clock, and a face tracker.

Threads here never block on their consumers and never raise out: a capture thread keeps only
the newest frames, and a `FaceTracker` analyses only the newest frame at up to `fps`, so a slow
model drops frames instead of building a backlog. A camera that stops delivering (unplugged) is
reported through `available` and an ``on_status`` callback, and reopened with backoff.

Status callbacks get a dict in the shape the audio sources use (a device key, a ``message``):
sources send ``{"camera": available, "message", "source", "finished", "t"}`` (a file source
stands in for the camera), the tracker ``{"camera": available, "face": in view, "message", "t"}``.
They run on the worker thread, so they should be quick (hand the dict to an event loop).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from merc.models.errors import MercError
from merc.models.features.face_features import FaceAnalyzer, FaceObservation

logger = logging.getLogger(__name__)

__all__ = ["CameraSource", "CaptureSource", "FaceTracker", "StatusCallback", "VideoFileSource", "VideoFrame",
           "VideoSource", "VideoSourceError"]

StatusCallback = Callable[[dict[str, Any]], None]
Clock = Callable[[], float]


class VideoSourceError(MercError, RuntimeError):
    """A camera or video file cannot be opened; the message names the index or path."""

    code = "video_source"


@dataclass(frozen=True, eq=False)  # arrays inside: equality is identity
class VideoFrame:
    """One frame: `t` in seconds on the session clock, `image` BGR uint8 (shared: do not modify)."""

    t: float
    image: np.ndarray


class VideoSource(Protocol):
    """What `FaceTracker` needs from a source of frames."""

    @property
    def available(self) -> bool:
        """True while frames are arriving."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def latest(self) -> VideoFrame | None: ...

    def frames_since(self, t: float) -> list[VideoFrame]: ...


def _monotonic_from_now() -> Clock:
    start = time.monotonic()
    return lambda: time.monotonic() - start


def _notify(callback: StatusCallback | None, status: dict[str, Any]) -> None:
    """Call a status callback without letting its failure reach (and kill) a worker thread."""
    if callback is None:
        return
    try:
        callback(status)
    except Exception:
        logger.exception("on_status callback failed for %s", status)


class CaptureSource:
    """A device read in a daemon thread into a buffer of the newest frames; subclasses open and read.

    Subclasses implement `open_device` (raise `VideoSourceError`), `read_image` (None for a failed
    read) and `close_device`, and may override `frame_time` and `at_end`. After
    `lost_after_failures` failed reads in a row the source is marked unavailable (one status
    callback, also for a device that opened but never delivered), then reopened every
    `retry_initial_s`, doubling up to `retry_max_s`, until frames arrive again (another
    callback). Only the capture thread touches the device.
    """

    name = "video source"

    def __init__(self, *, clock: Clock | None = None, buffer_frames: int = 30,
                 on_status: StatusCallback | None = None, lost_after_failures: int = 3,
                 retry_initial_s: float = 0.5, retry_max_s: float = 5.0) -> None:
        if buffer_frames < 1 or lost_after_failures < 1:
            raise ValueError("buffer_frames and lost_after_failures must be >= 1")
        self.clock: Clock | None = clock
        self.on_status = on_status
        self.lost_after_failures = lost_after_failures
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._frames: deque[VideoFrame] = deque(maxlen=buffer_frames)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._available: bool | None = None  # None until the first report: then any state is news
        self._finished = False
        self._retry_s = retry_initial_s

    # -- subclass hooks ----------------------------------------------------------------------
    def open_device(self) -> None:
        """Open (or reopen) the device; raise `VideoSourceError` naming it on failure."""
        raise NotImplementedError

    def read_image(self) -> np.ndarray | None:
        """The next BGR frame, or None when the read failed."""
        raise NotImplementedError

    def close_device(self) -> None:
        """Release the device (called on the capture thread)."""

    def frame_time(self) -> float:
        """Time of the frame just read; by default the session clock now."""
        return self.now()

    def at_end(self) -> bool:
        """True when a failed read means a normal end (a file), not a lost device."""
        return False

    # -- public interface --------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """True while frames are arriving (False before the first frame, when lost, and at the end)."""
        return bool(self._available)

    @property
    def finished(self) -> bool:
        """True once the source ended normally (end of a file); the thread has stopped reading."""
        return self._finished

    def now(self) -> float:
        """The session clock (after `start`)."""
        if self.clock is None:
            raise RuntimeError(f"{self.name}: not started")
        return self.clock()

    def start(self) -> None:
        """Open the device and start the capture thread.

        Raises:
            VideoSourceError: the device cannot be opened (named in the message).
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        if self.clock is None:
            self.clock = _monotonic_from_now()
        self.open_device()
        self._thread = threading.Thread(target=self._run, name=f"capture {self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the capture thread and release the device; safe to call more than once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("%s: capture thread still blocked in a read after %.1f s", self.name, timeout_s)

    def latest(self) -> VideoFrame | None:
        """The newest frame, or None before the first one."""
        with self._lock:
            return self._frames[-1] if self._frames else None

    def frames_since(self, t: float) -> list[VideoFrame]:
        """Buffered frames newer than `t` (oldest first); older ones may already be dropped."""
        with self._lock:
            return [f for f in self._frames if f.t > t]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- capture thread ----------------------------------------------------------------------
    def _set_available(self, available: bool, reason: str) -> None:
        if available != self._available:
            self._available = available
            self._report(reason)

    def _set_finished(self) -> None:
        self._finished, self._available = True, False
        self._report("end of stream")

    def _report(self, reason: str) -> None:
        logger.info("%s: %s", self.name, reason)
        _notify(self.on_status, {"camera": self._available, "message": f"{self.name}: {reason}",
                                 "source": self.name, "finished": self._finished, "t": self.now()})

    def _read(self) -> np.ndarray | None:
        try:
            return self.read_image()
        except Exception:
            logger.exception("%s: read failed", self.name)
            return None

    def _reopen(self) -> None:
        """Close the device and try to open it again with backoff until it opens or we stop."""
        self._close_quietly()
        while not self._stop.wait(self._retry_s):
            self._retry_s = min(2 * self._retry_s, self.retry_max_s)
            try:
                self.open_device()
                return
            except Exception:
                logger.debug("%s: reopen failed", self.name, exc_info=True)

    def _close_quietly(self) -> None:
        try:
            self.close_device()
        except Exception:
            logger.exception("%s: close failed", self.name)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                image = self._read()
                if image is not None:
                    failures, self._retry_s = 0, self.retry_initial_s
                    frame = VideoFrame(self.frame_time(), image)
                    with self._lock:
                        self._frames.append(frame)
                    self._set_available(True, "delivering frames")
                    continue
                if self._stop.is_set():
                    break
                if self.at_end():
                    self._set_finished()
                    break
                failures += 1
                if failures < self.lost_after_failures:
                    self._stop.wait(0.02)
                    continue
                self._set_available(False, "stopped delivering frames; reopening")
                self._reopen()
                failures = 0
        finally:
            self._close_quietly()


class CameraSource(CaptureSource):
    """A camera through OpenCV's `cv2.VideoCapture(index)`; frame times are the clock at read."""

    def __init__(self, index: int = 0, *, backend: int | None = None, read_timeout_ms: int = 2000,
                 clock: Clock | None = None, buffer_frames: int = 30, on_status: StatusCallback | None = None,
                 lost_after_failures: int = 3, retry_initial_s: float = 0.5, retry_max_s: float = 5.0) -> None:
        super().__init__(clock=clock, buffer_frames=buffer_frames, on_status=on_status,
                         lost_after_failures=lost_after_failures, retry_initial_s=retry_initial_s,
                         retry_max_s=retry_max_s)
        self.index = index
        self.backend = backend
        self.read_timeout_ms = read_timeout_ms
        self.name = f"camera {index}"
        self._capture: Any = None

    def open_device(self) -> None:
        import cv2

        capture = cv2.VideoCapture(self.index) if self.backend is None else cv2.VideoCapture(self.index, self.backend)
        if not capture.isOpened():
            capture.release()
            raise VideoSourceError(f"camera {self.index}: could not open it (no such camera, no permission, "
                                   "or another program is using it); pick another index")
        # Bounds how long a read blocks on an unplugged camera where the backend supports it.
        capture.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms)
        self._capture = capture

    def read_image(self) -> np.ndarray | None:
        if self._capture is None:
            return None
        ok, image = self._capture.read()
        return image if ok and image is not None else None

    def close_device(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoFileSource(CaptureSource):
    """A video file replayed as a source: paced at `speed` x real time, or as fast as possible (None).

    Frame times are the frame's time in the file plus `t0` (not the clock at read), so a replay's
    frames and its audio share the recording's time base whatever the speed. Reaching the end
    sets `finished` and `available` False (one status callback) and stops the thread.
    """

    def __init__(self, path: str | Path, *, speed: float | None = 1.0, t0: float = 0.0,
                 clock: Clock | None = None, buffer_frames: int = 30, on_status: StatusCallback | None = None,
                 lost_after_failures: int = 3, retry_initial_s: float = 0.5, retry_max_s: float = 5.0) -> None:
        super().__init__(clock=clock, buffer_frames=buffer_frames, on_status=on_status,
                         lost_after_failures=lost_after_failures, retry_initial_s=retry_initial_s,
                         retry_max_s=retry_max_s)
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0 or None, got {speed}")
        self.path = Path(path)
        self.speed = speed
        self.t0 = t0
        self.name = str(self.path)
        self.fps = 0.0
        self.frame_count = 0
        self._capture: Any = None
        self._next_index = 0  # index of the next frame to read
        self._started_at: float | None = None

    def open_device(self) -> None:
        import cv2

        if not self.path.is_file():
            raise VideoSourceError(f"{self.path}: video file not found")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise VideoSourceError(f"{self.path}: OpenCV cannot open this video file")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else 30.0
        self.frame_count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        if self._next_index:
            capture.set(cv2.CAP_PROP_POS_FRAMES, self._next_index)
        self._capture = capture
        if self._started_at is None:
            self._started_at = self.now()

    def read_image(self) -> np.ndarray | None:
        if self._capture is None:
            return None
        if self.speed is not None and self._started_at is not None:
            due = self._started_at + self._next_index / self.fps / self.speed
            if self._stop.wait(max(0.0, due - self.now())):
                return None
        ok, image = self._capture.read()
        if not ok or image is None:
            return None
        self._next_index += 1
        return image

    def frame_time(self) -> float:
        return self.t0 + (self._next_index - 1) / self.fps

    def at_end(self) -> bool:
        return self.frame_count <= 0 or self._next_index >= self.frame_count

    def close_device(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FaceTracker:
    """Runs `FaceAnalyzer.observe` on a source's newest frame at up to `fps`, keeping a bounded timeline.

    The tracker owns neither the source nor the analyzer (start and close those yourself); the
    analyzer is used only on the tracker's thread. It keeps at most ``ceil(keep_s * fps)``
    observations. `face_in_view` turns False when no face was found for `face_lost_after_s` of
    frame time (one missed detection does not flicker it) or when the camera is unavailable.
    """

    def __init__(self, source: VideoSource, analyzer: FaceAnalyzer, *, fps: float = 10.0, keep_s: float = 60.0,
                 face_lost_after_s: float = 0.5, on_status: StatusCallback | None = None) -> None:
        if fps <= 0 or keep_s <= 0:
            raise ValueError("fps and keep_s must be > 0")
        self.source = source
        self.analyzer = analyzer
        self.fps = fps
        self.face_lost_after_s = face_lost_after_s
        self.on_status = on_status
        self._timeline: deque[FaceObservation] = deque(maxlen=math.ceil(keep_s * fps))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._camera_available = False
        self._face_in_view = False
        self._last_face_t = -math.inf
        self._last_frame_t = -math.inf
        self.frames_analyzed = 0
        self.faces_found = 0
        self.errors = 0

    @property
    def max_observations(self) -> int:
        """How many observations the timeline keeps."""
        return self._timeline.maxlen or 0

    @property
    def camera_available(self) -> bool:
        return self._camera_available

    @property
    def face_in_view(self) -> bool:
        return self._face_in_view

    @property
    def status(self) -> dict[str, Any]:
        """Camera and face state plus counters, for logs and status messages."""
        return {"camera": self._camera_available, "face": self._face_in_view,
                "frames_analyzed": self.frames_analyzed, "faces_found": self.faces_found, "errors": self.errors,
                "observations": len(self._timeline)}

    def observations_between(self, t0: float, t1: float) -> list[FaceObservation]:
        """Observations with t0 <= t <= t1 (session seconds), oldest first: one turn's faces."""
        with self._lock:
            return [o for o in self._timeline if t0 <= o.t <= t1]

    def start(self) -> None:
        """Start the worker thread (the source should already be started)."""
        if self._thread is not None:
            raise RuntimeError("FaceTracker already started")
        self._thread = threading.Thread(target=self._run, name="face tracker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop and join the worker thread (one observe call at most, tens of ms)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f"FaceTracker thread did not stop within {timeout_s} s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _update(self, camera_available: bool, face_in_view: bool, t: float | None) -> None:
        face_in_view = face_in_view and camera_available
        if (camera_available, face_in_view) == (self._camera_available, self._face_in_view):
            return
        self._camera_available, self._face_in_view = camera_available, face_in_view
        message = "face in view" if face_in_view else "no face in view" if camera_available else "no camera frames"
        _notify(self.on_status, {"camera": camera_available, "face": face_in_view, "message": message, "t": t})

    def _step(self) -> bool:
        """Analyse the newest unseen frame; False when there was none."""
        available = self.source.available
        frame = self.source.latest()
        if frame is None or frame.t <= self._last_frame_t:
            self._update(available, self._face_in_view, None if frame is None else frame.t)
            return False
        self._last_frame_t = frame.t
        try:
            observation = self.analyzer.observe(frame.image, frame.t)
        except Exception:
            self.errors += 1
            if self.errors == 1:
                logger.exception("face analysis failed (further failures are counted, not logged)")
            observation = None
        self.frames_analyzed += 1
        if observation is not None:
            with self._lock:
                self._timeline.append(observation)
            self.faces_found += 1
            self._last_face_t = frame.t
        self._update(available, frame.t - self._last_face_t <= self.face_lost_after_s, frame.t)
        return True

    def _run(self) -> None:
        period = 1.0 / self.fps
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                analysed = self._step()
            except Exception:
                self.errors += 1
                logger.exception("face tracker step failed")
                analysed = False
            wait = period - (time.monotonic() - began) if analysed else min(period, 0.01)
            self._stop.wait(max(0.0, wait))
