"""The scheduling loop of merc-batch: skip what an earlier run finished, check the rest before any
model loads, replay them on Ray actors (one task per recording, each to the next free actor),
store each result as it arrives, and write the tables at the end.

A recording that cannot be read (a damaged WAV, a missing manifest, a bad gold file) fails its
check and is never sent to a worker; one whose replay raises, or whose worker dies, fails then.
Either way it is logged with its path and error, written to OUT/failures.jsonl, and the others go
on. Outputs are written as each recording finishes (store.py), so a run killed at any moment loses
at most the recordings in flight: run it again and it goes on from there.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from merc.models.errors import MercError
from merc.stream.batch.archive import output_names
from merc.stream.batch.cluster import RayConfig, start_ray, stop_ray
from merc.stream.batch.store import (
    FAILURES_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    RecordingOutput,
    read_json,
    write_json,
)
from merc.stream.batch.table import SCORES_TABLE, TURNS_TABLE, TableFormat, score_row, turn_rows, write_table
from merc.stream.batch.worker import ReplayWorker, describe_error
from merc.stream.recordings.recording import open_recording, read_gold, read_jsonl
from merc.stream.recordings.scoring import read_events, score_replay
from merc.stream.session.options import SessionOptions

__all__ = ["BatchError", "BatchSettings", "BatchSummary", "Outcome", "WorkerSpec", "run_batch"]

log = logging.getLogger(__name__)

WAIT_SECONDS = 1.0
"""The longest the loop waits on Ray at a time, so that Ctrl-C and SIGTERM are handled promptly."""


class BatchError(MercError, RuntimeError):
    """The run cannot go on: the output folder holds another configuration's outputs, or the workers
    cannot load the models (the message says which, and what to do)."""

    code = "batch_failed"


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker is built from: the session's options (thread counts capped per worker),
    the end-of-turn classifier's export, and speech to warm the models up on."""

    options: SessionOptions
    end_of_turn: Path | None = None
    warm_up_audio: np.ndarray | None = None


@dataclass(frozen=True)
class BatchSettings:
    """Where outputs go and how the work is spread."""

    out: Path
    workers: int | None = 1
    """Ray actors (None: as many as the cluster's CPUs hold, `cpus_per_worker` each)."""
    cpus_per_worker: int = 1
    ray: RayConfig = field(default_factory=RayConfig)
    table_format: TableFormat = "parquet"
    progress: bool = True
    """A tqdm bar over the recordings on stderr (when it is a terminal)."""


