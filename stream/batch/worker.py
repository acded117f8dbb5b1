"""The worker of merc-batch: a Ray actor holding one session's models, replaying recordings one at
a time through exactly the pipeline `merc-replay --speed max` runs.

Models load once per actor (in `__init__`, from the exports the driver made in the cache: the
actor never exports, so it never imports the export stack), then each `replay` call runs one
recording through a fresh `Session` on the same processor, as merc-replay builds one per run.

Each actor keeps to its CPU share (`threads`): ONNX Runtime's text encoder gets that many threads
(the graph step, the VAD, the end-of-turn classifier and CAM++ run on one each already), PyTorch
(the voice encoders) at most that many, and CTranslate2 (faster-whisper) takes its thread count
from OMP_NUM_THREADS, set here before it loads (Ray sets it to the actor's CPUs as well).

The class is plain Python: the scheduler (run.py) makes it a Ray actor with `ray.remote`, so it is
typed and testable like any other class.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from merc.models.errors import MercError
from merc.stream.session.options import SessionOptions

__all__ = ["ReplayWorker", "describe_error", "limit_threads"]

log = logging.getLogger(__name__)

FAILED_TURN = "turn_failed"


def limit_threads(options: SessionOptions, threads: int) -> SessionOptions:
    """`options` with every thread count the session has capped at `threads` (a worker's CPU share):
    the text encoder's ONNX Runtime threads (None, one per core, becomes `threads`) and PyTorch's."""
    tracker = replace(options.tracker, threads=min(options.tracker.threads or threads, threads))
    speakers = replace(options.speakers, torch_threads=min(options.speakers.torch_threads or threads, threads))
    return replace(options, tracker=tracker, speakers=speakers)


def describe_error(err: BaseException) -> dict[str, Any]:
    """An exception as the failure log keeps it: a user's error (MercError, OSError) as its one-line
    message and code; anything else (a bug) with its type and traceback."""
    if isinstance(err, MercError):
        return {"error": err.user_message(), "code": err.code}
    if isinstance(err, OSError):
        return {"error": str(err), "code": "os_error"}
    return {"error": f"{type(err).__name__}: {err}", "code": "internal",
            "traceback": "".join(traceback.format_exception(err))}


class ReplayWorker:
    """One session's models, loaded once; `replay` runs recordings through them one at a time.

    A failure to load is kept (`ready` reports it) rather than raised, so that the driver gets the
    message instead of a dead actor."""

    def __init__(self, options: SessionOptions, end_of_turn: Path | None, warm_up_audio: np.ndarray | None,
                 threads: int) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # CTranslate2 reads it when it loads (below)
        started = time.perf_counter()
        self.threads = threads
        self.options = limit_threads(options, threads)
        self.error: dict[str, Any] | None = None
        self._session: Any = None
        try:
            from merc.stream.session.build import build_session
            from merc.stream.wire.events import EventBus

            self._session = build_session(self.options, EventBus("merc-batch"), warm_up_audio=warm_up_audio,
                                          end_of_turn=end_of_turn)
        except Exception as err:
            self.error = describe_error(err)
        self.load_seconds = time.perf_counter() - started

    def ready(self) -> dict[str, Any]:
        """The worker's state once its models are loaded: its process id, how long loading took, and
        the error if it failed."""
        return {"pid": os.getpid(), "load_seconds": round(self.load_seconds, 2), "threads": self.threads,
                "error": self.error}

    def replay(self, directory: str, name: str) -> dict[str, Any]:
        """Replay the recording in `directory` as fast as the pipeline runs. Returns its events and
        what `merc-replay` reports (turns, audio and processing seconds, problems), with `status`:
        done, damaged (replayed, but the recording was damaged or turns failed: see `problems`), or
        failed (nothing replayed; `error` says why)."""
        if self._session is None:
            return {"status": "failed", **(self.error or {"error": "the worker has no session"})}
        try:
            return self._replay(Path(directory), name)
        except Exception as err:
            return {"status": "failed", **describe_error(err)}

    def _replay(self, directory: Path, name: str) -> dict[str, Any]:
        from merc.stream.recordings.recording import open_recording
        from merc.stream.recordings.replay import replay_session
        from merc.stream.session.session import Session
        from merc.stream.wire.events import EventBus

        recording = open_recording(directory)
        events: list[dict[str, Any]] = []
        bus = EventBus(session=f"batch-{name}-{uuid.uuid4().hex[:8]}")  # as merc-replay names its sessions
        bus.subscribe(events.append)
        built = self._session
        session = Session(built.processor, bus, built.options, completeness=built.completeness)
        result = replay_session(recording, session, None)
        failed = [e["message"] for e in events if e.get("type") == "error" and e.get("code") == FAILED_TURN]
        problems = [*result.problems, *([f"{len(failed)} turns could not be processed: {'; '.join(failed)}"]
                                        if failed else [])]
        return {"status": "damaged" if problems else "done", "events": events, "turns": result.turns,
                "audio_seconds": round(result.audio_seconds, 3), "processing_seconds": round(result.wall_seconds, 3),
                "problems": problems, "worker": os.getpid()}
