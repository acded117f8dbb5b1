"""Batching model calls across sessions: the sessions' pipeline threads hand their requests to one
worker per model, which gathers what arrives within a short window and runs it as one batch.

Why one worker and a window: on a GPU a batch of N costs little more than one, so waiting a few
tens of milliseconds for other sessions' turns pays. On a CPU the encoder's cost grows with the
batch (bench/serve.py measures it), but one worker still beats N threads fighting over the same
cores, and it keeps a burst of turns from many sessions in arrival order.

A failed batch is retried one request at a time, so one bad turn fails only its own session's
turn. A session waits only on its own requests: a slow or dead session never holds up a batch.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from merc.stream.turns.transcribe import DecodeSkipped, Transcript

__all__ = ["BatchTranscriber", "BatchedTextEncoder", "BatchedTranscriber", "MicroBatcher", "TextEncoder"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """`submit(item)` from any thread returns `run(batch)[i]` for its item; `run` is called on this
    batcher's thread with up to `max_batch` items, those that arrived within `window_s` of the first.

    `observe(size, seconds)` is told each batch's size and run time (the server's metrics)."""

    def __init__(self, name: str, run: Callable[[list[T]], Sequence[R]], window_s: float = 0.0,
                 max_batch: int = 8, observe: Callable[[int, float], None] | None = None, *,
                 defer_to: MicroBatcher[Any, Any] | None = None, stale_s: float | None = None) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self.name = name
        self.run = run
        self.window_s = window_s
        self.max_batch = max_batch
        self.observe = observe
        self.defer_to = defer_to
        self.stale_s = stale_s
        self.shed = 0
        """Requests skipped (DecodeSkipped): they waited over `stale_s`, or `defer_to` had work."""
        self._busy = False
        self._queue: queue.Queue[tuple[T, Future[R], float] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"batch-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch now."""
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        """Running a batch, or requests waiting for one."""
        return self._busy or self.depth > 0

    def submit(self, item: T) -> R:
        """Run `item` in the next batch and wait for its result (re-raises its failure, or
        DecodeSkipped when this batcher sheds optional work and skipped it)."""
        future: Future[R] = Future()
        self._queue.put((item, future, time.monotonic()))
        return future.result()

    def close(self) -> None:
        """Finish the queued requests, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            closing = False
            while len(batch) < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            batch = self._shed(batch)
            if batch:
                self._busy = True
                try:
                    self._run([(item, future) for item, future, _ in batch])
                finally:
                    self._busy = False
            if closing:
                return

    def _shed(self, batch: list[tuple[T, Future[R], float]]) -> list[tuple[T, Future[R], float]]:
        """Optional work that is no longer worth doing: everything while `defer_to` (the final
        decodes) has work, and requests older than `stale_s` (a newer partial will follow)."""
        if self.defer_to is None and self.stale_s is None:
            return batch
        now = time.monotonic()
        deferred = self.defer_to is not None and self.defer_to.busy
        kept = []
        for entry in batch:
            if deferred or (self.stale_s is not None and now - entry[2] > self.stale_s):
                self.shed += 1
                entry[1].set_exception(DecodeSkipped(f"{self.name}: skipped under load"))
            else:
                kept.append(entry)
        return kept

    def _run(self, batch: list[tuple[T, Future[R]]]) -> None:
        started = time.perf_counter()
        try:
            results = list(self.run([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
        except Exception:
            if len(batch) == 1:
                batch[0][1].set_exception(_current_error())
                return
            log.warning("%s: a batch of %d failed; running its requests one by one", self.name, len(batch))
            for one in batch:
                self._run([one])
            return
        if self.observe is not None:
            self.observe(len(batch), time.perf_counter() - started)
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


def _current_error() -> BaseException:
    import sys

    error = sys.exc_info()[1]
    assert error is not None
    return error


class BatchTranscriber(Protocol):
    """A transcriber that decodes several turns in one call (FasterWhisperTranscriber and
    TransformersWhisperTranscriber in stream/turns/transcribe.py)."""

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> Transcript: ...

    def transcribe_batch(self, audios: Sequence[np.ndarray], prompts: Sequence[str | None]) -> list[Transcript]: ...

    def draft(self) -> Any: ...


@dataclass
class BatchedTranscriber:
    """A session's transcriber: its turns go through the shared batcher of `final` (and its
    partial drafts through the one of `drafts`). `model` is the shared model, for the features
    that reuse Whisper's encoder."""

    final: MicroBatcher[tuple[np.ndarray, str | None], Transcript]
    drafts: MicroBatcher[tuple[np.ndarray, str | None], Transcript]
    model: Any = None
    name: str = "batched"

    @staticmethod
    def batcher(name: str, transcriber: BatchTranscriber, window_s: float, max_batch: int,
                observe: Callable[[int, float], None] | None = None, **shedding: Any
                ) -> MicroBatcher[tuple[np.ndarray, str | None], Transcript]:
        """`shedding`: MicroBatcher's defer_to and stale_s, for the drafts of partial results."""
        def run(items: list[tuple[np.ndarray, str | None]]) -> list[Transcript]:
            return transcriber.transcribe_batch([a for a, _ in items], [p for _, p in items])

        return MicroBatcher(name, run, window_s, max_batch, observe, **shedding)

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> Transcript:
        return self.final.submit((audio, prompt))

    def draft(self) -> BatchedTranscriber:
        return BatchedTranscriber(self.drafts, self.drafts, self.model, f"{self.name}/draft")


class TextEncoder(Protocol):
    """The bundle's text encoder (export/serve/runtime.py TextEncoderSession)."""

    tokenizer: Any
    precision: str

    def __call__(self, inputs: list[tuple[str, str]]) -> np.ndarray: ...


@dataclass
class BatchedTextEncoder:
    """A session's text encoder: its (text, context) pairs are encoded with other sessions' in one
    ONNX Runtime call. The tokenizer is the shared encoder's (a session only reads it)."""

    batcher: MicroBatcher[list[tuple[str, str]], np.ndarray]
    tokenizer: Any
    precision: str

    @staticmethod
    def batcher_for(encoder: TextEncoder, window_s: float, max_batch: int,
                    observe: Callable[[int, float], None] | None = None
                    ) -> MicroBatcher[list[tuple[str, str]], np.ndarray]:
        def run(requests: list[list[tuple[str, str]]]) -> list[np.ndarray]:
            flat = [pair for request in requests for pair in request]
            vectors = encoder(flat)
            out, start = [], 0
            for request in requests:
                out.append(vectors[start:start + len(request)])
                start += len(request)
            return out

        return MicroBatcher("text-encoder", run, window_s, max_batch, observe)

    def __call__(self, inputs: list[tuple[str, str]]) -> np.ndarray:
        return self.batcher.submit(list(inputs))
