"""Event consumers that may block (a terminal, a pipe, a file) behind bounded queues, so that a
consumer that stops reading never stalls the pipeline (and, live, never makes capture drop audio).

`EventBus.publish` calls every subscriber on the pipeline thread. A subscriber that writes to
stdout blocks as soon as the pipe is full (`merc-replay --json | sleep 600` after ~100 turns); one
that writes a file blocks while the disk does. A `QueuedSink` is the subscriber instead: calling it
only appends the event to a bounded queue (it never blocks, never raises), and a thread of the
sink's own hands the events to the real consumer, one at a time and in order.

Policy when the queue is full (the consumer is stalled): the new event is not queued, so what the
consumer does get is always in order (a gap, never a reordering). The first time, a line says so
(on the log, from a short-lived thread of its own, so that a stalled stderr cannot stall the
publisher either); `close` ends with the total ("stdout is not being read: 12 events skipped").

    printer (stdout)   capacity PRINTER_CAPACITY; a reader that does not keep up is skipped
    events file        capacity FILE_CAPACITY, far more than a healthy disk ever lets pile up, so
                       normally nothing is lost; a writer stuck that long drops (counted, reported)

At the end of a run `close(timeout)` lets the consumer finish what is queued, waiting at most
`timeout` seconds (a normal run loses nothing, and its events file is complete); what is still
queued then is counted as dropped and never delivered later.

`stream_writer` writes text to a stream through its file descriptor, so that a write blocked on a
full pipe does not hold the stream's lock (at exit, the interpreter flushes sys.stdout and would
otherwise wait for that lock, then abort).
"""
from __future__ import annotations

import io
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TextIO, TypeVar

__all__ = ["CLOSE_TIMEOUT", "FILE_CAPACITY", "PRINTER_CAPACITY", "QueuedSink", "events_file_sink", "stream_writer",
           "write_all"]

log = logging.getLogger(__name__)

PRINTER_CAPACITY = 1000
"""Events waiting for stdout (on top of what the pipe itself holds, ~100 turns on Linux)."""
FILE_CAPACITY = 10000
"""Events waiting for the events file: as many as the bus keeps for reconnecting clients."""
CLOSE_TIMEOUT = 5.0
"""Seconds `close` waits for the consumer to finish what is queued."""

T = TypeVar("T")


class QueuedSink(Generic[T]):
    """A bus subscriber that never blocks: items queue (at most `capacity`) and a thread of the
    sink's own passes them to `deliver`, in order.

    `name` names the consumer in reports ("stdout", a file's path); `stalled` says what a full
    queue means ("is not being read") and `lost` what happens to items that do not fit
    ("skipped", "dropped"). `report` gets each line (default: a warning on the log). An exception
    from `deliver` is reported once (with how many items failed at `close`) and the sink goes on
    with the next item.
    """

    def __init__(self, deliver: Callable[[T], None], *, name: str, capacity: int, stalled: str = "is not being read",
                 lost: str = "skipped", report: Callable[[str], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self.stalled = stalled
        self.lost = lost
        self.delivered = 0
        """Items `deliver` took."""
        self.dropped = 0
        """Items never delivered: the queue was full, or `close` left them (or came after them)."""
        self.failed = 0
        """Items `deliver` raised on."""
        self._deliver = deliver
        self._report = report if report is not None else log.warning
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closing = False
        self._busy = False
        self._warned_full = False
        self._warned_failed = False
        self._thread = threading.Thread(target=self._drain, name=f"sink {name}", daemon=True)
        self._thread.start()

    def __call__(self, item: T) -> None:
        """Queue `item` (what the bus calls; returns at once, whatever the consumer is doing)."""
        with self._lock:
            if not self._closing and len(self._items) < self.capacity:
                self._items.append(item)
                self._ready.notify()
                return
            self.dropped += 1
            warn = not self._closing and not self._warned_full
            self._warned_full = self._warned_full or warn
        if warn:
            self._report_soon(f"{self.name} {self.stalled}: {self.capacity} events wait already; "
                              f"further events are {self.lost} until it catches up")

    @property
    def pending(self) -> int:
        """Items queued or being delivered."""
        with self._lock:
            return len(self._items) + self._busy

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Wait (at most `timeout` seconds) until everything queued so far is delivered; True if it
        was. The sink stays open."""
        with self._lock:
            return self._ready.wait_for(lambda: not self._items and not self._busy, timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Deliver what is queued, waiting at most `timeout` seconds; True when all of it was. What
        is left is counted as dropped (and never delivered); later items are dropped too. Reports
        the sink's losses, if any, in one line each."""
        with self._lock:
            self._closing = True
            self._ready.notify_all()
        self._thread.join(timeout)
        with self._lock:
            left = len(self._items) + self._busy
            self._items.clear()  # a consumer stuck in `deliver` gets nothing more once it returns
            self.dropped += left
            dropped, failed = self.dropped, self.failed
        if dropped:
            self._report(f"{self.name} {self.stalled}: {dropped} events {self.lost}")
        if failed:
            self._report(f"{self.name}: {failed} events could not be written")
        return left == 0

    def _drain(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._closing:
                    self._ready.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self._deliver(item)
            except Exception as err:  # the consumer's failure is reported, never the publisher's problem
                with self._lock:
                    self.failed += 1
                    warn = not self._warned_failed
                    self._warned_failed = True
                if warn:
                    self._report_soon(f"{self.name}: {type(err).__name__}: {err}; events that cannot be written "
                                      "are skipped")
            else:
                with self._lock:
                    self.delivered += 1
            finally:
                with self._lock:
                    self._busy = False
                    if not self._items:
                        self._ready.notify_all()  # for `flush`

    def _report_soon(self, message: str) -> None:
        """Report from a thread of its own: the log may go to the very pipe that is stalled."""
        threading.Thread(target=self._report, args=(message,), name=f"sink {self.name} report", daemon=True).start()


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a file descriptor (os.write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def stream_writer(out: TextIO) -> Callable[[str], None]:
    """Writes text to `out` as it comes: through its file descriptor when it has one (encoded as
    `out` encodes, unencodable characters replaced), else with `out.write` and `flush`.

    Writing to the descriptor holds no lock of `out`'s while a write blocks (a pipe nobody reads),
    and leaves nothing buffered in `out` for the interpreter to flush at exit."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = -1
    if fd < 0:
        def write_stream(text: str) -> None:
            out.write(text)
            out.flush()

        return write_stream
    out.flush()  # what was written through `out` before goes first
    encoding = getattr(out, "encoding", None) or "utf-8"

    def write_fd(text: str) -> None:
        write_all(fd, text.encode(encoding, errors="replace"))

    return write_fd


def events_file_sink(deliver: Callable[[dict[str, Any]], None], path: str | os.PathLike[str], *,
                     capacity: int = FILE_CAPACITY,
                     report: Callable[[str], None] | None = None) -> QueuedSink[dict[str, Any]]:
    """`deliver` (which writes one event to the events file at `path`) behind a queue deep enough
    that a working disk never fills it; events that find it full are dropped, counted and reported.
    `deliver` should write through the file descriptor (`write_all`), unbuffered, so that a write
    stuck on the disk holds no lock that closing the file would wait for."""
    return QueuedSink(deliver, name=str(path), capacity=capacity, stalled="is not being written (a stalled disk?)",
                      lost="dropped", report=report)
