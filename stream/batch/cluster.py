"""Starting Ray for merc-batch, and stopping it: a quiet local instance sized to the workers, or a
connection to an existing cluster.

Locally, Ray gets exactly the CPUs the workers take (`num_cpus`), no dashboard, its own log lines
at ERROR only, a small object store (the objects are events and a few seconds of warm-up audio)
and optionally its own folder for session files. Usage statistics are off unless
RAY_USAGE_STATS_ENABLED says otherwise. ray.init replaces the process's SIGTERM handler with an
immediate exit; the caller's handler is put back, so that the caller decides how to stop.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_TEMP_DIR_CHARS", "RayConfig", "start_ray", "stop_ray"]

log = logging.getLogger(__name__)

MAX_TEMP_DIR_CHARS = 40
"""Ray puts Unix sockets under TEMP/session_<date>_<time>_<pid>/sockets/, and a socket's path holds
at most 107 bytes: about 64 of them are Ray's, the rest is the folder's."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how Ray runs."""

    address: str | None = None
    """An existing cluster (ray://host:10001, host:6379, or auto); None: a local instance."""
    cpus: int = 1
    """CPUs of a local instance (the workers' total)."""
    temp_dir: Path | None = None
    """A local instance's session files and logs (None: Ray's default, /tmp/ray)."""
    object_store_mb: int = 256
    """A local instance's object store (shared memory)."""
    worker_logs: bool = False
    """Show the workers' own log lines (model loading, warnings) on stderr."""


def start_ray(config: RayConfig) -> None:
    """Start a local Ray, or connect to `config.address`."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if config.address is not None:
            log.info("joining the Ray cluster at %s", config.address)
            ray.init(address=config.address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=config.worker_logs)
        else:
            log.info("starting a local Ray (%d CPU%s)", config.cpus, "" if config.cpus == 1 else "s")
            ray.init(num_cpus=config.cpus, object_store_memory=config.object_store_mb * 1024 * 1024,
                     _temp_dir=str(config.temp_dir) if config.temp_dir is not None else None,
                     include_dashboard=False, logging_level=logging.ERROR, log_to_driver=config.worker_logs)
    finally:
        if main and sigterm is not None:  # ray.init puts its own in (an immediate exit): the caller's wins
            signal.signal(signal.SIGTERM, sigterm)


def stop_ray() -> None:
    """Disconnect (and stop a local instance with its workers); safe when Ray never started."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
