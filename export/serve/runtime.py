"""Serving from a bundle with ONNX Runtime: the tracker without torch, transformers or merc.models.

    tracker = BundleTracker.load("bundles/meld")
    result = tracker.track("Ross", "We were on a break!")   # -> TurnResult

`BundleTracker` has `DialogueTracker`'s API (`track`, `revise`, `reset`, `labels`) and gives the same
probabilities to 1e-4 (checked by `merc-export` on real dialogues when it writes the bundle).

Execution provider: CUDAExecutionProvider when the installed onnxruntime offers it (the
`onnxruntime-gpu` distribution), else CPUExecutionProvider. An environment should hold exactly
one of `onnxruntime` / `onnxruntime-gpu`: both install the same `onnxruntime` module, and
whichever was installed last wins. faster-whisper depends on `onnxruntime`; on a GPU machine
install it first, then `pip uninstall onnxruntime && pip install onnxruntime-gpu`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from merc.export.serve.bundle import (
    DAG_FILE,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    BundleError,
    Manifest,
    TurnTokenizer,
    read_manifest,
)
from merc.models.data.turns import (
    MODALITIES,
    REVISABLE_TURNS,
    UNKNOWN_SPEAKER,
    ConversationSoFar,
    RevisableTurns,
    TurnResult,
)

DAG_INPUTS = ("text", "audio", "face", "mask", "speaker", "window_speakers", "window_states", "window_count")
DAG_OUTPUTS = ("probs", "new_window_speakers", "new_window_states", "new_window_count")

Window = tuple[np.ndarray, np.ndarray, np.ndarray]
"""The DAG step's state: window_speakers (P,), window_states (L, P, H), window_count ()."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise BundleError("serving a bundle needs ONNX Runtime: pip install onnxruntime "
                          "(or onnxruntime-gpu on a CUDA machine)") from err
    return onnxruntime


def providers(device: str = "auto") -> list[str]:
    """Execution providers for `device`: auto (CUDA when available), cuda or cpu."""
    available = _onnxruntime().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise BundleError("device cuda asked for, but this onnxruntime has no CUDAExecutionProvider "
                          "(install onnxruntime-gpu instead of onnxruntime)")
    return ["CPUExecutionProvider"]


def open_session(path: Path, device: str = "auto", threads: int | None = None, spin: bool = False):
    """An InferenceSession for one ONNX file; a corrupt or truncated file is a BundleError naming it.

    `threads`: intra-op threads (None: ONNX Runtime's default, one per core). `spin`: let idle
    pool threads busy-wait; off by default because serving shares the CPU with capture, ASR and
    the other session, where spinning threads slow everyone down.
    """
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))
    except Exception as err:  # onnxruntime raises its own exception types, not a common base
        raise BundleError(f"{path}: not a loadable ONNX model (corrupt or truncated?): {err}") from err


def _shape(session, name: str, outputs: bool = False) -> list:
    args = session.get_outputs() if outputs else session.get_inputs()
    return next(a.shape for a in args if a.name == name)


