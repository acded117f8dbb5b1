"""Real synthetic speech for stream tests: espeak-ng, resampled to 16 kHz (skips without espeak-ng)."""
from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest


def say(text: str, voice: str = "en-us", pitch: int = 50, speed: int = 160) -> np.ndarray:
    """16 kHz mono float32 of espeak-ng speaking `text`, its leading/trailing silence trimmed."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-p", str(pitch), "-s", str(speed), text],
                         capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    audio = resample_poly(audio, 160, rate // 100).astype(np.float32) if rate != 16000 else audio
    voiced = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[voiced[0]:voiced[-1] + 1]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), dtype=np.float32)
