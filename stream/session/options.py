"""What a session is configured with: one small frozen dataclass per stage, built by the command
line (merc.cli.common, the only code that parses arguments) or by code.

Every options object has `to_dict()`: JSON-ready and safe to show a client (the `hello` event
echoes a session's options, and merc-live --record keeps them in the recording's manifest), so it
never holds the server's token, and directories appear by name, not by absolute path.
Seconds are seconds of audio, not of compute.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from merc.stream.turns.segmenter import SegmenterOptions

__all__ = [
    "AsrOptions", "RecordingOptions", "SegmenterOptions", "ServerOptions", "SessionOptions", "SpeakerOptions",
    "TrackerOptions", "options_dict",
]

AsrBackend = Literal["faster-whisper", "transformers"]
AsrWindow = Literal["full", "turn"]
Engine = Literal["onnx", "torch"]
Precision = Literal["fp32", "int8", "fp16"]


def options_dict(options: Any) -> dict[str, Any]:
    """`dataclasses.asdict` made JSON-ready and shareable: paths become their last component
    (a directory's name, never where it lives), tuples lists."""
    return {name: _shareable(value) for name, value in asdict(options).items()}


def _shareable(value: Any) -> Any:
    if isinstance(value, Path):
        return value.name
    if isinstance(value, tuple | list):
        return [_shareable(v) for v in value]
    if isinstance(value, dict):
        return {k: _shareable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class TrackerOptions:
    """Which emotion model runs, and on what."""

    model_dir: Path | None = None
    """A merc-train run directory (None: the bundled default model); served from its cached bundle."""
    bundle: Path | None = None
    """A bundle written by merc-export, served directly (replaces `model_dir`; no torch)."""
    engine: Engine = "onnx"
    """onnx: the bundle on ONNX Runtime; torch: the PyTorch DialogueTracker on `model_dir`."""
    precision: Precision = "fp32"
    """Which text encoder of the bundle runs (onnx only)."""
    threads: int | None = None
    """ONNX Runtime threads for the text encoder (None: one per core)."""
    device: str | None = None
    """auto, cpu or cuda (None: auto for onnx, cpu for torch)."""

    def to_dict(self) -> dict[str, Any]:
        return options_dict(self)


@dataclass(frozen=True)
class AsrOptions:
    """Speech recognition of each turn."""

    backend: AsrBackend = "faster-whisper"
    model: str = "tiny.en"
    """A Whisper size name, a hub id or a local directory."""
    device: str = "auto"
    window: AsrWindow = "full"
    """faster-whisper's encoder window: full = Whisper's 30 s, turn = the turn plus 3 s."""
    prompt_words: int = 32
    """Prompt each turn with the last N words of the earlier turns' transcripts (0 = no prompt)."""
    words: bool = False
    """Per-word probabilities (and, with faster-whisper, times) in each transcript."""
    min_word_probability: float = 0.0
    """Drop words less probable than this (0 = keep every word)."""
    repetition_penalty: float = 1.0
    """The decoder's penalty on tokens already decoded in the turn (1 = off)."""
    no_repeat_ngram_size: int = 0
    """The decoder never repeats a token n-gram of this size within a turn (0 = off)."""
    max_repeats: int = 3
    """A word n-gram repeated more than this many times in a row is cut to one (0 = off)."""
    compression_ratio_threshold: float | None = 2.4
    """A transcript that zlib compresses more than this is a loop and is dropped (None = off)."""
    logprob_threshold: float | None = None
    """A transcript whose mean token log-probability is below this is dropped (None = off)."""

    def to_dict(self) -> dict[str, Any]:
        data = options_dict(self)
        if _is_path(self.model):  # a local model directory: by name only
            data["model"] = Path(self.model).name
        return data


def _is_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


@dataclass(frozen=True)
class SpeakerOptions:
    """Voice embedding and speaker clustering."""

    max_speakers: int | None = None
    """A hint: never more speaker labels than this (None: discovered as they talk)."""
    max_clusters: int = 32  # = merc.stream.turns.speakers.DEFAULT_MAX_CLUSTERS (not imported: numpy)
    """Without `max_speakers`, never more speakers than this in a session (a bound on memory, not a
    hint): at the cap, a voice that matches no speaker is unknown (stream/turns/speakers.py)."""
    device: str = "auto"
    """The voice encoder's device: auto (the GPU when there is one), cpu or cuda."""
    embedder: str = "resemblyzer"
    """The voice encoder (stream/turns/voice_profiles.py): resemblyzer or campp (the commands
    resolve their default, auto, to one of them). Its profile's thresholds join turns to speakers;
    the segmenter's change thresholds come from it too (merc.cli.common.segmenter_options)."""
    torch_threads: int | None = 1
    """PyTorch's CPU threads (process-wide: the voice encoders are its only users in a session).
    One is faster on 2 cores: the encoders run beside Whisper, which has its own threads, and
    beside each other (segmenter and attributor); 2 threads made replays 10-40 % slower
    (see the README's conversation benchmark). None: PyTorch's default."""

    def to_dict(self) -> dict[str, Any]:
        return options_dict(self)


@dataclass(frozen=True)
class ServerOptions:
    """The WebSocket event server (and the overlay on its port)."""

    host: str = "127.0.0.1"
    port: int = 8765
    """0 = any free port."""
    token: str | None = field(default=None, repr=False)
    """What clients must present; never echoed (not in `to_dict`, not in repr)."""
    allow_origins: tuple[str, ...] = ()
    max_connections: int = 256
    """Open WebSocket connections at most (beyond: HTTP 503 at the handshake)."""

    def to_dict(self) -> dict[str, Any]:
        data = options_dict(self)
        del data["token"]
        return data


@dataclass(frozen=True)
class RecordingOptions:
    """Keeping the session (audio.wav, manifest.json, events.jsonl) for merc-replay."""

    directory: Path | None = None
    """Where to record (None: no recording)."""

    def to_dict(self) -> dict[str, Any]:
        return options_dict(self)


@dataclass(frozen=True)
class SessionOptions:
    """Everything a session is assembled from (stream/session/build.py)."""

    tracker: TrackerOptions = TrackerOptions()
    asr: AsrOptions = AsrOptions()
    speakers: SpeakerOptions = SpeakerOptions()
    segmenter: SegmenterOptions = SegmenterOptions()
    server: ServerOptions | None = None
    """None: the session is not served."""
    recording: RecordingOptions | None = None
    """None: the session is not recorded."""

    def to_dict(self) -> dict[str, Any]:
        """Each stage's options by name (a stage left out is None); what `hello` echoes."""
        return {"tracker": self.tracker.to_dict(), "asr": self.asr.to_dict(), "speakers": self.speakers.to_dict(),
                "segmenter": self.segmenter.to_dict(),
                "server": self.server.to_dict() if self.server is not None else None,
                "recording": self.recording.to_dict() if self.recording is not None else None}
