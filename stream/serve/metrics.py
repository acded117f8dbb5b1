"""merc-serve's metrics in Prometheus text format (prometheus_client, on a registry of this server's
own, not the library's global one): sessions, queued audio and requests, per-stage latency of
every turn, and the batches the shared models ran.

    merc_sessions                      sessions open now
    merc_sessions_started_total        sessions started
    merc_sessions_refused_total        handshakes refused at --max-sessions
    merc_audio_queued_seconds          audio received but not yet read, all sessions together
    merc_audio_dropped_seconds_total   audio dropped because a session fell --max-queued-seconds behind
    merc_video_frames_total            camera frames received (JPEG; read by each session's face tracker)
    merc_batch_queue_depth{model}      requests waiting for a batch
    merc_batch_size{model}             histogram: requests per batch
    merc_batch_seconds{model}          histogram: time per batch
    merc_partials_shed                 partial-result decodes skipped under load (batching.py)
    merc_turns_total                   final turns published
    merc_turn_stage_seconds{stage}     histogram: each stage of a turn (timings_ms of the turn event;
                                       stage "total" is end of speech -> event)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "ServeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Gauge("merc_sessions", "Sessions open now", registry=r)
        self.sessions_started = Counter("merc_sessions_started", "Sessions started", registry=r)
        self.refused = Counter("merc_sessions_refused", "Sessions refused at --max-sessions", registry=r)
        self.queued = Gauge("merc_audio_queued_seconds", "Audio received but not yet read, all sessions", registry=r)
        self.dropped = Counter("merc_audio_dropped_seconds", "Audio dropped by sessions that fell behind",
                               registry=r)
        self.video = Counter("merc_video_frames", "Camera frames received", registry=r)
        self.depth = Gauge("merc_batch_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        self.batch_size = Histogram("merc_batch_size", "Requests per batch", ["model"], buckets=_BATCH_SIZES,
                                    registry=r)
        self.batch_seconds = Histogram("merc_batch_seconds", "Time per batch", ["model"], buckets=_STAGE_BUCKETS,
                                       registry=r)
        self.turns = Counter("merc_turns", "Final turns published", registry=r)
        self.shed = Gauge("merc_partials_shed", "Partial-result decodes skipped under load so far", registry=r)
        self.stage = Histogram("merc_turn_stage_seconds", "Each stage of a turn; total = end of speech to event",
                               ["stage"], buckets=_STAGE_BUCKETS, registry=r)

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        size, seconds = self.batch_size.labels(model), self.batch_seconds.labels(model)

        def observe(n: int, took: float) -> None:
            size.observe(n)
            seconds.observe(took)

        return observe

    def observe_event(self, event: Mapping[str, Any]) -> None:
        """Count a published event (a final turn's stages)."""
        if event.get("type") != "turn":
            return
        self.turns.inc()
        for stage, ms in (event.get("timings_ms") or {}).items():
            if isinstance(ms, int | float):
                self.stage.labels(stage).observe(ms / 1000)

    def render(self, queued_seconds: float, depth: Mapping[str, int], partials_shed: int = 0) -> bytes:
        """The exposition, with the gauges read now."""
        self.queued.set(queued_seconds)
        self.shed.set(partials_shed)
        for model, n in depth.items():
            self.depth.labels(model).set(n)
        return generate_latest(self.registry)