def _check_names(session, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    have_in = tuple(a.name for a in session.get_inputs())
    have_out = tuple(a.name for a in session.get_outputs())
    if set(have_in) != set(inputs) or not set(outputs) <= set(have_out):
        raise BundleError(f"{path}: graph has inputs {have_in} and outputs {have_out}; expected {inputs} -> {outputs}")


def check_dag_session(session, manifest: Manifest) -> None:
    """The DAG graph's shapes agree with the manifest: labels, feature dims, window."""
    path = manifest.file(DAG_FILE)
    _check_names(session, path, DAG_INPUTS, DAG_OUTPUTS)
    n_out = _shape(session, "probs", outputs=True)
    if n_out != [len(manifest.labels)]:
        raise BundleError(f"{path}: the graph outputs {n_out[0] if n_out else '?'} class probabilities but "
                          f"{manifest.path} lists {len(manifest.labels)} labels")
    for m in MODALITIES:
        got = _shape(session, m)
        if got != [manifest.dims[m]]:
            raise BundleError(f"{path}: {m} input has shape {got} but {manifest.path} says dim {manifest.dims[m]}")
    window = [manifest.layers, manifest.max_predecessors, manifest.hidden]
    got = _shape(session, "window_states")
    if got != window:
        raise BundleError(f"{path}: window_states has shape {got} but {manifest.path} says "
                          f"(layers, max_predecessors, hidden) = {tuple(window)}")


def check_encoder_session(session, manifest: Manifest, path: Path) -> None:
    _check_names(session, path, ENCODER_INPUTS, (ENCODER_OUTPUT,))
    got = _shape(session, ENCODER_OUTPUT, outputs=True)
    if got[-1] != manifest.encoder["dim"]:
        raise BundleError(f"{path}: the encoder outputs vectors of dim {got[-1]} but {manifest.path} says "
                          f"{manifest.encoder['dim']}")


class TextEncoderSession:
    """Turns to vectors: `tokenizers` + the exported encoder."""

    def __init__(self, manifest: Manifest, precision: str = "fp32", device: str = "auto",
                 threads: int | None = None) -> None:
        path = manifest.encoder_file(precision)
        self.session = open_session(path, device, threads)
        check_encoder_session(self.session, manifest, path)
        tokenizer_file = manifest.file(manifest.encoder.get("tokenizer", "tokenizer.json"))
        self.tokenizer = TurnTokenizer(tokenizer_file, int(manifest.encoder["max_length"]),
                                       int(manifest.encoder["context_turns"]),
                                       bool(manifest.encoder.get("speaker_markers", False)))
        self.precision = precision

    def __call__(self, inputs: list[tuple[str, str]]) -> np.ndarray:
        """float32 (N, dim) for (text, context) pairs."""
        out = self.session.run([ENCODER_OUTPUT], self.tokenizer.encode(inputs))[0]
        return out.astype(np.float32, copy=False)


class DAGStepSession:
    """One incremental DAG step in ONNX Runtime, holding the window between calls.

    One thread by default: the step is a few small matrix products (0.5 ms p50 on one core for
    hidden 300, window 16); a thread pool only adds hand-over cost.
    """

    def __init__(self, manifest: Manifest, device: str = "auto", threads: int | None = 1) -> None:
        self.session = open_session(manifest.file(DAG_FILE), device, threads)
        check_dag_session(self.session, manifest)
        self.manifest = manifest
        self._zeros = {m: np.zeros(manifest.dims[m], dtype=np.float32) for m in MODALITIES}
        self.reset()

    def reset(self) -> None:
        m = self.manifest
        self.window_speakers = np.full(m.max_predecessors, UNKNOWN_SPEAKER, dtype=np.int64)
        self.window_states = np.zeros((m.layers, m.max_predecessors, m.hidden), dtype=np.float32)
        self.window_count = np.array(0, dtype=np.int64)

    @property
    def window(self) -> Window:
        """The state the next step starts from (ONNX Runtime returns new arrays on every step, so a
        window kept from earlier is never changed by later steps)."""
        return self.window_speakers, self.window_states, self.window_count

    @window.setter
    def window(self, window: Window) -> None:
        self.window_speakers, self.window_states, self.window_count = window

    def step(self, features: dict[str, np.ndarray], speaker: int) -> np.ndarray:
        """Class probabilities (C,) of a new turn; `features` holds the present modalities only."""
        probs, self.window = self.step_from(self.window, features, speaker)
        return probs

    def step_from(self, window: Window, features: dict[str, np.ndarray], speaker: int) -> tuple[np.ndarray, Window]:
        """One step from `window` (not the session's own): class probabilities and the window after."""
        feeds: dict[str, np.ndarray] = {m: np.asarray(features[m], dtype=np.float32) if m in features
                                        else self._zeros[m] for m in MODALITIES}
        speakers, states, count = window
        feeds.update(mask=np.array([m in features for m in MODALITIES]), speaker=np.array(speaker, dtype=np.int64),
                     window_speakers=speakers, window_states=states, window_count=count)
        probs, *after = self.session.run(DAG_OUTPUTS, feeds)
        return probs, (after[0], after[1], after[2])


class BundleTracker:
    """Emotion of each new turn given the conversation so far, served from a bundle."""

    def __init__(self, manifest: Manifest, encoder: TextEncoderSession, dag: DAGStepSession,
                 revisable_turns: int = REVISABLE_TURNS) -> None:
        self.manifest = manifest
        self.encoder = encoder
        self.dag = dag
        self._history: RevisableTurns[Window] = RevisableTurns(revisable_turns)
        self.reset()

    @classmethod
    def load(cls, bundle_dir: str | Path, device: str = "auto", precision: str = "fp32",
             threads: int | None = None, verify: bool = True) -> BundleTracker:
        """Open a bundle written by merc-export. `precision` picks the text encoder variant
        (fp32, fp16 or int8); `threads` is the text encoder's intra-op thread count (the DAG step
        runs on one); `verify` checks every file's sha256 first."""
        manifest = read_manifest(bundle_dir, verify=verify)
        encoder = TextEncoderSession(manifest, precision, device, threads)
        dag = DAGStepSession(manifest, device)
        return cls(manifest, encoder, dag)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new dialogue."""
        self.dag.reset()
        self._so_far = ConversationSoFar(self.encoder.tokenizer.context_turns, self.encoder.tokenizer.speaker_markers)
        self._history.clear()

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model reads (the others are always passed as missing)."""
        return self.manifest.trained_modalities

    def track(self, speaker: str | None, text: str, extra: dict[str, np.ndarray] | None = None) -> TurnResult:
        """Add a turn (speaker may be None when unknown) and return its emotion.

        `extra` holds the turn's audio and face vectors when they were observed; a modality the
        model was not trained on is ignored, and an absent one is marked missing.
        """
        started = time.perf_counter()
        features = self._features(speaker, text, extra)
        encoded = time.perf_counter()
        before = self.dag.window
        probs = self.dag.step(features, self._so_far.speaker_id(speaker))
        done = time.perf_counter()
        result = self._so_far.result(speaker, text, self.labels, [float(p) for p in probs],
                                     tuple(m for m in MODALITIES if m in features),
                                     {"text_encoder": 1000 * (encoded - started), "graph": 1000 * (done - encoded)})
        self._history.keep(result, features, before)
        return result

    def preview(self, speaker: str | None, text: str, extra: dict[str, np.ndarray] | None = None) -> TurnResult:
        """The emotion the next turn would get if it ended now, committing nothing: a graph step
        from the current window whose result is dropped (a turn still in progress)."""
        started = time.perf_counter()
        features = self._features(speaker, text, extra)
        encoded = time.perf_counter()
        probs, _ = self._step(self.dag.window, features, self._so_far.peek_speaker_id(speaker))
        done = time.perf_counter()
        return self._so_far.preview(speaker, text, self.labels, probs, tuple(m for m in MODALITIES if m in features),
                                    {"text_encoder": 1000 * (encoded - started), "graph": 1000 * (done - encoded)})

    def _features(self, speaker: str | None, text: str, extra: dict[str, np.ndarray] | None) -> dict[str, Any]:
        features = {}
        if text.strip() and "text" in self.modalities:
            features["text"] = self.encoder([self._so_far.encoder_input(text, speaker)])[0]
        for name, vector in (extra or {}).items():
            if name in self.modalities and name != "text" and vector is not None:
                features[name] = vector
        return features

    def revise(self, speakers: Mapping[int, str | None]) -> list[TurnResult]:
        """Correct the speakers of earlier turns (turn index, as `track` returned it -> speaker) and
        recompute the graph from the earliest corrected one; returns the turns whose speaker, label
        or probabilities changed. Only the last REVISABLE_TURNS turns can be revised (older indices
        are ignored) and the text vectors are not re-encoded: see `RevisableTurns`."""
        revised, window = self._history.revise(speakers, self._so_far, self.labels, self._step)
        if window is not None:
            self.dag.window = window
        return revised

    def _step(self, window: Window, features: dict[str, Any], speaker: int) -> tuple[list[float], Window]:
        probs, after = self.dag.step_from(window, features, speaker)
        return [float(p) for p in probs], after