@dataclass
class Outcome:
    """What became of one recording in this run."""

    source: Path
    name: str
    status: str
    """done, damaged (replayed, with problems), skipped (done by an earlier run) or failed."""
    turns: int = 0
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """Its outputs are all there (this run's or an earlier one's)."""
        return self.status != "failed"

    @property
    def troubled(self) -> bool:
        """It failed, or it was damaged (now or when an earlier run replayed it)."""
        return self.status == "failed" or bool(self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {"recording": self.name, "source": str(self.source), "status": self.status, "turns": self.turns,
                "audio_seconds": self.audio_seconds, "processing_seconds": self.processing_seconds,
                "problems": self.problems, **(self.error or {})}


@dataclass
class BatchSummary:
    """Every recording's outcome, the tables written, and the run's wall-clock time."""

    outcomes: list[Outcome]
    tables: list[Path]
    wall_seconds: float

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def exit_status(self) -> int:
        """0 when every recording is done without problems, else 1."""
        return 1 if any(outcome.troubled for outcome in self.outcomes) else 0

    def line(self) -> str:
        """The run in one sentence, for the log."""
        counts = Counter(outcome.status for outcome in self.outcomes)
        damaged = sum(bool(o.problems) and o.status != "failed" for o in self.outcomes)
        audio = sum(o.audio_seconds for o in self.outcomes if o.status in ("done", "damaged"))
        return (f"{len(self.outcomes)} recordings: {counts['done'] + counts['damaged']} replayed, "
                f"{counts['skipped']} skipped (done before), {counts['failed']} failed, {damaged} damaged; "
                f"{sum(o.turns for o in self.outcomes if o.complete)} turns; {audio:.0f} s of audio replayed in "
                f"{self.wall_seconds:.0f} s")


def run_record(options: SessionOptions) -> dict[str, Any]:
    """What the outputs depend on: the session's options without thread counts (those change with
    --workers, the events do not)."""
    record = options.to_dict()
    record["tracker"].pop("threads", None)
    record["speakers"].pop("torch_threads", None)
    return {"options": record}


def check_run_file(out: Path, options: SessionOptions) -> None:
    """Claim `out` for these options, or refuse it when an earlier run wrote it with others."""
    out.mkdir(parents=True, exist_ok=True)
    record = run_record(options)
    path = out / RUN_FILE
    earlier = read_json(path)
    if isinstance(earlier, dict) and earlier.get("options") != record["options"]:
        before = earlier.get("options")
        before = before if isinstance(before, dict) else {}
        stages = sorted(key for key, value in record["options"].items() if before.get(key) != value)
        raise BatchError(f"{path}: {out} holds outputs made with other options ({', '.join(stages) or 'format'}); "
                         f"give another --out, or the same options as before")
    if earlier != record:
        write_json(path, record)


class FailureLog:
    """OUT/failures.jsonl: one line per failed or damaged recording of this run, flushed as it comes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "w", encoding="utf-8")

    def add(self, outcome: Outcome) -> None:
        import json

        self._file.write(json.dumps(outcome.as_dict(), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def precheck(directory: Path) -> dict[str, Any] | None:
    """What stops a recording from being replayed, found before any model loads (the manifest, the
    WAV header, the gold file), or None."""
    try:
        recording = open_recording(directory)
        if recording.gold_path.exists():
            read_gold(recording)
    except Exception as err:
        return describe_error(err)
    return None


def scores_of(directory: Path, output: RecordingOutput) -> dict[str, Any] | None:
    """merc-eval --replay's scores of the stored events against the recording's gold (None without gold)."""
    recording = open_recording(directory)
    if not recording.gold_path.exists():
        return None
    return score_replay(read_gold(recording), read_events(output.events)).as_dict()


class Batch:
    """One run: the outputs, the failure log, the progress bar, and what to do with each result."""

    def __init__(self, recordings: Sequence[Path], settings: BatchSettings) -> None:
        self.settings = settings
        out = settings.out
        names = output_names(recordings, lambda name: RecordingOutput(out / name).claimed_by())
        self.outputs = {source: RecordingOutput(out / names[source]) for source in recordings}
        self.outcomes: dict[Path, Outcome] = {}
        self.failures = FailureLog(out / FAILURES_FILE)
        from tqdm import tqdm

        self.bar = tqdm(total=len(recordings), unit="rec", desc="recordings", file=sys.stderr,
                        disable=None if settings.progress else True, dynamic_ncols=True)  # None: on a terminal

    def record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.source] = outcome
        if outcome.troubled:
            self.failures.add(outcome)
        counts = Counter(o.status for o in self.outcomes.values())
        self.bar.set_postfix(done=counts["done"] + counts["damaged"], skipped=counts["skipped"],
                             failed=counts["failed"], refresh=False)
        self.bar.update()

    def triage(self) -> list[Path]:
        """Skip what is done, fail what does not pass its check; the recordings left to replay."""
        todo = []
        for source, output in self.outputs.items():
            result = output.completed(source)
            if result is not None:
                outcome = Outcome(source, output.name, "skipped", turns=int(result.get("turns", 0)),
                                  audio_seconds=float(result.get("audio_seconds", 0.0)),
                                  processing_seconds=float(result.get("processing_seconds", 0.0)),
                                  problems=list(result.get("problems", [])))
                damaged = f"; damaged: {'; '.join(outcome.problems)}" if outcome.problems else ""
                log.info("%s: skipped: done by an earlier run (%d turns%s; %s)", output.name, outcome.turns, damaged,
                         source)
                self.record(outcome)
                continue
            problem = precheck(source)
            if problem is not None:
                self.fail(source, problem)
                continue
            output.claim(source)
            todo.append(source)
        return todo

    def fail(self, source: Path, error: dict[str, Any]) -> None:
        name = self.outputs[source].name
        log.error("%s: failed: %s (%s)", name, error["error"], source)
        self.record(Outcome(source, name, "failed", error=error))

    def store(self, source: Path, reply: dict[str, Any]) -> None:
        """Keep a worker's reply: a failure in the log, a replay as events, scores and result."""
        if reply["status"] == "failed":
            self.fail(source, {key: value for key, value in reply.items() if key != "status"})
            return
        output = self.outputs[source]
        try:
            output.write_events(reply["events"])
            output.write_scores(scores_of(source, output))
        except MercError as err:
            self.fail(source, describe_error(err))
            return
        outcome = Outcome(source, output.name, reply["status"], turns=reply["turns"],
                          audio_seconds=reply["audio_seconds"], processing_seconds=reply["processing_seconds"],
                          problems=reply["problems"])
        output.finish({**outcome.as_dict(), "worker": reply.get("worker"),
                       "finished": datetime.now(UTC).isoformat(timespec="seconds")})
        speed = outcome.audio_seconds / outcome.processing_seconds if outcome.processing_seconds else 0.0
        log.info("%s: %d turns from %.1f s of audio in %.1f s (%.1fx real time)", output.name, outcome.turns,
                 outcome.audio_seconds, outcome.processing_seconds, speed)
        for problem in outcome.problems:
            log.error("%s: damaged: %s (%s)", output.name, problem, source)
        self.record(outcome)

    def write_tables(self) -> list[Path]:
        """The per-turn table of every complete recording (this run's and earlier runs'), and the
        scores table of those with gold."""
        turns: list[dict[str, Any]] = []
        scores: list[dict[str, Any]] = []
        for source, output in self.outputs.items():
            outcome = self.outcomes.get(source)
            if outcome is None or not outcome.complete:
                continue
            turns.extend(turn_rows(output.name, read_jsonl(output.events)))
            stored = read_json(output.scores)
            if isinstance(stored, dict):
                scores.append(score_row(output.name, stored))
        out, fmt = self.settings.out, self.settings.table_format
        tables = [write_table(turns, out / TURNS_TABLE, fmt)]
        if scores:
            tables.append(write_table(scores, out / SCORES_TABLE, fmt, turns=False))
        return tables

    def close(self) -> None:
        self.bar.close()
        self.failures.close()


def dispatch(todo: Sequence[Path], spec: WorkerSpec, settings: BatchSettings, batch: Batch) -> None:
    """Replay `todo` on Ray: one actor per worker (at most one per recording), each loading the
    models once; every recording is one task, given to the next actor that is free. A worker that
    dies fails the recording it held and is replaced."""
    import ray
    from ray.exceptions import RayError

    remote = ray.remote(ReplayWorker).options(num_cpus=settings.cpus_per_worker, max_restarts=0)
    pending = deque(todo)
    inflight: dict[Any, tuple[Any, Path | None]] = {}  # a task -> its actor, and its recording (None: loading)

    def start_worker() -> None:
        actor: Any = remote.remote(spec.options, spec.end_of_turn, spec.warm_up_audio, settings.cpus_per_worker)
        inflight[actor.ready.remote()] = (actor, None)

    def give_work(actor: Any) -> None:
        if pending:
            source = pending.popleft()
            inflight[actor.replay.remote(str(source), batch.outputs[source].name)] = (actor, source)

    workers = settings.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // settings.cpus_per_worker)
    workers = min(workers, len(todo))
    log.info("replaying %s on %s of %s each (loading the models)", _count(len(todo), "recording"),
             _count(workers, "worker"), _count(settings.cpus_per_worker, "CPU"))
    for _ in range(workers):
        start_worker()
    while inflight:
        finished, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_SECONDS)
        for ref in finished:
            actor, source = inflight.pop(ref)
            try:
                reply = ray.get(ref)
            except RayError as err:  # the actor's process died (killed, out of memory, a crash)
                why = " ".join(str(err).split())[:600]  # Ray's report, on one line
                if source is None:
                    raise BatchError(f"a worker died while loading the models: {why}") from err
                batch.fail(source, {"error": f"the worker died while replaying it: {why}", "code": "worker_died"})
                if pending:
                    start_worker()
                continue
            if source is None:
                _started(reply)
            else:
                batch.store(source, reply)
            give_work(actor)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _started(reply: dict[str, Any]) -> None:
    """A worker's report once loaded: fine, or the error every worker would hit (all load the same)."""
    error = reply.get("error")
    if error:
        if error.get("code") == "internal":
            raise RuntimeError(f"a worker could not load the models: {error['error']}\n{error.get('traceback', '')}")
        raise BatchError(f"a worker could not load the models: {error['error']}")
    log.info("worker (pid %s) loaded the models in %.1f s; %s", reply["pid"], reply["load_seconds"],
             _count(reply["threads"], "thread"))


def run_batch(recordings: Sequence[Path], spec: WorkerSpec, settings: BatchSettings) -> BatchSummary:
    """Replay every recording into `settings.out` (store.py's layout), resuming an earlier run there.
    Ray starts only when something is left to replay, and is stopped however the run ends."""
    started = time.perf_counter()
    check_run_file(settings.out, spec.options)
    batch = Batch(recordings, settings)
    try:
        todo = batch.triage()
        if todo:
            config = settings.ray
            if config.address is None:  # a local Ray no bigger than the workers the recordings need
                config = replace(config, cpus=min(config.cpus, len(todo) * settings.cpus_per_worker))
            try:
                start_ray(config)
                dispatch(todo, spec, settings, batch)
            finally:
                stop_ray()
        tables = batch.write_tables()
    finally:
        batch.close()
    outcomes = [batch.outcomes[source] for source in recordings]
    summary = BatchSummary(outcomes, tables, time.perf_counter() - started)
    write_json(settings.out / SUMMARY_FILE, {
        "line": summary.line(), "exit_status": summary.exit_status, "wall_seconds": round(summary.wall_seconds, 2),
        "tables": [table.name for table in tables], "recordings": [o.as_dict() for o in outcomes]})
    return summary

