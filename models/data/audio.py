"""Audio as every part of merc reads it: 16 kHz mono float32. Corpora, live capture and the
feature extractors all convert through `to_mono_16k`, so a clip is the same signal wherever it
comes from."""
from __future__ import annotations

from math import gcd

import numpy as np

SAMPLE_RATE = 16000


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A float32 copy of a 1-D signal at 16 kHz; raises ValueError for anything else.

    Resampling is polyphase with an anti-aliasing filter (scipy.signal.resample_poly), not
    sample dropping: 22.05/44.1/48 kHz recordings must give the features a 16 kHz one gives.
    Integer PCM is scaled to [-1, 1].
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {audio.shape}; "
                         "mix channels down first, e.g. audio.mean(axis=1)")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
    elif not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected float or integer PCM samples, got dtype {audio.dtype}")
    audio = audio.astype(np.float32, copy=True)
    if sample_rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = gcd(int(sample_rate), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return audio
